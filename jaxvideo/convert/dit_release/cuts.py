"""Cutting fused original tensors into diffusers tensors, and the original layouts' key sets.

`ldm.keys.Source` already cuts OpenCLIP's fused q/k/v (`op="qkv"`: thirds of `width` rows, the
last third taking the rest, as `torch.chunk(t, 3)` of a well-shaped tensor). The DiT releases
need two more cuts, both from diffusers' single-file converters:

* "qkv_mlp": Flux's single blocks fuse q, k, v and the MLP input in `linear1`;
  diffusers splits it `(inner, inner, inner, mlp)` rows: three `width`-row blocks, then the rest;
* "swap": the final adaptive norms of the original code emit (shift, scale) where diffusers'
  `AdaLayerNormContinuous` reads (scale, shift): the two halves of the rows change places;
* "eye": no file tensor, an identity matrix as wide as the source's last axis (diffusers gives
  SD3's bundled CLIP-L an identity `text_projection`).

A slice that leaves a wrong number of rows is caught by the shape check that follows, which
names the file key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from jaxvideo.convert.ldm.keys import Plan, Source

WB = ("weight", "bias")


@dataclass(frozen=True)
class Cut(Source):
    """A `Source` with the DiT cuts ("qkv_mlp", "swap", "eye") besides `Source`'s own."""

    def cut(self, t: np.ndarray) -> np.ndarray:
        if self.op == "qkv_mlp":
            stop = (self.part + 1) * self.width if self.part < 3 else None
            return t[self.part * self.width : stop]
        if self.op == "swap":
            half = t.shape[0] // 2
            return np.concatenate([t[half:], t[:half]])
        if self.op == "eye":
            return np.eye(t.shape[-1], dtype=np.float32)
        return super().cut(t)


def with_cuts(plan: Plan) -> Plan:
    """`build_plan`'s sources (which only know `Source`'s ops) as `Cut`s."""
    return {name: Cut(**dataclasses.asdict(src)) for name, src in plan.items()}


def layout(prefix: str, linears: Iterable[str], others: Iterable[str] = ()) -> set[str]:
    """Keys of an original layout part: each Linear's weight and bias, then single tensors."""
    return {f"{prefix}{m}.{p}" for m in linears for p in WB} | {prefix + k for k in others}
