"""What the engine hands back: decoded uint8 frames plus the facts a surface reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxvideo.families import FamilySpec, family


@dataclass(frozen=True)
class ModelInfo:
    """A served model as the API surfaces describe it."""

    name: str
    family: str
    path: str
    modes: tuple[str, ...]
    created: int
    dtype: str = "fp32"
    # What this model really supports, per mode ("img_gen", "vid_gen"): sampler and schedule
    # names, and sd.cpp feature flags (init_image, end_image, lora, ...) that are true.
    samplers: tuple[str, ...] = ()
    schedulers: tuple[str, ...] = ()
    features: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The step-cache modes its denoiser supports (jaxvideo.sampling.cache_modes).
    cache_modes: tuple[str, ...] = ()
    # Width and height must be multiples of this (SD: the VAE's 8; Wan: 8 x its 2x2 patches).
    size_multiple: int = 8
    # Videos have k * frame_multiple + 1 frames (Wan's causal VAE: 4n + 1); 1 = any count.
    frame_multiple: int = 1
    # Image-to-video models cannot start without a first frame (init_image or a continuation).
    needs_init_image: bool = False
    # The request fields this model gets unless the client or the operator set them (its
    # family's defaults, with the model folder's own on top).
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family_spec(self) -> FamilySpec:
        return family(self.family)

    def frames_for(self, requested: int) -> int:
        """The frame count a video will really have: the largest k * frame_multiple + 1 not
        above `requested` (Wan: 34 -> 33, 32 -> 29), at least 1."""
        return round_frames(requested, self.frame_multiple)


def round_frames(requested: int, multiple: int) -> int:
    return max(1, (requested - 1) // multiple * multiple + 1)


@dataclass
class GenerationResult:
    """`images`: one HxWx3 uint8 array per output image; `seeds`: the seed of each.

    A video request fills `videos` instead: one (F, H, W, 3) uint8 array per video, with the
    real frame count in `info["frame_count"]` and the playback rate in `fps`. `state` is the
    JSON form of a ContinuationState when the request asked for one (`return_state`).
    """

    images: list[np.ndarray]
    seeds: list[int]
    info: dict[str, Any] = field(default_factory=dict)
    videos: list[np.ndarray] = field(default_factory=list)
    fps: int | None = None
    state: dict[str, Any] | None = None
