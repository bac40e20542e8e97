"""What the engine hands back: decoded uint8 frames plus the facts a surface reports."""

from __future__ import annotations

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


@dataclass
class GenerationResult:
    """`images`: one HxWx3 uint8 array per output image; `seeds`: the seed of each."""

    images: list[np.ndarray]
    seeds: list[int]
    info: dict[str, Any] = field(default_factory=dict)
