"""Hires fix and refiner fields on sdapi, and sdcpp's shifted_timestep, against the real server."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image


def image_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))))


BASE = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2, "seed": 9}


def test_hires_fix_upscales_and_refines(server):
    plain = image_of(server.post("/sdapi/v1/txt2img", json=BASE))
    hires = server.post(
        "/sdapi/v1/txt2img",
        json={
            **BASE,
            "enable_hr": True,
            "hr_scale": 2,
            "hr_second_pass_steps": 2,
            "denoising_strength": 0.6,
        },
    )
    big = image_of(hires)
    assert plain.shape == (64, 64, 3) and big.shape == (128, 128, 3)
    explicit = server.post(
        "/sdapi/v1/txt2img",
        json={
            **BASE,
            "enable_hr": True,
            "hr_resize_x": 96,
            "hr_resize_y": 80,
            "hr_upscaler": "Latent (nearest)",
        },
    )
    assert image_of(explicit).shape == (80, 96, 3)
    # enable_hr false (or absent) leaves the request alone
    same = image_of(
        server.post("/sdapi/v1/txt2img", json={**BASE, "enable_hr": False, "hr_scale": 2})
    )
    np.testing.assert_array_equal(same, plain)


def test_bad_hires_settings_are_400(server):
    for extra, param in (
        ({"hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler"),
        ({"hr_scale": 16}, "hr_scale"),
        ({"hr_resize_x": 4096, "hr_resize_y": 4096}, "hr_scale"),
    ):
        response = server.post("/sdapi/v1/txt2img", json={**BASE, "enable_hr": True, **extra})
        assert response.status_code == 400, (extra, response.text)
        assert param in response.json()["error"]


def test_a_refiner_must_be_an_sdxl_refiner_for_an_sdxl_model(server):
    response = server.post(
        "/sdapi/v1/txt2img", json={**BASE, "refiner_checkpoint": "sd1-tiny-second"}
    )
    assert response.status_code == 400
    assert "refiner_checkpoint" in response.json()["error"]
    unknown = server.post("/sdapi/v1/txt2img", json={**BASE, "refiner_checkpoint": "nope"})
    assert unknown.status_code == 400
    none = server.post("/sdapi/v1/txt2img", json={**BASE, "refiner_checkpoint": "None"})
    assert none.status_code == 200


def test_sdcpp_shifted_timestep_runs_and_is_range_checked(server):
    body = {
        "prompt": "a fox",
        "width": 64,
        "height": 64,
        "seed": 3,
        "sample_params": {"sample_steps": 2, "sample_method": "euler"},
    }
    shifted = {**body, "sample_params": {**body["sample_params"], "shifted_timestep": 500}}
    ids = [server.post("/sdcpp/v1/img_gen", json=b).json()["id"] for b in (body, shifted)]
    images = []
    for job_id in ids:
        job = server.poll(job_id, ("completed", "failed"))[-1]
        assert job["status"] == "completed", json.dumps(job)[:300]
        images.append(job["result"]["images"][0]["b64_json"])
    assert images[0] != images[1]
    bad = {**body, "sample_params": {**body["sample_params"], "shifted_timestep": 2000}}
    response = server.post("/sdcpp/v1/img_gen", json=bad)
    assert response.status_code == 400
    assert "shifted_timestep" in response.text
