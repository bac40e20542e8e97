"""Video payloads through translation (no server, no model): FastVideo/OpenAI bodies and
multipart forms, sd.cpp vid_gen bodies, file references and continuation states."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxvideo.config import ServerConfig
from jaxvideo.continuation import ContinuationState
from jaxvideo.request import HighNoiseParams
from webapp.core.capabilities import Capabilities
from webapp.core.checks import MAX_FRAMES
from webapp.core.errors import ApiError
from webapp.core.outputs import VideoOutput
from webapp.core.references import confined, output_file
from webapp.core.schemas import load
from webapp.openai.forms import form_to_json
from webapp.openai.schemas import VideoGenerationSchema
from webapp.openai.video_translate import fastvideo_fields, with_seconds
from webapp.sdcpp.schemas import VidGenSchema
from webapp.sdcpp.translate import vidgen_fields

SAMPLERS = ("euler", "euler_a", "unipc")
SCHEDULERS = ("discrete", "karras")
FRAME = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def png(pixels: np.ndarray = FRAME) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def data_url(pixels: np.ndarray = FRAME) -> str:
    return "data:image/png;base64," + base64.b64encode(png(pixels)).decode("ascii")


def caps(tmp_path: Path | None = None, **server) -> Capabilities:
    folders = {}
    if tmp_path is not None:
        folders = {"input_dir": str(tmp_path / "inputs"), "output_dir": str(tmp_path / "out")}
    limits = ServerConfig(**{"output_dir": "/tmp/jaxvideo-test-out", **folders, **server})
    return Capabilities(SAMPLERS, SCHEDULERS, limits)


CAPS = caps()


def fastvideo(body, capabilities: Capabilities = CAPS):
    return fastvideo_fields(load(VideoGenerationSchema(), body), capabilities)


def vidgen(body, capabilities: Capabilities = CAPS):
    return vidgen_fields(load(VidGenSchema(), body), capabilities)


def rejects(call, *args) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args)
    assert info.value.status == 400
    return info.value


def wan_state(**payload) -> dict:
    frame = base64.b64encode(png(np.zeros((64, 80, 3), np.uint8))).decode("ascii")
    base = {
        "schema_version": 1,
        "segment_index": 0,
        "model": "wan",
        "width": 80,
        "height": 64,
        "fps": 12,
        "last_frame": frame,
    }
    return {"kind": "wan.v1", "payload": {**base, **payload}}


# -- FastVideo / OpenAI body ------------------------------------------------------------------


def test_only_sent_fields_count_and_nulls_are_unsent():
    parsed = fastvideo({"prompt": "a fox", "seed": None, "model": None, "size": ""})
    assert parsed.fields == {"prompt": "a fox"}
    assert (parsed.seconds, parsed.job_id, parsed.output) == (None, None, VideoOutput())


def test_fastvideo_fields_map_to_the_request():
    parsed = fastvideo(
        {
            "id": "my-video_1",
            "prompt": "a fox running through snow",
            "model": "wan",
            "size": "96x64",
            "seconds": 5,
            "fps": 8,
            "num_frames": 21,
            "seed": 1024,
            "num_inference_steps": 3,
            "guidance_scale": 1.5,
            "guidance_scale_2": 2.5,
            "negative_prompt": "blurry",
            "enable_teacache": False,
            "output": {"return_state": True},
            "output_path": "clips/fox.mp4",
        }
    )
    assert parsed.fields == {
        "prompt": "a fox running through snow",
        "model": "wan",
        "negative_prompt": "blurry",
        "seed": 1024,
        "fps": 8,
        "guidance_scale": 1.5,
        "guidance_scale_2": 2.5,
        "num_frames": 21,
        "steps": 3,
        "width": 96,
        "height": 64,
        "return_state": True,
    }
    assert parsed.seconds == 5.0 and parsed.job_id == "my-video_1"
    assert parsed.output == VideoOutput("mp4", 90, "clips/fox.mp4")


def test_seconds_arrive_as_the_sdks_string_or_a_number():
    assert fastvideo({"prompt": "p", "seconds": "4"}).seconds == 4.0
    assert fastvideo({"prompt": "p", "seconds": 2.5}).seconds == 2.5
    for bad in ("soon", 0, -1, True, 1e308, "nan"):
        assert rejects(fastvideo, {"prompt": "p", "seconds": bad}).param == "seconds"


def test_true_cfg_scale_is_guidance_scale_under_another_name():
    assert fastvideo({"prompt": "p", "true_cfg_scale": 3.0}).fields["guidance_scale"] == 3.0
    same = {"prompt": "p", "true_cfg_scale": 3.0, "guidance_scale": 3.0}
    assert fastvideo(same).fields["guidance_scale"] == 3.0
    err = rejects(fastvideo, {"prompt": "p", "true_cfg_scale": 3.0, "guidance_scale": 4.0})
    assert err.param == "true_cfg_scale"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "p", "enable_teacache": "yes"}, "enable_teacache"),
        ({"prompt": "p", "surprise": 1}, "surprise"),  # FastVideo: unknown field -> 400
        ({"prompt": "p", "quality": "hd"}, "quality"),
        ({"seconds": 4}, "prompt"),
        ({"prompt": "p", "id": "no spaces"}, "id"),
        ({"prompt": "p", "id": "x" * 65}, "id"),
        ({"prompt": "p", "size": "wide"}, "size"),
        ({"prompt": "p", "num_frames": 0}, "num_frames"),
        ({"prompt": "p", "num_frames": MAX_FRAMES + 1}, "num_frames"),
        ({"prompt": "p", "fps": 0}, "fps"),
        ({"prompt": "p", "fps": "24"}, "fps"),  # JSON bodies are typed
        ({"prompt": "p", "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "p", "reference_url": "https://example.com/a.png"}, "reference_url"),
        ({"prompt": "p", "input_reference": 5}, "input_reference"),
        ({"prompt": "p", "input_reference": {"file_id": "f"}}, "input_reference.file_id"),
        ({"prompt": "p", "return_state": True, "output": {"return_state": False}}, "output"),
        ({"prompt": "p", "state": {"kind": "ltx2.v1", "payload": {}}}, "state"),
        ({"prompt": "p <sd_cpp_extra_args>{nope</sd_cpp_extra_args>"}, "prompt"),
    ],
)
def test_bad_video_requests_are_400_naming_the_field(body, param):
    err = rejects(fastvideo, body)
    assert err.param is not None and err.param.startswith(param), (err.param, err.message)


def test_extra_args_block_uses_the_vid_gen_schema_and_wins():
    block = (
        '<sd_cpp_extra_args>{"video_frames": 13, "fps": 6, "seed": 3, '
        '"sample_params": {"sample_method": "euler", "flow_shift": 5.0}, '
        '"output_compression": 150}</sd_cpp_extra_args>'
    )
    parsed = fastvideo({"prompt": "a cat " + block, "num_frames": 21, "seed": 9})
    assert parsed.fields == {
        "prompt": "a cat",
        "seed": 3,
        "num_frames": 13,
        "fps": 6,
        "sampler": "euler",
        "flow_shift": 5.0,
    }
    assert parsed.output.quality == 100
    err = rejects(fastvideo, {"prompt": 'x <sd_cpp_extra_args>{"output_format": "webm"}'
                              "</sd_cpp_extra_args>"})  # fmt: skip
    assert err.param == "sd_cpp_extra_args.output_format"
    err = rejects(fastvideo, {"prompt": 'x <sd_cpp_extra_args>{"batch_count": 2}'
                              "</sd_cpp_extra_args>"})  # fmt: skip
    assert err.param == "sd_cpp_extra_args.batch_count"


# -- merge precedence: seconds x fps ------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "operator", "frames"),
    [
        ({}, {}, None),  # nothing sent: operator, then family num_frames apply later
        ({"fps": 8}, {}, 16),  # client fps
        ({}, {"fps": 8}, 16),  # operator fps
        ({}, {}, 48),  # FastVideo's hard-coded 24 fps
        ({"num_frames": 9}, {"fps": 8}, 9),  # num_frames wins over seconds
    ],
)
def test_seconds_become_frames_at_the_effective_fps(sent, operator, frames):
    seconds = None if frames is None else 2
    fields = with_seconds({"prompt": "p", **sent}, seconds, operator)
    assert fields.get("num_frames") == frames


def test_fractional_seconds_round_down_and_too_long_clips_are_refused():
    assert with_seconds({}, 1.3, {"fps": 10})["num_frames"] == 13
    err = rejects(with_seconds, {}, 60.0, {})
    assert err.param == "seconds" and str(MAX_FRAMES) in err.message


# -- first frames: uploads, data URLs, base64, input_dir paths ----------------------------


def test_input_reference_as_data_url_base64_object_and_reference_url():
    as_b64 = base64.b64encode(png()).decode("ascii")
    for body in (
        {"input_reference": data_url()},
        {"input_reference": as_b64},
        {"input_reference": {"image_url": data_url()}},
        {"reference_url": data_url()},
    ):
        image = fastvideo({"prompt": "p", **body}).fields["init_image"]
        np.testing.assert_array_equal(image, FRAME)
    err = rejects(fastvideo, {"prompt": "p", "input_reference": as_b64, "reference_url": "x"})
    assert err.param == "reference_url"


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    inputs = tmp_path / "inputs"
    (inputs / "frames").mkdir(parents=True)
    (inputs / "frames" / "first.png").write_bytes(png())
    (inputs / "noext").write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png())
    os.symlink(tmp_path / "secret.png", inputs / "link.png")
    return tmp_path


def test_input_reference_paths_resolve_inside_input_dir(folders):
    capabilities = caps(folders)
    for path in ("frames/first.png", "noext", str(folders / "inputs" / "frames" / "first.png")):
        image = fastvideo({"prompt": "p", "input_reference": path}, capabilities)
        np.testing.assert_array_equal(image.fields["init_image"], FRAME)


@pytest.mark.parametrize(
    "path", ["../secret.png", "link.png", "SECRET", "frames/missing.png", "~/x.png", "a\0.png"]
)
def test_input_reference_paths_outside_or_missing_are_400(folders, path):
    path = str(folders / "secret.png") if path == "SECRET" else path
    err = rejects(fastvideo, {"prompt": "p", "input_reference": path}, caps(folders))
    assert err.param == "input_reference"
    assert str(folders / "inputs") not in err.message  # never names the server's folder


def test_input_reference_paths_need_an_input_dir():
    err = rejects(fastvideo, {"prompt": "p", "input_reference": "/etc/hostname"})
    assert err.param == "input_reference" and "server.input_dir" in err.message


def test_output_path_is_confined_to_output_dir(folders):
    limits = caps(folders).limits
    out = os.path.realpath(folders / "out")
    assert output_file("clips/a.mp4", "vid_1", limits) == os.path.join(out, "clips", "a.mp4")
    assert output_file("clips", "vid_1", limits) == os.path.join(out, "clips", "vid_1.mp4")
    assert output_file(os.path.join(out, "b.mp4"), "v", limits) == os.path.join(out, "b.mp4")
    for bad in ("../escape.mp4", "/tmp/elsewhere.mp4", "~/x.mp4"):
        assert rejects(output_file, bad, "v", limits).param == "output_path"
    (folders / "out").mkdir()
    os.symlink(folders, folders / "out" / "up")
    assert confined("up/x.mp4", str(folders / "out")) is None


# -- continuation state -------------------------------------------------------------------


def test_a_state_continues_its_model_size_and_fps_unless_the_client_chose():
    fields = fastvideo({"prompt": "p", "state": wan_state()}).fields
    assert isinstance(fields["continuation"], ContinuationState)
    assert fields["continuation"].payload["segment_index"] == 0
    assert (fields["model"], fields["width"], fields["height"], fields["fps"]) == (
        "wan",
        80,
        64,
        12,
    )
    chosen = fastvideo({"prompt": "p", "state": wan_state(), "size": "64x64", "fps": 8}).fields
    assert (chosen["width"], chosen["height"], chosen["fps"]) == (64, 64, 8)


@pytest.mark.parametrize(
    ("state", "extra", "words"),
    [
        ({"kind": "wan.v2", "payload": {}}, {}, "state.kind"),
        (wan_state(schema_version=2), {}, "schema_version"),
        (wan_state(segment_index="3"), {}, "segment_index"),
        ({**wan_state(), "extra": 1}, {}, "unknown"),
        (wan_state(), {"model": "other"}, "same model"),
        (wan_state(), {"input_reference": data_url()}, "last frame"),
    ],
)
def test_bad_states_are_400(state, extra, words):
    err = rejects(fastvideo, {"prompt": "p", "state": state, **extra})
    assert err.param == "state" and words in err.message


# -- multipart forms (the OpenAI SDK's videos.create) -------------------------------------


def test_form_strings_are_converted_by_the_schema():
    items = [
        ("prompt", "p"),
        ("seconds", "4"),
        ("size", "64x64"),
        ("num_frames", "5"),
        ("seed", "7"),
        ("guidance_scale", "1.5"),
        ("enable_teacache", "false"),
        ("output[return_state]", "true"),
        ("state[kind]", "wan.v1"),
        ("state[payload][schema_version]", "1"),
        ("state[payload][segment_index]", "2"),
        ("state[payload][model]", "123"),  # a str field stays a string
        ("negative_prompt", ""),  # the SDK's None
    ]
    data = form_to_json(VideoGenerationSchema(), items)
    assert data["num_frames"] == 5 and data["seed"] == 7 and data["guidance_scale"] == 1.5
    assert data["enable_teacache"] is False and data["output"] == {"return_state": True}
    assert data["state"] == {
        "kind": "wan.v1",
        "payload": {"schema_version": 1, "segment_index": 2, "model": "123"},
    }
    assert "negative_prompt" not in data
    assert load(VideoGenerationSchema(), data)["seconds"] == 4.0


def test_form_objects_may_also_be_json_text():
    data = form_to_json(VideoGenerationSchema(), [("prompt", "p"), ("state", '{"kind": "x"}')])
    assert data["state"] == {"kind": "x"}


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([("num_frames", "five")], "num_frames"),
        ([("guidance_scale", "high")], "guidance_scale"),
        ([("return_state", "maybe")], "return_state"),
        ([("state", "{nope")], "state"),
        ([("state[payload][schema_version]", "one")], "state.payload.schema_version"),
        ([("seed", "1"), ("seed", "2")], "seed"),
        ([("a[][b]", "1")], "a[][b]"),
        ([("size", "x"), ("size[w]", "1")], "size[w]"),
    ],
)
def test_form_values_that_cannot_convert_are_400(items, param):
    err = rejects(form_to_json, VideoGenerationSchema(), [("prompt", "p"), *items])
    assert err.param == param


# -- sd.cpp vid_gen -----------------------------------------------------------------------

FULL_VIDGEN_BODY = {
    "prompt": "a cat walking through a rainy alley",
    "negative_prompt": "",
    "clip_skip": -1,
    "width": 64,
    "height": 48,
    "strength": 0.75,
    "seed": -1,
    "video_frames": 34,
    "fps": 16,
    "moe_boundary": 0.875,
    "vace_strength": 1.0,
    "init_image": None,
    "end_image": None,
    "control_frames": [],
    "sample_params": {
        "scheduler": "discrete",
        "sample_method": "euler",
        "sample_steps": 28,
        "eta": 1.0,
        "shifted_timestep": 0,
        "custom_sigmas": [],
        "flow_shift": 0.0,
        "guidance": {
            "txt_cfg": 7.0,
            "img_cfg": 7.0,
            "distilled_guidance": 3.5,
            "slg": {"layers": [7, 8, 9], "layer_start": 0.01, "layer_end": 0.2, "scale": 0.0},
        },
    },
    "high_noise_sample_params": {
        "scheduler": "discrete",
        "sample_method": "euler",
        "sample_steps": -1,
        "eta": 1.0,
        "shifted_timestep": 0,
        "flow_shift": 0.0,
        "guidance": {
            "txt_cfg": 7.0,
            "img_cfg": 7.0,
            "distilled_guidance": 3.5,
            "slg": {"layers": [7, 8, 9], "layer_start": 0.01, "layer_end": 0.2, "scale": 0.0},
        },
    },
    "lora": [],
    "vae_tiling_params": {
        "enabled": False,
        "tile_size_x": 0,
        "tile_size_y": 0,
        "target_overlap": 0.5,
        "rel_size_x": 0.0,
        "rel_size_y": 0.0,
    },
    "cache_mode": "disabled",
    "cache_option": "",
    "scm_mask": "",
    "scm_policy_dynamic": True,
    "output_format": "WEBM",
    "output_compression": 120,
}


def test_the_seed_docs_full_vid_gen_body_translates():
    fields, output = vidgen(FULL_VIDGEN_BODY)
    assert fields == {
        "prompt": "a cat walking through a rainy alley",
        "negative_prompt": "",
        "width": 64,
        "height": 48,
        "seed": -1,
        "strength": 0.75,
        "sampler": "euler",
        "scheduler": "discrete",
        "steps": 28,
        "eta": 1.0,
        "guidance_scale": 7.0,
        # sd.cpp's default, dropped by the request check on models without it (Wan).
        "distilled_guidance": 3.5,
        "num_frames": 34,
        "fps": 16,
        "moe_boundary": 0.875,
        "high_noise": HighNoiseParams("euler", "discrete", -1, 7.0, 1.0, None),
    }
    assert output == {"output_format": "webm", "quality": 100}


def test_vid_gen_images_and_high_noise_settings():
    fields, output = vidgen(
        {
            "init_image": data_url(),
            "end_image": base64.b64encode(png(FRAME[::-1])).decode("ascii"),
            "sample_params": {"flow_shift": 5.0},
            "high_noise_sample_params": {"sample_steps": 3, "guidance": {"txt_cfg": 4.0}},
            "output_format": "avi",
            "output_compression": -5,
        }
    )
    np.testing.assert_array_equal(fields["init_image"], FRAME)
    np.testing.assert_array_equal(fields["end_image"], FRAME[::-1])
    assert fields["flow_shift"] == 5.0
    assert fields["high_noise"] == HighNoiseParams(steps=3, guidance_scale=4.0)
    assert output == {"output_format": "avi", "quality": 0}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"control_frames": ["aGk="]}, "control_frames", "VACE"),
        ({"cache_mode": "easycache", "cache_option": "bogus=1"}, "cache_option", "'bogus'"),
        ({"cache_mode": "dbcache", "scm_mask": "1,x"}, "scm_mask", "0 and 1"),
        ({"cache_mode": "turbo"}, "cache_mode", "Must be one of"),
        (
            {"high_noise_sample_params": {"guidance": {"slg": {"scale": 1.0}}}},
            "high_noise_sample_params.guidance.slg.scale",
            "SD3.5",
        ),
        ({"video_frames": 0}, "video_frames", ">= 1"),
        ({"fps": 0}, "fps", "within [1, 120]"),
        ({"video_frames": MAX_FRAMES + 4}, "video_frames", str(MAX_FRAMES)),
        ({"moe_boundary": 1.0}, "moe_boundary", "(0, 1)"),
        ({"output_format": "mp4"}, "output_format", "[webm, webp, avi]"),
        ({"output_format": "gif"}, "output_format", "[webm, webp, avi]"),
        ({"batch_count": 2}, "batch_count", "Unknown"),
        ({"mask_image": "aGk="}, "mask_image", "Unknown"),
        ({"end_image": "aGVsbG8="}, "end_image", "decode"),
        ({"high_noise_sample_params": {"sample_method": "nope"}}, "sample_method", "unknown"),
        ({"high_noise_sample_params": {"sample_steps": 151}}, "sample_steps", "<= 150"),
    ],
)
def test_vid_gen_refusals_name_the_field(body, param, words):
    err = rejects(vidgen, body)
    assert param in (err.param or "") and words in err.message, (err.param, err.message)
