"""GenerationRequest: the one internal request every API surface translates into.

Surfaces parse their own shapes, then call `build_request` with three layers, highest first:
fields the client explicitly sent, fields the operator wrote in `default_request`, and the
model family's defaults. Only keys present in a layer count, so a schema default can never
shadow an operator default (the FastVideo merge contract).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from jaxvideo.errors import InvalidRequest

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Range:
    """A static range of a numeric field; `open` bounds are exclusive, None is unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """ "within [0, 1]", "within (0, 1)", ">= 0", "> 0"."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"within {left}{self.low:g}, {self.high:g}{right}"


# The static ranges of request fields: what every request must satisfy whatever the model and
# the server's limits. GenerationRequest checks them when it is built (None values are
# "unset" and pass); the web schemas take their validators from here.
FIELD_RANGES: Mapping[str, Range] = MappingProxyType(
    {
        # Any 64-bit value a client may send: negative draws a random seed, the others are
        # reduced modulo 2**32 (one PRNG key per image), so the reply names the seed used.
        "seed": Range(-(2**63), 2**64 - 1),
        # CFG far above any model's useful range only overflows the prediction.
        "guidance_scale": Range(0, 100),
        "strength": Range(0, 1),
        # sd.cpp's timestep shift: 0 = off, else t' = t * shift / 1000.
        "shifted_timestep": Range(0, 1000),
        "refiner_switch": Range(0, 1, low_open=True, high_open=True),
        "num_frames": Range(1),
        "fps": Range(1, 120),
        "flow_shift": Range(0, low_open=True),
        "guidance_scale_2": Range(0, 100),
        "moe_boundary": Range(0, 1, low_open=True, high_open=True),
        "distilled_guidance": Range(0, 100),
    }
)


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. Pixel sizes are in pixels; `seed` is always resolved (>= 0)."""

    prompt: str = ""
    negative_prompt: str = ""
    model: str | None = None
    mode: str = "img_gen"
    width: int = 512
    height: int = 512
    seed: int = 0
    batch_count: int = 1
    steps: int = 20
    guidance_scale: float = 7.0
    sampler: str = "euler_a"
    scheduler: str = "discrete"
    clip_skip: int = -1
    eta: float | None = None
    # img2img / inpainting: HxWx3 uint8 init image, HxW uint8 mask (255 = repaint), and how
    # much of the schedule to run from the noised init image (1.0 = all of it).
    init_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    mask_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    strength: float = 0.75
    # LoRA files (jaxvideo.lora.LoraSpec), already resolved inside the configured folder.
    loras: tuple[Any, ...] = ()
    # Decode the VAE in overlapping tiles (jaxvideo.tiling.VaeTiling), for large images.
    vae_tiling: Any = None
    # Client-given sigma schedule (descending, final 0 appended if missing); overrides
    # `scheduler`, and `steps` becomes its length - 1.
    custom_sigmas: tuple[float, ...] = ()
    # sd.cpp's timestep shift for distilled SDXL checkpoints (0 = off, else 1..1000).
    shifted_timestep: int = 0
    # SDXL ensemble of experts: hand the latents to this (refiner) model once `refiner_switch`
    # of the noise schedule is done (A1111's refiner_checkpoint / refiner_switch_at).
    refiner: str | None = None
    refiner_switch: float = 0.8
    # Hires fix (jaxvideo.hires.HiresFix): upscale and refine in a second img2img pass.
    hires: Any = None

    # --- video (mode "vid_gen", Wan family) ---
    # Frames to generate; Wan models round down to 4n+1 (34 -> 33) and report the real count.
    num_frames: int = 1
    # Playback rate written into the container (metadata; the model does not see it).
    fps: int = 16
    # First/last-frame-to-video: HxWx3 uint8 last frame (init_image is the first frame).
    end_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    # Flow-matching timestep shift; None = the model's own (its scheduler config).
    flow_shift: float | None = None
    # Wan 2.2: CFG scale of the low-noise expert (None = guidance_scale), the sigma at which
    # the high-noise expert hands over (None = the model's boundary_ratio), and the high-noise
    # stage's own sampling settings (HighNoiseParams; None = the same as the main ones).
    guidance_scale_2: float | None = None
    moe_boundary: float | None = None
    high_noise: Any = None
    # Continue a previous segment (jaxvideo.continuation.ContinuationState), and whether to
    # hand back a new state that continues this one.
    continuation: Any = None
    return_state: bool = False

    # --- flow-matching DiT image models (Flux.1, SD3.5) ---
    # The guidance scale guidance-distilled models embed (Flux dev / Kontext); None = the
    # model's default. `guidance_scale` stays true classifier-free guidance.
    distilled_guidance: float | None = None
    # Skip-layer guidance (SkipLayerGuidance; SD3.5): None or scale 0 = off.
    slg: Any = None
    # Reference images (HxWx3 uint8, Flux Kontext): resized to the model's preferred
    # resolution unless told not to, and placed at one shared index (side by side) or each at
    # its own index (stable-diffusion.cpp's `increase_ref_index`).
    ref_images: tuple[np.ndarray, ...] = field(default=(), compare=False, repr=False)
    auto_resize_ref_image: bool = True
    increase_ref_index: bool = False

    # Step caching (jaxvideo.sampling.cache_modes.StepCache: sd.cpp's cache_mode and
    # cache_option, or TeaCache); None = every step runs the network.
    step_cache: Any = None

    def __post_init__(self) -> None:
        check_ranges({name: getattr(self, name) for name in FIELD_RANGES})

    def seeds(self) -> list[int]:
        """One seed per image: seed, seed+1, ... (the A1111 `all_seeds` convention)."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.batch_count)]


@dataclass(frozen=True)
class HighNoiseParams:
    """Wan 2.2's high-noise stage (sd.cpp `high_noise_sample_params`). None fields inherit the
    request's own. `steps` < 0 splits the request's schedule at `moe_boundary`; a positive
    count runs that many high-noise steps before the request's `steps` low-noise ones."""

    sampler: str | None = None
    scheduler: str | None = None
    steps: int = -1
    guidance_scale: float | None = None
    eta: float | None = None
    flow_shift: float | None = None


@dataclass(frozen=True)
class SkipLayerGuidance:
    """SD3.5 skip-layer guidance (sd.cpp `slg`, diffusers' `skip_guidance_layers`): between
    `layer_start` and `layer_end` of the schedule (fractions of the steps), a third forward
    without `layers` pushes the prediction away from it by `scale`."""

    layers: tuple[int, ...] = (7, 8, 9)
    layer_start: float = 0.01
    layer_end: float = 0.2
    scale: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))


REQUEST_FIELDS = frozenset(f.name for f in dataclasses.fields(GenerationRequest))


def check_ranges(values: Mapping[str, Any]) -> None:
    """InvalidRequest naming the first field of `values` outside its static range."""
    for name, value in values.items():
        allowed = FIELD_RANGES.get(name)
        if allowed is not None and value is not None and value not in allowed:
            raise InvalidRequest(f"{name} must be {allowed.describe()}, got {value}", name)


def resolve_seed(seed: int | None) -> int:
    """A negative or missing seed draws a random one (reported back to the client)."""
    if seed is None or seed < 0:
        return secrets.randbelow(MAX_SEED + 1)
    return int(seed) % (MAX_SEED + 1)


def build_request(
    client: Mapping[str, Any],
    operator: Mapping[str, Any] | None = None,
    fallback: Mapping[str, Any] | None = None,
) -> GenerationRequest:
    """Merges the three layers (client > operator > fallback) into a GenerationRequest.

    Each mapping holds only the fields that layer really set. Unknown field names are a
    programming error in the caller and raise `InvalidRequest` naming them.
    """
    merged: dict[str, Any] = {}
    for layer in (fallback or {}, operator or {}, client):
        unknown = set(layer) - REQUEST_FIELDS
        if unknown:
            raise InvalidRequest(f"unknown request field(s): {', '.join(sorted(unknown))}")
        merged.update(layer)
    merged["seed"] = resolve_seed(merged.get("seed"))
    return GenerationRequest(**merged)
