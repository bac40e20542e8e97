"""Malformed requests answer 4xx in each surface's envelope, never 500."""

from __future__ import annotations

from pathlib import Path

import openai
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
        # What the documented schema forbids (found by tests/web/test_e2e_fuzz.py).
        ({"prompt": "x", "stream": 0}, "stream"),
        ({"prompt": "x", "output_compression": 5.3e16}, "output_compression"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
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
        ({"prompt": "x", "enable_hr": 1}, "enable_hr"),
    ],
    "sdcpp": [
        ({"width": "wide"}, "width"),
        # The native surface takes native names only.
        ({"sample_params": {"sample_method": "DPM++ 2M"}}, "sample_method"),
        ({"sample_params": {"scheduler": "SGM Uniform"}}, "scheduler"),
        ({"sample_params": {"shifted_timestep": 2000}}, "shifted_timestep"),
        ({"sample_params": {"flow_shift": 3.0}}, "flow_shift"),
        # Skip-layer guidance is SD3.5's: the SD demo model has none.
        ({"sample_params": {"guidance": {"slg": {"scale": 2.5}}}}, "slg"),
        ({"ref_images": ["aGk="]}, "ref_images[0]"),
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
    headers = {"Connection": "close", "Content-Type": "application/json"}
    response = server.post(GENERATE[surface], data=huge, headers=headers)
    assert_envelope(surface, response, 413)


def test_other_sites_pages_cannot_use_the_server_by_default(server):
    # A page on another origin may neither preflight nor send a simple request (no
    # server.cors_origins here): 403 in the surface's envelope, no CORS headers.
    foreign = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    preflight = server.request("OPTIONS", "/v1/images/generations", headers=foreign)
    assert_envelope("openai", preflight, 403)
    assert "Access-Control-Allow-Origin" not in preflight.headers
    simple = server.post("/sdcpp/v1/img_gen", json={"prompt": "x"}, headers=foreign)
    assert_envelope("sdcpp", simple, 403)
    # The server's own origin (its future web page) is served, whatever scheme a proxy shows.
    own = {"Origin": server.url.replace("http://", "https://")}
    preflight = server.request("OPTIONS", "/v1/images/generations", headers=own)
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert server.get("/health", headers=own).status_code == 200
    # Clients that are not browsers send no Origin and get no CORS headers.
    assert "Access-Control-Allow-Origin" not in server.get("/health").headers


@pytest.mark.parametrize("surface", GENERATE)
def test_json_routes_take_a_json_content_type_only(server, surface):
    for headers in ({"Content-Type": "text/plain"}, {}):
        response = server.post(GENERATE[surface], data='{"prompt": "x"}', headers=headers)
        assert "application/json" in assert_envelope(surface, response, 415)


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


# -- inputs that reached a 500 or ran unbounded (issue 11) --------------------------------------

# A JSON document nested 1,000 deep: Python's parser fails on it (RecursionError).
DEEP = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize("surface", GENERATE)
def test_deeply_nested_json_is_a_400(server, surface):
    headers = {"Content-Type": "application/json"}
    response = server.post(GENERATE[surface], data=DEEP, headers=headers)
    assert "nested deeper than" in assert_envelope(surface, response)
    nested = '{"prompt": "x", "sample_params": ' + "[" * 40 + "]" * 40 + "}"
    assert "nested deeper than" in assert_envelope(
        surface, server.post(GENERATE[surface], data=nested, headers=headers)
    )


@pytest.mark.parametrize("surface", ["openai", "sdapi"])  # sdcpp prompts hold no blocks
def test_deep_json_inside_extra_args_is_a_400_naming_the_prompt(server, surface):
    block = "<sd_cpp_extra_args>" + "[" * 900 + "]" * 900 + "</sd_cpp_extra_args>"
    message = assert_envelope(surface, server.post(GENERATE[surface], json={"prompt": block}))
    assert "sd_cpp_extra_args" in message and "nested deeper than" in message


@pytest.mark.parametrize("surface", GENERATE)
def test_a_lone_surrogate_in_a_prompt_is_a_400(server, surface):
    # Valid JSON (an escape), but no text encoding holds it: the tokenizer failed on it.
    body = '{"prompt": "a \\ud800 fox", "negative_prompt": "x"}'
    response = server.post(
        GENERATE[surface], data=body, headers={"Content-Type": "application/json"}
    )
    message = assert_envelope(surface, response)
    assert "prompt" in message and "Unicode" in message


@pytest.mark.parametrize("surface", GENERATE)
def test_prompts_longer_than_the_limit_are_refused_before_tokenising(server, surface):
    # The server's max_prompt_chars (default 4096) bounds tokenising; 1 MB took 18 s and 6 GB.
    long = "a fox " * 100_000  # 600 kB, within this server's 1 MiB body limit
    response = server.post(GENERATE[surface], json={"prompt": "x", "negative_prompt": long})
    message = assert_envelope(surface, response)
    assert "negative_prompt" in message and "4096" in message
    assert response.elapsed.total_seconds() < 5


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        # The demo CLIP text encoder has 2 layers: skipping 3 was accepted and the job failed.
        ("/sdcpp/v1/img_gen", {"clip_skip": 3}, "clip_skip"),
        ("/sdcpp/v1/img_gen", {"clip_skip": 2147483648}, "clip_skip"),
        (
            "/sdapi/v1/txt2img",
            {"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": 3}},
            "clip_skip",
        ),
        ("/v1/images/generations", {"prompt": "x", "clip_skip": 9}, "clip_skip"),
        # Wan has no CLIP text encoder: clip_skip was accepted and ignored.
        ("/sdcpp/v1/img_gen", {"model": "wan-tiny-demo", "clip_skip": 50}, "clip_skip"),
        ("/sdcpp/v1/vid_gen", {"clip_skip": 2}, "clip_skip"),
        # The MP4 copy's path was checked only when the generation had finished.
        ("/v1/videos", {"prompt": "x", "output_path": "clips/" + "x" * 5000}, "output_path"),
        ("/v1/videos", {"prompt": "x", "output_path": "y" * 300}, "output_path"),
    ],
)
def test_what_the_model_or_the_file_system_cannot_take_is_a_400_at_submission(
    server, path, body, field
):
    response = server.post(path, json=body)  # async routes answer 202 once a job is queued
    assert response.status_code == 400, response.text
    assert field in response.text


def test_clip_skip_the_encoder_has_and_a1111_s_neutral_value_still_work(server):
    ok = server.post(
        "/sdcpp/v1/img_gen", json={"clip_skip": 2, "sample_params": {"sample_steps": 1}}
    )
    assert ok.status_code == 202, ok.text
    assert server.poll(ok.json()["id"], ("completed", "failed"))[-1]["status"] == "completed"
    # A1111 clients send CLIP_stop_at_last_layers 1 (the last layer) with every request.
    body = {"prompt": "x", "steps": 1, "override_settings": {"CLIP_stop_at_last_layers": 1}}
    body["sd_model_checkpoint"] = "wan-tiny-demo"
    assert server.post("/sdapi/v1/txt2img", json=body).status_code == 200


@pytest.mark.parametrize("surface", GENERATE)
def test_405_names_the_allowed_methods(server, surface):
    response = server.get(GENERATE[surface])
    assert_envelope(surface, response, 405)
    assert "POST" in response.headers["Allow"]


def test_get_on_the_sync_video_route_is_405_not_an_unknown_video(server):
    response = server.get("/v1/videos/generations")
    assert_envelope("openai", response, 405)
    assert response.headers["Allow"].split(", ")[0] == "POST"


def test_chunked_bodies_over_the_limit_are_413_not_truncated(server):
    # No Content-Length: the limit (1 MiB here) must hold while the body streams in.
    def chunks():
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = server.post(
        "/sdcpp/v1/img_gen",
        data=chunks(),
        headers={"Content-Type": "application/json", "Connection": "close"},
    )
    assert_envelope("sdcpp", response, 413)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/sdapi/v1/txt2img", {"prompt": "x", "cfg_scale": 1e308}, "cfg_scale"),
        ("/v1/images/generations", {"prompt": "x", "guidance_scale": 1e300}, "guidance_scale"),
        ("/sdcpp/v1/img_gen", {"seed": 2**64}, "seed"),
        ("/sdapi/v1/txt2img", {"prompt": "x", "seed": 1e308}, "seed"),
        ("/v1/videos", {"prompt": "x", "seed": -(2**70)}, "seed"),
    ],
)
def test_out_of_range_numbers_are_refused_by_name(server, path, body, field):
    response = server.post(path, json=body)
    assert response.status_code == 400, response.text
    assert field in response.text


def test_documented_shapes_match_what_discovery_routes_answer(server):
    spec = server.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    scheduler = set(schemas["Scheduler"]["properties"])
    for entry in server.get("/sdapi/v1/schedulers").json():
        assert set(entry) <= scheduler, entry
    # sdapi ignores the many keys A1111 clients send: its schema must not forbid them.
    assert schemas["Txt2Img"].get("additionalProperties", True) is not False
    assert schemas["ImgGen"]["additionalProperties"] is False  # the native surface is strict
    assert schemas["ImgGen"]["properties"]["strength"]["maximum"] == 1


def test_openai_429_is_openai_s_rate_limit_shape(client, server):
    # Fill the queue (max_queue_size 4) with slow jobs, then one more through the SDK.
    slow = {"prompt": "x", "sample_params": {"sample_steps": 60}, "width": 256, "height": 256}
    accepted = []
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(6):
            response = server.post("/sdcpp/v1/img_gen", json=slow)
            if response.status_code == 202:
                accepted.append(response.json()["id"])
                continue
            client.images.generate(prompt="x")
    for job_id in accepted:
        server.post(f"/sdcpp/v1/jobs/{job_id}/cancel")
    error = info.value.body
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert info.value.response.headers["Retry-After"] == "2"


def worker_rss_mb(server) -> float:
    [worker] = server.workers()
    for line in Path(f"/proc/{worker}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def hostile_round(server) -> list[int]:
    """One of each input that once cost gigabytes or a 500; their statuses."""
    json_type = {"Content-Type": "application/json"}

    def chunks():
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    foreign = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    near_limit = "a fox " * 150_000  # 900 kB: within the body limit, far past the prompt one
    return [
        server.post("/sdcpp/v1/img_gen", json={"prompt": "x", "negative_prompt": near_limit}),
        server.post("/sdapi/v1/txt2img", json={"prompt": near_limit}),
        server.post("/v1/images/generations", data=DEEP, headers=json_type),
        server.post("/sdcpp/v1/img_gen", data='{"prompt": "\\ud800"}', headers=json_type),
        server.post("/sdcpp/v1/img_gen", json={"clip_skip": 2**31}),
        server.post(
            "/sdcpp/v1/img_gen", data=chunks(), headers={**json_type, "Connection": "close"}
        ),
        server.request("OPTIONS", "/v1/images/generations", headers=foreign),
    ]


def test_hostile_inputs_are_refused_with_the_worker_memory_flat(server):
    hostile_round(server)  # first use of each path: lazily built state is not growth
    before = worker_rss_mb(server)
    statuses = set()
    for _ in range(10):
        statuses |= {response.status_code for response in hostile_round(server)}
    after = worker_rss_mb(server)
    print(f"worker RSS before {before:.0f} MB, after 70 hostile requests {after:.0f} MB")
    assert statuses == {400, 403, 413}
    # The defect: one 63 MB negative prompt took the worker to 21 GB and left it at 13.8 GB.
    assert after - before < 64, (before, after)
