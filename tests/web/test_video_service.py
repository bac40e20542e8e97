"""Video requests through the Service and the Flask app, in process, over a stand-in engine.

The stand-in has the real engine's interface and the real Wan/SD model descriptions
(`ModelInfo` as `jaxvideo.engine.Engine` reports them for the demo models), and makes videos
with numpy, so merge precedence, model checks, job objects, listing and deletion are tested in
milliseconds; the e2e tests run the same routes on the real models.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from jaxvideo.config import ConfigError, ServeConfig, ServerConfig, config_from_dict
from jaxvideo.continuation import ContinuationState, wan_state
from jaxvideo.errors import Cancelled, InvalidRequest
from jaxvideo.request import GenerationRequest, HighNoiseParams
from jaxvideo.results import GenerationResult, ModelInfo
from webapp import create_app
from webapp.errors import ApiError
from webapp.jobs import JobTable
from webapp.schemas.common import load
from webapp.schemas.openai import VideoGenerationSchema
from webapp.service import Service
from webapp.translate import Capabilities
from webapp.video_fields import (
    FASTVIDEO_FALLBACK,
    FASTVIDEO_NAMES,
    VIDGEN_NAMES,
    VideoOutput,
    fastvideo_fields,
    with_seconds,
)

CATALOG = ("euler", "euler_a", "lcm")
SCHEDULES = ("discrete", "karras")
FLOW = ("unipc", "euler")
WAN_FEATURES = ("init_image", "lora", "cancel_queued", "cancel_generating")
INFOS = {
    "sd": ModelInfo("sd", "sd1", "/m/sd", ("img_gen",), 1),
    "wan": ModelInfo(
        "wan",
        "wan21",
        "/m/wan",
        ("img_gen", "vid_gen"),
        2,
        samplers=FLOW,
        schedulers=("discrete",),
        features={"vid_gen": WAN_FEATURES, "img_gen": ("lora",)},
        size_multiple=16,
        frame_multiple=4,
    ),
    "wan22": ModelInfo(
        "wan22",
        "wan22",
        "/m/wan22",
        ("img_gen", "vid_gen"),
        3,
        samplers=FLOW,
        schedulers=("discrete",),
        features={"vid_gen": (*WAN_FEATURES, "end_image", "high_noise_sample_params")},
        size_multiple=16,
        frame_multiple=4,
    ),
}
SD_DEFAULTS = {"width": 512, "height": 512, "steps": 20, "sampler": "euler_a"}
WAN_DEFAULTS = {
    "width": 128,
    "height": 128,
    "num_frames": 17,
    "fps": 16,
    "steps": 50,
    "guidance_scale": 5.0,
    "sampler": "unipc",
    "scheduler": "discrete",
}


@dataclass
class StandInEngine:
    """`Engine`'s interface; videos are gradients whose frame i is uniformly i * 10."""

    names: tuple[str, ...] = ("sd", "wan", "wan22")
    step_delay: float = 0.0
    requests: list[GenerationRequest] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    @property
    def models(self) -> list[ModelInfo]:
        return [INFOS[name] for name in self.names]

    def model_info(self, name: str | None = None) -> ModelInfo:
        if name is None:
            return self.models[0]
        if name not in self.names:
            raise InvalidRequest(f"unknown model {name!r}; served: {', '.join(self.names)}")
        return INFOS[name]

    def family_defaults(self, name: str | None = None) -> dict[str, Any]:
        info = self.model_info(name)
        return dict(SD_DEFAULTS if info.family == "sd1" else WAN_DEFAULTS)

    def generate(self, request, progress=None, cancelled=None) -> GenerationResult:
        self.requests.append(request)
        assert self.gate.wait(10)
        for step in range(1, request.steps + 1):
            time.sleep(self.step_delay)
            if progress is not None:
                progress(step, request.steps)
            if cancelled is not None and cancelled() and step < request.steps:
                raise Cancelled()
        frames = (request.num_frames - 1) // 4 * 4 + 1
        video = np.empty((frames, request.height, request.width, 3), np.uint8)
        for i in range(frames):
            video[i] = (i * 10) % 256
        state = None
        if request.return_state:
            segment = 0
            if request.continuation is not None:
                segment = request.continuation.payload["segment_index"] + 1
            state = wan_state(segment, request.model, video[-1], request.fps).to_json()
        return GenerationResult(
            [], request.seeds(), {"frame_count": frames}, [video], request.fps, state
        )


def make_service(operator: dict | None = None, tmp_path: Path | None = None, **engine) -> Service:
    server = ServerConfig(output_dir=str(tmp_path or "/tmp/jaxvideo-test-out"))
    config = ServeConfig(models=(), server=server, default_request=operator or {})
    stand_in = StandInEngine(**engine)
    caps = Capabilities.serving(CATALOG, SCHEDULES, server, stand_in.models)
    return Service(config, stand_in, JobTable(), caps)


def openai_request(svc: Service, body: dict) -> GenerationRequest:
    """What /v1/videos makes of `body` (without queuing it)."""
    parsed = fastvideo_fields(load(VideoGenerationSchema(), body), svc.caps)
    fields = with_seconds(parsed.fields, parsed.seconds, svc.config.default_request)
    return svc.resolve({**fields, "mode": "vid_gen"}, FASTVIDEO_NAMES, FASTVIDEO_FALLBACK)


def rejects(call, *args, status: int = 400) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args)
    assert info.value.status == status, info.value.message
    return info.value


# -- merge precedence: client > operator default_request > surface fallback > family ------


def test_operator_defaults_fill_what_the_client_did_not_send():
    svc = make_service({"seed": 7, "fps": 8, "steps": 3})
    request = openai_request(svc, {"prompt": "p"})
    assert (request.seed, request.fps, request.steps) == (7, 8, 3)
    # FastVideo's schema defaults (seconds=4, seed=1024) were not sent, so they do not count:
    assert request.num_frames == WAN_DEFAULTS["num_frames"]
    assert (request.width, request.height) == (128, 128)  # family


def test_client_fields_win_even_when_equal_to_a_schema_default():
    svc = make_service({"seed": 7, "fps": 8})
    request = openai_request(svc, {"prompt": "p", "seed": 1024, "fps": 24, "size": "96x64"})
    assert (request.seed, request.fps, request.width, request.height) == (1024, 24, 96, 64)


def test_the_surface_fallback_fps_sits_between_operator_and_family():
    svc = make_service()
    assert openai_request(svc, {"prompt": "p"}).fps == 24  # FastVideo's hard-coded 24
    native = svc.resolve({"mode": "vid_gen"}, VIDGEN_NAMES)
    assert native.fps == 16  # sd.cpp's surface has no fallback: the family's 16


def test_seconds_use_the_effective_fps_and_beat_operator_frames():
    svc = make_service({"fps": 8, "num_frames": 33})
    assert openai_request(svc, {"prompt": "p"}).num_frames == 33  # operator
    assert openai_request(svc, {"prompt": "p", "seconds": 2}).num_frames == 16  # 2 x 8
    assert openai_request(svc, {"prompt": "p", "seconds": "2", "fps": 4}).num_frames == 8
    request = openai_request(svc, {"prompt": "p", "seconds": 2, "num_frames": 9})
    assert request.num_frames == 9
    assert openai_request(make_service(), {"prompt": "p", "seconds": 1}).num_frames == 24


def test_queued_jobs_report_the_frames_the_model_will_make(tmp_path):
    svc = make_service({"fps": 8, "steps": 1}, tmp_path)
    request = openai_request(svc, {"prompt": "p", "seconds": 2, "size": "64x64"})
    view = svc.submit_video(request, VideoOutput(), "openai")
    assert view.meta.num_frames == 13  # 16 requested -> the largest 4n+1
    done = svc.jobs.wait(view.id, 10)
    assert done.result.frame_count == 13 and done.result.fps == 8
    svc.jobs.shutdown()


def test_operator_defaults_that_break_a_video_model_fail_start_up():
    svc = make_service({"width": 72})  # a multiple of 8, not of Wan's 16
    with pytest.raises(ConfigError) as info:
        svc.check_operator_defaults()
    assert "wan" in str(info.value) and "multiple of 16" in str(info.value)
    make_service({"width": 64, "fps": 8}).check_operator_defaults()


# -- which model, and what it supports ----------------------------------------------------


def test_video_requests_go_to_a_video_model_even_when_the_default_is_sd():
    svc = make_service({"model": "sd"})
    assert openai_request(svc, {"prompt": "p"}).model == "wan"
    assert openai_request(svc, {"prompt": "p", "model": "wan22"}).model == "wan22"
    err = rejects(openai_request, svc, {"prompt": "p", "model": "sd"})
    assert err.param == "model" and "cannot serve vid_gen" in err.message
    assert rejects(openai_request, svc, {"prompt": "p", "model": "sora-2"}).param == "model"


def test_no_video_model_is_a_503_that_a_retry_cannot_fix():
    svc = make_service(names=("sd",))
    err = rejects(openai_request, svc, {"prompt": "p"}, status=503)
    assert err.message == "no video generator loaded" and err.retryable is False


def test_images_from_a_wan_model_use_its_own_samplers():
    svc = make_service()
    request = svc.resolve({"model": "wan", "width": 64, "height": 64})
    assert (request.mode, request.sampler) == ("img_gen", "unipc")
    assert rejects(svc.resolve, {"model": "wan", "sampler": "lcm"}).param == "sampler"
    assert rejects(svc.resolve, {"model": "sd", "sampler": "unipc"}).param == "sampler"


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"end_image": np.zeros((64, 64, 3), np.uint8)}, "end_image", "end_image"),
        ({"guidance_scale_2": 2.0}, "guidance_scale_2", "high_noise_sample_params"),
        ({"custom_sigmas": (1.0, 0.5)}, "sample_params.custom_sigmas", "wan21"),
        ({"shifted_timestep": 5}, "sample_params.shifted_timestep", "wan21"),
        ({"width": 72}, "width", "multiple of 16"),
        ({"num_frames": 300}, "video_frames", "257"),
        ({"model": "sd"}, "model", "cannot serve"),
    ],
)
def test_what_the_video_model_lacks_is_a_400(fields, param, words):
    err = rejects(make_service().resolve, {"mode": "vid_gen", **fields}, VIDGEN_NAMES)
    assert err.param == param and words in err.message


def test_two_expert_settings_apply_to_wan22_and_are_dropped_on_wan21():
    svc = make_service()
    high = HighNoiseParams(steps=2)
    fields = {"mode": "vid_gen", "high_noise": high, "moe_boundary": 0.8}
    wan21 = svc.resolve({**fields, "model": "wan"}, VIDGEN_NAMES)
    assert (wan21.high_noise, wan21.moe_boundary) == (None, None)
    wan22 = svc.resolve({**fields, "model": "wan22", "guidance_scale_2": 2.0}, VIDGEN_NAMES)
    assert (wan22.high_noise, wan22.moe_boundary, wan22.guidance_scale_2) == (high, 0.8, 2.0)
    wan22 = svc.resolve(
        {"model": "wan22", "mode": "vid_gen", "end_image": np.zeros((8, 8, 3), np.uint8)}
    )
    assert wan22.end_image is not None


def test_refusals_of_extra_args_fields_name_the_block_field():
    block = '<sd_cpp_extra_args>{"sample_params": {"shifted_timestep": 5}}</sd_cpp_extra_args>'
    err = rejects(openai_request, make_service(), {"prompt": "p " + block})
    assert err.param == "sd_cpp_extra_args.sample_params.shifted_timestep"
    err = rejects(openai_request, make_service(), {"prompt": "p", "size": "72x64"})
    assert err.param == "size"


def test_sd_refuses_flow_fields_and_wan_images_refuse_init_images():
    svc = make_service()
    err = rejects(svc.resolve, {"flow_shift": 3.0}, {"flow_shift": "sample_params.flow_shift"})
    assert err.param == "sample_params.flow_shift" and "not supported" in err.message
    image = np.zeros((64, 64, 3), np.uint8)
    err = rejects(svc.resolve, {"model": "wan", "init_image": image})
    assert err.param == "init_image" and "does not support init_image for img_gen" in err.message


# -- the app: /v1/videos* and /sdcpp/v1/vid_gen ------------------------------------------


@pytest.fixture
def app_client(tmp_path):
    stand_in = StandInEngine(step_delay=0.01)
    config = config_from_dict(
        {
            "models": [
                {"name": n, "family": INFOS[n].family, "path": "demo:x"} for n in stand_in.names
            ],
            "server": {
                "output_dir": str(tmp_path / "out"),
                "input_dir": str(tmp_path / "in"),
                "max_queue_size": 3,
            },
            "default_request": {"steps": 2, "width": 64, "height": 64, "num_frames": 5},
        }
    )
    app = create_app(config, engine=stand_in)
    client = app.test_client()
    client.engine = stand_in
    yield client
    app.extensions["jaxvideo"].jobs.shutdown()


def wait_done(client, video_id: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = client.get(f"/v1/videos/{video_id}").json
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.01)
    raise AssertionError(f"{video_id} did not finish")


def test_create_poll_and_download_an_mp4(app_client, decode_video):
    created = app_client.post("/v1/videos", json={"prompt": "a fox", "seconds": "1", "fps": 8})
    assert created.status_code == 200 and created.headers["openai-poll-after-ms"] == "250"
    video = created.json
    assert video["id"].startswith("video_") and video["object"] == "video"
    assert (video["status"], video["progress"], video["completed_at"]) == ("queued", 0, None)
    assert (video["model"], video["size"], video["num_frames"], video["fps"]) == (
        "wan",
        "64x64",
        5,  # 1 s x 8 fps -> 8 -> 4n+1
        8,
    )
    done = wait_done(app_client, video["id"])
    assert (done["status"], done["progress"], done["error"]) == ("completed", 100, None)
    assert done["seconds"] == "0.625" and done["expires_at"] == done["completed_at"] + 600
    assert "state" not in done and done["inference_time_s"] >= 0
    assert "openai-poll-after-ms" not in app_client.get(f"/v1/videos/{video['id']}").headers
    content = app_client.get(f"/v1/videos/{video['id']}/content")
    assert content.mimetype == "video/mp4"
    _, frames = decode_video(content.data)
    assert frames.shape == (5, 64, 64, 3)
    # Frame i of the stand-in's video is uniformly i * 10 (H.264 is lossy: about).
    assert np.abs(frames.mean(axis=(1, 2, 3)) - np.arange(5) * 10).max() < 3
    thumb = app_client.get(f"/v1/videos/{video['id']}/content?variant=thumbnail")
    assert thumb.mimetype == "image/webp"
    assert Image.open(io.BytesIO(thumb.data)).size == (64, 64)
    bad = app_client.get(f"/v1/videos/{video['id']}/content?variant=spritesheet")
    assert bad.status_code == 400 and bad.json["error"]["param"] == "variant"


def test_the_synchronous_route_returns_the_finished_video_with_state(app_client):
    body = {"prompt": "p", "num_frames": 9, "output": {"return_state": True}, "id": "sync-1"}
    done = app_client.post("/v1/videos/generations", json=body).json
    assert (done["id"], done["status"], done["num_frames"]) == ("sync-1", "completed", 9)
    state = done["state"]
    assert state["kind"] == "wan.v1" and state["payload"]["segment_index"] == 0
    again = app_client.post("/v1/videos/generations", json={"prompt": "p2", "state": state}).json
    assert again["status"] == "completed"
    continued = app_client.engine.requests[-1]
    assert isinstance(continued.continuation, ContinuationState)
    assert (continued.model, continued.fps, continued.width) == ("wan", 24, 64)
    tampered = {**state, "kind": "ltx2.v1"}
    err = app_client.post("/v1/videos/generations", json={"prompt": "p", "state": tampered})
    assert err.status_code == 400 and err.json["error"]["param"] == "state"
    assert err.headers["x-should-retry"] == "false"


def test_multipart_like_the_sdk_with_an_uploaded_first_frame(app_client):
    frame = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(frame, format="PNG")
    form = {
        "prompt": "p",
        "seconds": "1",
        "size": "64x64",
        "num_frames": "5",
        "seed": "5",
        "return_state": "true",
        "input_reference": (io.BytesIO(frame.getvalue()), "frame.png", "image/png"),
    }
    created = app_client.post("/v1/videos", data=form, content_type="multipart/form-data")
    assert created.status_code == 200, created.json
    assert (created.json["seed"], created.json["num_frames"]) == (5, 5)
    assert wait_done(app_client, created.json["id"])["state"]["kind"] == "wan.v1"
    first = app_client.engine.requests[-1].init_image
    assert first.shape == (64, 64, 3) and tuple(first[0, 0]) == (200, 10, 10)
    bad = app_client.post(
        "/v1/videos", data={"prompt": "p", "seed": "x"}, content_type="multipart/form-data"
    )
    assert bad.status_code == 400 and bad.json["error"]["param"] == "seed"


def test_output_path_writes_the_mp4_inside_the_output_folder(app_client, tmp_path):
    done = app_client.post(
        "/v1/videos/generations", json={"prompt": "p", "output_path": "clips"}
    ).json
    path = Path(done["file_path"])
    assert path.parent == (tmp_path / "out" / "clips").resolve()
    assert path.name == f"{done['id']}.mp4"
    assert path.read_bytes() == app_client.get(f"/v1/videos/{done['id']}/content").data
    outside = app_client.post("/v1/videos", json={"prompt": "p", "output_path": "../x.mp4"})
    assert outside.status_code == 400 and outside.json["error"]["param"] == "output_path"


def test_list_paginates_newest_first_and_delete_forgets(app_client):
    ids = []
    for i in range(3):
        ids.append(
            app_client.post("/v1/videos", json={"prompt": f"p{i}", "id": f"v{i}"}).json["id"]
        )
        wait_done(app_client, ids[-1])
    app_client.post("/sdcpp/v1/vid_gen", json={"video_frames": 5})  # not on this surface
    page = app_client.get("/v1/videos?limit=2").json
    assert [v["id"] for v in page["data"]] == ["v2", "v1"]
    assert (page["has_more"], page["first_id"], page["last_id"]) == (True, "v2", "v1")
    rest = app_client.get("/v1/videos?limit=2&after=v1").json
    assert [v["id"] for v in rest["data"]] == ["v0"] and rest["has_more"] is False
    asc = app_client.get("/v1/videos?order=asc").json
    assert [v["id"] for v in asc["data"]] == ids
    for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("order=up", "order")):
        response = app_client.get(f"/v1/videos?{query}")
        assert response.status_code == 400 and response.json["error"]["param"] == param
    assert app_client.get("/v1/videos?after=nope").status_code == 400
    deleted = app_client.delete("/v1/videos/v1").json
    assert deleted == {"id": "v1", "object": "video.deleted", "deleted": True}
    assert app_client.get("/v1/videos/v1").status_code == 404
    assert app_client.delete("/v1/videos/v1").status_code == 404
    assert [v["id"] for v in app_client.get("/v1/videos").json["data"]] == ["v2", "v0"]


def test_deleting_a_queued_or_running_video_cancels_it(app_client):
    app_client.engine.gate.clear()
    running = app_client.post("/v1/videos", json={"prompt": "p"}).json["id"]
    deadline = time.monotonic() + 10
    while not app_client.engine.requests:  # the worker is inside generate, held by the gate
        assert time.monotonic() < deadline
        time.sleep(0.005)
    queued = app_client.post("/v1/videos", json={"prompt": "p"}).json["id"]
    assert app_client.get(f"/v1/videos/{running}").json["status"] == "in_progress"
    assert app_client.get(f"/v1/videos/{queued}").json["status"] == "queued"
    assert app_client.get(f"/v1/videos/{queued}/content").status_code == 404  # not ready
    assert app_client.delete(f"/v1/videos/{queued}").json["deleted"] is True
    assert app_client.delete(f"/v1/videos/{running}").json["deleted"] is True
    app_client.engine.gate.set()
    jobs = app_client.application.extensions["jaxvideo"].jobs
    deadline = time.monotonic() + 10
    while jobs.counts()["generating"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert jobs.counts() == {"queued": 0, "generating": 0}
    assert len(app_client.engine.requests) == 1  # the queued one never ran


def test_a_cancelled_video_reads_failed_with_code_cancelled(app_client):
    app_client.engine.gate.clear()
    video = app_client.post("/v1/videos", json={"prompt": "p"}).json["id"]
    app_client.post(f"/sdcpp/v1/jobs/{video}/cancel")
    app_client.engine.gate.set()
    done = wait_done(app_client, video)
    assert done["status"] == "failed" and done["error"]["code"] == "cancelled"
    assert app_client.get(f"/v1/videos/{video}/content").status_code == 404


def test_ids_conflicts_unknown_ids_and_a_full_queue(app_client):
    assert app_client.post("/v1/videos", json={"prompt": "p", "id": "mine"}).status_code == 200
    conflict = app_client.post("/v1/videos", json={"prompt": "p", "id": "mine"})
    assert conflict.status_code == 409 and conflict.json["error"]["code"] == "job_exists"
    assert conflict.headers["x-should-retry"] == "false"
    missing = app_client.get("/v1/videos/video_missing")
    assert missing.status_code == 404 and "error" in missing.json
    sdcpp_job = app_client.post("/sdcpp/v1/vid_gen", json={"video_frames": 5}).json["id"]
    assert app_client.get(f"/v1/videos/{sdcpp_job}").status_code == 404
    app_client.engine.gate.clear()
    statuses = [app_client.post("/v1/videos", json={"prompt": "p"}).status_code for _ in range(4)]
    app_client.engine.gate.set()
    assert statuses[-1] == 429


def test_sdcpp_vid_gen_result_and_refusals(app_client):
    accepted = app_client.post(
        "/sdcpp/v1/vid_gen", json={"video_frames": 34, "fps": 12, "output_format": "WebP"}
    )
    assert accepted.status_code == 202
    body = accepted.json
    assert (body["kind"], body["status"]) == ("vid_gen", "queued")
    assert body["poll_url"] == f"/sdcpp/v1/jobs/{body['id']}"
    jobs = app_client.application.extensions["jaxvideo"].jobs
    jobs.wait(body["id"], 10)
    result = app_client.get(body["poll_url"]).json["result"]
    assert {k: result[k] for k in ("output_format", "mime_type", "fps", "frame_count")} == {
        "output_format": "webp",
        "mime_type": "image/webp",
        "fps": 12,
        "frame_count": 33,
    }
    for body, name in (
        ({"model": "sd"}, "model"),
        ({"end_image": "aGk="}, "end_image"),  # wan21 has no last-frame conditioning
        ({"control_frames": ["aGk="]}, "control_frames"),
        ({"output_format": "mp4"}, "output_format"),
    ):
        response = app_client.post("/sdcpp/v1/vid_gen", json=body)
        assert response.status_code == 400 and name in str(response.json), response.json


def test_capabilities_describe_both_modes(app_client):
    caps = app_client.get("/sdcpp/v1/capabilities").json
    assert caps["supported_modes"] == ["img_gen", "vid_gen"] and caps["current_mode"] == "img_gen"
    assert caps["output_formats_by_mode"]["vid_gen"] == ["webm", "webp", "avi"]
    video = caps["defaults_by_mode"]["vid_gen"]
    assert (video["video_frames"], video["fps"], video["width"]) == (5, 16, 64)
    assert video["sample_params"]["sample_method"] == "unipc"
    assert (video["moe_boundary"], video["vace_strength"]) == (0.875, 1.0)
    assert video["high_noise_sample_params"]["sample_steps"] == -1
    assert video["output_format"] == "webm"
    assert caps["features_by_mode"]["vid_gen"] == {
        "init_image": True,
        "end_image": False,
        "control_frames": False,
        "high_noise_sample_params": False,
        "lora": False,  # this server has no LoRA folder
        "vae_tiling": False,
        "cache": False,
        "cancel_queued": True,
        "cancel_generating": True,
    }
    wan22 = next(m for m in caps["models"] if m["name"] == "wan22")
    assert wan22["features_by_mode"]["vid_gen"]["end_image"] is True
    # The default (SD) model's samplers are the global catalog; Wan has its own.
    assert wan22["samplers"] == list(FLOW) and "unipc" not in caps["samplers"]
    spec = app_client.get("/openapi.json").json
    assert {"get", "post"} <= set(spec["paths"]["/v1/videos"])
    assert set(spec["paths"]["/v1/videos"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
    }
    assert "delete" in spec["paths"]["/v1/videos/{video_id}"]
    assert "VidGen" in spec["components"]["schemas"]


def test_sdapi_sampler_lists_follow_the_current_checkpoint(app_client):
    names = [s["name"] for s in app_client.get("/sdapi/v1/samplers").json]
    assert "Euler a" in names and "UniPC" not in names
    app_client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "wan"})
    names = [s["name"] for s in app_client.get("/sdapi/v1/samplers").json]
    assert names == ["UniPC", "Euler"]
