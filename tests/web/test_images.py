"""The image decoding helper: payload parsing, limits checked before decoding, channel rules."""

from __future__ import annotations

import base64
import io
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxvideo.config import ServerConfig
from webapp.core.errors import ApiError
from webapp.core.images import decode_image, fit_size

LIMITS = ServerConfig(output_dir="/tmp", min_width=64, max_width=128, min_height=64, max_height=96)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    return base64.b64encode(encode(image, fmt)).decode("ascii")


def rejects(source, param: str = "init_image", limits: ServerConfig = LIMITS, **kw) -> str:
    with pytest.raises(ApiError) as info:
        decode_image(source, param, limits, **kw)
    assert info.value.status == 400 and info.value.param == param
    return info.value.message


# -- payloads ---------------------------------------------------------------------------------


def test_raw_base64_data_urls_and_file_bytes_decode_alike():
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    text = b64(image)
    expected = np.asarray(image)
    for source in (
        text,
        f"data:image/png;base64,{text}",
        f"DATA:image/png;charset=x;base64,{text}",
        "\n".join(text[i : i + 10] for i in range(0, len(text), 10)),  # wrapped lines
        text.rstrip("="),  # missing padding
        encode(image),  # an uploaded file's bytes
    ):
        decoded = decode_image(source, "init_image", LIMITS)
        assert decoded.dtype == np.uint8 and np.array_equal(decoded, expected)


def test_bad_payloads_name_the_field():
    assert "invalid base64" in rejects("not base64 at all!")
    assert "data URLs must be base64" in rejects("data:image/png,%89PNG")
    assert "empty image" in rejects("   ")
    assert "cannot decode image" in rejects(base64.b64encode(b"hello").decode())
    assert "cannot decode image" in rejects(b"")


def test_formats_outside_the_allowed_set_are_refused():
    tiff = encode(Image.new("RGB", (8, 8)), "TIFF")
    assert "not a PNG, JPEG, WebP, BMP or GIF" in rejects(tiff, "image")


def test_truncated_pixel_data_is_a_400():
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    assert "truncated or corrupt" in rejects(data[: len(data) // 2])


# -- limits, checked before any decoding ------------------------------------------------------


def test_encoded_size_is_checked_before_base64_decoding():
    limits = ServerConfig(output_dir="/tmp", max_body_bytes=1000)
    # Invalid base64 too: the size check must come first to answer "too large".
    assert "image too large" in rejects("!" * 2000, limits=limits)


def test_pixel_size_is_checked_on_the_header_before_pixels_are_decoded(monkeypatch):
    data = encode(Image.new("RGB", (129, 8)))
    tall = encode(Image.new("L", (8, 97)))

    def no_decoding(self):
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    assert "image too large (129x8, the limit is 128x96)" in rejects(data)
    assert "image too large" in rejects(tall, "mask", kind="mask")


def test_a_header_promising_a_huge_image_is_refused_without_its_pixels():
    # A 100000x100000 PNG header with an empty IDAT: nothing that could be decompressed.
    def chunk(kind: bytes, body: bytes) -> bytes:
        size, crc = len(body).to_bytes(4, "big"), zlib.crc32(kind + body).to_bytes(4, "big")
        return size + kind + body + crc

    header = (100000).to_bytes(4, "big") * 2 + bytes((8, 0, 0, 0, 0))
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"")
    message = rejects(
        data, limits=ServerConfig(output_dir="/tmp", max_width=10**6, max_height=10**6)
    )
    assert "image too large" in message


def test_decompression_bomb_threshold_is_a_400(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert "decompression bomb" in rejects(encode(Image.new("RGB", (16, 16))))


# -- channels ---------------------------------------------------------------------------------


def test_init_images_become_rgb_with_transparency_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: kept
    rgba[0, 1] = (10, 20, 30, 0)  # transparent: white
    rgba[1, 0] = (0, 0, 0, 128)  # half: blended with white
    decoded = decode_image(encode(Image.fromarray(rgba)), "init_image", LIMITS)
    assert decoded.shape == (2, 2, 3)
    assert decoded[0, 0].tolist() == [10, 20, 30]
    assert decoded[0, 1].tolist() == [255, 255, 255]
    assert 120 <= decoded[1, 0, 0] <= 135
    gray = decode_image(encode(Image.new("L", (3, 2), 77)), "init_image", LIMITS)
    assert gray.shape == (2, 3, 3) and (gray == 77).all()
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    decoded = decode_image(encode(palette), "init_image", LIMITS)
    assert decoded[0].tolist() == [[255, 255, 255], [0, 255, 0]]


def test_masks_are_one_channel_luminance_or_alpha():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0] = 255
    mask = decode_image(b64(Image.fromarray(rgb)), "mask", LIMITS, kind="mask")
    assert mask.shape == (2, 2) and mask.tolist() == [[255, 255], [0, 0]]
    # A painted mask with transparency: its alpha is the mask (A1111), whatever the colour.
    strokes = np.zeros((2, 2, 4), np.uint8)
    strokes[0, 0] = (255, 0, 0, 255)
    mask = decode_image(encode(Image.fromarray(strokes)), "mask", LIMITS, kind="mask")
    assert mask.tolist() == [[255, 0], [0, 0]]
    # Fully opaque RGBA: the colours count.
    opaque = np.dstack([rgb, np.full((2, 2), 255, np.uint8)])
    mask = decode_image(encode(Image.fromarray(opaque)), "mask", LIMITS, kind="mask")
    assert mask.tolist() == [[255, 255], [0, 0]]


def test_openai_masks_edit_where_transparent():
    rgba = np.full((2, 2, 4), 255, np.uint8)
    rgba[:, 0, 3] = 0
    mask = decode_image(encode(Image.fromarray(rgba)), "mask", LIMITS, kind="openai_mask")
    assert mask.tolist() == [[255, 0], [255, 0]]
    # Without alpha, white means edit (stable-diffusion.cpp's convention).
    gray = np.array([[255, 0]], np.uint8)
    mask = decode_image(encode(Image.fromarray(gray)), "mask", LIMITS, kind="openai_mask")
    assert mask.tolist() == [[255, 0]]


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    deep = Image.fromarray(np.array([[0, 32768, 65535]], np.uint16))
    assert decode_image(encode(deep), "mask", LIMITS, kind="mask").tolist() == [[0, 128, 255]]


def test_jpeg_and_webp_decode_to_rgb():
    for fmt in ("JPEG", "WEBP"):
        decoded = decode_image(b64(Image.new("RGB", (8, 8), (200, 10, 10)), fmt), "x", LIMITS)
        assert decoded.shape == (8, 8, 3) and decoded[4, 4, 0] > 150


def test_fit_size_rounds_down_to_8_within_the_limits():
    assert fit_size(100, 77, LIMITS) == (96, 72)
    assert fit_size(30, 30, LIMITS) == (64, 64)  # below the minimum
    assert fit_size(500, 500, LIMITS) == (128, 96)  # above the maximum
