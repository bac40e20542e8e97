"""Starting the real server for tests: `python -m gunicorn webapp:app` on a loopback port.

`serve(config, root, env)` starts it with a config file and environment, waits for /health,
and on exit stops it with SIGTERM and checks it shut down cleanly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
# The installed server command (setup.cfg): it carries the gunicorn settings wherever it starts.
SERVER_COMMAND = Path(sys.executable).parent / "jaxvideo-server"
STARTUP_TIMEOUT_S = 300  # builds the demo model and imports JAX on a cold machine


def _direct_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never through a proxy from the environment
    return session


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    # Folders of the e2e fixture's config (tests/web/conftest.py), when it set them.
    lora_dir: Path | None = None
    input_dir: Path | None = None
    output_dir: Path | None = None
    http: requests.Session = field(default_factory=_direct_session)
    crashed: bool = False

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

    def workers(self) -> list[int]:
        """Pids of gunicorn's worker processes (the arbiter's children)."""
        pid = self.process.pid
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def crash(self) -> None:
        """kill -9 of every process, as a power cut would: no handler runs, nothing drains.
        (Killing only the arbiter would leave its worker running on, alone.)"""
        for pid in self.workers():
            os.kill(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait()
        self.crashed = True

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(config: Path, root: Path, env: Mapping[str, str]) -> Iterator[Server]:
    """The server on `config` with environment `env` (JAXVIDEO_CONFIG is set here); its log
    is `root/server.log`, its job store `root/state` (a restart on `root` finds its jobs)."""
    with _started(config, root, env, root / "state") as handle:
        try:
            _wait_healthy(handle)
            yield handle
        finally:
            if not handle.crashed:
                _stop(handle)


@contextlib.contextmanager
def serve_slice(
    config: Path, root: Path, env: Mapping[str, str], processes: int = 2
) -> Iterator[list[Server]]:
    """A multi-host slice on loopback, started as docs/DEPLOY.md says: every process runs
    the same server command with JAXVIDEO_COORDINATOR (process 0's address),
    JAXVIDEO_NUM_PROCESSES and its own JAXVIDEO_PROCESS_ID. Yields the servers by process
    index (0 serves the API); each logs to `root/process-<i>/server.log`. On exit the
    followers are stopped first, then process 0, which must exit within a minute."""
    coordinator = f"127.0.0.1:{free_port()}"
    with contextlib.ExitStack() as stack:
        servers = []
        for index in range(processes):
            folder = root / f"process-{index}"
            folder.mkdir(parents=True, exist_ok=True)
            own = {
                **env,
                "JAXVIDEO_COORDINATOR": coordinator,
                "JAXVIDEO_NUM_PROCESSES": str(processes),
                "JAXVIDEO_PROCESS_ID": str(index),
            }
            servers.append(stack.enter_context(_started(config, folder, own, root / "state")))
        for server in servers:
            _wait_healthy(server)
        try:
            yield servers
        finally:
            for server in reversed(servers):
                if not server.crashed:
                    _stop_any(server)


@contextlib.contextmanager
def _started(config: Path, root: Path, env: Mapping[str, str], state: Path) -> Iterator[Server]:
    """A server process, not yet healthy, started outside the repo (no gunicorn.conf.py
    there) as an installed server would be; killed on exit unless stopped before."""
    url = f"http://127.0.0.1:{free_port()}"
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(SERVER_COMMAND), "-b", url.removeprefix("http://")],
            cwd=root,
            env={
                **env,
                "JAXVIDEO_CONFIG": str(config),
                "JAXVIDEO_STATE_DIR": str(state),
                "PYTHONUNBUFFERED": "1",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(url, process, log)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            with contextlib.suppress(OSError, FileNotFoundError):
                for pid in server.workers():
                    os.kill(pid, signal.SIGKILL)
            server.process.kill()
            server.process.wait()


def _stop_any(server: Server) -> None:
    """SIGTERM, and the process must be gone within a minute (a follower whose process 0
    left first may exit with an error: JAX's runtime lost its coordinator)."""
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        raise AssertionError(f"server did not exit within 60 s:\n{server.log_tail()}") from None


def _stop(server: Server) -> None:
    """SIGTERM, then the server must exit cleanly within a minute."""
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        raise AssertionError("server did not exit within 60 s of SIGTERM") from None
    assert code == 0, f"server exited with {code}:\n{server.log_tail()}"


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
