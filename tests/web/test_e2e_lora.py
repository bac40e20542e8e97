"""LoRA on every surface against the real server: applied, scaled, agreed on, and confined to
the LoRA folder (conftest writes `tiny_style.safetensors` in it and `outside.safetensors` next
to it)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import openai
import pytest
from PIL import Image

LORA_NAME = "tiny_style"  # conftest writes <lora_dir>/tiny_style.safetensors ...
OUTSIDE_LORA = "outside.safetensors"  # ... and this one next to the folder
PROMPT = "a red barn"
SEED = 77


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def block(**args) -> str:
    return f"<sd_cpp_extra_args>{json.dumps(args)}</sd_cpp_extra_args>"


def sdapi_image(server, **body) -> np.ndarray:
    response = server.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "seed": SEED, **body})
    assert response.status_code == 200, response.text
    return pixels(response.json()["images"][0])


def sdcpp_image(server, **body) -> np.ndarray:
    response = server.post("/sdcpp/v1/img_gen", json={"prompt": PROMPT, "seed": SEED, **body})
    assert response.status_code == 202, response.text
    done = server.poll(response.json()["id"], until=("completed", "failed", "cancelled"))[-1]
    assert done["status"] == "completed", done
    return pixels(done["result"]["images"][0]["b64_json"])


@pytest.fixture(scope="module")
def plain(server) -> np.ndarray:
    return sdapi_image(server)


@pytest.fixture(scope="module")
def styled(server) -> np.ndarray:
    return sdapi_image(server, lora=[{"path": LORA_NAME}])


def test_a_lora_changes_the_image_and_multiplier_zero_does_not(server, plain, styled):
    assert np.abs(plain.astype(int) - styled).mean() > 1.0
    zero = sdapi_image(server, lora=[{"path": f"{LORA_NAME}.safetensors", "multiplier": 0.0}])
    assert np.array_equal(zero, plain)
    half = sdapi_image(server, lora=[{"path": LORA_NAME, "multiplier": 0.5}])
    assert not np.array_equal(half, plain) and not np.array_equal(half, styled)


def test_every_surface_applies_the_same_lora_the_same_way(server, client, styled):
    assert np.array_equal(sdcpp_image(server, lora=[{"path": LORA_NAME}]), styled)
    prompt = f"{PROMPT} {block(lora=[{'path': LORA_NAME, 'multiplier': 1.0}])}"
    assert np.array_equal(sdapi_image(server, prompt=prompt), styled)
    response = client.images.generate(prompt=prompt, extra_body={"seed": SEED})
    assert np.array_equal(pixels(response.data[0].b64_json), styled)


def test_on_sdapi_the_outer_lora_wins_over_the_block(server, plain):
    prompt = f"{PROMPT} {block(lora=[{'path': LORA_NAME}])}"
    outer = [{"path": LORA_NAME, "multiplier": 0.0}]
    assert np.array_equal(sdapi_image(server, prompt=prompt, lora=outer), plain)


def _outside_paths(server) -> list[str]:
    return [f"../{OUTSIDE_LORA}", str(server.lora_dir.parent / OUTSIDE_LORA), "nope"]


def _sdapi_lora(server, entry, *, in_block=False, img2img=False) -> tuple[int, dict]:
    body = {"prompt": PROMPT}
    if in_block:
        body["prompt"] += " " + block(lora=[entry])
    else:
        body["lora"] = [entry]
    path = "/sdapi/v1/txt2img"
    if img2img:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), "gray").save(buffer, "PNG")
        body["init_images"] = [base64.b64encode(buffer.getvalue()).decode()]
        path = "/sdapi/v1/img2img"
    response = server.post(path, json=body)
    return response.status_code, response.json()


@pytest.mark.parametrize("case", ["sdapi", "sdapi-block", "sdapi-img2img", "sdcpp", "openai"])
def test_loras_outside_the_folder_or_missing_are_400_on_every_surface(server, client, case):
    for name in _outside_paths(server):
        entry = {"path": name, "multiplier": 1.0}
        if case == "openai":
            with pytest.raises(openai.BadRequestError) as info:
                client.images.generate(prompt=f"{PROMPT} {block(lora=[entry])}")
            error = info.value.body
            assert error["param"] == "sd_cpp_extra_args.lora[0].path", error
            message = error["message"]
        elif case == "sdcpp":
            response = server.post("/sdcpp/v1/img_gen", json={"prompt": PROMPT, "lora": [entry]})
            status, body = response.status_code, response.json()
            assert status == 400 and body["error"].startswith("lora[0].path: "), body
            message = body["error"]
        else:
            status, body = _sdapi_lora(
                server, entry, in_block=case == "sdapi-block", img2img=case == "sdapi-img2img"
            )
            # sdapi errors carry no `param`: the message names the field, inside the block.
            prefix = "invalid sd_cpp_extra_args: " if case == "sdapi-block" else ""
            assert status == 400 and body["error"].startswith(prefix + "lora[0].path: "), body
            message = body["error"]
        assert ("outside the LoRA folder" if name != "nope" else "no LoRA named") in message
        # The answer names the LoRA as asked, never where the server keeps its files.
        assert str(server.lora_dir) not in message.replace(name, "")


def test_edits_confine_loras_in_the_extra_args_too(server, client):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(buffer, "PNG")
    entry = {"path": f"../{OUTSIDE_LORA}"}
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(
            image=("in.png", buffer.getvalue(), "image/png"),
            prompt=f"{PROMPT} {block(lora=[entry])}",
        )
    assert info.value.body["param"] == "sd_cpp_extra_args.lora[0].path"


def test_a_high_noise_lora_needs_a_two_expert_model(server):
    entry = {"path": LORA_NAME, "is_high_noise": True}
    response = server.post("/sdcpp/v1/img_gen", json={"prompt": PROMPT, "lora": [entry]})
    assert response.status_code == 400
    assert response.json()["error"].startswith("lora[0].is_high_noise: ")
    assert "Wan 2.2" in response.json()["error"]


def test_the_folder_is_listed_on_sdapi_and_in_capabilities(server):
    listed = [{"name": LORA_NAME, "path": f"{LORA_NAME}.safetensors"}]
    assert server.get("/sdapi/v1/loras").json() == listed
    caps = server.get("/sdcpp/v1/capabilities").json()
    assert caps["loras"] == listed and caps["features"]["lora"] is True
