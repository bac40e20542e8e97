"""The app factory in-process: lazy `webapp:app`, and Bearer auth (with the real demo engine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_importing_webapp_builds_no_app_and_loads_no_engine():
    # Every web module, the video ones included, stays free of JAX: only the engine needs it.
    code = (
        "import importlib, pkgutil, sys, webapp\n"
        "for module in pkgutil.walk_packages(webapp.__path__, 'webapp.'):\n"
        "    importlib.import_module(module.name)\n"
        "assert webapp._app is None\n"
        "assert 'jaxvideo.engine' not in sys.modules\n"
        "assert not {'jax', 'flax'} & set(sys.modules), 'the web layer imported JAX'\n"
        "assert callable(webapp.create_app)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_the_installed_server_command_carries_its_gunicorn_settings(server):
    # The e2e server runs `jaxvideo-server` outside the repo, where no gunicorn.conf.py is: the
    # packaged settings apply (jaxvideo's gthread worker, not the sync worker with its 30 s
    # timeout).
    assert Path(server.process.args[0]).name == "jaxvideo-server"
    assert "Using worker: webapp.worker.JaxvideoWorker" in server.log.read_text()


def test_api_key_is_required_everywhere_but_health(auth_client):
    assert auth_client.get("/health").status_code == 200
    missing = auth_client.get("/v1/models")
    assert missing.status_code == 401
    assert missing.json["error"]["code"] == "invalid_api_key"
    wrong = auth_client.get("/sdapi/v1/options", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json == {"error": "invalid or missing API key"}
    ok = auth_client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json["data"][0]["id"] == "demo"
    # Browsers send preflights without credentials.
    assert auth_client.options("/sdcpp/v1/img_gen").status_code == 204
    spec = auth_client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_the_web_page_loads_without_the_key_and_only_from_its_folder(auth_client):
    # The page asks for the key itself; its files hold no data.
    page = auth_client.get("/")
    assert page.status_code == 200 and b'<label for="prompt">Prompt</label>' in page.data
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'self'
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    script = auth_client.get("/ui/app.js")
    assert script.status_code == 200 and script.mimetype == "text/javascript"
    for escape in ("/ui/../__init__.py", "/ui/%2e%2e/__init__.py", "/ui/nothing.js"):
        assert auth_client.get(escape).status_code == 404, escape
    assert auth_client.get("/sdcpp/v1/capabilities").status_code == 401  # the API still asks


def test_listed_origins_get_cors_headers_and_others_are_refused(auth_client):
    ui = {"Origin": "https://ui.example", "Access-Control-Request-Headers": "X-Anything"}
    preflight = auth_client.options("/v1/images/generations", headers=ui)
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    # Only the headers this API uses, not whatever a preflight asks for.
    assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert "Origin" in preflight.headers["Vary"]
    listed = auth_client.get(
        "/v1/models", headers={"Origin": "https://ui.example", "Authorization": "Bearer s3cret"}
    )
    assert listed.status_code == 200
    assert listed.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    other = auth_client.options("/v1/models", headers={"Origin": "https://other.example"})
    assert other.status_code == 403 and other.json["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in other.headers


def test_video_routes_answer_503_without_a_video_model(auth_client):
    headers = {"Authorization": "Bearer s3cret"}
    for route in ("/v1/videos", "/v1/videos/generations"):
        response = auth_client.post(route, json={"prompt": "p"}, headers=headers)
        assert response.status_code == 503
        assert response.json["error"]["message"] == "no video generator loaded"
        assert response.headers["x-should-retry"] == "false"
    response = auth_client.post("/sdcpp/v1/vid_gen", json={}, headers=headers)
    assert response.status_code == 503 and response.json == {"error": "no video generator loaded"}
    caps = auth_client.get("/sdcpp/v1/capabilities", headers=headers).json
    assert caps["supported_modes"] == ["img_gen"] and "vid_gen" not in caps["defaults_by_mode"]
