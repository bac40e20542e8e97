"""Image inputs through each surface's translation: which fields the client really sent."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from marshmallow import EXCLUDE
from PIL import Image

from jaxvideo.config import ServerConfig
from jaxvideo.request import build_request
from webapp.core.capabilities import Capabilities
from webapp.core.errors import ApiError
from webapp.core.schemas import load
from webapp.core.service import init_image_size as image_fields
from webapp.openai.edits import EditUpload, edit_fields
from webapp.openai.translate import openai_fields
from webapp.sdapi.schemas import Img2ImgSchema
from webapp.sdapi.translate import sdapi_fields
from webapp.sdcpp.schemas import ImgGenSchema
from webapp.sdcpp.translate import sdcpp_fields

CAPS = Capabilities(
    ("euler", "euler_a"),
    ("discrete", "karras"),
    ServerConfig(output_dir="/tmp", max_width=512, max_height=512),
)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def b64(pixels: np.ndarray) -> str:
    return base64.b64encode(png(pixels)).decode("ascii")


INIT = np.random.default_rng(0).integers(0, 256, (77, 100, 3), dtype=np.uint8)
MASK = np.zeros((77, 100), np.uint8)
MASK[:, :50] = 255


def sdapi(body):
    return sdapi_fields(load(Img2ImgSchema(), body, unknown=EXCLUDE), CAPS, img2img=True)


def sdcpp(body):
    return sdcpp_fields(load(ImgGenSchema(), body), CAPS)


def rejects(call, *args) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args)
    assert info.value.status == 400
    return info.value


def block(args: dict) -> str:
    return f"<sd_cpp_extra_args>{json.dumps(args)}</sd_cpp_extra_args>"


# -- sizes ------------------------------------------------------------------------------------


def test_unsent_size_is_the_init_images_rounded_down_and_wins_over_defaults():
    fields = image_fields({"init_image": INIT}, CAPS)
    assert (fields["width"], fields["height"]) == (96, 72)
    request = build_request(fields, {"width": 64, "height": 64}, {"width": 512, "height": 512})
    assert (request.width, request.height) == (96, 72)
    # What the client sent wins, one dimension at a time.
    fields = image_fields({"init_image": INIT, "width": 256}, CAPS)
    assert (fields["width"], fields["height"]) == (256, 72)
    # No init image: nothing is added.
    assert image_fields({"prompt": "x"}, CAPS) == {"prompt": "x"}


def test_a_mask_without_an_init_image_names_the_surface_field():
    err = rejects(image_fields, {"mask_image": MASK}, CAPS, {"mask_image": "mask"})
    assert err.param == "mask" and err.message == "mask: a mask needs an init image"


# -- sdapi ------------------------------------------------------------------------------------


def test_sdapi_img2img_fields():
    fields, _ = sdapi(
        {
            "prompt": "p",
            "init_images": [b64(INIT), "ignored: only the first image is used"],
            "mask": b64(MASK),
            "denoising_strength": 0.4,
            "resize_mode": 1,
            "mask_blur": 4,
            "inpainting_fill": 1,
            "inpaint_full_res": False,
        }
    )
    assert np.array_equal(fields["init_image"], INIT)
    assert np.array_equal(fields["mask_image"], MASK)
    assert fields["strength"] == 0.4
    assert "width" not in fields  # filled from the image when resolved


@pytest.mark.parametrize("invert", [1, True])
def test_sdapi_mask_invert(invert):
    fields, _ = sdapi({"prompt": "p", "init_images": [b64(INIT)], "mask": b64(MASK),
                       "inpainting_mask_invert": invert})  # fmt: skip
    assert np.array_equal(fields["mask_image"], 255 - MASK)
    fields, _ = sdapi({"prompt": "p", "init_images": [b64(INIT)], "mask": b64(MASK),
                       "inpainting_mask_invert": 0})  # fmt: skip
    assert np.array_equal(fields["mask_image"], MASK)


@pytest.mark.parametrize(("sent", "strength"), [(-1, 0.0), (0.3, 0.3), (7, 1.0)])
def test_sdapi_denoising_strength_is_clamped(sent, strength):
    fields, _ = sdapi({"prompt": "p", "init_images": [b64(INIT)], "denoising_strength": sent})
    assert fields["strength"] == strength


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"init_images": []}, "init_images"),
        ({"init_images": None}, "init_images"),
        ({"init_images": ["aGk="]}, "init_images[0]"),
        ({"init_images": [1]}, "init_images[0]"),
        ({"mask": 5}, "mask"),
        ({"mask": "aGk="}, "mask"),
        ({"inpainting_mask_invert": 2}, "inpainting_mask_invert"),
        ({"inpainting_mask_invert": "yes"}, "inpainting_mask_invert"),
        ({"denoising_strength": "high"}, "denoising_strength"),
    ],
)
def test_sdapi_img2img_errors_name_the_field(body, param):
    body = {"prompt": "p", "init_images": [b64(INIT)], **body}
    assert rejects(sdapi, body).param == param


def test_sdapi_outer_images_win_over_the_block_but_its_strength_applies():
    other = np.zeros((8, 8, 3), np.uint8)
    prompt = "p " + block({"init_image": b64(other), "strength": 0.2})
    fields, _ = sdapi({"prompt": prompt, "init_images": [b64(INIT)], "denoising_strength": 0.9})
    assert np.array_equal(fields["init_image"], INIT) and fields["strength"] == 0.2


def test_txt2img_can_take_an_init_image_through_the_block():
    fields, _ = sdapi_fields({"prompt": "p " + block({"init_image": b64(INIT)})}, CAPS)
    assert np.array_equal(fields["init_image"], INIT)


# -- sdcpp ------------------------------------------------------------------------------------


def test_sdcpp_images_and_strength():
    fields, _ = sdcpp({"init_image": b64(INIT), "mask_image": b64(MASK), "strength": 0.3})
    assert np.array_equal(fields["init_image"], INIT)
    assert np.array_equal(fields["mask_image"], MASK) and fields["strength"] == 0.3
    fields, _ = sdcpp({"init_image": None, "mask_image": ""})  # "no image", as in the peer
    assert "init_image" not in fields and "mask_image" not in fields


def test_image_errors_inside_extra_args_name_the_block_field():
    prompt = "p " + block({"init_image": "aGk="})
    err = rejects(openai_fields, {"prompt": prompt}, CAPS)
    assert err.param == "sd_cpp_extra_args.init_image"
    assert err.message.startswith("invalid sd_cpp_extra_args: init_image: cannot decode image")


# -- OpenAI edits -----------------------------------------------------------------------------


def edit(form: dict, mask: bytes | None = None, images: list[bytes] | None = None):
    upload = EditUpload(
        form={"prompt": "p", **form},
        images=[png(INIT)] if images is None else images,
        image_param="image",
        mask=mask,
    )
    return edit_fields(upload, CAPS)


def transparent_left() -> bytes:
    alpha = 255 - MASK
    return png(np.dstack([INIT, alpha]))


def test_edit_form_values_are_converted_and_the_size_comes_from_the_image():
    fields, output = edit({"n": "2", "seed": "5", "guidance_scale": "4.5", "size": "auto",
                           "output_format": "jpeg", "output_compression": "70"})  # fmt: skip
    assert (fields["batch_count"], fields["seed"], fields["guidance_scale"]) == (2, 5, 4.5)
    assert "width" not in fields and np.array_equal(fields["init_image"], INIT)
    assert (output.output_format, output.quality) == ("jpeg", 70)
    assert "strength" not in fields  # no mask: the operator default, else 0.75


def test_edit_mask_transparency_marks_the_edit_region_and_defaults_strength_to_one():
    fields, _ = edit({}, mask=transparent_left())
    assert np.array_equal(fields["mask_image"], MASK) and fields["strength"] == 1.0
    fields, _ = edit({"strength": "0.5"}, mask=transparent_left())
    assert fields["strength"] == 0.5


def test_edit_extra_args_win_over_the_form():
    fields, _ = edit({"prompt": "p " + block({"strength": 0.3, "seed": 9}), "seed": "1"},
                     mask=transparent_left())  # fmt: skip
    assert (fields["strength"], fields["seed"], fields["prompt"]) == (0.3, 9, "p")


@pytest.mark.parametrize(
    ("form", "kwargs", "param"),
    [
        ({}, {"images": []}, "image"),
        ({}, {"images": [b"GIF89a broken"]}, "image"),
        ({}, {"mask": b"nope"}, "mask"),
        ({"strength": "2"}, {}, "strength"),
        ({"n": "two"}, {}, "n"),
        ({"size": "64"}, {}, "size"),
        ({"response_format": "url"}, {}, "response_format"),
        ({"output_format": "svg"}, {}, "output_format"),
        ({"mystery": "1"}, {}, "mystery"),
    ],
)
def test_edit_errors_name_the_field(form, kwargs, param):
    assert rejects(lambda: edit(form, **kwargs)).param == param
