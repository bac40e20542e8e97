"""The native async sdcpp surface against the real server: jobs, progress, cancel, queue limit."""

from __future__ import annotations

import base64
import io

from PIL import Image

from tests.support.sampling import SAMPLERS, SCHEDULERS

SLOW = {"width": 256, "height": 256}  # slow enough on CPU to watch a job generate


def submit(server, steps: int = 2, **body) -> dict:
    body = {"prompt": "a quiet street", **body, "sample_params": {"sample_steps": steps}}
    response = server.post("/sdcpp/v1/img_gen", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def wait_generating(server, job_id: str) -> dict:
    """Polls until the job has finished at least one sampler step."""
    snapshot = server.poll(job_id, until=("generating", "completed", "failed", "cancelled"))[-1]
    while snapshot["status"] == "generating" and snapshot["progress"]["step"] < 1:
        snapshot = server.get(f"/sdcpp/v1/jobs/{job_id}").json()
    assert snapshot["status"] == "generating", snapshot
    return snapshot


def test_capabilities_describe_this_server(server):
    caps = server.get("/sdcpp/v1/capabilities").json()
    assert caps["model"]["name"] == "sd1-tiny-demo"
    assert caps["current_mode"] == "img_gen"
    assert caps["supported_modes"] == ["img_gen", "vid_gen"]  # the Wan model makes videos
    assert caps["defaults"] == caps["defaults_by_mode"]["img_gen"]
    assert (
        caps["defaults"]["width"] == 64 and caps["defaults"]["sample_params"]["sample_steps"] == 2
    )
    assert caps["output_formats"] == ["png", "jpeg", "webp"]
    assert caps["samplers"] == list(SAMPLERS) and len(caps["samplers"]) == 21
    assert caps["schedulers"] == list(SCHEDULERS) and "karras" in caps["schedulers"]
    features = caps["features_by_mode"]["img_gen"]
    working = {
        "cancel_queued",
        "cancel_generating",
        "init_image",
        "mask_image",
        "lora",  # the test server has a LoRA folder
        "vae_tiling",
        "cache",  # ucache and spectrum
    }
    assert all(features[k] for k in working)
    assert not any(v for k, v in features.items() if k not in working)
    assert caps["features"] == features
    assert caps["limits"]["max_queue_size"] == 4 and caps["limits"]["max_width"] == 512
    assert caps["loras"] == [{"name": "tiny_style", "path": "tiny_style.safetensors"}]
    # Per model, what a client (the web page) needs to offer only what the model takes.
    models = {m["name"]: m for m in caps["models"]}
    assert models["sd1-tiny-demo"]["defaults_by_mode"] == {"img_gen": caps["defaults"]}
    assert models["sd1-tiny-demo"]["size_multiple"] == 8
    wan = models["wan-tiny-demo"]
    assert wan["frame_multiple"] == 4 and set(wan["defaults_by_mode"]) == set(wan["modes"])
    assert wan["defaults_by_mode"]["vid_gen"] == caps["defaults_by_mode"]["vid_gen"]


def test_job_goes_queued_generating_completed(server):
    accepted = submit(server, steps=12, seed=5, **SLOW)
    assert accepted["status"] == "queued" and accepted["kind"] == "img_gen"
    assert accepted["poll_url"] == f"/sdcpp/v1/jobs/{accepted['id']}"
    seen = server.poll(accepted["id"], until=("completed", "failed", "cancelled"))
    statuses = [s["status"] for s in seen]
    assert "generating" in statuses and statuses[-1] == "completed", statuses
    done = seen[-1]
    assert set(done) >= {
        "id",
        "kind",
        "status",
        "created",
        "started",
        "completed",
        "queue_position",
        "result",
        "error",
        "progress",
    }
    assert done["progress"] == {"step": 12, "total": 12, "phase": None}
    phases = {s["progress"]["phase"] for s in seen if s["status"] == "generating"}
    assert phases == {"generating"}, phases  # its model was loaded at start
    assert done["error"] is None and done["queue_position"] == 0
    [image] = done["result"]["images"]
    assert image["index"] == 0 and image["seed"] == 5
    assert Image.open(io.BytesIO(base64.b64decode(image["b64_json"]))).size == (256, 256)


def test_cancel_queued_then_cancel_generating(server):
    running = submit(server, steps=60, **SLOW)
    queued = submit(server)
    wait_generating(server, running["id"])
    assert server.get(f"/sdcpp/v1/jobs/{queued['id']}").json()["queue_position"] == 1

    cancelled = server.post(f"/sdcpp/v1/jobs/{queued['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"] == {"code": "cancelled", "message": "job cancelled by client"}

    response = server.post(f"/sdcpp/v1/jobs/{running['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] in ("generating", "cancelled")
    final = server.poll(running["id"], until=("completed", "failed", "cancelled"))[-1]
    assert final["status"] == "cancelled" and final["result"] is None
    assert final["progress"]["step"] < 60
    # Cancelling a finished job changes nothing.
    again = server.post(f"/sdcpp/v1/jobs/{running['id']}/cancel").json()
    assert again["status"] == "cancelled" and again["completed"] == final["completed"]


def test_queue_limit_answers_429_and_accepted_jobs_complete(server):
    accepted = [submit(server, steps=15, **SLOW)["id"]]
    rejected = None
    for _ in range(6):
        response = server.post("/sdcpp/v1/img_gen", json={"prompt": "x"})
        if response.status_code == 429:
            rejected = response
            break
        assert response.status_code == 202, response.text
        accepted.append(response.json()["id"])
    assert rejected is not None and len(accepted) == 4
    assert rejected.json() == {"error": "job queue is full"}
    assert rejected.headers["Retry-After"] == "2"  # when a slot is likely to be free
    for job_id in accepted:
        assert server.poll(job_id, until=("completed", "failed", "cancelled"))[-1]["status"] == (
            "completed"
        )


def test_unknown_jobs_are_404(server):
    for method, path in (("GET", ""), ("POST", "/cancel")):
        response = server.request(method, f"/sdcpp/v1/jobs/job_0_00000000{path}")
        assert response.status_code == 404
        assert response.json() == {"error": "job not found"}
