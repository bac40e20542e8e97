"""A multi-host slice on loopback: two server processes with 4 fake CPU devices each, joined by
JAX's distributed runtime (gloo collectives) and started as docs/DEPLOY.md says, serve as one
server with 8 devices. Process 0 answers the API and returns the same images and videos as one
process with 8 devices on the same mesh; the follower answers /health and refuses the API with
421; a cancel stops both processes at the same step (the slice keeps working after it);
compatible queued jobs run as one batch; and killing the follower fails the running job with
`process_lost`, turns /health to 503, keeps the queued async job, and the restarted slice runs
it."""

from __future__ import annotations

import base64
import io
import json
import os
import time

import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.engine.test_sharded_server import SD_BODY, WAN_BODY, webp_frames
from tests.support.serving import serve, serve_slice

OWN_SERVERS = True

# heartbeat_timeout_s is short so the follower's death is seen within seconds here.
CONFIG = """\
models:
  - {{name: sd, family: sd1, path: "demo:sd1-tiny"}}
  - {{name: wan, family: wan21, path: "demo:wan-tiny"}}
server: {{min_height: 32}}
mesh: {mesh}
distributed: {{heartbeat_timeout_s: 6}}
"""
# A job long enough to be caught mid-run (a cancel, a kill) on a 2-core machine.
LONG_JOB = {
    "prompt": "a long one",
    "width": 64,
    "height": 64,
    "sample_params": {"sample_steps": 60},
}

SHORT_JOB = {
    "prompt": "a short one",
    "width": 64,
    "height": 64,
    "sample_params": {"sample_steps": 2},
}


def _write_config(root, mesh: dict):
    root.mkdir(parents=True, exist_ok=True)
    config = root / "serve.yaml"
    config.write_text(CONFIG.format(mesh=json.dumps(mesh)))
    return config


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("JAXVIDEO_API_KEY", None)
    return env


def _image(server) -> np.ndarray:
    response = server.post("/sdapi/v1/txt2img", json=SD_BODY)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in images])


def _video(server) -> np.ndarray:
    accepted = server.post("/sdcpp/v1/vid_gen", json=WAN_BODY)
    assert accepted.status_code == 202, accepted.text
    job = server.poll(accepted.json()["id"], until=("completed", "failed"), timeout=600)[-1]
    assert job["status"] == "completed", job["error"]
    return webp_frames(base64.b64decode(job["result"]["b64_json"]), WAN_BODY["fps"])


def _one_process(root, mesh: dict, video_only: bool = False) -> dict[str, np.ndarray]:
    """What one server process with 8 devices makes on `mesh`."""
    config = _write_config(root, mesh)
    with serve(config, root, _env(8)) as server:
        outputs = {"wan": _video(server)}
        if not video_only:
            outputs["sd"] = _image(server)
    return outputs


def _assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    # Collectives over gloo sum in another order than one process's: a level or two off in
    # a few pixels, as between meshes (tests/engine/test_sharded_server.py).
    assert got.shape == want.shape, what
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 4 and (diff > 1).mean() < 1e-3, (what, diff.max())


def _compilations(server, process: str) -> float:
    response = server.get("/metrics")
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "jaxvideo_xla_compilations_total":
                assert sample.labels["process"] == process
                return sample.value
    raise AssertionError("no jaxvideo_xla_compilations_total")


def _submit(server, body: dict) -> str:
    accepted = server.post("/sdcpp/v1/img_gen", json=body)
    assert accepted.status_code == 202, accepted.text
    return accepted.json()["id"]


def _wait_for_step(server, job_id: str, step: int = 1) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = server.get(f"/sdcpp/v1/jobs/{job_id}").json()
        if job["progress"]["step"] >= step or job["status"] != "generating" and job["started"]:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached step {step}")


def test_slice_over_data_and_tensor_serves_cancels_and_fails_cleanly(tmp_path):
    mesh = {"data": 2, "tensor": 4}
    reference = _one_process(tmp_path / "one-process", mesh)
    # The batch's two images differ (different seeds): the equality below is not vacuous.
    assert not np.array_equal(reference["sd"][0], reference["sd"][1])
    config = _write_config(tmp_path / "slice", mesh)
    with serve_slice(config, tmp_path / "slice", _env(4)) as (leader, follower):
        assert "process 0 of 2; 4 local and 8 global devices" in leader.log.read_text()
        health = follower.get("/health")
        assert health.status_code == 200 and health.json()["role"] == "follower"
        refused = follower.get("/v1/models")
        assert refused.status_code == 421
        assert refused.json()["error"]["code"] == "not_process_0"

        _assert_same(_image(leader), reference["sd"], "sd")
        _assert_same(_video(leader), reference["wan"], "wan")
        # Each process reports its own compilations: the follower compiled what process 0 did.
        for server, index in ((leader, "0"), (follower, "1")):
            assert _compilations(server, index) > 0

        # A cancel decided on process 0 stops both processes at the same step: the next job
        # (which needs both in step) still gives the same image.
        long_job = _submit(leader, LONG_JOB)
        _wait_for_step(leader, long_job)
        # Two compatible jobs queued behind it run as one batch, on both processes.
        pair = [_submit(leader, {**SHORT_JOB, "seed": seed}) for seed in (11, 12)]
        assert leader.post(f"/sdcpp/v1/jobs/{long_job}/cancel").status_code == 200
        job = leader.poll(long_job, until=("cancelled", "completed", "failed"))[-1]
        assert job["status"] == "cancelled" and job["progress"]["step"] < 60, job
        for job_id in pair:
            job = leader.poll(job_id, until=("completed", "failed", "cancelled"))[-1]
            assert job["status"] == "completed", job
        assert f"running 2 jobs as one batch: {' '.join(pair)}" in leader.log.read_text()
        _assert_same(_image(leader), reference["sd"], "sd after a cancel")

        # The follower dies mid-job: process 0 fails that job with a clear code, answers 503,
        # and keeps the queued async job for the next start.
        running = _submit(leader, LONG_JOB)
        queued = _submit(leader, SHORT_JOB)
        _wait_for_step(leader, running)
        follower.crash()
        failed = leader.poll(running, until=("failed", "completed", "cancelled"), timeout=60)[-1]
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"] == "process_lost", failed["error"]
        assert "process 1" in failed["error"]["message"]
        health = leader.get("/health")
        assert health.status_code == 503 and "process 1" in health.json()["reason"]
        refused = leader.post("/sdapi/v1/txt2img", json=SD_BODY)
        assert refused.status_code == 503, refused.text
        assert leader.get(f"/sdcpp/v1/jobs/{queued}").json()["status"] == "queued"

    # The orchestrator restarts the slice: the accepted job runs then.
    with serve_slice(config, tmp_path / "slice", _env(4)) as (leader, _):
        job = leader.poll(queued, until=("completed", "failed", "cancelled"), timeout=300)[-1]
        assert job["status"] == "completed", job
        assert leader.get(f"/sdcpp/v1/jobs/{running}").json()["status"] == "failed"


def test_slice_over_context_serves_the_same_video(tmp_path):
    mesh = {"context": 8}
    reference = _one_process(tmp_path / "one-process", mesh, video_only=True)
    config = _write_config(tmp_path / "slice", mesh)
    with serve_slice(config, tmp_path / "slice", _env(4)) as (leader, _):
        _assert_same(_video(leader), reference["wan"], "wan over context 8")
    # SIGTERM reached the server's own handler, not only JAX's preemption notifier: it drained.
    assert "draining the job table" in leader.log.read_text()
