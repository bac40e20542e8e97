"""Hires fix settings (A1111's enable_hr): a second img2img pass at a larger size.

Kept free of JAX so the web layer can build it from request fields.
"""

from __future__ import annotations

from dataclasses import dataclass

UPSCALERS = ("latent", "latent-nearest", "lanczos")


@dataclass(frozen=True)
class HiresFix:
    """Target size in pixels, second-pass steps (0 = as many as the first) and strength."""

    width: int
    height: int
    steps: int = 0
    strength: float = 0.7
    upscaler: str = "latent"

    def __post_init__(self) -> None:
        if self.upscaler not in UPSCALERS:
            raise ValueError(f"unknown hires upscaler {self.upscaler!r}; one of {UPSCALERS}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError("hires strength must be within (0, 1]")
        if self.width % 8 or self.height % 8:
            raise ValueError("hires width and height must be multiples of 8")
