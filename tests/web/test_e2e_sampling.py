"""Every advertised sampler and schedule, A1111 names, eta, custom sigmas and VAE tiling,
end to end against the real server."""

from __future__ import annotations

import base64
import io
import json
import time
from collections import deque

import numpy as np
import openai
from PIL import Image

from tests.support.sampling import SAMPLERS, SCHEDULERS

TERMINAL = ("completed", "failed", "cancelled")


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def run_all(server, bodies: list[dict], timeout: float = 600) -> list[dict]:
    """Submits every body to img_gen, keeping the (4-job) queue full, and returns the final job
    JSON of each, in order. A 429 just means: wait for the oldest job, then try again."""
    pending = deque(enumerate(bodies))
    active: deque[tuple[int, str]] = deque()
    finished: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while pending or active:
        assert time.monotonic() < deadline, f"stuck with {len(active)} active jobs"
        while pending:
            index, body = pending[0]
            response = server.post("/sdcpp/v1/img_gen", json=body)
            if response.status_code == 429:
                break
            assert response.status_code == 202, (body, response.text)
            active.append((index, response.json()["id"]))
            pending.popleft()
        index, job_id = active.popleft()
        finished[index] = server.poll(job_id, until=TERMINAL)[-1]
    return [finished[i] for i in range(len(bodies))]


def test_every_sampler_schedule_pair_generates_through_sdcpp(server):
    """All advertised samplers, each with its default schedule and with every schedule."""

    def body(sample_params: dict) -> dict:
        # 3 steps: with 2, every schedule is just [sigma_max, sigma_min, 0].
        params = {"sample_steps": 3, **sample_params}
        return {"prompt": "a kite", "seed": 3, "sample_params": params}

    cases = [{"sample_method": s} for s in SAMPLERS]  # each with its default schedule
    cases += [{"sample_method": "euler", "scheduler": s} for s in SCHEDULERS]
    cases += [
        {"sample_method": sampler, "scheduler": schedule}
        for sampler in SAMPLERS
        if sampler != "euler"
        for schedule in SCHEDULERS
    ]
    assert len(cases) == len(SAMPLERS) + len(SAMPLERS) * len(SCHEDULERS)
    started = time.monotonic()
    jobs = run_all(server, [body(case) for case in cases])
    elapsed = time.monotonic() - started
    failed = [
        (case, job["error"])
        for case, job in zip(cases, jobs, strict=True)
        if job["status"] != "completed"
    ]
    assert not failed, failed
    images = [pixels(job["result"]["images"][0]["b64_json"]) for job in jobs]
    assert all(image.shape == (64, 64, 3) for image in images)
    # Samplers really differ: ancestral, SDE and multistep ones do not all agree with euler.
    sampler_images = images[: len(SAMPLERS)]
    schedule_images = images[len(SAMPLERS) : len(SAMPLERS) + len(SCHEDULERS)]
    by_sampler = {s: i.tobytes() for s, i in zip(SAMPLERS, sampler_images, strict=True)}
    assert by_sampler["euler"] != by_sampler["euler_a"]
    assert len(set(by_sampler.values())) >= len(SAMPLERS) // 2
    by_schedule = {s: i.tobytes() for s, i in zip(SCHEDULERS, schedule_images, strict=True)}
    assert by_schedule["discrete"] != by_schedule["karras"]
    assert len(set(by_schedule.values())) >= len(SCHEDULERS) // 2
    assert all(job["progress"]["step"] == job["progress"]["total"] >= 3 for job in jobs)
    print(f"{len(cases)} sampler/schedule jobs in {elapsed:.1f} s")


def txt2img(server, **body) -> dict:
    response = server.post("/sdapi/v1/txt2img", json={"prompt": "a kite", "seed": 21, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_a1111_names_carry_their_schedule_and_match_native_and_openai_names(server):
    a1111 = txt2img(server, sampler_name="DPM++ 2M Karras")
    info = json.loads(a1111["info"])
    assert (info["sampler_name"], info["scheduler"]) == ("DPM++ 2M", "karras")
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in info["infotexts"][0]
    native = txt2img(server, sampler_name="dpm++2m", scheduler="karras")
    assert native["images"] == a1111["images"]
    client = openai.OpenAI(
        base_url=f"{server.url}/v1",
        api_key="anything",
        http_client=openai.DefaultHttpxClient(trust_env=False),
        max_retries=0,
    )
    response = client.images.generate(
        prompt="a kite", extra_body={"seed": 21, "sampler": "k_dpmpp_2m", "scheduler": "Karras"}
    )
    assert np.array_equal(pixels(response.data[0].b64_json), pixels(a1111["images"][0]))
    sgm = json.loads(txt2img(server, sampler_name="Euler a SGM Uniform")["info"])
    assert (sgm["sampler_name"], sgm["scheduler"]) == ("Euler a", "sgm_uniform")


def test_eta_reaches_the_sampler(server):
    default = txt2img(server, sampler_name="Euler a")["images"][0]
    assert txt2img(server, sampler_name="Euler a", eta=1.0)["images"][0] == default
    assert txt2img(server, sampler_name="Euler a", eta=0.0)["images"][0] != default


def test_custom_sigmas_replace_the_schedule_and_the_step_count(server):
    sigmas = [14.6, 6.0, 2.0, 0.5]
    [job] = run_all(
        server,
        [{"prompt": "a kite", "seed": 3, "sample_params": {"custom_sigmas": sigmas}}],
    )
    assert job["status"] == "completed", job
    assert job["progress"] == {"step": 4, "total": 4, "phase": None}  # a final 0 is appended
    response = server.post(
        "/sdcpp/v1/img_gen", json={"sample_params": {"custom_sigmas": [1.0, 3.0]}}
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("sample_params.custom_sigmas: ")


def test_vae_tiling_decodes_in_tiles_close_to_the_whole_image(server):
    def image(**body) -> np.ndarray:
        body = {"prompt": "a kite", "seed": 8, "width": 128, "height": 128, **body}
        [job] = run_all(server, [body])
        assert job["status"] == "completed", job
        return pixels(job["result"]["images"][0]["b64_json"]).astype(np.float64)

    whole = image()
    # 16x16 latent in 12x12 tiles at half overlap: a 2x2 grid, blended where tiles meet.
    tiled = image(vae_tiling_params={"enabled": True, "tile_size_x": 12, "tile_size_y": 12})
    other_seed = image(seed=9)
    seam = np.abs(tiled - whole).mean()
    # Measured: about 3.7 against about 59 between two seeds (tiles in the wrong place or
    # unblended seams would be far above the bound).
    assert 0 < seam < 0.15 * np.abs(other_seed - whole).mean(), seam
    # Relative sizes and the extra-args route give the same tiles (3/4 of 16 = 12).
    relative = {"enabled": True, "rel_size_x": 0.75, "rel_size_y": 0.75}
    assert np.array_equal(image(vae_tiling_params=relative), tiled)
    block = json.dumps(
        {"vae_tiling_params": {"enabled": True, "tile_size_x": 12, "tile_size_y": 12}}
    )
    body = {
        "prompt": f"a kite <sd_cpp_extra_args>{block}</sd_cpp_extra_args>",
        "seed": 8,
        "width": 128,
        "height": 128,
    }
    response = server.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert np.array_equal(pixels(response.json()["images"][0]), tiled)
