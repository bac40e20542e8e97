"""A1111's hires fix (`enable_hr`, `hr_scale`, `hr_resize_x/y`, `hr_upscaler`,
`hr_second_pass_steps`, `denoising_strength`) -> `jaxvideo.hires.HiresFix`.

The target size may be a scale of the first pass, whose size is only final after the merge with
operator and family defaults, so the translation keeps a `HiresRequest`, a deferred field that
`Service.resolve` settles (`resolve_hires`), as for VAE tiling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from jaxvideo.config import ServerConfig
from jaxvideo.hires import HiresFix
from jaxvideo.request import GenerationRequest
from webapp.core.errors import invalid

# A1111 upscaler names -> jaxvideo's; GAN upscalers (ESRGAN, ...) are not available.
UPSCALERS = {
    "latent": "latent",
    "latent (bilinear)": "latent",
    "latent (antialiased)": "latent",
    "latent (bicubic)": "latent",
    "latent (nearest)": "latent-nearest",
    "latent (nearest-exact)": "latent-nearest",
    "lanczos": "lanczos",
    "none": "lanczos",
}


@dataclass(frozen=True)
class HiresRequest:
    scale: float = 2.0
    resize_x: int = 0
    resize_y: int = 0
    steps: int = 0
    strength: float = 0.7
    upscaler: str = "latent"

    def settle(self, request: GenerationRequest, limits: ServerConfig) -> GenerationRequest:
        """`request` (holding this) with the `HiresFix` for its final size."""
        return resolve_hires(request, limits)


def hires_field(data: Mapping[str, Any]) -> HiresRequest | None:
    """The hires settings of a txt2img payload, or None when `enable_hr` is not set."""
    if not data.get("enable_hr"):
        return None
    name = str(data.get("hr_upscaler") or "latent").strip().lower()
    if name not in UPSCALERS:
        raise invalid(
            "hr_upscaler", f"unknown upscaler {data['hr_upscaler']!r}; one of {sorted(UPSCALERS)}"
        )
    scale = float(data.get("hr_scale") or 2.0)
    if not 1.0 <= scale <= 4.0:
        raise invalid("hr_scale", f"must be within [1, 4], got {scale}")
    steps = int(data.get("hr_second_pass_steps") or 0)
    if steps < 0:
        raise invalid("hr_second_pass_steps", f"must be >= 0, got {steps}")
    strength = float(data["denoising_strength"]) if "denoising_strength" in data else 0.7
    if not 0.0 < strength <= 1.0:
        raise invalid("denoising_strength", f"must be within (0, 1] for hires, got {strength}")
    return HiresRequest(
        scale,
        int(data.get("hr_resize_x") or 0),
        int(data.get("hr_resize_y") or 0),
        steps,
        strength,
        UPSCALERS[name],
    )


def resolve_hires(request: GenerationRequest, limits: ServerConfig) -> GenerationRequest:
    """Replaces a `HiresRequest` by the `HiresFix` for the first pass's final size."""
    hires = request.hires
    if not isinstance(hires, HiresRequest):
        return request
    if request.init_image is not None:
        raise invalid("enable_hr", "the hires fix applies to txt2img only")
    width = hires.resize_x or int(request.width * hires.scale)
    height = hires.resize_y or int(request.height * hires.scale)
    width, height = width // 8 * 8, height // 8 * 8
    if not (limits.min_width <= width <= limits.max_width) or not (
        limits.min_height <= height <= limits.max_height
    ):
        raise invalid(
            "hr_scale",
            f"hires size {width}x{height} is outside the server's limits "
            f"({limits.max_width}x{limits.max_height} at most)",
        )
    if hires.steps > limits.max_steps:
        raise invalid("hr_second_pass_steps", f"must be <= {limits.max_steps}")
    fix = HiresFix(width, height, hires.steps, hires.strength, hires.upscaler)
    return replace(request, hires=fix)
