"""Malformed requests answer 4xx in each surface's envelope, never 500."""

from __future__ import annotations

import pytest

GENERATE = {
    "openai": "/v1/images/generations",
    "sdapi": "/sdapi/v1/txt2img",
    "sdcpp": "/sdcpp/v1/img_gen",
}


def assert_envelope(surface: str, response, status: int = 400) -> str:
    """Checks the surface's error shape and returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    if surface == "openai":
        error = body["error"]
        assert set(error) == {"message", "type", "code", "param"}
        assert error["type"] == "invalid_request_error"
        return f"{error['message']} (param {error['param']})"
    assert isinstance(body["error"], str)
    return " ".join(str(v) for v in body.values())


@pytest.mark.parametrize("surface", GENERATE)
def test_invalid_json_empty_and_non_object_bodies(server, surface):
    path = GENERATE[surface]
    headers = {"Content-Type": "application/json"}
    message = assert_envelope(surface, server.post(path, data="{nope", headers=headers))
    assert "invalid json" in message
    assert "empty body" in assert_envelope(surface, server.post(path, data="", headers=headers))
    assert_envelope(surface, server.post(path, data="[1, 2]", headers=headers))
    assert_envelope(surface, server.post(path, data='{"prompt": NaN}', headers=headers))


BAD_REQUESTS = {
    "openai": [
        ({"prompt": "x", "n": "two"}, "n"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "sampler": "DPM2 a"}, "sampler"),  # A1111 has it, sd.cpp does not
        ({"prompt": "x", "scheduler": "polyexponential"}, "scheduler"),
        ({"prompt": "x", "size": "4096x4096"}, "size"),
        ({"prompt": "x", "size": "100x100"}, "size"),
        ({"prompt": "x", "output_format": "gif"}, "output_format"),
        ({"prompt": "x", "steps": 1000}, "steps"),
        ({"prompt": "x <sd_cpp_extra_args>{bad</sd_cpp_extra_args>"}, "prompt"),
    ],
    "sdapi": [
        ({"prompt": "x", "steps": "many"}, "steps"),
        ({"prompt": "x", "sampler_name": "DPM++ SDE Karras"}, "sampler_name"),
        ({"prompt": "x", "sampler_name": "DPM++ 2M Polyexponential"}, "sampler_name"),
        ({"prompt": "x", "scheduler": "DDIM"}, "scheduler"),
        ({"prompt": "x", "width": 4096}, "width"),
        ({"prompt": "x", "width": 100}, "width"),
        ({"prompt": "x", "lora": [{"path": "missing.safetensors"}]}, "lora[0].path"),
        ({"negative_prompt": "x"}, "prompt"),
    ],
    "sdcpp": [
        ({"width": "wide"}, "width"),
        # The native surface takes native names only.
        ({"sample_params": {"sample_method": "DPM++ 2M"}}, "sample_method"),
        ({"sample_params": {"scheduler": "SGM Uniform"}}, "scheduler"),
        ({"sample_params": {"shifted_timestep": 2000}}, "shifted_timestep"),
        ({"sample_params": {"flow_shift": 3.0}}, "flow_shift"),
        ({"sample_params": {"guidance": {"slg": {"scale": 2.5}}}}, "slg.scale"),
        ({"cache_mode": "easycache"}, "cache_mode"),
        ({"sample_params": {"custom_sigmas": [1.0, 2.0]}}, "custom_sigmas"),
        ({"width": 1024}, "width"),
        ({"height": 100}, "height"),
        ({"sample_params": {"sample_steps": 0}}, "sample_steps"),
        ({"strength": 2}, "strength"),
        ({"sample_params": {"guidance": {"txt_cfg": -1}}}, "txt_cfg"),
        ({"output_format": "gif"}, "output_format"),
        ({"init_image": "aGVsbG8="}, "init_image"),
        ({"surprise": True}, "surprise"),
    ],
}


@pytest.mark.parametrize(
    ("surface", "body", "field"),
    [(surface, body, field) for surface, cases in BAD_REQUESTS.items() for body, field in cases],
)
def test_bad_fields_are_400_naming_the_field(server, surface, body, field):
    message = assert_envelope(surface, server.post(GENERATE[surface], json=body))
    assert field in message


def test_sdcpp_output_format_message_matches_the_peer(server):
    response = server.post("/sdcpp/v1/img_gen", json={"output_format": "gif"})
    assert response.json()["error"] == "invalid output_format, must be one of [png, jpeg, webp]"


@pytest.mark.parametrize("surface", GENERATE)
def test_unknown_routes_wrong_methods_and_huge_bodies(server, surface):
    prefix = GENERATE[surface].rsplit("/", 1)[0]
    assert_envelope(surface, server.get(prefix + "/nope"), 404)
    assert_envelope(surface, server.get(GENERATE[surface]), 405)
    huge = '{"prompt": "' + "x" * (2 * 1024 * 1024) + '"}'
    # gunicorn drops a keep-alive connection whose unread body is large, so do not reuse it.
    response = server.post(GENERATE[surface], data=huge, headers={"Connection": "close"})
    assert_envelope(surface, response, 413)


def test_cors_preflight_and_headers(server):
    response = server.request("OPTIONS", "/v1/images/generations")
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert server.get("/health").headers["Access-Control-Allow-Origin"] == "*"


def test_health_and_openapi(server):
    assert server.get("/health").json()["status"] == "ok"
    spec = server.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in (
        "/v1/images/generations",
        "/v1/images/edits",
        "/sdapi/v1/txt2img",
        "/sdapi/v1/img2img",
        "/sdcpp/v1/img_gen",
    ):
        assert "post" in spec["paths"][path]
    assert "ImgGen" in spec["components"]["schemas"]
    edits = spec["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert list(edits) == ["multipart/form-data"]
