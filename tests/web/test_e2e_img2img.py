"""img2img and inpainting on every surface, against the real server with real clients."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import openai
import pytest
from PIL import Image

SEED = 21


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def b64(pixels: np.ndarray) -> str:
    return base64.b64encode(png(pixels)).decode("ascii")


def noise(seed: int, width: int = 64, height: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def half_mask(width: int = 64, height: int = 64) -> np.ndarray:
    """White (repaint) on the left half, black (keep) on the right."""
    mask = np.zeros((height, width), np.uint8)
    mask[:, : width // 2] = 255
    return mask


def pixels(b64_image: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64_image))).convert("RGB"))


def img2img(server, **body) -> dict:
    body = {"prompt": "a harbour", "seed": SEED, "steps": 2, **body}
    body.setdefault("init_images", [b64(noise(1))])
    response = server.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def image_of(body: dict) -> np.ndarray:
    return pixels(body["images"][0])


# -- sdapi ------------------------------------------------------------------------------------


def test_sdapi_img2img_differs_from_txt2img_and_from_another_init_image(server):
    first = img2img(server, width=64, height=64, denoising_strength=0.5)
    assert image_of(first).shape == (64, 64, 3)
    info = json.loads(first["info"])
    assert (info["seed"], info["denoising_strength"]) == (SEED, 0.5)
    assert "Denoising strength: 0.5" in info["infotexts"][0]
    # A1111 leaves the (large) inputs out of the echoed parameters.
    assert first["parameters"]["init_images"] is None
    assert first["parameters"]["denoising_strength"] == 0.5

    txt = server.post("/sdapi/v1/txt2img", json={"prompt": "a harbour", "seed": SEED, "steps": 2})
    other = img2img(server, init_images=[b64(noise(2))], denoising_strength=0.5)
    assert not np.array_equal(image_of(first), pixels(txt.json()["images"][0]))
    assert not np.array_equal(image_of(first), image_of(other))


def test_sdapi_size_defaults_to_the_init_image_rounded_down_to_8(server):
    # 70x67 -> 64x64 (also the operator default here, so the compiled shapes are reused; the
    # unit tests cover sizes that differ from the defaults).
    body = img2img(server, init_images=[b64(noise(3, 70, 67))])
    assert image_of(body).shape == (64, 64, 3)
    assert json.loads(body["info"])["denoising_strength"] == 0.75  # the default


def test_denoising_strength_zero_is_deterministic_and_differs_from_one(server):
    zero = img2img(server, denoising_strength=0)
    again = img2img(server, denoising_strength=-3)  # clamped to 0
    full = img2img(server, denoising_strength=1)
    assert np.array_equal(image_of(zero), image_of(again))
    assert not np.array_equal(image_of(zero), image_of(full))


def test_a_mask_changes_the_output_and_inverting_it_too(server):
    plain = img2img(server, denoising_strength=0.75)
    mask = b64(np.stack([half_mask()] * 3, -1))  # an RGB mask works: its luminance counts
    masked = img2img(server, mask=mask, denoising_strength=0.75, mask_blur=4, inpainting_fill=1)
    inverted = img2img(server, mask=mask, denoising_strength=0.75, inpainting_mask_invert=1)
    assert not np.array_equal(image_of(plain), image_of(masked))
    assert not np.array_equal(image_of(masked), image_of(inverted))


def test_data_urls_and_raw_base64_are_both_accepted(server):
    raw = img2img(server, init_images=[b64(noise(4))], denoising_strength=0)
    url = img2img(
        server, init_images=["data:image/png;base64," + b64(noise(4))], denoising_strength=0
    )
    assert np.array_equal(image_of(raw), image_of(url))


def test_sdapi_image_errors_name_the_field(server):
    def error(**body) -> str:
        body = {"prompt": "x", "init_images": [b64(noise(1))], **body}
        response = server.post("/sdapi/v1/img2img", json=body)
        assert response.status_code == 400, response.text
        return response.json()["error"]

    assert error(init_images=["aGVsbG8="]).startswith("init_images[0]: cannot decode image")
    assert error(init_images=["%%%"]).startswith("init_images[0]: invalid base64")
    assert error(init_images=[]).startswith("init_images:")
    assert error(mask="bm90IGEgbWFzaw==").startswith("mask: cannot decode image")
    too_big = error(init_images=[b64(noise(5, 520, 64))])
    assert too_big.startswith("init_images[0]: image too large (520x64, the limit is 512x512)")
    assert error(inpainting_mask_invert=2).startswith("inpainting_mask_invert:")


# -- OpenAI -----------------------------------------------------------------------------------


def test_sdk_edits_with_and_without_a_mask(client, tmp_path):
    image = tmp_path / "image.png"
    image.write_bytes(png(noise(6, 96, 96)))  # resized to the requested size by the pipeline
    alpha = 255 - half_mask(96, 96)  # transparent (edit) on the left half
    mask = tmp_path / "mask.png"
    Image.fromarray(np.dstack([noise(7, 96, 96), alpha])).save(mask)

    extra = {"seed": SEED, "steps": 2}
    with open(image, "rb") as file:
        plain = client.images.edit(image=file, prompt="a boat", size="64x64", extra_body=extra)
    with open(image, "rb") as file, open(mask, "rb") as mask_file:
        masked = client.images.edit(
            image=file, mask=mask_file, prompt="a boat", size="64x64", extra_body=extra
        )
    # Several images (sent as image[]): the first one is used.
    with open(image, "rb") as file, open(mask, "rb") as second:
        several = client.images.edit(
            image=[file, second], prompt="a boat", size="64x64", extra_body=extra
        )
    assert several.data[0].b64_json == plain.data[0].b64_json
    for response in (plain, masked):
        decoded = Image.open(io.BytesIO(base64.b64decode(response.data[0].b64_json)))
        assert (decoded.format, decoded.size, decoded.mode) == ("PNG", (64, 64), "RGB")
        assert response.output_format == "png"
    assert plain.data[0].b64_json != masked.data[0].b64_json


def test_sdk_edit_errors_use_the_openai_envelope(client, server):
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(image=("x.png", b"not an image", "image/png"), prompt="x")
    assert info.value.body["param"] == "image"
    assert "cannot decode image" in info.value.body["message"]

    response = server.post("/v1/images/edits", json={"prompt": "x", "image": b64(noise(1))})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_content_type"
    assert "multipart/form-data" in error["message"]
    assert response.headers["x-should-retry"] == "false"


# -- sdcpp ------------------------------------------------------------------------------------


def test_sdcpp_img_gen_with_init_and_mask_completes(server):
    body = {
        "prompt": "a harbour",
        "seed": SEED,
        "strength": 0.6,
        "init_image": b64(noise(8)),
        "mask_image": "data:image/png;base64," + b64(half_mask()),
        "sample_params": {"sample_steps": 2},
    }
    response = server.post("/sdcpp/v1/img_gen", json=body)
    assert response.status_code == 202, response.text
    done = server.poll(response.json()["id"], until=("completed", "failed", "cancelled"))[-1]
    assert done["status"] == "completed", done
    assert pixels(done["result"]["images"][0]["b64_json"]).shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"init_image": "aGVsbG8="}, "init_image"),
        ({"init_image": "data:image/png;base64,@@@"}, "init_image"),
        ({"mask_image": "aGVsbG8="}, "mask_image"),
        ({"strength": 1.5}, "strength"),
        ({"control_image": "aGVsbG8="}, "control_image"),
    ],
)
def test_sdcpp_image_errors_name_the_field(server, body, field):
    response = server.post("/sdcpp/v1/img_gen", json={"prompt": "x", **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(field)


def test_sdcpp_mask_without_init_image_is_a_400(server):
    response = server.post("/sdcpp/v1/img_gen", json={"mask_image": b64(half_mask())})
    assert response.status_code == 400
    assert response.json()["error"] == "mask_image: a mask needs an init image"
