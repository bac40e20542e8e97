"""Video generation on the real server with the tiny Wan 2.1 demo model: the OpenAI SDK's
`videos.*`, FastVideo's synchronous route and continuation, and sd.cpp's vid_gen.

Every video is 64x64 (the operator default) with 5 frames unless a test needs another count,
so the model compiles few shapes; the videos are noise (random weights), which is fine: the
containers, frame counts and sizes are what is checked.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
from PIL import Image, ImageSequence

WAN = "wan-tiny-demo"
VIDEO_ROUTES = ("/v1/videos", "/v1/videos/generations")


def sdk_extra(video) -> dict:
    """The FastVideo extras the SDK's `Video` model keeps as extra fields."""
    return video.model_extra or {}


def _loaded(frame: Image.Image) -> Image.Image:
    frame.load()  # Pillow reads a WebP frame's duration when it decodes it
    return frame


def png_data_url(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def test_sdk_create_poll_and_download(client, decode_video):
    video = client.videos.create(
        prompt="waves on a beach",
        model=WAN,
        seconds="1",
        size="64x64",
        extra_body={"fps": 5, "seed": 3, "num_inference_steps": 2},
    )
    assert (video.object, video.status, video.model) == ("video", "queued", WAN)
    assert video.size == "64x64"
    assert sdk_extra(video)["num_frames"] == 5  # 1 s x 5 fps
    done = client.videos.poll(video.id, poll_interval_ms=50)
    assert (done.status, done.progress, done.error) == ("completed", 100, None)
    assert done.completed_at >= done.created_at and done.expires_at > done.completed_at
    assert done.seconds == "1" and sdk_extra(done)["fps"] == 5 and sdk_extra(done)["seed"] == 3
    content = client.videos.download_content(video.id)
    meta, frames = decode_video(content.content)
    assert frames.shape == (5, 64, 64, 3) and meta["fps"] == 5
    thumbnail = client.videos.download_content(video.id, variant="thumbnail")
    assert Image.open(io.BytesIO(thumbnail.content)).size == (64, 64)


def test_sdk_multipart_with_an_uploaded_first_frame_and_state(client):
    picture = np.full((64, 64, 3), 200, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    video = client.videos.create(
        prompt="a red door",
        input_reference=("first.png", buf.getvalue(), "image/png"),
        extra_body={"seed": 4, "output": {"return_state": True}},  # bracketed form fields
    )
    done = client.videos.poll(video.id, poll_interval_ms=50)
    assert done.status == "completed", done.error
    state = sdk_extra(done)["state"]
    assert state["kind"] == "wan.v1" and state["payload"]["model"] == WAN


def test_sync_route_continuation_and_content(server, decode_video):
    first = server.post(
        "/v1/videos/generations",
        json={"prompt": "a train", "seed": 1, "return_state": True, "id": "train-1"},
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["id"], body["status"], body["num_frames"], body["fps"]) == (
        "train-1",
        "completed",
        5,  # the operator's num_frames
        24,  # FastVideo's fallback fps
    )
    state = body["state"]
    assert state["payload"]["segment_index"] == 0
    content = server.get("/v1/videos/train-1/content")
    assert content.headers["Content-Type"] == "video/mp4"
    assert decode_video(content.content)[1].shape == (5, 64, 64, 3)

    second = server.post("/v1/videos/generations", json={"prompt": "a train", "state": state})
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "completed" and "state" not in second.json()

    for tampered in (
        {**state, "kind": "ltx2.v1"},
        {**state, "payload": {**state["payload"], "schema_version": 9}},
    ):
        response = server.post("/v1/videos/generations", json={"prompt": "x", "state": tampered})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "state"
        assert response.headers["x-should-retry"] == "false"


def test_input_reference_path_inside_the_input_folder_and_output_path(server, decode_video):
    response = server.post(
        "/v1/videos/generations",
        json={"prompt": "p", "input_reference": "first.png", "output_path": "clips/a.mp4"},
    )
    assert response.status_code == 200, response.text
    written = server.output_dir / "clips" / "a.mp4"
    assert response.json()["file_path"] == str(written.resolve())
    assert decode_video(written.read_bytes())[1].shape == (5, 64, 64, 3)
    outside = str(server.lora_dir.parent / "outside.safetensors")
    for body in ({"input_reference": outside}, {"input_reference": "../loras/x.png"}):
        refused = server.post("/v1/videos", json={"prompt": "p", **body})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "input_reference"


def test_multipart_null_output_path_means_none(server):
    # curl -F output_path=null: no value, as a JSON null is (it made a folder named `null`).
    files = {"prompt": (None, "p"), "output_path": (None, "null"), "num_frames": (None, "5")}
    created = server.post("/v1/videos", files=files)
    assert created.status_code == 200, created.text
    video_id = created.json()["id"]
    assert server.poll(video_id, ("completed", "failed"))[-1]["status"] == "completed"
    assert "file_path" not in server.get(f"/v1/videos/{video_id}").json()
    assert not (server.output_dir / "null").exists()


@pytest.mark.parametrize(
    ("fmt", "frames_sent", "frames_made"),
    [("webm", 34, 33), ("webp", 5, 5), ("AVI", 5, 5)],
)
def test_sdcpp_vid_gen_containers_decode(server, decode_video, fmt, frames_sent, frames_made):
    accepted = server.post(
        "/sdcpp/v1/vid_gen",
        json={
            "prompt": "a lantern",
            "video_frames": frames_sent,
            "fps": 8,
            "seed": 2,
            "sample_params": {"sample_steps": 2},
            "output_format": fmt,
        },
    )
    assert accepted.status_code == 202, accepted.text
    job = server.poll(accepted.json()["id"], until=("completed", "failed", "cancelled"))[-1]
    assert job["status"] == "completed", job["error"]
    result = job["result"]
    fmt = fmt.lower()
    mime = {"webm": "video/webm", "webp": "image/webp", "avi": "video/x-msvideo"}[fmt]
    assert (result["output_format"], result["mime_type"], result["fps"]) == (fmt, mime, 8)
    assert result["frame_count"] == frames_made
    data = base64.b64decode(result["b64_json"])
    if fmt == "webp":
        image = Image.open(io.BytesIO(data))
        durations = [_loaded(frame).info["duration"] for frame in ImageSequence.Iterator(image)]
        assert image.format == "WEBP" and image.size == (64, 64)
        # libwebp may merge a frame it finds unchanged into the previous one, keeping the
        # total duration: frames x 1000 / fps ms.
        assert 1 <= len(durations) <= frames_made and sum(durations) == frames_made * 125
    else:
        assert decode_video(data, fmt)[1].shape == (frames_made, 64, 64, 3)


def test_sdk_lists_paginates_and_deletes(client, server):
    ids = [f"list-{i}" for i in range(3)]
    for video_id in ids:
        created = client.videos.create(prompt="p", extra_body={"id": video_id})
        assert created.id == video_id
    for video_id in ids:
        assert client.videos.poll(video_id, poll_interval_ms=50).status == "completed"
    page = client.videos.list(limit=2, order="asc")
    seen = [video.id for video in page]  # iterating follows `last_id` / `has_more`
    assert [i for i in seen if i in ids] == ids
    newest = client.videos.list(limit=1)
    assert newest.data[0].id == ids[-1] and newest.has_more is True

    deleted = client.videos.delete(ids[1])
    assert (deleted.id, deleted.deleted, deleted.object) == (ids[1], True, "video.deleted")
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(ids[1])
    assert ids[1] not in [video.id for video in client.videos.list(limit=100)]


def test_conflicts_unknown_ids_and_wrong_models(client, server):
    client.videos.create(prompt="p", extra_body={"id": "dup"})
    with pytest.raises(openai.ConflictError) as info:
        client.videos.create(prompt="p", extra_body={"id": "dup"})
    assert info.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("video_unknown")
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content("video_unknown")
    with pytest.raises(openai.BadRequestError) as info:
        client.videos.create(prompt="p", model="sd1-tiny-demo")
    assert "cannot serve vid_gen" in info.value.body["message"]
    for body, param in (
        ({"prompt": "p", "enable_teacache": "on"}, "enable_teacache"),
        ({"prompt": "p", "motion": 3}, "motion"),
        ({"prompt": "p", "reference_url": "http://example.com/a.png"}, "reference_url"),
        ({"prompt": "p", "size": "72x64"}, "size"),
    ):
        for route in VIDEO_ROUTES:
            response = server.post(route, json=body)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == param
    last = png_data_url(np.zeros((64, 64, 3), np.uint8))
    refused = server.post("/sdcpp/v1/vid_gen", json={"end_image": last})
    assert refused.status_code == 400 and "end_image" in refused.json()["error"]
    assert client.videos.poll("dup", poll_interval_ms=50).status == "completed"


def test_a_wan_model_makes_images_and_is_listed(client, server):
    image = client.images.generate(prompt="a still frame", model=WAN, size="64x64")
    picture = Image.open(io.BytesIO(base64.b64decode(image.data[0].b64_json)))
    assert (picture.format, picture.size) == ("PNG", (64, 64))
    assert WAN in [model.id for model in client.models.list().data]
    caps = server.get("/sdcpp/v1/capabilities").json()
    features = caps["features_by_mode"]["vid_gen"]
    assert features["init_image"] and features["lora"] and features["cancel_generating"]
    assert not features["end_image"] and not features["control_frames"]
    assert caps["defaults_by_mode"]["vid_gen"]["video_frames"] == 5  # the operator's
    spec = server.get("/openapi.json").json()
    for path in ("/v1/videos", "/v1/videos/generations", "/sdcpp/v1/vid_gen"):
        assert "post" in spec["paths"][path]
    assert "get" in spec["paths"]["/v1/videos/{video_id}/content"]


def test_wan22_experts_take_first_and_last_frame_and_a_high_noise_stage(server, decode_video):
    rng = np.random.default_rng(5)
    first, last = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    body = {
        "model": "wan22-tiny-demo",
        "prompt": "a door opening",
        "video_frames": 5,
        "fps": 8,
        "seed": 4,
        "init_image": png_data_url(first),
        "end_image": png_data_url(last),
        "sample_params": {"sample_method": "euler", "sample_steps": 2},
        # One euler_a step on the high-noise expert, then two euler steps on the low-noise one.
        "high_noise_sample_params": {"sample_method": "euler_a", "sample_steps": 1},
        "output_format": "avi",
    }
    accepted = server.post("/sdcpp/v1/vid_gen", json=body)
    assert accepted.status_code == 202, accepted.text
    job = server.poll(accepted.json()["id"], until=("completed", "failed", "cancelled"))[-1]
    assert job["status"] == "completed", job["error"]
    assert job["progress"] == {"step": 3, "total": 3, "phase": None}
    frames = decode_video(base64.b64decode(job["result"]["b64_json"]), "avi")[1]
    assert frames.shape == (5, 64, 64, 3)
    # An image-to-video model cannot start from nothing: refused before it is queued.
    del body["init_image"], body["end_image"]
    refused = server.post("/sdcpp/v1/vid_gen", json=body)
    assert refused.status_code == 400, refused.text
