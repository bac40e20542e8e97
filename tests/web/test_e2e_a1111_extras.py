"""A1111 extras against the real server: options, progress, interrupt, skip and n_iter."""

from __future__ import annotations

import json
import re
import threading
import time

SLOW = {"width": 256, "height": 256, "steps": 60}  # slow enough on CPU to interrupt


def idle_progress(server) -> dict:
    """Waits until no job is generating, then returns /sdapi/v1/progress."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        body = server.get("/sdapi/v1/progress").json()
        if body["state"]["job"] == "":
            return body
        time.sleep(0.05)
    raise AssertionError(f"still generating: {body}")


def progress_of(server, predicate) -> dict:
    """Polls /sdapi/v1/progress until `predicate(body)` holds."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        body = server.get("/sdapi/v1/progress").json()
        if predicate(body):
            return body
        time.sleep(0.02)
    raise AssertionError(f"progress never matched: {body}")


def test_options_switch_and_report_the_model(server):
    assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "sd1-tiny-demo"
    # A1111 titles carry a hash; other settings are accepted and ignored.
    update = {
        "sd_model_checkpoint": "sd1-tiny-demo [0123abcd]",
        "CLIP_stop_at_last_layers": 2,
        "samples_format": "jpg",
    }
    response = server.post("/sdapi/v1/options", json=update)
    assert response.status_code == 200
    assert response.json() == {"samples_format": "png", "sd_model_checkpoint": "sd1-tiny-demo"}
    bad = server.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd3-large"})
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("sd_model_checkpoint: unknown model 'sd3-large'")
    assert server.post("/sdapi/v1/options", json={"sd_model_checkpoint": 5}).status_code == 400
    assert server.post("/sdapi/v1/options", json=[1]).status_code == 400
    assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "sd1-tiny-demo"


def test_options_switch_changes_which_model_sdapi_requests_run_on(server):
    """Two real models: after the switch, sdapi requests that name none run on the second;
    override_settings still picks a model per request."""
    body = {"prompt": "a fox", "width": 64, "height": 64, "steps": 1, "seed": 3}

    def sdapi_model(extra=None):
        response = server.post("/sdapi/v1/txt2img", json={**body, **(extra or {})})
        assert response.status_code == 200, response.text
        return json.loads(response.json()["info"])["sd_model_name"]

    try:
        assert sdapi_model() == "sd1-tiny-demo"
        switched = server.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd1-tiny-second"})
        assert switched.json()["sd_model_checkpoint"] == "sd1-tiny-second"
        assert sdapi_model() == "sd1-tiny-second"
        override = {"override_settings": {"sd_model_checkpoint": "sd1-tiny-demo"}}
        assert sdapi_model(override) == "sd1-tiny-demo"
    finally:
        server.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd1-tiny-demo"})
    assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "sd1-tiny-demo"


def test_progress_when_idle_has_the_a1111_shape(server):
    body = idle_progress(server)
    assert body == {
        "progress": 0.0,
        "eta_relative": 0.0,
        "state": {
            "skipped": False,
            "interrupted": False,
            "job": "",
            "job_count": 0,
            "job_timestamp": "0",
            "job_no": 0,
            "sampling_step": 0,
            "sampling_steps": 0,
        },
        "current_image": None,
        "textinfo": None,
    }
    # Nothing to stop: still a 200.
    assert server.post("/sdapi/v1/interrupt").json() == {}


def test_progress_follows_a_txt2img_that_interrupt_stops(server):
    idle_progress(server)
    answer: dict = {}

    def run() -> None:
        response = server.post("/sdapi/v1/txt2img", json={"prompt": "a long road", **SLOW})
        answer.update(status=response.status_code, body=response.json(), headers=response.headers)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        body = progress_of(server, lambda b: b["state"]["sampling_step"] >= 1)
        state = body["state"]
        assert state["sampling_steps"] == 60 and state["job"].startswith("job_")
        assert 0 < body["progress"] < 1 and body["eta_relative"] >= 0
        assert re.fullmatch(r"\d{14}", state["job_timestamp"])
        assert (state["job_count"], state["job_no"], state["interrupted"]) == (1, 0, False)
        assert server.post("/sdapi/v1/interrupt").json() == {}
    finally:
        thread.join(timeout=240)
    assert answer["status"] == 409, answer
    assert answer["body"] == {
        "error": "job cancelled",
        "detail": "job interrupted (POST /sdapi/v1/interrupt)",
    }
    assert answer["headers"]["x-should-retry"] == "false"
    # The job stopped early: its id now answers cancelled on the native surface.
    job = server.get(f"/sdcpp/v1/jobs/{state['job']}").json()
    assert job["status"] == "cancelled" and job["progress"]["step"] < 60
    idle_progress(server)


def test_skip_stops_the_generating_job_of_any_surface(server):
    idle_progress(server)
    body = {"prompt": "a long road", "width": 256, "height": 256}
    body["sample_params"] = {"sample_steps": 60}
    job_id = server.post("/sdcpp/v1/img_gen", json=body).json()["id"]
    progress_of(server, lambda b: b["state"]["job"] == job_id and b["state"]["sampling_step"] >= 1)
    assert server.post("/sdapi/v1/skip").json() == {}
    final = server.poll(job_id, until=("completed", "failed", "cancelled"))[-1]
    assert final["status"] == "cancelled"
    assert final["error"] == {"code": "cancelled", "message": "job skipped (POST /sdapi/v1/skip)"}


def test_n_iter_multiplies_the_batch(server):
    response = server.post(
        "/sdapi/v1/txt2img", json={"prompt": "a boat", "seed": 50, "batch_size": 1, "n_iter": 2}
    )
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert len(response.json()["images"]) == 2 and info["all_seeds"] == [50, 51]


def test_the_new_routes_are_documented(server):
    paths = server.get("/openapi.json").json()["paths"]
    assert {"get", "post"} <= set(paths["/sdapi/v1/options"])
    assert "sd_model_checkpoint" in json.dumps(paths["/sdapi/v1/options"]["post"])
    assert "get" in paths["/sdapi/v1/progress"]
    for route in ("/sdapi/v1/interrupt", "/sdapi/v1/skip"):
        assert "post" in paths[route]
