"""Video requests through the Service and the Flask app, in process, over the real engine.

One `Engine` serves the tiny random-weight demo models for the whole module (`sd`: SD 1.x,
`wan`: Wan 2.1 text-to-video, `wan22`: Wan 2.2 two-expert image-to-video); every service and
app here is built over it, so loading happens once. Videos are 64x64 with 5 (or 9) frames and
2 steps, so the transformer compiles few shapes; a job that must still be running while a test
acts on it asks for many steps instead of a bigger shape (steps cost no compilation), and the
test polls until it is in progress. The videos are noise; what is checked is what the service
resolves, what the jobs report, and that the bytes served are the engine's frames.
"""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxvideo.config import ConfigError, ServeConfig, ServerConfig, config_from_dict
from jaxvideo.continuation import ContinuationState
from jaxvideo.demo_wan import DEMO_DEFAULTS as WAN_FAMILY
from jaxvideo.engine import Engine, PreparedRequest
from jaxvideo.media import encode_image
from jaxvideo.request import GenerationRequest, HighNoiseParams
from jaxvideo.sampling import cache_modes
from tests.support.sampling import FLOW_SAMPLERS
from webapp import create_app
from webapp.core.capabilities import Capabilities
from webapp.core.errors import ApiError
from webapp.core.jobs import JobTable
from webapp.core.outputs import VideoOutput
from webapp.core.schemas import load
from webapp.core.service import Service
from webapp.openai.schemas import VideoGenerationSchema
from webapp.openai.video_translate import FALLBACK as FASTVIDEO_FALLBACK
from webapp.openai.video_translate import NAMES as FASTVIDEO_NAMES
from webapp.openai.video_translate import fastvideo_fields, with_seconds
from webapp.sdcpp.translate import NAMES as VIDGEN_NAMES

SD_MODEL = {"name": "sd", "family": "sd1", "path": "demo:sd1-tiny"}
MODELS = [
    SD_MODEL,  # first: the default model, which cannot make videos
    {"name": "wan", "family": "wan21", "path": "demo:wan-tiny"},
    {"name": "wan22", "family": "wan22", "path": "demo:wan22-tiny"},  # needs a first frame
]
SMALL = {"steps": 2, "width": 64, "height": 64, "num_frames": 5}
# Minutes of work at milliseconds per 64x64 step, so a job asking for it is still generating
# whenever a test acts on it; tests cancel it, which takes one step, so its length costs nothing.
LONG_STEPS = 30_000
POLL_TIMEOUT_S = 180  # a cold start compiles the transformer and the VAE first
STOP_TIMEOUT_S = 30  # a cancelled job stops at its next step, long before LONG_STEPS could run
FLOW = FLOW_SAMPLERS  # Wan's own samplers


@pytest.fixture(scope="module")
def engine() -> Engine:
    """The one real engine every service and app of this module shares."""
    return Engine(config_from_dict({"models": MODELS, "default_request": SMALL}))


def make_service(
    engine: Engine, operator: dict | None = None, tmp_path: Path | None = None
) -> Service:
    """A Service over the shared engine whose operator layer is `operator` alone."""
    server = ServerConfig(output_dir=str(tmp_path or "/tmp/jaxvideo-test-out"))
    config = ServeConfig(models=engine.config.models, server=server, default_request=operator or {})
    caps = Capabilities.serving(server, engine.models)
    return Service(config, engine, JobTable(), caps)


def openai_prepared(svc: Service, body: dict) -> PreparedRequest:
    """What /v1/videos makes of `body` (without queuing it)."""
    parsed = fastvideo_fields(load(VideoGenerationSchema(), body), svc.caps)
    fields = with_seconds(parsed.fields, parsed.seconds, svc.config.default_request)
    return svc.resolve({**fields, "mode": "vid_gen"}, FASTVIDEO_NAMES, FASTVIDEO_FALLBACK)


def openai_request(svc: Service, body: dict) -> GenerationRequest:
    return openai_prepared(svc, body).request


def rejects(call, *args, status: int = 400) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args)
    assert info.value.status == status, info.value.message
    return info.value


def png_bytes(color: tuple[int, int, int], size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def png_data_url(color: tuple[int, int, int]) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(color)).decode("ascii")


# -- merge precedence: client > operator default_request > surface fallback > family ------


def test_operator_defaults_fill_what_the_client_did_not_send(engine):
    svc = make_service(engine, {"seed": 7, "fps": 8, "steps": 3})
    request = openai_request(svc, {"prompt": "p"})
    assert (request.seed, request.fps, request.steps) == (7, 8, 3)
    # FastVideo's schema defaults (seconds=4, seed=1024) were not sent, so they do not count:
    assert request.num_frames == WAN_FAMILY["num_frames"] == 17
    assert (request.width, request.height) == (128, 128)  # the demo model's family defaults


def test_client_fields_win_even_when_equal_to_a_schema_default(engine):
    svc = make_service(engine, {"seed": 7, "fps": 8})
    request = openai_request(svc, {"prompt": "p", "seed": 1024, "fps": 24, "size": "96x64"})
    assert (request.seed, request.fps, request.width, request.height) == (1024, 24, 96, 64)


def test_the_surface_fallback_fps_sits_between_operator_and_family(engine):
    svc = make_service(engine)
    assert openai_request(svc, {"prompt": "p"}).fps == 24  # FastVideo's hard-coded 24
    native = svc.resolve({"mode": "vid_gen"}, VIDGEN_NAMES).request
    assert native.fps == WAN_FAMILY["fps"] == 16  # sd.cpp's surface has no fallback


def test_seconds_use_the_effective_fps_and_beat_operator_frames(engine):
    svc = make_service(engine, {"fps": 8, "num_frames": 33})
    assert openai_request(svc, {"prompt": "p"}).num_frames == 33  # operator
    assert openai_request(svc, {"prompt": "p", "seconds": 2}).num_frames == 16  # 2 x 8
    assert openai_request(svc, {"prompt": "p", "seconds": "2", "fps": 4}).num_frames == 8
    request = openai_request(svc, {"prompt": "p", "seconds": 2, "num_frames": 9})
    assert request.num_frames == 9
    assert openai_request(make_service(engine), {"prompt": "p", "seconds": 1}).num_frames == 24


def test_queued_jobs_report_the_frames_the_model_will_make(engine, tmp_path):
    svc = make_service(engine, {"fps": 5, "steps": 2}, tmp_path)
    prepared = openai_prepared(svc, {"prompt": "p", "seconds": 2, "size": "64x64"})
    request = prepared.request
    assert request.num_frames == 10  # 2 s x 5 fps
    view = svc.submit_video(prepared, VideoOutput(), "openai")
    assert view.meta.num_frames == 9  # the largest 4n+1 not above 10
    done = svc.jobs.wait(view.id, POLL_TIMEOUT_S)
    assert done.status == "completed", done.error
    assert (done.result.frame_count, done.result.fps, done.result.seed) == (9, 5, request.seed)
    svc.jobs.shutdown()


def test_operator_defaults_that_break_a_video_model_fail_start_up(engine):
    svc = make_service(engine, {"width": 72})  # a multiple of 8, not of Wan's 16
    with pytest.raises(ConfigError) as info:
        svc.check_operator_defaults()
    assert "wan" in str(info.value) and "multiple of 16" in str(info.value)
    make_service(engine, {"width": 64, "fps": 8}).check_operator_defaults()


# -- which model, and what it supports ----------------------------------------------------


def test_video_requests_go_to_a_video_model_even_when_the_default_is_sd(engine):
    svc = make_service(engine, {"model": "sd"})
    assert openai_request(svc, {"prompt": "p"}).model == "wan"
    first = png_data_url((9, 9, 9))
    wan22 = openai_request(svc, {"prompt": "p", "model": "wan22", "input_reference": first})
    assert wan22.model == "wan22" and wan22.init_image.shape == (64, 64, 3)
    err = rejects(openai_request, svc, {"prompt": "p", "model": "wan22"})
    assert err.param == "input_reference" and "image-to-video" in err.message
    err = rejects(openai_request, svc, {"prompt": "p", "model": "sd"})
    assert err.param == "model" and "cannot serve vid_gen" in err.message
    assert rejects(openai_request, svc, {"prompt": "p", "model": "sora-2"}).param == "model"


def test_no_video_model_is_a_503_that_a_retry_cannot_fix():
    sd_only = Engine(config_from_dict({"models": [SD_MODEL]}))
    err = rejects(openai_request, make_service(sd_only), {"prompt": "p"}, status=503)
    assert err.message == "no video generator loaded" and err.retryable is False


def test_images_from_a_wan_model_use_its_own_samplers(engine):
    svc = make_service(engine)
    request = svc.resolve({"model": "wan", "width": 64, "height": 64}).request
    assert (request.mode, request.sampler) == ("img_gen", "unipc")
    assert rejects(svc.resolve, {"model": "wan", "sampler": "lcm"}).param == "sampler"
    assert rejects(svc.resolve, {"model": "sd", "sampler": "unipc"}).param == "sampler"


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"end_image": np.zeros((64, 64, 3), np.uint8)}, "end_image", "end_image"),
        ({"guidance_scale_2": 2.0}, "guidance_scale_2", "second (low-noise) expert"),
        ({"custom_sigmas": (1.0, 0.5)}, "sample_params.custom_sigmas", "wan21"),
        ({"shifted_timestep": 5}, "sample_params.shifted_timestep", "wan21"),
        ({"width": 72}, "width", "multiple of 16"),
        ({"num_frames": 300}, "video_frames", "257"),
        ({"model": "sd"}, "model", "cannot serve"),
    ],
)
def test_what_the_video_model_lacks_is_a_400(engine, fields, param, words):
    err = rejects(make_service(engine).resolve, {"mode": "vid_gen", **fields}, VIDGEN_NAMES)
    assert err.param == param and words in err.message


def test_two_expert_settings_apply_to_wan22_and_are_dropped_on_wan21(engine):
    svc = make_service(engine)
    high = HighNoiseParams(steps=2)
    fields = {"mode": "vid_gen", "high_noise": high, "moe_boundary": 0.8}
    wan21 = svc.resolve({**fields, "model": "wan"}, VIDGEN_NAMES).request
    assert (wan21.high_noise, wan21.moe_boundary) == (None, None)
    first = {"init_image": np.zeros((64, 64, 3), np.uint8)}
    wan22 = svc.resolve(
        {**fields, **first, "model": "wan22", "guidance_scale_2": 2.0}, VIDGEN_NAMES
    ).request
    assert (wan22.high_noise, wan22.moe_boundary, wan22.guidance_scale_2) == (high, 0.8, 2.0)
    last = {"end_image": np.zeros((64, 64, 3), np.uint8)}
    wan22 = svc.resolve({"model": "wan22", "mode": "vid_gen", **first, **last}).request
    assert wan22.end_image is not None
    err = rejects(svc.resolve, {"model": "wan22", "mode": "vid_gen", **last}, VIDGEN_NAMES)
    assert err.param == "init_image" and "send a first frame" in err.message


def test_refusals_of_extra_args_fields_name_the_block_field(engine):
    block = '<sd_cpp_extra_args>{"sample_params": {"shifted_timestep": 5}}</sd_cpp_extra_args>'
    err = rejects(openai_request, make_service(engine), {"prompt": "p " + block})
    assert err.param == "sd_cpp_extra_args.sample_params.shifted_timestep"
    err = rejects(openai_request, make_service(engine), {"prompt": "p", "size": "72x64"})
    assert err.param == "size"


def test_sd_refuses_flow_fields_and_wan_images_refuse_init_images(engine):
    svc = make_service(engine)
    err = rejects(svc.resolve, {"flow_shift": 3.0}, {"flow_shift": "sample_params.flow_shift"})
    assert err.param == "sample_params.flow_shift" and "not supported" in err.message
    image = np.zeros((64, 64, 3), np.uint8)
    err = rejects(svc.resolve, {"model": "wan", "init_image": image})
    assert err.param == "init_image" and "does not support init_image for img_gen" in err.message


# -- the app: /v1/videos* and /sdcpp/v1/vid_gen ------------------------------------------


@pytest.fixture
def app_client(engine, tmp_path):
    config = config_from_dict(
        {
            "models": MODELS,
            "server": {
                "output_dir": str(tmp_path / "out"),
                "input_dir": str(tmp_path / "in"),
                "state_dir": str(tmp_path / "state"),
                "max_queue_size": 3,
                "max_steps": LONG_STEPS,
            },
            "default_request": SMALL,
        }
    )
    app = create_app(config, engine=engine)
    yield app.test_client()
    app.extensions["jaxvideo"].jobs.shutdown()


def service_of(client) -> Service:
    return client.application.extensions["jaxvideo"]


def poll(client, path: str, done, timeout: float = POLL_TIMEOUT_S) -> dict:
    """GETs `path` until `done(body)`; returns that body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(path).json
        if done(body):
            return body
        time.sleep(0.01)
    raise AssertionError(f"{path} still reads {body} after {timeout} s")


def wait_done(client, video_id: str) -> dict:
    return poll(client, f"/v1/videos/{video_id}", lambda v: v["status"] in ("completed", "failed"))


def start_long_video(client) -> str:
    """A video past its first sampler step (so past compiling) when this returns."""
    body = {"prompt": "long", "num_inference_steps": LONG_STEPS}
    created = client.post("/v1/videos", json=body)
    assert created.status_code == 200, created.json
    video_id = created.json["id"]
    poll(client, f"/v1/videos/{video_id}", lambda v: v["status"] == "in_progress")
    poll(client, f"/sdcpp/v1/jobs/{video_id}", lambda job: job["progress"]["step"] >= 1)
    return video_id


def test_create_poll_and_download_an_mp4(app_client, decode_video, engine):
    body = {"prompt": "a fox", "seconds": "1", "fps": 8}
    created = app_client.post("/v1/videos", json=body)
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
    assert "state" not in done and done["inference_time_s"] > 0
    assert "openai-poll-after-ms" not in app_client.get(f"/v1/videos/{video['id']}").headers
    # The bytes served are the engine's video for this request and the seed the job reports.
    same = openai_request(service_of(app_client), {**body, "seed": done["seed"]})
    frames = engine.generate(same).videos[0]
    reseeded = openai_request(service_of(app_client), {**body, "seed": done["seed"] + 1})
    other = engine.generate(reseeded).videos[0]
    content = app_client.get(f"/v1/videos/{video['id']}/content")
    assert content.mimetype == "video/mp4"
    _, decoded = decode_video(content.data)
    assert decoded.shape == frames.shape == (5, 64, 64, 3)
    # H.264 is lossy: about 6 levels off on average, where another seed's video is about 15.
    error = np.abs(decoded.astype(float) - frames).mean()
    assert error < 10 < np.abs(decoded.astype(float) - other).mean()
    thumb = app_client.get(f"/v1/videos/{video['id']}/content?variant=thumbnail")
    assert thumb.mimetype == "image/webp"
    assert thumb.data == encode_image(frames[0], "webp", 90)
    assert Image.open(io.BytesIO(thumb.data)).size == (64, 64)
    bad = app_client.get(f"/v1/videos/{video['id']}/content?variant=spritesheet")
    assert bad.status_code == 400 and bad.json["error"]["param"] == "variant"


def test_the_synchronous_route_returns_the_finished_video_with_state(app_client):
    body = {"prompt": "p", "num_frames": 9, "output": {"return_state": True}, "id": "sync-1"}
    done = app_client.post("/v1/videos/generations", json=body).json
    assert (done["id"], done["status"], done["num_frames"]) == ("sync-1", "completed", 9)
    state = done["state"]
    assert state["kind"] == "wan.v1" and state["payload"]["segment_index"] == 0
    # The continuation keeps the first segment's model, size and fps (FastVideo's fallback 24).
    continued = openai_request(service_of(app_client), {"prompt": "p2", "state": state})
    assert isinstance(continued.continuation, ContinuationState)
    assert (continued.model, continued.fps, continued.width) == ("wan", 24, 64)
    again = app_client.post(
        "/v1/videos/generations", json={"prompt": "p2", "state": state, "return_state": True}
    ).json
    assert (again["status"], again["model"], again["fps"], again["size"]) == (
        "completed",
        "wan",
        24,
        "64x64",
    )
    assert again["state"]["payload"]["segment_index"] == 1  # the engine continued segment 0
    tampered = {**state, "kind": "ltx2.v1"}
    err = app_client.post("/v1/videos/generations", json={"prompt": "p", "state": tampered})
    assert err.status_code == 400 and err.json["error"]["param"] == "state"
    assert err.headers["x-should-retry"] == "false"


def test_multipart_like_the_sdk_with_an_uploaded_first_frame(app_client, engine):
    form = {
        "prompt": "p",
        "seconds": "1",
        "size": "64x64",
        "num_frames": "5",
        "seed": "5",
        "return_state": "true",
        "input_reference": (io.BytesIO(png_bytes((200, 10, 10))), "frame.png", "image/png"),
    }
    created = app_client.post("/v1/videos", data=form, content_type="multipart/form-data")
    assert created.status_code == 200, created.json
    assert (created.json["seed"], created.json["num_frames"]) == (5, 5)
    assert wait_done(app_client, created.json["id"])["state"]["kind"] == "wan.v1"
    thumb = app_client.get(f"/v1/videos/{created.json['id']}/content?variant=thumbnail").data
    # The uploaded frame reached the engine: the same request with that frame as a data URL
    # makes the same first frame, and the same request without it does not.
    body = {"prompt": "p", "size": "64x64", "num_frames": 5, "seed": 5, "return_state": True}
    with_frame = openai_request(
        service_of(app_client), {**body, "input_reference": png_data_url((200, 10, 10))}
    )
    assert tuple(with_frame.init_image[0, 0]) == (200, 10, 10)
    first = engine.generate(with_frame).videos[0][0]
    assert thumb == encode_image(first, "webp", 90)
    plain = engine.generate(openai_request(service_of(app_client), body)).videos[0][0]
    assert thumb != encode_image(plain, "webp", 90)
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
    jobs = service_of(app_client).jobs
    running = start_long_video(app_client)
    queued = app_client.post("/v1/videos", json={"prompt": "p"}).json["id"]
    assert app_client.get(f"/v1/videos/{queued}").json["status"] == "queued"
    assert app_client.get(f"/v1/videos/{queued}/content").status_code == 404  # not ready
    assert app_client.delete(f"/v1/videos/{queued}").json["deleted"] is True
    # Dropped from the queue while the other one still generates: it can never run.
    assert jobs.counts() == {"queued": 0, "generating": 1} and jobs.current().id == running
    assert app_client.delete(f"/v1/videos/{running}").json["deleted"] is True
    assert app_client.get(f"/v1/videos/{running}").status_code == 404
    # Idle long before LONG_STEPS could have run: the deleted job was stopped.
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while jobs.counts()["generating"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert jobs.counts() == {"queued": 0, "generating": 0} and jobs.views() == []


def test_a_cancelled_video_reads_failed_with_code_cancelled(app_client):
    jobs = service_of(app_client).jobs
    running = start_long_video(app_client)
    queued = app_client.post("/v1/videos", json={"prompt": "p"}).json["id"]
    for video in (queued, running):
        assert app_client.post(f"/sdcpp/v1/jobs/{video}/cancel").status_code == 200
        done = wait_done(app_client, video)
        assert done["status"] == "failed" and done["error"]["code"] == "cancelled"
        assert app_client.get(f"/v1/videos/{video}/content").status_code == 404
    stopped = jobs.get(running)
    assert stopped.step < stopped.total == LONG_STEPS  # stopped early, not run to the end
    assert jobs.get(queued).started is None  # the queued one never ran


def test_ids_conflicts_unknown_ids_and_a_full_queue(app_client):
    jobs = service_of(app_client).jobs
    assert app_client.post("/v1/videos", json={"prompt": "p", "id": "mine"}).status_code == 200
    conflict = app_client.post("/v1/videos", json={"prompt": "p", "id": "mine"})
    assert conflict.status_code == 409 and conflict.json["error"]["code"] == "job_exists"
    assert conflict.headers["x-should-retry"] == "false"
    missing = app_client.get("/v1/videos/video_missing")
    assert missing.status_code == 404 and "error" in missing.json
    sdcpp_job = app_client.post("/sdcpp/v1/vid_gen", json={"video_frames": 5}).json["id"]
    assert app_client.get(f"/v1/videos/{sdcpp_job}").status_code == 404
    for job in ("mine", sdcpp_job):
        assert jobs.wait(job, POLL_TIMEOUT_S).status == "completed"
    start_long_video(app_client)  # max_queue_size 3 counts it: two more fit in the queue
    statuses = [app_client.post("/v1/videos", json={"prompt": "p"}) for _ in range(3)]
    assert [s.status_code for s in statuses] == [200, 200, 429]
    # OpenAI's own answer when out of capacity, with when to come back.
    assert statuses[-1].json["error"]["code"] == "rate_limit_exceeded"
    assert statuses[-1].headers["Retry-After"] == "2"


def test_sdcpp_vid_gen_result_and_refusals(app_client):
    accepted = app_client.post(
        "/sdcpp/v1/vid_gen", json={"video_frames": 10, "fps": 12, "output_format": "WebP"}
    )
    assert accepted.status_code == 202
    body = accepted.json
    assert (body["kind"], body["status"]) == ("vid_gen", "queued")
    assert body["poll_url"] == f"/sdcpp/v1/jobs/{body['id']}"
    assert service_of(app_client).jobs.wait(body["id"], POLL_TIMEOUT_S).status == "completed"
    result = app_client.get(body["poll_url"]).json["result"]
    assert {k: result[k] for k in ("output_format", "mime_type", "fps", "frame_count")} == {
        "output_format": "webp",
        "mime_type": "image/webp",
        "fps": 12,
        "frame_count": 9,  # the largest 4n+1 not above 10
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
        "cache": True,  # step caching: the DiT modes and teacache
        "cancel_queued": True,
        "cancel_generating": True,
        "flow_shift": True,  # a flow model: sample_params.flow_shift works
    }
    wan21 = next(m for m in caps["models"] if m["family"] == "wan21")
    assert wan21["cache_modes"] == [*cache_modes.DIT_MODES, cache_modes.TEACACHE]
    assert caps["cache_modes"] == list(cache_modes.UNET_MODES)  # the default (SD) model's
    assert caps["cache_options"]["spectrum"]["window"] == 2
    wan22 = next(m for m in caps["models"] if m["name"] == "wan22")
    assert wan22["features_by_mode"]["vid_gen"]["end_image"] is True
    assert wan22["features_by_mode"]["vid_gen"]["high_noise_sample_params"] is True
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
    assert "Euler a" in names and "LCM" in names and "UniPC" not in names
    app_client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "wan"})
    names = [s["name"] for s in app_client.get("/sdapi/v1/samplers").json]
    assert names[:2] == ["UniPC", "Euler"] and len(names) == len(FLOW)
    assert "LCM" not in names  # in the global catalog, not a flow sampler
