"""Encoding generated frames (uint8 HxWx3 numpy arrays) into image files with Pillow."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from PIL import Image, PngImagePlugin

IMAGE_FORMATS = ("png", "jpeg", "webp")
IMAGE_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode_image(
    pixels: np.ndarray,
    output_format: str = "png",
    quality: int = 100,
    text: Mapping[str, str] | None = None,
) -> bytes:
    """Encodes one HxWx3 uint8 image.

    `quality` (0-100) applies to JPEG and WebP (100 means lossless WebP); PNG is always
    lossless and maps it to the zlib level. `text` becomes PNG tEXt chunks (A1111 keeps the
    generation `parameters` there).
    """
    fmt = output_format.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unsupported image format {output_format!r}")
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"expected HxWx3 uint8 pixels, got {pixels.dtype} {pixels.shape}")
    quality = int(min(max(quality, 0), 100))
    image = Image.fromarray(pixels)
    buf = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        for key, value in (text or {}).items():
            info.add_text(key, value)
        image.save(buf, format="PNG", pnginfo=info, compress_level=6)
    elif fmt == "jpeg":
        image.save(buf, format="JPEG", quality=max(quality, 1))
    else:
        if quality >= 100:
            image.save(buf, format="WEBP", lossless=True)
        else:
            image.save(buf, format="WEBP", quality=quality)
    return buf.getvalue()


def resize_image(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxWx3 or HxW uint8 resized to (height, width) with Lanczos; unchanged if it fits."""
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS))
