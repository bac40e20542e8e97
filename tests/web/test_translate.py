"""Schemas and translation: what each surface sends becomes the right client-explicit fields."""

from __future__ import annotations

import pytest
from marshmallow import EXCLUDE

from jaxvideo.config import ServerConfig
from jaxvideo.request import build_request
from jaxvideo.results import ModelInfo
from webapp.core import names as a1111
from webapp.core.capabilities import Capabilities
from webapp.core.checks import check_request
from webapp.core.errors import ApiError
from webapp.core.infotext import infotext, infotext_params
from webapp.core.schemas import load
from webapp.openai.schemas import ImageGenerationSchema
from webapp.openai.translate import openai_fields, parse_size
from webapp.sdapi.schemas import Txt2ImgSchema
from webapp.sdapi.translate import sdapi_fields
from webapp.sdcpp.schemas import ImgGenSchema
from webapp.sdcpp.translate import extract_extra_args, sdcpp_fields

CAPS = Capabilities(("euler", "euler_a"), ("discrete", "karras"), ServerConfig(output_dir="/tmp"))
FAMILY = {"width": 512, "height": 512, "steps": 20, "guidance_scale": 7.0, "sampler": "euler_a"}
# A served SD model knowing the samplers and schedules of CAPS.
MODEL = ModelInfo("sd", "sd1", "/models/sd", ("img_gen",), 0, samplers=CAPS.samplers,
                  schedulers=CAPS.schedulers)  # fmt: skip


def openai(body):
    return openai_fields(load(ImageGenerationSchema(), body), CAPS)


def sdapi(body):
    return sdapi_fields(load(Txt2ImgSchema(), body, unknown=EXCLUDE), CAPS)


def sdcpp(body):
    return sdcpp_fields(load(ImgGenSchema(), body), CAPS)


def rejects(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args, **kwargs)
    assert info.value.status == 400
    return info.value


# -- merge precedence ---------------------------------------------------------------------


def test_unsent_fields_never_shadow_operator_defaults():
    fields, _ = openai({"prompt": "a fox"})
    assert fields == {"prompt": "a fox"}
    request = build_request(fields, {"steps": 8, "width": 64}, FAMILY)
    assert (request.steps, request.width, request.height) == (8, 64, 512)


def test_a_client_field_equal_to_the_schema_default_still_wins():
    # 20 steps and cfg 7.0 are GenerationRequest's own defaults; the client chose them anyway.
    fields, _ = sdcpp({"sample_params": {"sample_steps": 20, "guidance": {"txt_cfg": 7.0}}})
    request = build_request(fields, {"steps": 8, "guidance_scale": 3.0}, FAMILY)
    assert (request.steps, request.guidance_scale) == (20, 7.0)
    fields, _ = sdapi({"prompt": "x", "cfg_scale": 7.0, "seed": -1})
    assert fields["guidance_scale"] == 7.0 and fields["seed"] == -1
    assert build_request(fields, {"guidance_scale": 3.0}, FAMILY).guidance_scale == 7.0


def test_openai_fields_map_size_n_and_extra_body():
    fields, output = openai(
        {
            "prompt": "p",
            "n": 2,
            "size": "256x128",
            "model": "m",
            "output_format": "JPG",
            "output_compression": 140,
            "seed": 5,
            "num_inference_steps": 3,
            "guidance_scale": 4.5,
            "negative_prompt": "blur",
            "sampler": "Euler",
            "scheduler": "normal",
            "quality": "high",
            "user": "u",
            "response_format": "b64_json",
        }
    )
    assert fields == {
        "prompt": "p",
        "model": "m",
        "batch_count": 2,
        "width": 256,
        "height": 128,
        "seed": 5,
        "negative_prompt": "blur",
        "steps": 3,
        "guidance_scale": 4.5,
        "sampler": "euler",
        "scheduler": "discrete",
    }
    assert (output.output_format, output.quality) == ("jpeg", 100)


def test_openai_size_auto_and_nulls_mean_the_model_default():
    fields, _ = openai({"prompt": "p", "size": "auto", "seed": None, "model": None})
    assert fields == {"prompt": "p"}


def test_openai_rejects_url_responses_streaming_and_bad_sizes():
    assert rejects(openai, {"prompt": "p", "response_format": "url"}).param == "response_format"
    assert rejects(openai, {"prompt": "p", "stream": True}).param == "stream"
    assert rejects(openai, {"prompt": "p", "size": "big"}).param == "size"
    assert rejects(openai, {"prompt": "p", "n": 9}).param == "n"
    assert rejects(openai, {"prompt": "p", "n": 0}).param == "n"
    assert rejects(openai, {"prompt": "p", "bogus": 1}).param == "bogus"
    err = rejects(openai, {"prompt": "p", "output_format": "gif"})
    assert err.message == "invalid output_format, must be one of [png, jpeg, webp]"
    assert rejects(openai, {"n": 1}).param == "prompt"


# -- sd_cpp_extra_args --------------------------------------------------------------------


def test_extra_args_blocks_are_all_removed_and_the_first_is_parsed():
    prompt = 'a cat <sd_cpp_extra_args>{"seed": 1}</sd_cpp_extra_args> on a mat'
    prompt += ' <sd_cpp_extra_args>{"seed": 2}</sd_cpp_extra_args>'
    cleaned, block = extract_extra_args(prompt)
    assert cleaned == "a cat  on a mat"
    assert block == {"seed": 1}
    assert extract_extra_args("plain") == ("plain", None)


def test_invalid_extra_args_answer_400():
    err = rejects(extract_extra_args, "x <sd_cpp_extra_args>{nope</sd_cpp_extra_args>")
    assert err.message == "invalid sd_cpp_extra_args"
    bad_field = (
        'x <sd_cpp_extra_args>{"sample_params": {"sample_steps": "many"}}</sd_cpp_extra_args>'
    )
    err = rejects(openai, {"prompt": bad_field})
    assert err.param == "sd_cpp_extra_args.sample_params.sample_steps"


def test_on_openai_the_extra_args_block_wins_over_outer_fields():
    block = {
        "width": 128,
        "seed": 9,
        "prompt": "from block",
        "sample_params": {"sample_method": "euler", "sample_steps": 4},
        "output_format": "webp",
    }
    prompt = f"outer <sd_cpp_extra_args>{__import__('json').dumps(block)}</sd_cpp_extra_args>"
    fields, output = openai(
        {"prompt": prompt, "size": "256x256", "seed": 1, "sampler": "euler_a", "steps": 2}
    )
    assert fields["width"] == 128 and fields["height"] == 256
    assert (fields["seed"], fields["sampler"], fields["steps"]) == (9, "euler", 4)
    assert fields["prompt"] == "from block"
    assert output.output_format == "webp"


def test_on_sdapi_the_outer_request_wins_for_sampler_scheduler_and_clip_skip():
    block = (
        '{"seed": 9, "clip_skip": 1, "sample_params": {"sample_method": "euler", '
        '"scheduler": "discrete", "sample_steps": 4}}'
    )
    fields, _ = sdapi(
        {
            "prompt": f"p <sd_cpp_extra_args>{block}</sd_cpp_extra_args>",
            "sampler_name": "Euler a Karras",
            "clip_skip": 2,
            "seed": 1,
            "steps": 2,
        }
    )
    assert (fields["sampler"], fields["scheduler"], fields["clip_skip"]) == ("euler_a", "karras", 2)
    assert (fields["seed"], fields["steps"], fields["prompt"]) == (9, 4, "p")


# -- sdapi ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Euler a", ("euler_a", None)),
        ("euler A", ("euler_a", None)),
        ("k_euler_a", ("euler_a", None)),
        ("Euler", ("euler", None)),
        ("k_euler", ("euler", None)),
        ("euler_a", ("euler_a", None)),
        ("Euler Karras", ("euler", "karras")),
        ("Euler a Karras", ("euler_a", "karras")),
        ("Automatic", (None, None)),
        (None, (None, None)),
    ],
)
def test_a1111_sampler_names_map_to_native_ones(name, expected):
    assert a1111.parse_sampler(name, CAPS) == expected


def test_unsupported_a1111_samplers_answer_400_listing_the_supported_ones():
    err = rejects(a1111.parse_sampler, "DPM++ 2M", CAPS)
    assert err.param == "sampler_name"
    assert "Euler (euler)" in err.message and "Euler a (euler_a)" in err.message
    assert rejects(a1111.parse_sampler, "Euler Exponential", CAPS).param == "sampler_name"


def test_a1111_schedule_types_map_to_native_schedulers():
    assert a1111.parse_scheduler("Karras", CAPS) == "karras"
    assert a1111.parse_scheduler("Automatic", CAPS) is None
    assert a1111.parse_scheduler("normal", CAPS) == "discrete"
    assert rejects(a1111.parse_scheduler, "Exponential", CAPS).param == "scheduler"


def test_sdapi_fields_batch_model_and_ignored_extras():
    fields, output = sdapi(
        {
            "prompt": "p",
            "batch_size": 2,
            "n_iter": 2,
            "cfg_scale": 5,
            "override_settings": {
                "sd_model_checkpoint": "demo [0123abcd]",
                "CLIP_stop_at_last_layers": 2,
            },
            "restore_faces": False,
            "enable_hr": False,
            "styles": [],
            "alwayson_scripts": {},
            "lora": [],
            "sampler_name": None,
            "embed_image_metadata": False,
        }
    )
    assert fields == {
        "prompt": "p",
        "batch_count": 4,
        "guidance_scale": 5,
        "clip_skip": 2,
        "model": "demo",
    }
    assert output == {"embed_metadata": False}


def test_sdapi_rejects_wrong_types_lora_and_too_many_images():
    assert rejects(sdapi, {"prompt": "p", "steps": "ten"}).param == "steps"
    assert rejects(sdapi, {"prompt": "p", "width": True}).param == "width"
    assert rejects(sdapi, {"prompt": 3}).param == "prompt"
    # CAPS has no LoRA folder: any LoRA is refused, naming the field.
    err = rejects(sdapi, {"prompt": "p", "lora": [{"path": "a.safetensors"}]})
    assert err.message == "lora: this server has no LoRA folder configured (server.lora_dir)"
    assert rejects(sdapi, {"prompt": "p", "batch_size": 4, "n_iter": 3}).param == "batch_size"


def test_infotext_follows_the_a1111_layout():
    params = infotext_params(
        steps=8,
        sampler="euler_a",
        scheduler="discrete",
        default_scheduler="discrete",
        guidance_scale=7.0,
        seed=123,
        width=64,
        height=64,
        model="sd1-tiny-demo",
        clip_skip=-1,
        version="jaxvideo 0.1.0",
    )
    assert infotext("a cat", "blurry", params) == (
        "a cat\nNegative prompt: blurry\nSteps: 8, Sampler: Euler a, Schedule type: Automatic, "
        "CFG scale: 7, Seed: 123, Size: 64x64, Model: sd1-tiny-demo, Version: jaxvideo 0.1.0"
    )


# -- sdcpp ----------------------------------------------------------------------------------


def test_sdcpp_fields_map_the_native_request():
    fields, output = sdcpp(
        {
            "prompt": "p",
            "negative_prompt": "",
            "clip_skip": -1,
            "width": 64,
            "height": 64,
            "strength": 0.75,
            "seed": -1,
            "batch_count": 50,
            "init_image": None,
            "ref_images": [],
            "lora": [],
            "sample_params": {
                "scheduler": "default",
                "sample_method": "euler_a",
                "sample_steps": 3,
                "eta": None,
                "custom_sigmas": [],
                "guidance": {"txt_cfg": 6.0, "img_cfg": 7.0, "slg": {"scale": 0.0}},
            },
            "vae_tiling_params": {"enabled": False},
            "cache_mode": "disabled",
            "output_format": "webp",
            "output_compression": -5,
            "embed_image_metadata": False,
        }
    )
    assert fields == {
        "prompt": "p",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "seed": -1,
        "strength": 0.75,
        "batch_count": CAPS.limits.max_batch_count,  # clamped
        "sampler": "euler_a",
        "steps": 3,
        "guidance_scale": 6.0,
    }
    assert output == {"output_format": "webp", "quality": 0, "embed_metadata": False}


def test_sdcpp_features_not_implemented_yet_answer_400_by_name():
    err = rejects(sdcpp, {"control_image": "aGk="})
    assert err.param == "control_image" and "not supported by this server yet" in err.message


def test_sdcpp_cache_fields_become_the_step_cache_with_sd_cpp_defaults():
    fields, _ = sdcpp({"cache_mode": "ucache", "cache_option": "threshold=1.5, reset=0"})
    cache = fields["step_cache"]
    assert cache.mode == "ucache" and cache["threshold"] == 1.5 and cache["reset"] == 0
    assert cache["start"] == 0.15 and cache["end"] == 0.95  # sd.cpp's defaults
    masked = {"cache_mode": "dbcache", "scm_mask": "1,1,0,0,1", "scm_policy_dynamic": False}
    cache = sdcpp(masked)[0]["step_cache"]
    assert cache.scm_mask == (1, 1, 0, 0, 1) and not cache.scm_dynamic
    for off in ({"cache_mode": "disabled"}, {"cache_mode": ""}, {}):
        assert "step_cache" not in sdcpp(off)[0]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"cache_mode": "ucache", "cache_option": "w=0.4"}, "cache_option", "unknown ucache"),
        ({"cache_mode": "ucache", "cache_option": "threshold"}, "cache_option", "key=value"),
        ({"cache_mode": "ucache", "cache_option": "start=0.9,end=0.2"}, "cache_option", "below"),
        ({"cache_mode": "spectrum", "cache_option": "m=0"}, "cache_option", "within [1, 8]"),
        ({"cache_mode": "dbcache", "cache_option": "Fn=1.5"}, "cache_option", "integer"),
        ({"cache_mode": "ucache", "scm_mask": "1,0"}, "scm_mask", "applies to"),
        ({"cache_option": "threshold=1"}, "cache_option", "needs a cache_mode"),
    ],
)
def test_sdcpp_bad_cache_options_answer_400_naming_them(body, param, words):
    err = rejects(sdcpp, body)
    assert err.param == param and words in err.message, err.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"width": "64"}, "width"),
        ({"seed": 1.5}, "seed"),
        ({"strength": 1.5}, "strength"),
        ({"sample_params": {"guidance": {"txt_cfg": -1}}}, "sample_params.guidance.txt_cfg"),
        ({"sample_params": {"sample_method": "dpm++2m"}}, "sample_params.sample_method"),
        ({"sample_params": {"scheduler": "ays"}}, "sample_params.scheduler"),
        ({"sample_params": {"shifted_timestep": 2000}}, "sample_params.shifted_timestep"),
        ({"lora": [{"multiplier": 1.0}]}, "lora[0].path"),
        ({"cache_mode": "bogus"}, "cache_mode"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_sdcpp_type_and_range_errors_name_the_field(body, param):
    assert rejects(sdcpp, body).param == param


def test_sdcpp_unknown_sampler_lists_the_valid_ones():
    err = rejects(sdcpp, {"sample_params": {"sample_method": "heun"}})
    assert "[euler, euler_a]" in err.message


# -- limits on the merged request ------------------------------------------------------------


def test_merged_requests_are_checked_against_the_configured_limits():
    def check(**fields):
        check_request(build_request(fields, None, FAMILY), MODEL, CAPS, {"width": "size"})

    check(width=64, height=2048)
    assert rejects(check, width=100).message.endswith("multiple of 8, got 100")
    assert rejects(check, width=4096).param == "size"
    assert rejects(check, height=32).param == "height"
    assert rejects(check, steps=151).param == "steps"
    assert rejects(check, steps=0).param == "steps"
    assert rejects(check, batch_count=9).param == "batch_count"
    assert rejects(check, sampler="heun").param == "sampler"


def test_the_work_a_request_asks_for_is_bounded_at_submission():
    from dataclasses import replace

    from jaxvideo.hires import HiresFix

    caps = replace(CAPS, limits=ServerConfig(output_dir="/tmp", max_work=16))
    small = build_request({"width": 512, "height": 512, "steps": 60}, None, FAMILY)
    check_request(small, MODEL, caps)  # 15.7 megapixel-steps
    for fields in (
        {"width": 2048, "height": 2048, "steps": 8},  # 33.5: the request that took 116 s to stop
        {"width": 512, "height": 512, "steps": 20, "batch_count": 4},
        {"width": 512, "height": 512, "steps": 30, "hires": HiresFix(1024, 1024, steps=10)},
    ):
        err = rejects(check_request, build_request(fields, None, FAMILY), MODEL, caps)
        assert err.param == "steps" and "server.max_work" in err.message
    video = build_request(
        {"mode": "vid_gen", "width": 128, "height": 128, "num_frames": 17, "steps": 8},
        None,
        FAMILY,
    )
    check_request(video, MODEL, caps)  # 2.2: frames count too
    many = replace(video, num_frames=257, steps=10)
    assert "42.1 megapixel-steps" in rejects(check_request, many, MODEL, caps).message


def test_parse_size():
    assert parse_size("512x768") == (512, 768)
    assert parse_size(" AUTO ") is None
    assert rejects(parse_size, "512*768").param == "size"
