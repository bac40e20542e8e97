"""Request batching through the real server (its default `max_batch_size` of 4): compatible
queued sdcpp jobs run as one batch, and each gets the images it gets when run alone."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

# Three compatible requests (the server's 64x64, 2-step defaults), one of two images.
BODIES = [
    {"prompt": "a red fox", "seed": 11},
    {"prompt": "a blue lake", "negative_prompt": "fog", "seed": 7, "batch_count": 2},
    {"prompt": "an old tower at night", "seed": 11},
]


def submit(server, body: dict) -> str:
    response = server.post("/sdcpp/v1/img_gen", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def finish(server, job_id: str) -> dict:
    done = server.poll(job_id, until=("completed", "failed", "cancelled"))[-1]
    assert done["status"] == "completed", done
    return done


def images(job: dict) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(image["b64_json"]))))
        for image in job["result"]["images"]
    ]


def test_queued_compatible_jobs_run_as_one_batch_with_their_own_results(server):
    # A slow job of another size holds the worker while the three queue up behind it.
    slow = {"width": 256, "height": 256, "sample_params": {"sample_steps": 60}}
    blocker = submit(server, {"prompt": "hold", **slow})
    server.poll(blocker, until=("generating",))
    ids = [submit(server, body) for body in BODIES]
    assert server.post(f"/sdcpp/v1/jobs/{blocker}/cancel").status_code == 200
    batched = [finish(server, job_id) for job_id in ids]

    # The worker logs every batch it runs: these three jobs, in queue order, in one call.
    assert re.search(rf"running 3 jobs as one batch: {' '.join(ids)}$", server.log_tail(200), re.M)
    assert len({job["started"] for job in batched}) == 1
    assert [[image["seed"] for image in job["result"]["images"]] for job in batched] == [
        [11],
        [7, 8],
        [11],
    ]
    for body, job in zip(BODIES, batched, strict=True):
        alone = finish(server, submit(server, body))  # nothing queued with it: runs alone
        for ours, reference in zip(images(job), images(alone), strict=True):
            # Within one uint8 level: see tests/engine/test_engine_batching.py (fp32 kernels round
            # differently by batch size on CPU).
            diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
            assert diff.max() <= 1 and np.count_nonzero(diff) < 0.001 * diff.size
    assert not np.array_equal(images(batched[0])[0], images(batched[2])[0])


def test_interrupt_stops_the_current_job_only_its_batch_partners_finish(server):
    # Three compatible jobs batched behind a blocker, slow enough to interrupt mid-run.
    slow = {"width": 256, "height": 256, "sample_params": {"sample_steps": 60}}
    blocker = submit(server, {"prompt": "hold", **slow})
    server.poll(blocker, until=("generating",))
    batch = {"width": 128, "height": 128, "sample_params": {"sample_steps": 40}}
    ids = [submit(server, {**body, **batch}) for body in BODIES]
    assert server.post(f"/sdcpp/v1/jobs/{blocker}/cancel").status_code == 200
    server.poll(ids[0], until=("generating",))
    assert server.get("/sdapi/v1/progress").json()["state"]["job"] == ids[0]
    assert server.post("/sdapi/v1/interrupt").status_code == 200
    first = server.poll(ids[0], until=("completed", "failed", "cancelled"))[-1]
    assert first["status"] == "cancelled" and "interrupt" in first["error"]["message"]
    for job_id in ids[1:]:  # other clients' jobs in the same batch get their images
        assert len(images(finish(server, job_id))) >= 1
