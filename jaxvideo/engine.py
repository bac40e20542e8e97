"""The engine: loads every configured model and runs one GenerationRequest at a time.

The web layer talks only to this class (and gets numpy uint8 frames back); everything JAX lives
behind it. A request is `prepare`d once (the model's `validate`, before it is queued) and the
`PreparedRequest` is what `generate` runs; pipelines are reached only through the contract of
`jaxvideo.pipelines.base`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from jaxvideo.config import DEMO_PREFIX, ServeConfig
from jaxvideo.continuation import last_frame_of, wan_state
from jaxvideo.demo import resolve_demo
from jaxvideo.errors import Cancelled, InvalidRequest
from jaxvideo.pipelines.base import Pipeline, Plan
from jaxvideo.request import GenerationRequest, build_request
from jaxvideo.results import GenerationResult, ModelInfo
from jaxvideo.sharding import activate, build_mesh
from jaxvideo.weights import serving_dtype

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


class Engine:
    """Owns the loaded pipelines; `generate` is serialised because the devices are shared."""

    def __init__(self, config: ServeConfig):
        self.config = config
        if config.server.compilation_cache_dir:
            enable_compilation_cache(config.server.compilation_cache_dir)
        self._pipelines: dict[str, Pipeline] = {}
        self._infos: dict[str, ModelInfo] = {}
        self._lock = threading.Lock()
        self.mesh = build_mesh(config.mesh)
        self.context_parallel = config.context_parallel
        if self.mesh is not None:
            axes = {axis: size for axis, size in self.mesh.shape.items() if size > 1}
            log.info("device mesh %s over %d devices", axes, self.mesh.size)
        for spec in config.models:
            started = time.monotonic()
            folder = resolve_model_path(spec.path)
            family = json.loads((folder / "model_index.json").read_text()).get("family")
            if family != spec.family:
                raise ValueError(
                    f"model {spec.name!r}: config says family {spec.family!r} "
                    f"but {folder} holds {family!r}"
                )
            dtype = serving_dtype(spec.dtype)
            try:
                # Parameters are placed shard by shard.
                with activate(self.mesh, self.context_parallel):
                    pipeline = spec.family_spec.load_pipeline()(folder, dtype=dtype)
            except ValueError as exc:  # a folder that cannot serve: name the model at start
                raise ValueError(f"model {spec.name!r}: {exc}") from exc
            self._pipelines[spec.name] = pipeline
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
                size_multiple=pipeline.size_multiple,
                frame_multiple=pipeline.frame_multiple,
                needs_init_image=pipeline.needs_init_image,
                defaults=pipeline.defaults,
            )
            log.info(
                "loaded %s (%s) from %s in %.1fs",
                spec.name,
                spec.family,
                folder,
                time.monotonic() - started,
            )

        for entry in config.warmup:
            self.warm_up(entry)

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
        plan = self._pipelines[info.name].validate(request)
        return PreparedRequest(request, plan)

    def generate(
        self,
        request: GenerationRequest | PreparedRequest,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Runs one request (prepared here unless it already is)."""
        prepared = self._prepared(request)
        req, segment = _continued(prepared.request)
        pipeline = self._pipelines[req.model]
        refiner = self._pipelines[req.refiner] if req.refiner is not None else None
        with self._lock, activate(self.mesh, self.context_parallel):
            result = pipeline.generate(req, prepared.plan, progress, cancelled, refiner=refiner)
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
        key = self._pipelines[req.model].batch_key(req)
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
        pipeline = self._pipelines[first.request.model]
        with self._lock, activate(self.mesh, self.context_parallel):
            results = pipeline.generate_batch(
                [item.request for item in prepared],
                first.plan,
                progress,
                lambda: all(check() for check in checks),
            )
        return [Cancelled() if check() else r for r, check in zip(results, checks, strict=True)]

    def _prepared(self, request: GenerationRequest | PreparedRequest) -> PreparedRequest:
        return request if isinstance(request, PreparedRequest) else self.prepare(request)


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
