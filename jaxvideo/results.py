"""What the engine hands back: decoded uint8 frames plus the facts a surface reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
