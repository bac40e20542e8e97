"""The OpenAI-compatible surface through the official `openai` SDK against the real server."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

MODEL = "sd1-tiny-demo"


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_sdk_generates_a_png_of_the_requested_size(client):
    response = client.images.generate(
        prompt="a lighthouse at dusk", size="256x256", extra_body={"steps": 2, "seed": 11}
    )
    assert len(response.data) == 1
    image = decode(response.data[0].b64_json)
    assert (image.format, image.size, image.mode) == ("PNG", (256, 256), "RGB")
    assert response.output_format == "png"


def test_sdk_lists_the_served_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [
        MODEL,
        "sd1-tiny-second",
        "wan-tiny-demo",
        "wan22-tiny-demo",
    ]
    assert models.data[0].owned_by == "jaxvideo"
    assert isinstance(models.data[0].created, int)


def test_sdk_retrieves_one_model_and_unknown_ids_are_404(client):
    model = client.models.retrieve(MODEL)
    assert (model.id, model.object, model.owned_by) == (MODEL, "model", "jaxvideo")
    listed = next(m for m in client.models.list().data if m.id == MODEL)
    assert model.created == listed.created
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("dall-e-3")
    error = info.value.body
    assert (error["code"], error["param"], error["type"]) == (
        "model_not_found",
        "model",
        "invalid_request_error",
    )


def test_post_v1_images_is_the_generations_route(server):
    # FastVideo's server code serves POST /v1/images where its docs name /v1/images/generations.
    body = {"prompt": "a lighthouse", "size": "64x64", "steps": 2, "seed": 5}
    short = server.post("/v1/images", json=body)
    long = server.post("/v1/images/generations", json=body)
    assert short.status_code == long.status_code == 200, short.text
    assert short.json()["data"] == long.json()["data"]
    assert short.json()["size"] == "64x64"
    bad = server.post("/v1/images", json={"prompt": "x", "size": "huge"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "size"


def test_model_and_output_format_are_honoured(client):
    response = client.images.generate(
        prompt="a red cube", model=MODEL, output_format="jpeg", output_compression=80
    )
    image = decode(response.data[0].b64_json)
    assert (image.format, image.size) == ("JPEG", (64, 64))  # size from the operator default


def test_extra_args_in_the_prompt_win_and_are_deterministic(client):
    prompt = 'a tree <sd_cpp_extra_args>{"seed": 77, "sample_params": {"sample_steps": 2}}'
    prompt += "</sd_cpp_extra_args>"
    first = client.images.generate(prompt=prompt, extra_body={"seed": 1})
    second = client.images.generate(prompt=prompt, extra_body={"seed": 2})
    assert first.data[0].b64_json == second.data[0].b64_json


def test_unknown_model_is_a_400_with_param_model(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="x", model="dall-e-3")
    error = info.value.body
    assert error["param"] == "model" and error["type"] == "invalid_request_error"
    assert info.value.response.headers["x-should-retry"] == "false"


def test_url_responses_are_refused_clearly(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="x", response_format="url")
    assert "b64_json" in info.value.body["message"]
    assert info.value.body["param"] == "response_format"


def test_n_images_come_back_in_one_response(client):
    response = client.images.generate(prompt="two birds", n=2, extra_body={"seed": 40})
    assert len(response.data) == 2
    assert response.data[0].b64_json != response.data[1].b64_json
