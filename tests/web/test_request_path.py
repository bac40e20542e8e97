"""One request's path through the house: `POST /sdcpp/v1/img_gen` runs in the sdcpp package and
the shared core only, the model's `validate` runs once per request however many layers it
crosses, and what only the model can refuse is a 400 at submission, before any job exists."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from jaxvideo.config import config_from_dict
from jaxvideo.engine import Engine
from webapp import create_app

WEBAPP = Path(__file__).resolve().parents[2] / "webapp"
MODEL = "sd1-tiny-demo"
MODELS = [{"name": MODEL, "family": "sd1", "path": "demo:sd1-tiny"}]
BODY = {"prompt": "a fox", "width": 64, "height": 64, "sample_params": {"sample_steps": 2}}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(config_from_dict({"models": MODELS}))


@pytest.fixture
def app_client(engine, tmp_path):
    config = config_from_dict(
        {
            "models": MODELS,
            "server": {"output_dir": str(tmp_path), "state_dir": str(tmp_path / "state")},
        }
    )
    app = create_app(config, engine=engine)
    yield app.test_client()
    app.extensions["jaxvideo"].jobs.shutdown()


@pytest.fixture
def validations(engine, monkeypatch) -> list[str]:
    """The prompts of every request the model's `validate` sees."""
    pipeline = engine._pipelines[MODEL]
    seen: list[str] = []
    validate = pipeline.validate

    def counting(request):
        seen.append(request.prompt)
        return validate(request)

    monkeypatch.setattr(pipeline, "validate", counting)
    return seen


def finished(client, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/sdcpp/v1/jobs/{job_id}").json
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


def webapp_files_called(call) -> set[str]:
    """The webapp source files whose functions `call` runs in this thread."""
    files: set[str] = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(str(WEBAPP)):
            files.add(str(Path(frame.f_code.co_filename).relative_to(WEBAPP.parent)))

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return files


def test_img_gen_is_handled_by_the_sdcpp_package_and_the_core(app_client):
    response = None

    def submit():
        nonlocal response
        response = app_client.post("/sdcpp/v1/img_gen", json=BODY)

    files = webapp_files_called(submit)
    assert response.status_code == 202, response.json
    assert any(f.startswith("webapp/sdcpp/") for f in files)
    assert any(f.startswith("webapp/core/") for f in files)
    stray = {f for f in files if not f.startswith(("webapp/sdcpp/", "webapp/core/"))}
    assert not stray, sorted(stray)
    assert finished(app_client, response.json["id"])["status"] == "completed"


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/sdcpp/v1/img_gen", BODY),
        ("/sdapi/v1/txt2img", {"prompt": "a fox", "width": 64, "height": 64, "steps": 2}),
        ("/v1/images/generations", {"prompt": "a fox", "size": "64x64", "steps": 2}),
    ],
)
def test_the_model_validates_each_request_once(app_client, validations, route, body):
    response = app_client.post(route, json=body)
    assert response.status_code in (200, 202), response.json
    if response.status_code == 202:
        assert finished(app_client, response.json["id"])["status"] == "completed"
    assert validations == ["a fox"]


def test_what_only_the_model_refuses_is_a_400_before_any_job(app_client, validations):
    # The lcm schedule picks steps among the 50 its distillation used: the model refuses 60,
    # which the server's limits (max_steps 150) allow.
    params = {"sample_method": "lcm", "sample_steps": 60}
    response = app_client.post("/sdcpp/v1/img_gen", json={**BODY, "sample_params": params})
    assert response.status_code == 400
    assert response.json["error"].startswith("sample_params.sample_steps: ")
    assert "at most 50 steps" in response.json["error"]
    assert validations == ["a fox"]  # refused by the model's validate, once
    assert app_client.get("/sdapi/v1/progress").json["state"]["job"] == ""  # no job was made


def test_the_synchronous_generation_routes_are_marked_as_waiting(app_client):
    # The server worker gives these their own thread pool (webapp/worker.py); a sync route left
    # unmarked would take threads from status polls and cancels while it waits.
    assert app_client.application.extensions["jaxvideo.waiting_routes"] == {
        "/v1/images/generations",
        "/v1/images",
        "/v1/images/edits",
        "/v1/videos/generations",
        "/sdapi/v1/txt2img",
        "/sdapi/v1/img2img",
    }
