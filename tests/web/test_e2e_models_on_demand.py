"""Models loaded on demand, through the real server: `/v1/models` and capabilities say which are
loaded, a job for an unloaded model reports `loading_model` while it loads, the least recently
used model makes room, the admin routes list, load and unload behind the API key, and a request
too big for the (configured) device memory answers 400 at submission.

This server is this module's own (its own xdist group): its device memory is set so that one
demo SD model fits with small requests, never two models at once.
"""

from __future__ import annotations

import os

import pytest

from jaxvideo.cost import Shape
from jaxvideo.demo import resolve_demo
from jaxvideo.memory_plan import GIB, RESERVE_FRACTION, ModelPlan
from tests.support.serving import serve

OWN_SERVERS = True
KEY = "admin-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, e2e_cache_dir):
    plan = ModelPlan(resolve_demo("demo:sd1-tiny"), "fp32", {})
    room = plan.estimate(Shape(64, 64)).total + plan.weight_bytes // 2
    root = tmp_path_factory.mktemp("on-demand")
    config = root / "serve.yaml"
    config.write_text(f"""\
models:
  - {{name: first, family: sd1, path: "demo:sd1-tiny"}}
  - {{name: second, family: sd1, path: "demo:sd1-tiny", load: on_demand}}
server:
  device_memory_gib: {room / GIB / (1 - RESERVE_FRACTION)!r}
  api_key: {KEY}
  state_dir: null
default_request: {{steps: 2, width: 64, height: 64}}
""")
    env = dict(os.environ, JAXVIDEO_CACHE_DIR=str(e2e_cache_dir))
    env.pop("JAXVIDEO_API_KEY", None)
    with serve(config, root, env) as running:
        running.http.headers.update(AUTH)
        yield running


def loaded(server) -> dict[str, bool]:
    models = server.get("/v1/models").json()["data"]
    return {m["id"]: m["loaded"] for m in models}


def run(server, model: str) -> list[dict]:
    body = {"model": model, "prompt": "a fox", "seed": 1}
    accepted = server.post("/sdcpp/v1/img_gen", json=body)
    assert accepted.status_code == 202, accepted.text
    seen = server.poll(accepted.json()["id"], until=("completed", "failed", "cancelled"))
    assert seen[-1]["status"] == "completed", seen[-1]
    return seen


def test_a_model_loads_at_its_first_request_and_the_least_recent_makes_room(server):
    assert loaded(server) == {"first": True, "second": False}
    caps = server.get("/sdcpp/v1/capabilities").json()
    assert {m["name"]: m["loaded"] for m in caps["models"]} == {"first": True, "second": False}

    seen = run(server, "second")
    phases = [s["progress"]["phase"] for s in seen if s["status"] == "generating"]
    assert phases and phases[0] == "loading_model" and phases[-1] == "generating", phases
    assert loaded(server) == {"first": False, "second": True}

    run(server, "first")
    assert loaded(server) == {"first": True, "second": False}


def test_admin_routes_list_load_and_unload_behind_the_key(server):
    assert (
        server.get("/admin/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    states = {s["name"]: s for s in server.get("/admin/v1/models").json()}
    assert states["second"]["load"] == "on_demand"
    assert states["first"]["weights_bytes_per_device"] > 0

    answer = server.post("/admin/v1/models/second/load")
    assert answer.status_code == 200 and answer.json()["loaded"] is True
    assert loaded(server) == {"first": False, "second": True}
    answer = server.post("/admin/v1/models/second/unload")
    assert answer.status_code == 200 and answer.json()["loaded"] is False
    assert loaded(server) == {"first": False, "second": False}
    missing = server.post("/admin/v1/models/nope/load")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    run(server, "first")  # loads again on demand


def test_a_request_too_big_for_the_device_is_refused_at_submission(server):
    body = {"model": "first", "prompt": "big", "width": 512, "height": 512, "batch_count": 4}
    answer = server.post("/sdcpp/v1/img_gen", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert "cannot run this request" in error["error"] and "per device" in error["error"]
    openai = server.post(
        "/v1/images/generations", json={"prompt": "big", "size": "512x512", "n": 4}
    )
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "n"
