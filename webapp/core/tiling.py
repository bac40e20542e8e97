"""`vae_tiling_params` (sdcpp, and inside `sd_cpp_extra_args`) -> `jaxvideo.tiling.VaeTiling`.

Tile sizes may be relative to the latent (`rel_size_x`: a fraction, or a tile count), and the
final width/height are only known after the merge with operator and family defaults, so the
translation keeps the client's numbers in a `TilingRequest`, a deferred field that
`Service.resolve` settles into a `VaeTiling` once the size is final (`resolve_tiling`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from jaxvideo.config import ServerConfig
from jaxvideo.request import GenerationRequest
from jaxvideo.tiling import LATENT_SCALE, VaeTiling
from webapp.core.errors import invalid

# Overlapping tiles decode some latent pixels several times (about 4x at overlap 0.5); more
# than this multiple of the image is refused, so tiny tiles with a large overlap cannot turn
# one request into thousands of decoder calls.
MAX_DECODE_FACTOR = 8.0
MIN_TILE = 8  # latent pixels; smaller tiles have no room for the decoder's receptive field


@dataclass(frozen=True)
class TilingRequest:
    """The client's `vae_tiling_params` (enabled), waiting for the final image size."""

    tile_size_x: int = 0
    tile_size_y: int = 0
    target_overlap: float = 0.5
    rel_size_x: float = 0.0
    rel_size_y: float = 0.0
    param: str = field(default="vae_tiling_params", compare=False)

    def settle(self, request: GenerationRequest, limits: ServerConfig) -> GenerationRequest:
        """`request` (holding this) with the `VaeTiling` for its final size."""
        return resolve_tiling(request)


def tiling_field(params: Mapping[str, Any] | None, param: str = "vae_tiling_params"):
    """Schema-loaded `vae_tiling_params` -> a `TilingRequest`, or None when not enabled."""
    if not params or not params.get("enabled"):
        return None
    for key in ("tile_size_x", "tile_size_y"):
        size = params.get(key, 0)
        if size != 0 and size < MIN_TILE:
            raise invalid(
                f"{param}.{key}", f"must be 0 (default) or at least {MIN_TILE}, got {size}"
            )
    for key in ("rel_size_x", "rel_size_y"):
        if params.get(key, 0.0) < 0:
            raise invalid(f"{param}.{key}", f"must be >= 0, got {params[key]}")
    overlap = params.get("target_overlap", 0.5)
    if not 0.0 <= overlap < 1.0:
        raise invalid(f"{param}.target_overlap", f"must be within [0, 1), got {overlap}")
    keys = ("tile_size_x", "tile_size_y", "target_overlap", "rel_size_x", "rel_size_y")
    return TilingRequest(**{key: params[key] for key in keys if key in params}, param=param)


def resolve_tiling(request: GenerationRequest) -> GenerationRequest:
    """Replaces a `TilingRequest` by the `VaeTiling` for the request's final size."""
    asked = request.vae_tiling
    if not isinstance(asked, TilingRequest):
        return request
    latent_w, latent_h = request.width // LATENT_SCALE, request.height // LATENT_SCALE
    tiling = VaeTiling.from_sdcpp(
        asked.tile_size_x,
        asked.tile_size_y,
        asked.target_overlap,
        asked.rel_size_x,
        asked.rel_size_y,
        latent_width=latent_w,
        latent_height=latent_h,
    )
    decoded = _decoded(latent_w, tiling.tile_width, tiling.overlap) * _decoded(
        latent_h, tiling.tile_height, tiling.overlap
    )
    if decoded > MAX_DECODE_FACTOR * latent_w * latent_h:
        raise invalid(
            asked.param,
            f"{tiling.tile_width}x{tiling.tile_height} tiles at overlap {tiling.overlap:g} "
            f"would decode {decoded / (latent_w * latent_h):.0f}x the image; use larger tiles "
            "or less overlap",
        )
    return replace(request, vae_tiling=tiling)


def _decoded(extent: int, tile: int, overlap: float) -> int:
    """Latent pixels decoded along one axis (mirrors `jaxvideo.tiling`'s tile placement)."""
    tile = min(tile, extent)
    if tile >= extent:
        return extent
    stride = max(1, int(tile * (1 - overlap)))
    return (math.ceil((extent - tile) / stride) + 1) * tile
