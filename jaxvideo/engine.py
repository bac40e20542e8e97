"""The engine: loads every configured model and runs one GenerationRequest at a time.

The web layer talks only to this class (and gets numpy uint8 frames back); everything JAX lives
behind it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from jaxvideo.config import DEMO_PREFIX
from jaxvideo.continuation import last_frame_of, wan_state
from jaxvideo.demo import resolve_demo
from jaxvideo.errors import Cancelled, InvalidRequest
from jaxvideo.pipelines import VIDEO_FAMILIES, pipeline_class
from jaxvideo.pipelines.hires import generate_with_hires
from jaxvideo.pipelines.refine import generate_with_refiner
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
            "convert it with tools/convert_weights.py"
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


class Engine:
    """Owns the loaded pipelines; `generate` is serialised because the devices are shared."""

    def __init__(self, config: Any):
        self.config = config
        if config.server.compilation_cache_dir:
            enable_compilation_cache(config.server.compilation_cache_dir)
        self._pipelines: dict[str, Any] = {}
        self._infos: dict[str, ModelInfo] = {}
        self._lock = threading.Lock()
        self.mesh = build_mesh(config.mesh)
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
            try:
                pipeline_cls = pipeline_class(spec.family)
            except KeyError:
                raise ValueError(
                    f"model {spec.name!r}: family {spec.family!r} not supported"
                ) from None
            dtype = serving_dtype(spec.dtype)
            with activate(self.mesh):  # parameters are placed shard by shard
                pipeline = pipeline_cls(folder, dtype=dtype)
            self._pipelines[spec.name] = pipeline
            self._infos[spec.name] = ModelInfo(
                name=spec.name,
                family=spec.family,
                path=str(folder),
                modes=tuple(getattr(pipeline, "modes", ("img_gen",))),
                created=int((folder / "model_index.json").stat().st_mtime),
                dtype=dtype,
                samplers=tuple(getattr(pipeline, "samplers", ())),
                schedulers=tuple(getattr(pipeline, "schedulers", ())),
                features=dict(getattr(pipeline, "features", {})),
                size_multiple=int(getattr(pipeline, "size_multiple", 8)),
                frame_multiple=int(getattr(pipeline, "frame_multiple", 1)),
                needs_init_image=bool(getattr(pipeline, "is_i2v", False)),
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

    def warm_up(self, entry: Mapping[str, Any]) -> None:
        """Runs one configured request so its shapes compile now (and land in the compilation
        cache) rather than while the first client waits; the images are thrown away."""
        started = time.monotonic()
        name = self.model_info(entry.get("model")).name
        request = build_request(entry, self.config.default_request, self.family_defaults(name))
        request = replace(request, model=name)
        self.generate(request)
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
                f"unknown model {name!r}; served: {', '.join(self._infos)}"
            ) from None

    def family_defaults(self, name: str | None = None) -> dict[str, Any]:
        return self._pipelines[self.model_info(name).name].defaults

    def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        info = self.model_info(request.model)
        pipeline = self._pipelines[info.name]
        if request.mode not in info.modes:
            raise InvalidRequest(f"model {info.name!r} does not support {request.mode}")
        if info.family in VIDEO_FAMILIES:
            return self._generate_video(info, pipeline, request, progress, cancelled)
        refiner = None
        if request.refiner:
            refiner = self._pipelines[self.model_info(request.refiner).name]
        with self._lock, activate(self.mesh):
            if refiner is not None:
                if request.hires is not None:
                    raise InvalidRequest("hires fix and a refiner cannot be combined yet")
                return generate_with_refiner(pipeline, refiner, request, progress, cancelled)
            if request.hires is not None:
                return generate_with_hires(pipeline, request, progress, cancelled)
            return pipeline.generate(request, progress=progress, cancelled=cancelled)

    def batch_key(self, request: GenerationRequest) -> Hashable | None:
        """Requests with equal keys may run as one `generate_batch` call: they differ only in
        prompt, negative prompt, seed and batch_count. None: `request` runs alone (videos,
        refiner, hires fix, init or mask images, VAE tiling, unknown models, ...)."""
        info = self._infos.get(request.model or self.model_info().name)
        if (
            info is None
            or info.family in VIDEO_FAMILIES
            or request.mode not in info.modes
            or request.refiner
            or request.hires is not None
            or request.continuation is not None
        ):
            return None
        key = self._pipelines[info.name].batch_key(request)
        return None if key is None else (info.name, key)

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        progress: Callable[[int, int], None] | None = None,
        cancelled: Sequence[Callable[[], bool]] | None = None,
    ) -> list[GenerationResult | Exception]:
        """Requests with one equal `batch_key` as one sampler run; per request, in order, the
        result `generate` would give it alone, or `Cancelled` when its own `cancelled` check
        is true at the end. The run stops early only when every request is cancelled."""
        keys = {self.batch_key(request) for request in requests}
        if len(keys) != 1 or None in keys:
            raise InvalidRequest("these requests cannot run as one batch")
        checks = list(cancelled) if cancelled is not None else [lambda: False] * len(requests)
        pipeline = self._pipelines[next(iter(keys))[0]]
        with self._lock, activate(self.mesh):
            results = pipeline.generate_batch(
                requests, progress, lambda: all(check() for check in checks)
            )
        return [Cancelled() if check() else r for r, check in zip(results, checks, strict=True)]

    def _generate_video(
        self,
        info: ModelInfo,
        pipeline: Any,
        request: GenerationRequest,
        progress: Callable[[int, int], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> GenerationResult:
        """Wan: a continuation state becomes the first frame; `return_state` hands one back."""
        segment = 0
        if request.continuation is not None:
            state = request.continuation
            if state.payload["model"] != info.name:
                raise InvalidRequest(
                    f"state was produced by model {state.payload['model']!r}, "
                    f"not {info.name!r}; continue with the same model"
                )
            if request.init_image is not None:
                raise InvalidRequest("a continuation state and an init_image cannot be combined")
            segment = state.payload["segment_index"] + 1
            request = replace(request, init_image=last_frame_of(state), continuation=None)
        with self._lock, activate(self.mesh):
            result = pipeline.generate(request, progress=progress, cancelled=cancelled)
        if request.return_state and result.videos:
            last = result.videos[0][-1]
            result.state = wan_state(segment, info.name, last, request.fps).to_json()
        result.info["segment_index"] = segment
        return result
