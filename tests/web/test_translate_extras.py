"""Translation of the newer native fields: every sampler/schedule name, LoRA entries confined to
the LoRA folder, VAE tiling and custom sigmas (no server, no model)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from marshmallow import EXCLUDE
from PIL import Image

from jaxvideo.config import ServerConfig
from jaxvideo.request import SkipLayerGuidance, build_request
from jaxvideo.results import ModelInfo
from jaxvideo.sampling import SAMPLER_SPECS, SCHEDULE_SPECS
from jaxvideo.tiling import VaeTiling
from tests.support.sampling import FLOW_SAMPLERS, FLOW_SCHEDULES, SAMPLERS, SCHEDULERS
from webapp.core import names as a1111
from webapp.core.capabilities import Capabilities
from webapp.core.checks import check_fields, check_high_noise
from webapp.core.errors import ApiError
from webapp.core.loras import MAX_LORAS, available_loras
from webapp.core.names import display_name, scheduler_label
from webapp.core.schemas import load
from webapp.core.tiling import TilingRequest, resolve_tiling
from webapp.openai.schemas import ImageGenerationSchema
from webapp.openai.translate import openai_fields
from webapp.sdapi.schemas import Txt2ImgSchema
from webapp.sdapi.translate import sdapi_fields
from webapp.sdcpp.schemas import ImgGenSchema
from webapp.sdcpp.translate import sdcpp_fields


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    """A LoRA folder with two (empty: only their names matter here) files, one outside."""
    folder = tmp_path / "loras"
    (folder / "styles").mkdir(parents=True)
    (folder / "ink.safetensors").write_bytes(b"")
    (folder / "styles" / "film.safetensors").write_bytes(b"")
    (tmp_path / "outside.safetensors").write_bytes(b"")
    return folder


def caps(lora_dir: Path | None = None) -> Capabilities:
    limits = ServerConfig(output_dir="/tmp", lora_dir=None if lora_dir is None else str(lora_dir))
    return Capabilities(SAMPLERS, SCHEDULERS, limits)


def sdcpp(body, lora_dir=None):
    return sdcpp_fields(load(ImgGenSchema(), body), caps(lora_dir))[0]


def sdapi(body, lora_dir=None):
    return sdapi_fields(load(Txt2ImgSchema(), body, unknown=EXCLUDE), caps(lora_dir))[0]


def openai(body, lora_dir=None):
    return openai_fields(load(ImageGenerationSchema(), body), caps(lora_dir))[0]


def rejects(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args, **kwargs)
    assert info.value.status == 400
    return info.value


def block(**args) -> str:
    return f"<sd_cpp_extra_args>{json.dumps(args)}</sd_cpp_extra_args>"


# -- samplers and schedules ------------------------------------------------------------------


def test_every_native_sampler_and_schedule_is_accepted_on_every_surface():
    for sampler in SAMPLERS:
        assert sdcpp({"sample_params": {"sample_method": sampler}})["sampler"] == sampler
        assert sdapi({"prompt": "p", "sampler_name": sampler})["sampler"] == sampler
        assert sdapi({"prompt": "p", "sampler_name": display_name(sampler)})["sampler"] == sampler
        assert openai({"prompt": "p", "sampler": sampler})["sampler"] == sampler
    for schedule in SCHEDULERS:
        assert sdcpp({"sample_params": {"scheduler": schedule}})["scheduler"] == schedule
        assert sdapi({"prompt": "p", "scheduler": schedule})["scheduler"] == schedule
        label = scheduler_label(schedule)
        assert sdapi({"prompt": "p", "scheduler": label})["scheduler"] == schedule
        assert openai({"prompt": "p", "scheduler": label})["scheduler"] == schedule
    # Every sampler has an A1111 display name, the flow-only ones (Wan's UniPC) included.
    assert set(SAMPLER_SPECS) == set(SAMPLERS) | set(FLOW_SAMPLERS)
    assert all(spec.display for spec in SAMPLER_SPECS.values())
    assert set(SCHEDULE_SPECS) == set(SCHEDULERS) | set(FLOW_SCHEDULES)
    assert all(spec.label for spec in SCHEDULE_SPECS.values())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DPM++ 2M Karras", ("dpm++2m", "karras")),
        ("dpm++ 2m sde exponential", ("dpm++2m_sde", "exponential")),
        ("DPM++ 2M SDE GPU", ("dpm++2m_sde_bt", None)),
        ("DPM++ 2S a", ("dpm++2s_a", None)),
        ("Euler a SGM Uniform", ("euler_a", "sgm_uniform")),
        ("Euler Simple", ("euler", "simple")),
        ("DPM++ 2M Beta", ("dpm++2m", "beta")),
        ("Euler Align Your Steps", ("euler", "ays")),
        ("Euler AYS", ("euler", "ays")),
        ("LMS KL Optimal", ("lms", "kl_optimal")),
        ("DDIM", ("ddim_trailing", None)),
        ("ddim", ("ddim_trailing", None)),
        ("LCM", ("lcm", None)),
        ("TCD", ("tcd", None)),
        ("iPNDM_V", ("ipndm_v", None)),
        ("Res Multistep", ("res_multistep", None)),
        ("res 2s", ("res_2s", None)),
        ("ER SDE", ("er_sde", None)),
        ("Euler CFG++", ("euler_cfg_pp", None)),
        ("k_dpmpp_2m", ("dpm++2m", None)),
        ("k_dpm_2", ("dpm2", None)),
        ("k_lms", ("lms", None)),
        ("dpmpp_2m_sde_gpu", ("dpm++2m_sde_bt", None)),
        ("Heun Uniform", ("heun", "discrete")),
    ],
)
def test_a1111_k_diffusion_and_comfy_names(name, expected):
    assert a1111.parse_sampler(name, caps()) == expected


@pytest.mark.parametrize(
    "name", ["DPM2 a", "DPM++ SDE", "DPM++ 3M SDE", "UniPC", "PLMS", "DPM fast", "k_dpm_2_a"]
)
def test_a1111_samplers_sd_cpp_lacks_answer_400(name):
    err = rejects(a1111.parse_sampler, name, caps())
    assert err.param == "sampler_name" and "DPM++ 2M (dpm++2m)" in err.message


def test_unsupported_a1111_schedules_are_named_as_such():
    err = rejects(a1111.parse_sampler, "DPM++ 2M Polyexponential", caps())
    assert "schedule 'polyexponential'" in err.message
    assert rejects(a1111.parse_scheduler, "DDIM", caps()).param == "scheduler"
    err = rejects(openai, {"prompt": "p", "scheduler": "Polyexponential"})
    assert err.param == "scheduler" and "Karras (karras)" in err.message


def test_a1111_schedule_labels_and_ids():
    for name, native in [
        ("Automatic", None),
        ("Uniform", "discrete"),
        ("Discrete", "discrete"),
        ("normal", "discrete"),
        ("align_your_steps", "ays"),
        ("SGM Uniform", "sgm_uniform"),
        ("sgm_uniform", "sgm_uniform"),
        ("KL Optimal", "kl_optimal"),
        ("Bong Tangent", "bong_tangent"),
    ]:
        assert a1111.parse_scheduler(name, caps()) == native


def test_the_native_surface_takes_native_names_only():
    body = {"sample_params": {"sample_method": "DPM++ 2M"}}
    assert rejects(sdcpp, body).param == "sample_params.sample_method"
    body = {"sample_params": {"scheduler": "Align Your Steps"}}
    assert rejects(sdcpp, body).param == "sample_params.scheduler"


def test_eta_passes_through_every_surface():
    assert sdcpp({"sample_params": {"eta": 0.3}})["eta"] == 0.3
    assert sdapi({"prompt": "p", "eta": 0.3})["eta"] == 0.3
    assert openai({"prompt": "p", "eta": 0.3})["eta"] == 0.3
    assert openai({"prompt": "p " + block(sample_params={"eta": 0.2})})["eta"] == 0.2


# -- LoRA ---------------------------------------------------------------------------------------


def test_lora_entries_resolve_inside_the_folder(lora_dir):
    fields = sdcpp(
        {"lora": [{"path": "ink"}, {"path": "styles/film.safetensors", "multiplier": 0.4}]},
        lora_dir,
    )
    ink, film = fields["loras"]
    assert (ink.path, ink.multiplier) == (lora_dir / "ink.safetensors", 1.0)
    assert ink.is_high_noise is False
    assert (film.path, film.multiplier) == (lora_dir / "styles" / "film.safetensors", 0.4)
    assert "loras" not in sdcpp({"lora": []}, lora_dir)  # an empty list is no LoRA
    request = build_request(fields)
    assert request.loras == (ink, film)


@pytest.mark.parametrize(
    "path", ["../outside.safetensors", "OUTSIDE_ABS", "/etc/passwd", "missing", "", "styles/../.."]
)
def test_lora_paths_outside_the_folder_or_missing_are_400_on_every_route(lora_dir, path):
    if path == "OUTSIDE_ABS":
        path = str(lora_dir.parent / "outside.safetensors")
    entry = [{"path": path}]
    assert rejects(sdcpp, {"lora": entry}, lora_dir).param == "lora[0].path"
    assert rejects(sdapi, {"prompt": "p", "lora": entry}, lora_dir).param == "lora[0].path"
    prompt = "p " + block(lora=entry)
    for call in (sdapi, openai):
        err = rejects(call, {"prompt": prompt}, lora_dir)
        assert err.param == "sd_cpp_extra_args.lora[0].path", err.message
        assert str(lora_dir) not in err.message


def test_without_a_lora_folder_every_lora_is_refused(lora_dir):
    err = rejects(sdcpp, {"lora": [{"path": "ink"}]})
    assert err.param == "lora" and "server.lora_dir" in err.message
    err = rejects(openai, {"prompt": "p " + block(lora=[{"path": "ink"}])})
    assert err.param == "sd_cpp_extra_args.lora"
    assert available_loras(None) == []
    assert available_loras(str(lora_dir)) == [
        {"name": "ink", "path": "ink.safetensors"},
        {"name": "film", "path": "styles/film.safetensors"},
    ]


def test_lora_merge_rules_follow_the_peer(lora_dir):
    prompt = "p " + block(lora=[{"path": "ink"}])
    outer = [{"path": "styles/film", "multiplier": 0.5}]
    # sdapi: the outer request wins; the block's LoRA applies when the outer has none.
    [spec] = sdapi({"prompt": prompt, "lora": outer}, lora_dir)["loras"]
    assert spec.path.name == "film.safetensors"
    [spec] = sdapi({"prompt": prompt, "lora": []}, lora_dir)["loras"]
    assert spec.path.name == "ink.safetensors"
    # OpenAI carries LoRAs in the block only.
    [spec] = openai({"prompt": prompt}, lora_dir)["loras"]
    assert spec.path.name == "ink.safetensors"
    assert rejects(openai, {"prompt": "p", "lora": outer}, lora_dir).param == "lora"


def test_lora_count_types_and_high_noise(lora_dir):
    many = [{"path": "ink"}] * (MAX_LORAS + 1)
    assert rejects(sdcpp, {"lora": many}, lora_dir).param == "lora"
    assert rejects(sdcpp, {"lora": [{"path": "ink", "multiplier": "x"}]}, lora_dir).param == (
        "lora[0].multiplier"
    )
    # A lone surrogate is valid JSON but no file name: refused, not a 500 from the file system.
    assert rejects(sdcpp, {"lora": [{"path": "ink\ud800"}]}, lora_dir).param == "lora[0].path"
    loras = sdcpp({"lora": [{"path": "ink"}, {"path": "ink", "is_high_noise": True}]}, lora_dir)
    sd = ModelInfo("sd1-tiny", "sd1", "/m/sd", ("img_gen",), 0)
    err = rejects(check_high_noise, loras["loras"], sd, "sd_cpp_extra_args.lora")
    assert err.param == "sd_cpp_extra_args.lora[1].is_high_noise" and "Wan 2.2" in err.message
    wan = ModelInfo("wan", "wan22", "/m/wan", ("vid_gen",), 0)
    check_high_noise(loras["loras"], wan)  # a two-expert model takes them


# -- VAE tiling and custom sigmas -------------------------------------------------------------


def _tiled(width: int, height: int, **params) -> VaeTiling:
    fields = sdcpp({"width": width, "height": height, "vae_tiling_params": params})
    return resolve_tiling(build_request(fields)).vae_tiling


def test_vae_tiling_becomes_a_vae_tiling_for_the_final_size():
    assert "vae_tiling" not in sdcpp({"vae_tiling_params": {"enabled": False, "tile_size_x": 8}})
    assert _tiled(512, 512, enabled=True) == VaeTiling(32, 32, 0.5)
    assert _tiled(512, 256, enabled=True, tile_size_x=16, target_overlap=0.25) == VaeTiling(
        16, 32, 0.25
    )
    # Relative sizes follow the size the request ends up with (64x32 latent).
    assert _tiled(512, 256, enabled=True, rel_size_x=0.5, rel_size_y=2) == VaeTiling(32, 16, 0.5)
    # Through an extra-args block too.
    fields = openai({"prompt": "p " + block(vae_tiling_params={"enabled": True})})
    assert isinstance(fields["vae_tiling"], TilingRequest)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"tile_size_x": 4}, "vae_tiling_params.tile_size_x"),
        ({"tile_size_y": -8}, "vae_tiling_params.tile_size_y"),
        ({"rel_size_x": -0.5}, "vae_tiling_params.rel_size_x"),
        ({"target_overlap": 1.0}, "vae_tiling_params.target_overlap"),
    ],
)
def test_bad_tiling_params_are_400(params, param):
    assert rejects(sdcpp, {"vae_tiling_params": {"enabled": True, **params}}).param == param


def test_tiles_that_would_decode_the_image_many_times_over_are_refused():
    small = {"enabled": True, "tile_size_x": 8, "tile_size_y": 8}
    err = rejects(_tiled, 2048, 2048, **small, target_overlap=0.9)
    assert err.param == "vae_tiling_params" and "larger tiles" in err.message
    _tiled(2048, 2048, **small)  # half overlap is fine


def test_custom_sigmas_replace_the_schedule_and_set_the_step_count():
    fields = sdcpp({"sample_params": {"custom_sigmas": [14.6, 3.0, 0.5], "sample_steps": 20}})
    assert fields["custom_sigmas"] == (14.6, 3.0, 0.5) and fields["steps"] == 3
    assert sdcpp({"sample_params": {"custom_sigmas": [2.0, 1.0, 0.0]}})["steps"] == 2
    for bad in ([1.0, 2.0], [-1.0], [0.0]):
        err = rejects(sdcpp, {"sample_params": {"custom_sigmas": bad}})
        assert err.param == "sample_params.custom_sigmas"
    too_many = [float(v) for v in range(200, 0, -1)]
    err = rejects(sdcpp, {"sample_params": {"custom_sigmas": too_many}})
    assert "the limit is 150" in err.message


# -- Flux.1 / SD3.5 fields ----------------------------------------------------------------------


def b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


FLUX = ModelInfo(
    "flux", "flux", "/m/flux", ("img_gen",), 0,
    features={"img_gen": ("init_image", "ref_images", "distilled_guidance", "flow_shift")},
)  # fmt: skip
SD3 = ModelInfo(
    "sd3", "sd3", "/m/sd3", ("img_gen",), 0, features={"img_gen": ("init_image", "slg")}
)


def test_native_dit_fields_translate_to_the_request():
    slg = {"layers": [7, 8], "layer_start": 0.05, "layer_end": 0.3, "scale": 2.8}
    refs = [b64(np.zeros((16, 24, 3), np.uint8)), b64(np.full((8, 8, 3), 9, np.uint8))]
    fields = sdcpp(
        {
            "sample_params": {"guidance": {"distilled_guidance": 2.5, "slg": slg}},
            "ref_images": refs,
            "auto_resize_ref_image": False,
            "increase_ref_index": True,
        }
    )
    assert fields["distilled_guidance"] == 2.5
    assert fields["slg"] == SkipLayerGuidance((7, 8), 0.05, 0.3, 2.8)
    assert [r.shape for r in fields["ref_images"]] == [(16, 24, 3), (8, 8, 3)]
    assert fields["auto_resize_ref_image"] is False and fields["increase_ref_index"] is True
    # Scale 0 (what every sd.cpp client sends) is no skip-layer guidance at all.
    assert "slg" not in sdcpp({"sample_params": {"guidance": {"slg": {**slg, "scale": 0.0}}}})
    # sdapi's extra_images are reference images too.
    assert len(sdapi({"prompt": "p", "extra_images": refs})["ref_images"]) == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"sample_params": {"guidance": {"slg": {"layer_start": 1.5}}}}, "layer_start"),
        ({"sample_params": {"guidance": {"slg": {"scale": -1}}}}, "scale"),
        ({"sample_params": {"guidance": {"distilled_guidance": 1e9}}}, "distilled_guidance"),
        ({"ref_images": ["aGk="] * 5}, "ref_images"),
    ],
)
def test_bad_dit_fields_are_400(body, param):
    assert param in rejects(sdcpp, body).param


def test_a_model_without_a_field_refuses_it_by_name_and_drops_neutral_values():
    err = rejects(check_fields, {"slg": SkipLayerGuidance(scale=1.0)}, FLUX, "img_gen", {})
    assert err.param == "slg" and "'flux'" in err.message
    err = rejects(check_fields, {"distilled_guidance": 5.0}, SD3, "img_gen", {})
    assert "'sd3'" in err.message
    err = rejects(check_fields, {"ref_images": (np.zeros((8, 8, 3)),)}, SD3, "img_gen", {})
    assert err.param == "ref_images"
    # sd.cpp's default distilled guidance asks for nothing: dropped where the model has none.
    assert check_fields({"distilled_guidance": 3.5}, SD3, "img_gen", {}) == {}
    assert check_fields({"distilled_guidance": 3.5}, FLUX, "img_gen", {}) == {
        "distilled_guidance": 3.5
    }
