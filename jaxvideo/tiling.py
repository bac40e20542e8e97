"""Tiled VAE decoding: decode overlapping latent tiles and feather them together.

Large images decode in bounded memory; every tile has the same shape, so one compiled decoder
serves them all. Pure numpy around a decode callable, so the web layer can import `VaeTiling`
without JAX. Overlapping borders are blended with linear ramps, so no seam shows where
tiles meet (each pixel is a weighted mean of the tiles covering it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

LATENT_SCALE = 8


@dataclass(frozen=True)
class VaeTiling:
    """Tile size in latent pixels and the fraction of a tile shared with its neighbour."""

    tile_width: int = 32
    tile_height: int = 32
    overlap: float = 0.5

    @classmethod
    def from_sdcpp(
        cls,
        tile_size_x: int = 0,
        tile_size_y: int = 0,
        target_overlap: float = 0.5,
        rel_size_x: float = 0.0,
        rel_size_y: float = 0.0,
        latent_width: int = 64,
        latent_height: int = 64,
    ) -> VaeTiling:
        """sd.cpp's `vae_tiling_params`: absolute latent tile sizes, or sizes relative to the
        latent (a fraction <= 1, or a tile count > 1); 0 means the default of 32."""

        def size(absolute: int, relative: float, extent: int) -> int:
            if absolute > 0:
                return absolute
            if 0 < relative <= 1:
                return max(8, round(extent * relative))
            if relative > 1:
                return max(8, int(np.ceil(extent / relative)))
            return 32

        return cls(
            size(tile_size_x, rel_size_x, latent_width),
            size(tile_size_y, rel_size_y, latent_height),
            float(min(max(target_overlap, 0.0), 0.9)),
        )


def _starts(extent: int, tile: int, overlap: float) -> list[int]:
    """Tile origins covering [0, extent) with about `overlap` * tile shared between neighbours."""
    if tile >= extent:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, extent - tile, stride))
    return starts + [extent - tile]


def _ramp(length: int, fade_in: int, fade_out: int) -> np.ndarray:
    """1 in the middle, rising over `fade_in` and falling over `fade_out` samples."""
    w = np.ones(length, np.float32)
    if fade_in:
        w[:fade_in] = np.arange(1, fade_in + 1, dtype=np.float32) / (fade_in + 1)
    if fade_out:
        w[length - fade_out :] = np.arange(fade_out, 0, -1, dtype=np.float32) / (fade_out + 1)
    return w


def _weights_1d(starts: list[int], tile: int, scale: int) -> list[np.ndarray]:
    """Per-tile pixel weights: ramps only where a tile overlaps the previous or next one."""
    out = []
    for i, start in enumerate(starts):
        fade_in = (starts[i - 1] + tile - start) * scale if i > 0 else 0
        fade_out = (start + tile - starts[i + 1]) * scale if i + 1 < len(starts) else 0
        out.append(_ramp(tile * scale, fade_in, fade_out))
    return out


def tiled_decode(decode: Callable[[Any], Any], latents: Any, tiling: VaeTiling) -> np.ndarray:
    """Decodes (B, h, w, c) latents tile by tile; returns (B, 8h, 8w, 3) float32 in [-1, 1]."""
    from jaxvideo.sharding import to_host  # JAX, needed only when decoding

    batch, h, w, _ = latents.shape
    th, tw = min(tiling.tile_height, h), min(tiling.tile_width, w)
    ys, xs = _starts(h, th, tiling.overlap), _starts(w, tw, tiling.overlap)
    wy, wx = _weights_1d(ys, th, LATENT_SCALE), _weights_1d(xs, tw, LATENT_SCALE)
    out = np.zeros((batch, h * LATENT_SCALE, w * LATENT_SCALE, 3), np.float32)
    total = np.zeros((1, h * LATENT_SCALE, w * LATENT_SCALE, 1), np.float32)
    for y, weight_y in zip(ys, wy, strict=True):
        for x, weight_x in zip(xs, wx, strict=True):
            tile = to_host(decode(latents[:, y : y + th, x : x + tw])).astype(np.float32)
            weight = (weight_y[:, None] * weight_x[None, :])[None, :, :, None]
            py, px = y * LATENT_SCALE, x * LATENT_SCALE
            out[:, py : py + th * LATENT_SCALE, px : px + tw * LATENT_SCALE] += tile * weight
            total[:, py : py + th * LATENT_SCALE, px : px + tw * LATENT_SCALE] += weight
    return out / total
