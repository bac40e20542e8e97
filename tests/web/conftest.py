"""The real server for end-to-end tests: `python -m gunicorn webapp:app` on a loopback port.

It serves the tiny demo model, built into a temporary cache on first start (set
JAXVIDEO_TEST_CACHE_DIR to reuse a cache between runs), with small limits so queue and size
errors are cheap to provoke.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 300  # builds the demo model and imports JAX on a cold machine

E2E_CONFIG = """\
models:
  - {name: sd1-tiny-demo, family: sd1, path: "demo:sd1-tiny", dtype: fp32}
server:
  max_queue_size: 4
  job_retention_s: 600
  expired_retention_s: 600
  min_width: 64
  max_width: 512
  min_height: 64
  max_height: 512
  max_batch_count: 4
  max_steps: 100
  max_body_bytes: 1048576
default_request:
  steps: 2
  width: 64
  height: 64
"""


def _direct_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never through a proxy from the environment
    return session


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    http: requests.Session = field(default_factory=_direct_session)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 300)
        return self.http.get(self.url + path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 300)
        return self.http.post(self.url + path, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 300)
        return self.http.request(method, self.url + path, **kwargs)

    def poll(self, job_id: str, until: tuple[str, ...], timeout: float = 240) -> list[dict]:
        """Job snapshots, fetched every 20 ms until the status is one of `until`."""
        seen: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.get(f"/sdcpp/v1/jobs/{job_id}")
            assert response.status_code == 200, response.text
            seen.append(response.json())
            if seen[-1]["status"] in until:
                return seen
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} stuck: {seen[-1]}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def e2e_cache_dir(tmp_path_factory) -> Path:
    shared = os.environ.get("JAXVIDEO_TEST_CACHE_DIR")
    return Path(shared) if shared else tmp_path_factory.mktemp("jaxvideo-cache")


@pytest.fixture(scope="session")
def server(tmp_path_factory, e2e_cache_dir) -> Server:
    root = tmp_path_factory.mktemp("server")
    config = root / "serve.yaml"
    config.write_text(E2E_CONFIG)
    env = dict(os.environ)
    env.pop("JAXVIDEO_API_KEY", None)
    env.update(
        JAXVIDEO_CONFIG=str(config),
        JAXVIDEO_CACHE_DIR=str(e2e_cache_dir),
        JAXVIDEO_OUTPUT_DIR=str(root / "outputs"),
        PYTHONUNBUFFERED="1",
    )
    url = f"http://127.0.0.1:{_free_port()}"
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "webapp:app", "-b", url.removeprefix("http://")],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    handle = Server(url, process, log)
    try:
        _wait_healthy(handle)
        yield handle
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("server did not exit within 60 s of SIGTERM") from None
        assert code == 0, f"server exited with {code}:\n{handle.log_tail()}"


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server died on start:\n{server.log_tail()}")
        try:
            if server.get("/health", timeout=5).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.5)
    raise AssertionError(f"server not healthy after {STARTUP_TIMEOUT_S} s:\n{server.log_tail()}")
