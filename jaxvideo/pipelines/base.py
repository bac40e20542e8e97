"""The pipeline contract every model family implements, and the pieces all pipelines share.

A pipeline is one loaded model of a family (`jaxvideo.families`). The engine knows pipelines
only through this contract: what the model supports (modes, samplers, schedules, features,
size and frame rules, defaults), `validate` (once per request, before it is queued), and
`generate` (in the job worker). Each network runs as a jit-compiled XLA function over its
(graphdef, state) split, so weights are arguments, not constants baked into the program, and
one compiled function serves every request of the same shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvideo.cost import NetworkCall, Shape
from jaxvideo.errors import Cancelled, InvalidRequest
from jaxvideo.families import FamilySpec, family
from jaxvideo.request import GenerationRequest
from jaxvideo.results import GenerationResult
from jaxvideo.sampling import registry
from jaxvideo.weights import read_config

ProgressFn = Callable[[int, int], None]  # (finished steps, total steps)
CancelledFn = Callable[[], bool]  # true once the caller wants the run stopped
StepCallback = Callable[[int, int], None]  # what a sampler calls after each step


@dataclass(frozen=True)
class Plan:
    """What `validate` resolved for one request: the sampler and the schedule it runs (a
    flow model's schedule is the flow schedule the name means there)."""

    sampler: str
    scheduler: str


class Pipeline:
    """One loaded model. Subclasses load their networks in `__init__` (after this one), and
    implement `features`, `validate` and `generate`; the rest has defaults here."""

    # Request modes the model serves; sd.cpp's names ("img_gen", "vid_gen").
    modes: tuple[str, ...] = ("img_gen",)
    # Width and height must be multiples of this; videos have k * frame_multiple + 1 frames.
    size_multiple: int = 8
    frame_multiple: int = 1
    # Image-to-video models cannot start without a first frame.
    needs_init_image: bool = False
    # The step-cache modes its denoiser supports (jaxvideo.sampling.cache_modes).
    cache_modes: tuple[str, ...] = ()

    def __init__(self, model_dir: str | Path, dtype: str = "fp32"):
        self.model_dir = Path(model_dir)
        self.index = json.loads((self.model_dir / "model_index.json").read_text())
        self.family: FamilySpec = family(self.index.get("family", ""))
        own = f"{type(self).__module__}:{type(self).__qualname__}"
        if self.family.pipeline != own:
            raise ValueError(f"{model_dir}: a {self.family.name} model is not served by {own}")
        missing = [
            name
            for name in self.family.components
            if name not in self.family.optional and not (self.model_dir / name).is_dir()
        ]
        if missing:
            raise ValueError(
                f"{model_dir}: a {self.family.name} model needs {', '.join(missing)}, "
                "which the folder lacks"
            )
        configs = {
            name: read_config(self.model_dir / name)
            for name in self.family.components
            if (self.model_dir / name / "config.json").is_file()
        }
        disagreements = self.component_mismatches(configs)
        if disagreements:
            raise ValueError(f"{model_dir}: its components disagree: {'; '.join(disagreements)}")
        # A model folder may carry its own defaults (the demo models' small sizes).
        self._defaults = {**self.family.defaults, **self.index.get("defaults", {})}

    # jax.jit on methods hashes `self`; pipelines are long-lived singletons, so identity hashing
    # is exactly right.
    def __hash__(self) -> int:
        return id(self)

    @classmethod
    def component_mismatches(cls, configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """What the components' reference configs (by folder name) say that cannot work
        together (a text encoder narrower than the denoiser's cross-attention, ...): checked
        when a model loads and when it is converted, so it never serves failing requests."""
        return []

    @classmethod
    def network_calls(
        cls, configs: Mapping[str, Mapping[str, Any]], index: Mapping[str, Any], shape: Shape
    ) -> list[NetworkCall]:
        """The denoiser and VAE-decoder calls one request of `shape` makes, with the shapes
        they pass (jaxvideo.cost): read from the components' configs (`configs`, by folder)
        and `model_index.json` (`index`) alone, so a model's FLOPs and memory are known
        before, or without, loading it."""
        raise NotImplementedError

    # --- what the model supports (ModelInfo) --------------------------------------------------

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self._defaults)

    @property
    def samplers(self) -> tuple[str, ...]:
        return registry.sampler_names(self.family.flow)

    @property
    def schedulers(self) -> tuple[str, ...]:
        return registry.schedule_names(self.family.flow)

    @property
    def features(self) -> Mapping[str, tuple[str, ...]]:
        """Per mode, the sd.cpp feature names that work with this model (init_image,
        mask_image, end_image, lora, vae_tiling, high_noise_sample_params)."""
        raise NotImplementedError

    # --- requests ------------------------------------------------------------------------------

    def validate(self, req: GenerationRequest) -> Plan:
        """Checks what only the loaded model knows (InvalidRequest naming the field) and
        resolves the sampler and schedule. Runs once per request; `generate` trusts it."""
        raise NotImplementedError

    def resolve_sampling(self, sampler: str | None, scheduler: str | None) -> Plan:
        """Sampler and schedule names -> what runs; default names mean the model's own."""
        flow = self.family.flow
        try:
            resolved = registry.resolve_sampler(sampler, flow, self._defaults["sampler"])
        except ValueError as exc:
            raise InvalidRequest(str(exc), "sampler") from exc
        try:
            schedule = registry.resolve_schedule(
                scheduler, resolved, flow, self._defaults["scheduler"]
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc), "scheduler") from exc
        return Plan(resolved, schedule)

    def generate(
        self,
        req: GenerationRequest,
        plan: Plan | None = None,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
        refiner: Pipeline | None = None,
    ) -> GenerationResult:
        """Runs one request (validated into `plan`; validated here when None). `refiner` is a
        second model that finishes the run (an SDXL refiner), for families that have one."""
        raise NotImplementedError

    def batch_key(self, req: GenerationRequest) -> Hashable | None:
        """Requests with equal keys may run as one `generate_batch` call. None: alone."""
        return None

    def generate_batch(
        self,
        reqs: Sequence[GenerationRequest],
        plan: Plan | None = None,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> list[GenerationResult]:
        raise NotImplementedError(f"{self.family.name} models do not batch requests")


def result_info(req: GenerationRequest, plan: Plan, **extra: Any) -> dict[str, Any]:
    """What a result reports about how it was made (`extra` adds to or overrides it)."""
    return {"sampler": plan.sampler, "scheduler": plan.scheduler, "steps": req.steps, **extra}


def image_result(
    req: GenerationRequest, pixels: np.ndarray, plan: Plan, **info: Any
) -> GenerationResult:
    """One image per row of `pixels` (B, H, W, 3), with the seeds and `result_info`."""
    images = [np.asarray(pixels[i]) for i in range(pixels.shape[0])]
    return GenerationResult(images, req.seeds(), result_info(req, plan, **info))


def to_uint8(images: jax.Array) -> jax.Array:
    """[-1, 1] -> [0, 255] uint8 on device, so only bytes travel back to the host."""
    return jnp.clip(jnp.round((images.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def seeded_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """Unit normal noise (len(seeds), *shape) and one further key per seed: one random stream
    per image, so an image is the same alone or in a batch."""
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, dtype=jnp.uint32))
    noise_keys, other_keys = jax.vmap(lambda k: tuple(jax.random.split(k)))(keys)
    noise = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(noise_keys)
    return noise, other_keys


def stop_if_cancelled(cancelled: CancelledFn | None) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled()


def step_reporter(
    progress: ProgressFn | None,
    cancelled: CancelledFn | None,
    offset: int = 0,
    total: int | None = None,
) -> StepCallback:
    """The callback a sampler run gets: reports `offset + step` of `total` (default: the run's
    own total) and stops between steps once cancelled (never after the last one)."""

    def on_step(step: int, run_total: int) -> None:
        done, of = offset + step, run_total if total is None else total
        if progress is not None:
            progress(done, of)
        if cancelled is not None and cancelled() and done < of:
            raise Cancelled()

    return on_step
