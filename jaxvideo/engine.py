"""The engine: loads every configured model and runs one GenerationRequest at a time.

The web layer talks only to this class (and gets numpy uint8 frames back); everything JAX lives
behind it. A request is `prepare`d once (the model's `validate`, before it is queued) and the
`PreparedRequest` is what `generate` runs; pipelines are reached only through the contract of
`jaxvideo.pipelines.base`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from jaxvideo.config import DEMO_PREFIX, ModelSpec, ServeConfig
from jaxvideo.continuation import last_frame_of, wan_state
from jaxvideo.cost import Shape
from jaxvideo.demo import resolve_demo
from jaxvideo.distributed import Controller, Gate, pack_requests, unpack_requests
from jaxvideo.errors import Cancelled, InvalidRequest
from jaxvideo.memory_plan import (
    Estimate,
    ModelPlan,
    device_memory,
    gib,
    shape_of,
    usable,
)
from jaxvideo.pipelines.base import Pipeline, Plan
from jaxvideo.request import GenerationRequest, build_request
from jaxvideo.results import GenerationResult, ModelInfo
from jaxvideo.sampling import cache_modes, step_cache
from jaxvideo.sampling.registry import SAMPLER_SPECS
from jaxvideo.sharding import activate, build_mesh
from jaxvideo.weights import serving_dtype, shapes_only

log = logging.getLogger(__name__)


def resolve_model_path(path: str) -> Path:
    """A real folder as given, or a `demo:<name>` model built into the cache on first use."""
    if path.startswith(DEMO_PREFIX):
        return resolve_demo(path)
    folder = Path(path).expanduser()
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a converted jaxvideo model (no model_index.json); "
            "convert it with `jaxvideo convert`"
        )
    return folder


def enable_compilation_cache(folder: str) -> None:
    """Persists every compiled XLA program in `folder` (before anything compiles): a restart
    with the same models and shapes loads them instead of compiling again."""
    import jax

    Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Small programs too: a server compiles many (one per shape), and all of them add up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    log.info("XLA compilation cache: %s", folder)


@dataclass(frozen=True)
class PreparedRequest:
    """A request the engine has checked: its model's `validate` passed and resolved `plan`."""

    request: GenerationRequest
    plan: Plan


# The `phase` a run's progress reports while its model is being loaded.
LOADING = "loading_model"


class Engine:
    """Owns the loaded pipelines; `generate` is serialised because the devices are shared.

    Every configured model is described (ModelInfo) and planned (`jaxvideo.memory_plan`) at
    start, before any weight is read; models marked `load: startup` are loaded then, the
    others at their first request. When a model must load, or a request's activations need
    room, the least recently used other models are unloaded until the plan fits.
    """

    def __init__(self, config: ServeConfig, controller: Controller | None = None):
        self.config = config
        # Several hosts (jaxvideo.distributed): each operation that runs device programs is
        # a command every process runs alike. None: this process is the whole server.
        self.controller = controller
        if config.server.compilation_cache_dir:
            enable_compilation_cache(config.server.compilation_cache_dir)
        self._pipelines: dict[str, Pipeline] = {}  # the loaded models
        self._infos: dict[str, ModelInfo] = {}
        self._folders: dict[str, Path] = {}
        self._plans: dict[str, ModelPlan] = {}
        self._last_used: dict[str, float] = {}
        self._loading: str | None = None
        self._described: dict[str, Pipeline] = {}  # shapes-only pipelines of unloaded models
        self._lock = threading.Lock()
        self.mesh = build_mesh(config.mesh)
        self.context_parallel = config.context_parallel
        if self.mesh is not None:
            axes = {axis: size for axis, size in self.mesh.shape.items() if size > 1}
            log.info("device mesh %s over %d devices", axes, self.mesh.size)
        devices = self.mesh.size if self.mesh is not None else 1
        self.device_memory = device_memory(config.server.device_memory_gib, devices)
        for spec in config.models:
            self._describe(spec)
        self._check_startup_fits()
        for spec in config.models:
            if spec.load == "startup":
                self._load(spec.name)

        for entry in config.warmup:
            self.warm_up(entry)

    # --- models: described at start, loaded at start or on demand ------------------------------

    def _describe(self, spec: ModelSpec) -> None:
        """ModelInfo and memory plan of one configured model, from its folder's configs (the
        pipeline is built with shapes in place of weights: nothing is read or allocated)."""
        folder = resolve_model_path(spec.path)
        family = json.loads((folder / "model_index.json").read_text()).get("family")
        if family != spec.family:
            raise ValueError(
                f"model {spec.name!r}: config says family {spec.family!r} "
                f"but {folder} holds {family!r}"
            )
        dtype = serving_dtype(spec.dtype)
        try:
            with shapes_only():
                pipeline = spec.family_spec.load_pipeline()(folder, dtype=dtype)
        except ValueError as exc:  # a folder that cannot serve: name the model at start
            raise ValueError(f"model {spec.name!r}: {exc}") from exc
        self._folders[spec.name] = folder
        self._described[spec.name] = pipeline
        self._plans[spec.name] = ModelPlan(folder, dtype, dict(self.config.mesh))
        self._infos[spec.name] = ModelInfo(
            name=spec.name,
            family=spec.family,
            path=str(folder),
            modes=tuple(pipeline.modes),
            created=int((folder / "model_index.json").stat().st_mtime),
            dtype=dtype,
            samplers=tuple(pipeline.samplers),
            schedulers=tuple(pipeline.schedulers),
            features=dict(pipeline.features),
            cache_modes=tuple(pipeline.cache_modes),
            size_multiple=pipeline.size_multiple,
            frame_multiple=pipeline.frame_multiple,
            needs_init_image=pipeline.needs_init_image,
            defaults=pipeline.defaults,
        )

    def _default_shape(self, name: str) -> Shape:
        """The shape of a request that sets nothing: the operator's and the model's defaults."""
        info = self._infos[name]
        request = build_request({}, self.config.default_request, info.defaults)
        frames = info.frames_for(request.num_frames) if "vid_gen" in info.modes else 1
        return shape_of(request, frames)

    def _check_startup_fits(self) -> None:
        """Refuses to start when the models loaded at start, with the largest default request
        among them, cannot fit on a device (naming the model, the mesh and the estimate)."""
        names = [spec.name for spec in self.config.models if spec.load == "startup"]
        weights = sum(self._plans[name].weight_bytes for name in names)
        for name in names + [s.name for s in self.config.models if s.load != "startup"]:
            estimate = self._plans[name].estimate(self._default_shape(name))
            others = weights - (self._plans[name].weight_bytes if name in names else 0)
            if estimate.total > self._usable:
                raise ValueError(self._too_big(name, estimate, "cannot serve its default request"))
            if name in names and others + estimate.total > self._usable:
                raise ValueError(
                    self._too_big(name, estimate, "does not fit next to the other models loaded")
                    + f" at start ({gib(others)} of their weights); mark some `load: on_demand`"
                )

    @property
    def _usable(self) -> int:
        return usable(self.device_memory)

    def _too_big(self, name: str, estimate: Estimate, what: str) -> str:
        mesh = {axis: size for axis, size in self.config.mesh.items() if size > 1} or "none"
        return (
            f"model {name!r} {what}: it needs {estimate.describe()} on mesh {mesh}, but a "
            f"device has {gib(self.device_memory)} ({gib(self._usable)} usable); use a larger "
            "mesh (fsdp, context), a smaller dtype or request, or set server.device_memory_gib"
        )

    def _load(self, name: str) -> None:
        started = time.monotonic()
        spec = next(s for s in self.config.models if s.name == name)
        self._loading = name
        try:
            # Parameters are placed shard by shard.
            with activate(self.mesh, self.context_parallel):
                build = spec.family_spec.load_pipeline()
                pipeline = build(self._folders[name], dtype=self._infos[name].dtype)
        finally:
            self._loading = None
        self._pipelines[name] = pipeline
        self._last_used[name] = time.monotonic()
        log.info(
            "loaded %s (%s) from %s in %.1fs, %s per device",
            name,
            spec.family,
            self._folders[name],
            time.monotonic() - started,
            gib(self._plans[name].weight_bytes),
        )

    def _unload(self, name: str) -> None:
        """Drops a loaded model and frees its device buffers now (the compiled programs,
        which hold the pipeline, would otherwise keep its weights alive)."""
        pipeline = self._pipelines.pop(name)
        for array in _device_arrays(pipeline):
            array.delete()
        log.info("unloaded %s (%s per device)", name, gib(self._plans[name].weight_bytes))

    def _make_room(self, names: Sequence[str], activations: int) -> None:
        """Loads `names` (a model and its refiner), first unloading the least recently used
        other models until their weights and `activations` fit. Under `_lock`."""
        need = [name for name in dict.fromkeys(names) if name not in self._pipelines]

        def planned() -> int:
            resident = sum(self._plans[n].weight_bytes for n in self._pipelines)
            return resident + sum(self._plans[n].weight_bytes for n in need) + activations

        while planned() > self._usable:
            idle = [n for n in self._pipelines if n not in names]
            if not idle:
                break  # prepare() refused what cannot fit alone; this is the plan's margin
            self._unload(min(idle, key=self._last_used.__getitem__))
        for name in need:
            self._load(name)
        for name in names:
            self._last_used[name] = time.monotonic()

    def load(self, name: str) -> None:
        """Loads a model now (the admin route), unloading others as its plan needs."""
        self.model_info(name)
        estimate = self._plans[name].estimate(self._default_shape(name))
        if estimate.total > self._usable:
            raise InvalidRequest(self._too_big(name, estimate, "cannot be loaded"), "model")
        with self._lock, self._command("load", name.encode()):
            self._make_room([name], estimate.activations)

    def unload(self, name: str) -> bool:
        """Unloads a model (the admin route); False if it was not loaded."""
        self.model_info(name)
        with self._lock:
            if name not in self._pipelines:
                return False
            with self._command("unload", name.encode()):
                self._unload(name)
            return True

    def model_states(self) -> list[dict[str, object]]:
        """Per configured model: loaded or not, its load policy and weights per device."""
        policies = {spec.name: spec.load for spec in self.config.models}
        return [
            {
                "name": name,
                "loaded": name in self._pipelines,
                "loading": name == self._loading,
                "load": policies[name],
                "weights_bytes_per_device": self._plans[name].weight_bytes,
            }
            for name in self._infos
        ]

    def is_loaded(self, name: str) -> bool:
        return name in self._pipelines

    def memory(self) -> dict[str, int]:
        """Device memory as planned: the device's, what the plan may use, loaded weights."""
        return {
            "device_bytes": self.device_memory,
            "usable_bytes": self._usable,
            "loaded_weights_bytes": sum(self._plans[n].weight_bytes for n in self._pipelines),
        }

    def device_memory_in_use(self) -> dict[str, int]:
        """Bytes in use now on each of this process's devices that reports it (GPU, TPU), by
        device ("gpu:0"); CPU devices report none (`memory` has the plan's figures)."""
        import jax

        found = {}
        for device in jax.local_devices():
            stats = device.memory_stats() or {}
            if "bytes_in_use" in stats:
                found[f"{device.platform}:{device.id}"] = int(stats["bytes_in_use"])
        return found

    def estimate(self, request: GenerationRequest) -> Estimate:
        info = self.model_info(request.model)
        estimate = self._plans[info.name].estimate(self._shape(request))
        if request.refiner is not None:  # both stay loaded for the request
            estimate = replace(
                estimate, weights=estimate.weights + self._plans[request.refiner].weight_bytes
            )
        return estimate

    def batch_limit(self, request: GenerationRequest | PreparedRequest) -> int:
        """How many requests like this one fit in one batch (activations grow with it)."""
        prepared = self._prepared(request)
        estimate = self.estimate(prepared.request)
        room = self._usable - estimate.weights
        return max(1, room // max(1, estimate.activations))

    def flops(self, request: GenerationRequest) -> dict[str, float]:
        """FLOPs per denoiser call and per whole decode of `request` (all devices)."""
        info = self.model_info(request.model)
        return self._plans[info.name].flops(self._shape(request))

    def _shape(self, request: GenerationRequest) -> Shape:
        """The dimensions of `request` that set its cost (a video's real frame count)."""
        info = self.model_info(request.model)
        frames = info.frames_for(request.num_frames) if request.mode == "vid_gen" else 1
        return shape_of(request, frames)

    def warm_up(self, entry: Mapping[str, object]) -> None:
        """Runs one configured request so its shapes compile now (and land in the compilation
        cache) rather than while the first client waits; the images are thrown away."""
        started = time.monotonic()
        info = self.model_info(entry.get("model"))
        request = build_request(entry, self.config.default_request, info.defaults)
        self.generate(replace(request, model=info.name))
        log.info("warmed up %s in %.1fs", dict(entry), time.monotonic() - started)

    @property
    def models(self) -> list[ModelInfo]:
        return list(self._infos.values())

    def model_info(self, name: str | None = None) -> ModelInfo:
        if name is None:
            return self.models[0]
        try:
            return self._infos[name]
        except KeyError:
            raise InvalidRequest(
                f"unknown model {name!r}; served: {', '.join(self._infos)}", "model"
            ) from None

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Checks `request` against its model (InvalidRequest naming the field): the mode, a
        refiner's family, a continuation state, and the pipeline's own `validate`, which runs
        here once for the request's whole life."""
        info = self.model_info(request.model)
        if request.mode not in info.modes:
            raise InvalidRequest(f"model {info.name!r} does not support {request.mode}", "mode")
        if request.refiner is not None:
            try:
                refiner = self.model_info(request.refiner)
            except InvalidRequest as exc:
                raise InvalidRequest(str(exc), "refiner") from exc
            if refiner.family_spec.refines != info.family:
                raise InvalidRequest(
                    f"{refiner.name!r} ({refiner.family}) cannot refine {info.name!r} "
                    f"({info.family})",
                    "refiner",
                )
        request = replace(request, model=info.name)
        if request.continuation is not None:
            _check_continuation(request)
        pipeline = self._pipeline(info.name)
        plan = pipeline.validate(request)
        if request.step_cache is not None:
            needs_uncond = SAMPLER_SPECS[plan.sampler].needs_uncond
            cache_modes.check(request.step_cache.mode, pipeline.cache_modes, needs_uncond)
        self._check_fits(request)
        return PreparedRequest(request, plan)

    def _pipeline(self, name: str) -> Pipeline:
        """The loaded pipeline, else one built with shapes only (for `validate`, which reads
        no weights), kept until the model loads."""
        return self._pipelines.get(name) or self._described[name]

    def _check_fits(self, request: GenerationRequest) -> None:
        """A request whose model (and refiner) and activations cannot fit on a device, even
        with every other model unloaded, is refused now rather than failing on the device."""
        estimate = self.estimate(request)
        if estimate.total <= self._usable:
            return
        field = "width"
        if request.batch_count > 1:
            field = "batch_count"
        elif request.mode == "vid_gen" and request.num_frames > 1:
            field = "num_frames"
        raise InvalidRequest(
            self._too_big(request.model, estimate, "cannot run this request"), field
        )

    def generate(
        self,
        request: GenerationRequest | PreparedRequest,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Runs one request (prepared here unless it already is), loading its model first
        when it is not (`progress(0, 0, phase=LOADING)` says so meanwhile)."""
        prepared = self._prepared(request)
        req, segment = _continued(prepared.request)
        names = [req.model] + ([req.refiner] if req.refiner is not None else [])
        with self._lock, self._command("generate", pack_requests([prepared])) as gate:
            self._ready(names, self.estimate(prepared.request).activations, progress)
            pipeline = self._pipelines[req.model]
            refiner = self._pipelines[req.refiner] if req.refiner is not None else None
            with activate(self.mesh, self.context_parallel), step_cache.collect() as runs:
                result = pipeline.generate(
                    req, prepared.plan, progress, gate(cancelled), refiner=refiner
                )
        if runs:
            result.info["step_cache"] = step_cache.summary(runs)
        if pipeline.family.video:
            if req.return_state and result.videos:
                state = wan_state(segment, req.model, result.videos[0][-1], req.fps)
                result.state = state.to_json()
            result.info["segment_index"] = segment
        return result

    def batch_key(self, request: GenerationRequest | PreparedRequest) -> Hashable | None:
        """Requests with equal keys may run as one `generate_batch` call: they differ only in
        prompt, negative prompt, seed and batch_count. None: the request runs alone (models
        that do not batch, refiner, hires fix, init or mask images, VAE tiling, requests
        that fail to prepare, ...)."""
        try:
            prepared = self._prepared(request)
        except InvalidRequest:
            return None
        req = prepared.request
        if req.refiner or req.hires is not None or req.continuation is not None:
            return None
        # A step cache decides from statistics of the whole batch, so batched images would
        # not be the ones each request makes alone.
        if req.step_cache is not None:
            return None
        key = self._pipeline(req.model).batch_key(req)
        return None if key is None else (req.model, prepared.plan, key)

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest | PreparedRequest],
        progress: Callable[[int, int], None] | None = None,
        cancelled: Sequence[Callable[[], bool]] | None = None,
    ) -> list[GenerationResult | Exception]:
        """Requests with one equal `batch_key` as one sampler run; per request, in order, the
        result `generate` would give it alone, or `Cancelled` when its own `cancelled` check
        is true at the end. The run stops early only when every request is cancelled."""
        prepared = [self._prepared(request) for request in requests]
        keys = {self.batch_key(item) for item in prepared}
        if len(keys) != 1 or None in keys:
            raise InvalidRequest("these requests cannot run as one batch")
        checks = list(cancelled) if cancelled is not None else [lambda: False] * len(prepared)
        first = prepared[0]
        activations = sum(self.estimate(item.request).activations for item in prepared)
        with self._lock, self._command("generate_batch", pack_requests(prepared)) as gate:
            self._ready([first.request.model], activations, progress)
            pipeline = self._pipelines[first.request.model]
            with activate(self.mesh, self.context_parallel):
                results = pipeline.generate_batch(
                    [item.request for item in prepared],
                    first.plan,
                    progress,
                    gate(lambda: all(check() for check in checks)),
                )
        return [Cancelled() if check() else r for r, check in zip(results, checks, strict=True)]

    @property
    def process_index(self) -> int:
        """This process's index in a multi-host slice (0: the one serving the API)."""
        return 0 if self.controller is None else self.controller.process_id

    def _command(self, op: str, payload: bytes) -> contextlib.AbstractContextManager[Gate]:
        """What every process of a slice runs alike (under `_lock`): the leader publishes it,
        followers run it from `run_command`; the gate makes its stop checks agree."""
        if self.controller is None:
            return contextlib.nullcontext(Gate(None))
        return self.controller.command(op, payload)

    def run_command(self, op: str, payload: bytes) -> None:
        """A follower's side of a command the leader published (its results are the
        leader's to return; here they are dropped)."""
        if op == "generate":
            self.generate(unpack_requests(payload)[0])
        elif op == "generate_batch":
            self.generate_batch(unpack_requests(payload))
        elif op == "load":
            self.load(payload.decode())
        elif op == "unload":
            self.unload(payload.decode())
        else:
            raise ValueError(f"unknown command {op!r}")

    def _ready(self, names: list[str], activations: int, progress) -> None:
        """Loads what the run needs (under `_lock`), telling `progress` while it loads."""
        if progress is not None and any(name not in self._pipelines for name in names):
            progress(0, 0, phase=LOADING)
        self._make_room(names, activations)

    def _prepared(self, request: GenerationRequest | PreparedRequest) -> PreparedRequest:
        return request if isinstance(request, PreparedRequest) else self.prepare(request)


def _device_arrays(pipeline: Pipeline) -> list:
    """The device arrays a pipeline holds (its networks' states, merged LoRA caches, ...)."""
    import jax

    found, seen = [], set()

    def walk(value, depth: int) -> None:
        if id(value) in seen or depth > 4:
            return
        seen.add(id(value))
        if isinstance(value, jax.Array):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item, depth + 1)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, depth + 1)
        elif hasattr(value, "__dict__") and type(value).__module__.startswith(("jaxvideo", "flax")):
            for item in vars(value).values():
                walk(item, depth + 1)

    walk(pipeline, 0)
    return found


def _check_continuation(request: GenerationRequest) -> None:
    """A continuation state must come from this model and is the first frame itself."""
    produced_by = request.continuation.payload["model"]
    if produced_by != request.model:
        raise InvalidRequest(
            f"state was produced by model {produced_by!r}, not {request.model!r}; "
            "continue with the same model",
            "continuation",
        )
    if request.init_image is not None:
        raise InvalidRequest(
            "a continuation state and an init_image cannot be combined", "continuation"
        )


def _continued(request: GenerationRequest) -> tuple[GenerationRequest, int]:
    """The request with its continuation state (checked by `prepare`) turned into the first
    frame, and the segment it makes (0: a fresh video, no state)."""
    state = request.continuation
    if state is None:
        return request, 0
    segment = state.payload["segment_index"] + 1
    return replace(request, init_image=last_frame_of(state), continuation=None), segment
