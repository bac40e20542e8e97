"""Nothing accepted is lost across restarts: the real server, killed with SIGKILL mid-job or
stopped with SIGTERM with jobs queued, comes back on the same `state_dir` and finishes them;
finished results stay downloadable, byte for byte.

These servers are this module's own (its own xdist group), on one folder that outlives them.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from tests.support.serving import serve

OWN_SERVERS = True

CONFIG = """\
models:
  - {name: sd1-tiny-demo, family: sd1, path: "demo:sd1-tiny", dtype: fp32}
  - {name: wan-tiny-demo, family: wan21, path: "demo:wan-tiny"}
server:
  max_steps: 1000
default_request: {steps: 2, width: 64, height: 64, num_frames: 5}
"""
LONG = 400  # sampler steps: long enough to be caught generating, a few seconds on a CPU
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture
def restartable(tmp_path, e2e_cache_dir):
    """`start()` -> a server on one config and one state folder, as often as the test likes."""
    config = tmp_path / "serve.yaml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "JAXVIDEO_API_KEY"}
    env.update(JAXVIDEO_CACHE_DIR=str(e2e_cache_dir), JAXVIDEO_OUTPUT_DIR=str(tmp_path / "out"))
    return lambda: serve(config, tmp_path, env)


def submit(server, seed: int, steps: int = 2) -> str:
    body = {"prompt": f"job {seed}", "seed": seed, "sample_params": {"sample_steps": steps}}
    response = server.post("/sdcpp/v1/img_gen", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def finished(server, job_id: str) -> dict:
    job = server.poll(job_id, until=TERMINAL)[-1]
    assert job["status"] == "completed", job
    return job


def image_bytes(job: dict) -> bytes:
    [image] = job["result"]["images"]
    return base64.b64decode(image["b64_json"])


def wait_generating(server, job_id: str) -> None:
    """Until the job has made a step and has many left."""
    while True:
        job = server.get(f"/sdcpp/v1/jobs/{job_id}").json()
        assert job["status"] in ("queued", "generating"), job
        if job["status"] == "generating" and job["progress"]["step"] >= 1:
            assert job["progress"]["step"] < LONG // 2, "the job runs too fast to be caught"
            return


def test_jobs_survive_a_kill_and_a_restart(restartable):
    with restartable() as first:
        done = finished(first, submit(first, seed=1))
        long = submit(first, seed=2, steps=LONG)
        queued = [submit(first, seed=s) for s in (3, 4)]
        wait_generating(first, long)
        first.crash()  # SIGKILL: no handler, no drain

    with restartable() as second:
        assert "restored 4 job(s)" in second.log.read_text()
        kept = second.get(f"/sdcpp/v1/jobs/{done['id']}").json()
        assert kept["status"] == "completed" and image_bytes(kept) == image_bytes(done)
        # The job cut short runs again, ahead of the queued ones, and makes the very image a
        # fresh identical request makes: the stored request is the request.
        resumed = finished(second, long)
        assert resumed["progress"] == {"step": LONG, "total": LONG, "phase": None}, resumed
        after = [finished(second, job_id) for job_id in queued]
        assert all(resumed["completed"] <= job["started"] for job in after)
        fresh = finished(second, submit(second, seed=2, steps=LONG))
        assert image_bytes(fresh) == image_bytes(resumed)
        assert [image_bytes(job) for job in after] != [image_bytes(fresh)] * 2


def test_sigterm_keeps_queued_jobs_for_the_next_start(restartable):
    with restartable() as first:
        long = submit(first, seed=5, steps=LONG)
        created = first.post(
            "/v1/videos", json={"prompt": "a slow river", "model": "wan-tiny-demo", "seed": 6}
        )
        assert created.status_code == 200, created.text
        video = created.json()["id"]
        queued = submit(first, seed=7)
        wait_generating(first, long)
    # SIGTERM stopped the running job and left all three queued (the server exited cleanly).

    with restartable() as second:
        assert finished(second, long)["progress"]["total"] == LONG
        assert finished(second, queued)["result"]["images"][0]["seed"] == 7
        status = second.get(f"/v1/videos/{video}").json()
        while status["status"] in ("queued", "in_progress"):
            status = second.get(f"/v1/videos/{video}").json()
        assert status["status"] == "completed", status
        content = second.get(f"/v1/videos/{video}/content")
        assert content.status_code == 200 and content.content[4:8] == b"ftyp"  # an MP4
        thumbnail = second.get(f"/v1/videos/{video}/content", params={"variant": "thumbnail"})
        assert thumbnail.status_code == 200 and thumbnail.content[8:12] == b"WEBP"


def test_a_killed_worker_is_replaced_and_the_new_one_resumes(restartable):
    with restartable() as server:
        long = submit(server, seed=8, steps=LONG)
        queued = submit(server, seed=9)
        wait_generating(server, long)
        [worker] = server.workers()
        os.kill(worker, signal.SIGKILL)  # the OOM killer's pick: the process holding the models
        deadline = time.monotonic() + 60
        while server.workers() in ([], [worker]) and time.monotonic() < deadline:
            time.sleep(0.1)  # gunicorn's arbiter boots a new worker on the same folder
        assert finished(server, long)["progress"] == {"step": LONG, "total": LONG, "phase": None}
        assert finished(server, queued)["result"]["images"][0]["seed"] == 9


def test_sigterm_under_load_answers_every_client_and_keeps_the_async_jobs(restartable):
    with restartable() as first, ThreadPoolExecutor(2) as pool:
        long = submit(first, seed=10, steps=LONG)
        queued = submit(first, seed=11)
        waiting = [
            pool.submit(first.post, "/sdapi/v1/txt2img", json={"prompt": "s", "seed": seed})
            for seed in (12, 13)
        ]
        address = urlsplit(first.url)
        half = socket.create_connection((address.hostname, address.port), timeout=60)
        body = json.dumps({"prompt": "late upload", "seed": 14}).encode()
        half.sendall(
            b"POST /sdcpp/v1/img_gen HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        wait_generating(first, long)
        first.process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()

        # Draining: still answering, new work refused with 503 in each surface's envelope.
        health = first.get("/health")
        while health.status_code == 200:
            health = first.get("/health")
        assert health.json() == {"status": "shutting_down"}
        refused = first.post("/sdcpp/v1/img_gen", json={"prompt": "too late"})
        assert (refused.status_code, refused.json()["error"]) == (503, "server is shutting down")
        assert first.get(f"/sdcpp/v1/jobs/{queued}").json()["status"] == "queued"
        half.sendall(body[10:])  # the rest of the half-uploaded request: answered, not reset
        reply = b""
        while chunk := half.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 503") and b"server is shutting down" in reply
        half.close()
        # The synchronous clients get their images, or a 503 if their job had not started.
        for future in waiting:
            response = future.result()
            assert response.status_code in (200, 503), response.text
            if response.status_code == 503:
                assert response.json()["error"] == "server is shutting down"
        assert first.process.wait(timeout=60) == 0
        print(f"SIGTERM to exit under load: {time.monotonic() - stopped:.1f} s")
        assert "draining the job table" in first.log.read_text()

    with restartable() as second:
        assert finished(second, long)["progress"]["total"] == LONG
        assert finished(second, queued)["result"]["images"][0]["seed"] == 11
