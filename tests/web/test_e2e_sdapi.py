"""The AUTOMATIC1111-compatible surface over plain HTTP against the real server."""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import numpy as np
from PIL import Image

from tests.support.sampling import SAMPLERS, SCHEDULERS
from webapp.core.names import display_name


def txt2img(server, **body):
    response = server.post("/sdapi/v1/txt2img", json={"prompt": "a small boat", **body})
    assert response.status_code == 200, response.text
    return response.json()


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_fixed_seed_repeats_and_another_seed_differs(server):
    first = txt2img(server, seed=1234)
    again = txt2img(server, seed=1234)
    other = txt2img(server, seed=4321)
    assert np.array_equal(pixels(first["images"][0]), pixels(again["images"][0]))
    assert not np.array_equal(pixels(first["images"][0]), pixels(other["images"][0]))


def test_info_reports_the_resolved_seed_and_the_png_carries_parameters(server):
    body = txt2img(server, seed=-1, sampler_name="Euler a", cfg_scale=6.5, restore_faces=False)
    info = json.loads(body["info"])
    assert isinstance(info["seed"], int) and info["seed"] >= 0
    assert info["all_seeds"] == [info["seed"]]
    assert (info["width"], info["height"], info["steps"]) == (64, 64, 2)  # operator defaults
    assert (info["sampler_name"], info["cfg_scale"]) == ("Euler a", 6.5)
    assert info["sd_model_name"] == "sd1-tiny-demo"
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.format == "PNG"
    assert image.text["parameters"] == info["infotexts"][0]
    assert f"Seed: {info['seed']}" in image.text["parameters"]
    assert "Sampler: Euler a" in image.text["parameters"]
    assert body["parameters"]["cfg_scale"] == 6.5
    assert "restore_faces" not in body["parameters"]


def test_metadata_can_be_left_out_and_images_withheld(server):
    body = txt2img(server, seed=3, embed_image_metadata=False)
    assert "parameters" not in Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).info
    assert txt2img(server, seed=3, send_images=False)["images"] == []


def test_discovery_endpoints(server):
    samplers = server.get("/sdapi/v1/samplers").json()
    assert {
        "name": "Euler a",
        "aliases": ["euler_a", "euler_ancestral", "k_euler_a", "k_euler_ancestral"],
        "options": {},
    } in samplers
    assert {
        "name": "DPM++ 2M",
        "aliases": ["dpm++2m", "dpmpp_2m", "k_dpmpp_2m"],
        "options": {},
    } in samplers
    # Every sampler the engine has, once, under its A1111 display name, native name first.
    assert [s["aliases"][0] for s in samplers] == list(SAMPLERS)
    assert [s["name"] for s in samplers] == [display_name(s) for s in SAMPLERS]
    assert len({s["name"] for s in samplers}) == len(SAMPLERS) == 21
    schedulers = server.get("/sdapi/v1/schedulers").json()
    assert [s["name"] for s in schedulers] == ["automatic", *SCHEDULERS]
    assert {"name": "karras", "label": "Karras", "aliases": []} in schedulers
    assert {"name": "ays", "label": "Align Your Steps", "aliases": ["align_your_steps"]} in (
        schedulers
    )
    assert schedulers[0]["label"] == "Automatic"
    models = server.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == [
        "sd1-tiny-demo",
        "sd1-tiny-second",
        "wan-tiny-demo",  # Wan makes images too (one frame)
    ]
    assert len(models[0]["sha256"]) == 64 and models[0]["config"] is None
    assert server.get("/sdapi/v1/options").json() == {
        "samples_format": "png",
        "sd_model_checkpoint": "sd1-tiny-demo",
    }
    assert server.get("/sdapi/v1/loras").json() == [
        {"name": "tiny_style", "path": "tiny_style.safetensors"}
    ]


def test_batches_use_consecutive_seeds(server):
    body = txt2img(server, seed=40, batch_size=2)
    info = json.loads(body["info"])
    assert info["all_seeds"] == [40, 41] and len(body["images"]) == 2
    assert not np.array_equal(pixels(body["images"][0]), pixels(body["images"][1]))
    assert [t.split("Seed: ")[1].split(",")[0] for t in info["infotexts"]] == ["40", "41"]


def test_a_synchronous_request_whose_client_hangs_up_is_cancelled(server):
    # A slow txt2img sent on a raw connection, closed while it generates: nobody is left to
    # read the images, so the job stops at its next step instead of running to the end.
    body = json.dumps({"prompt": "x", "width": 256, "height": 256, "steps": 80}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 120
        job = ""
        while not job and time.monotonic() < deadline:
            state = server.get("/sdapi/v1/progress").json()["state"]
            job = state["job"] if state["sampling_step"] > 0 else ""
            time.sleep(0.05)
        assert job, "the request never started generating"
    final = server.poll(job, until=("completed", "failed", "cancelled"))[-1]
    assert final["status"] == "cancelled", final
    assert final["error"]["message"] == "client disconnected"
    assert final["progress"]["step"] < 80
