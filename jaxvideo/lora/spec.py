"""Shared LoRA types: the error callers catch, the request-side spec and one parsed pair."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxvideo.errors import InvalidRequest


class LoraError(InvalidRequest):
    """A LoRA cannot be found, read or applied to this model.

    A subclass of `InvalidRequest` because the caller chose the LoRA: the web layer answers it
    like any other bad request field.
    """


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: its file, its strength and (for two-expert video models) its expert."""

    path: Path
    multiplier: float
    is_high_noise: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "multiplier", float(self.multiplier))
        if not math.isfinite(self.multiplier):
            raise LoraError(f"LoRA {self.path.name}: multiplier must be finite")


@dataclass
class LoraPair:
    """One low-rank update as stored in the file, before it is matched to a parameter.

    `module` is the PyTorch module name, dotted (`down_blocks.0.attentions.0.proj_in`), or for
    kohya files its underscore form (`down_blocks_0_attentions_0_proj_in`, `kohya=True`), which
    only the model's own module list can split back into dots. `component` is `unet`,
    `text_encoder`, ... or None when the file does not say (PEFT adapters saved for one model).
    `scale` is alpha / rank (alpha / sqrt(rank) for rsLoRA), before the user's multiplier.
    """

    key: str
    component: str | None
    module: str
    kohya: bool
    down: np.ndarray
    up: np.ndarray
    scale: float
