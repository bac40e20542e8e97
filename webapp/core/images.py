"""Client images (base64, data URLs, uploaded files) -> numpy uint8 arrays for the library.

Every image field of every surface is decoded here, so the limits hold everywhere:

- the encoded payload may not exceed `max_body_bytes`, checked before base64 decoding;
- the picture may not exceed `max_width` x `max_height`, checked on the header Pillow reads in
  `Image.open`, before any pixel data is decompressed (`load()`); more pixels than Pillow's
  `MAX_IMAGE_PIXELS` (its decompression-bomb threshold) are refused the same way;
- only PNG, JPEG, WebP, BMP and GIF are opened (a small decoder surface on untrusted input).

Any failure is a 400 naming the request field. Channel rules (seeds/sdcpp-server-api.md):

- `rgb` (init images): 3 channels. Transparent pixels are composited onto white, as A1111 does
  for img2img inputs (`img2img_background_color`), rather than dropped: the colour under a
  transparent pixel is arbitrary (often black), white is what a viewer shows.
- `mask` (sdapi, sdcpp; 255 = repaint): a mask with transparency is its alpha channel (opaque =
  repaint, A1111's rule for painted masks); any other mask is its luminance (white = repaint).
- `openai_mask` (OpenAI edits): transparent pixels mark the region to edit, so the mask is
  `255 - alpha`; a mask without an alpha channel falls back to luminance (white = edit), as in
  stable-diffusion.cpp. The pipeline repaints where the result is >= 128.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from jaxvideo.config import ServerConfig
from webapp.core.errors import ApiError, invalid

__all__ = ["ImageKind", "decode_image", "fit_size", "payload_bytes"]

log = logging.getLogger(__name__)

ImageKind = Literal["rgb", "mask", "openai_mask"]
# "JPEG" also opens camera JPEGs with extra frames (Pillow reports those as MPO).
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
_DATA_URL = re.compile(r"data:([^,]*),", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_ALPHA_MODES = frozenset(("RGBA", "RGBa", "LA", "La", "PA"))


def decode_image(
    source: str | bytes, param: str, limits: ServerConfig, kind: ImageKind = "rgb"
) -> np.ndarray:
    """A base64 string / data URL (str) or file contents (bytes) -> HxWx3 (`rgb`) or HxW
    (masks) uint8. Raises a 400 `ApiError` naming `param` for anything unusable."""
    data = source if isinstance(source, bytes) else payload_bytes(source, param, limits)
    image = open_image(data, param, limits)
    if kind == "rgb":
        return to_rgb(image)
    return to_mask(image, transparent_edits=kind == "openai_mask")


def payload_bytes(text: str, param: str, limits: ServerConfig) -> bytes:
    """Raw base64 or a `data:<type>;base64,` URL -> the encoded file's bytes."""
    # Base64 grows data by 4/3: refuse what cannot fit before spending any work on it.
    if len(text) * 3 // 4 > limits.max_body_bytes:
        raise _too_large(param, f"more than {limits.max_body_bytes} bytes encoded")
    match = _DATA_URL.match(text.lstrip())
    if match:
        if not match.group(1).lower().endswith(";base64"):
            raise invalid(param, "data URLs must be base64-encoded", code="invalid_image")
        text = text.lstrip()[match.end() :]
    # Clients wrap base64 in lines and some use the URL-safe alphabet; both are harmless.
    compact = _WHITESPACE.sub("", text).translate(str.maketrans("-_", "+/"))
    if not compact:
        raise invalid(param, "empty image", code="invalid_image")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(param, f"invalid base64 ({exc})", code="invalid_image") from exc


def open_image(data: bytes, param: str, limits: ServerConfig) -> Image.Image:
    """Reads the header, checks the size, then decodes the pixels (first frame)."""
    if len(data) > limits.max_body_bytes:
        raise _too_large(param, f"more than {limits.max_body_bytes} bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # header only
    except Image.DecompressionBombError as exc:
        raise _too_large(param, str(exc)) from exc
    except Exception as exc:  # Pillow reports unreadable input with many exception types
        raise _undecodable(param, "not a PNG, JPEG, WebP, BMP or GIF image", exc) from exc
    width, height = image.size
    if width > limits.max_width or height > limits.max_height:
        raise _too_large(
            param, f"{width}x{height}, the limit is {limits.max_width}x{limits.max_height}"
        )
    # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; turning the warning into an
    # error needs the process-wide warnings filter, which is not thread-safe, so check here.
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise _too_large(param, f"{width}x{height} pixels could be a decompression bomb")
    try:
        image.load()
        # Phone photos store their orientation in EXIF; apply it as every viewer does.
        return ImageOps.exif_transpose(image)
    except Exception as exc:
        raise _undecodable(param, "truncated or corrupt image data", exc) from exc


def to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8, transparency composited onto white."""
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(_eight_bit(image).convert("RGB"), dtype=np.uint8)


def to_mask(image: Image.Image, *, transparent_edits: bool = False) -> np.ndarray:
    """HxW uint8, 255 = repaint (see the module docstring for the two conventions)."""
    if _has_alpha(image):
        alpha = np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.uint8)
        if transparent_edits:
            return 255 - alpha
        if alpha.min() < 255:  # an opaque RGBA mask carries its meaning in the colours
            return alpha
    return np.asarray(_eight_bit(image).convert("L"), dtype=np.uint8)


def fit_size(width: int, height: int, limits: ServerConfig) -> tuple[int, int]:
    """An image's size as a generation size: rounded down to a multiple of 8 (the latent
    grid) and clamped into the configured limits."""

    def fit(value: int, low: int, high: int) -> int:
        return min(max(value // 8 * 8, -(-low // 8) * 8), high // 8 * 8)

    return (
        fit(width, limits.min_width, limits.max_width),
        fit(height, limits.min_height, limits.max_height),
    )


def _has_alpha(image: Image.Image) -> bool:
    # Palette and RGB/L images can carry transparency in `info` (PNG tRNS, GIF).
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _eight_bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer images (16-bit grayscale PNGs) scaled, not clipped, to 8 bits."""
    if not image.mode.startswith("I"):
        return image
    values = np.asarray(image).astype(np.int64)
    scaled = np.clip((values * 255 + 32767) // 65535, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def _too_large(param: str, detail: str) -> ApiError:
    return invalid(param, f"image too large ({detail})", code="image_too_large")


def _undecodable(param: str, problem: str, exc: Exception) -> ApiError:
    # Pillow's own messages name internal objects; the log keeps them, the client gets ours.
    log.debug("undecodable image in %s: %r", param, exc)
    return invalid(param, f"cannot decode image: {problem}", code="invalid_image")
