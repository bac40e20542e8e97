"""Slow and greedy clients cannot stop the server (webapp/worker.py): trickling connections,
twice as many as the server has threads, plus a synchronous generation request waiting on every
generation thread, and still health, job status, progress, cancel and async submissions answer
within a second; the tricklers get a 408 in their surface's envelope; every generation completes.

The server is this module's own: the defaults of webapp/gunicorn_conf.py, a queue long enough
for all the waiting requests.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from tests.support.serving import serve
from webapp import gunicorn_conf
from webapp.worker import REQUEST_READ_S

OWN_SERVERS = True
THREADS = gunicorn_conf.threads  # the generation pool

CONFIG = """\
models:
  - {name: sd1-tiny-demo, family: sd1, path: "demo:sd1-tiny", dtype: fp32}
server:
  max_queue_size: 32
  max_steps: 1000
default_request: {steps: 2, width: 64, height: 64}
"""
SYNC_BODY = {"prompt": "a slow field", "width": 256, "height": 256, "steps": 30}


@pytest.fixture(scope="module")
def server(tmp_path_factory, e2e_cache_dir):
    root = tmp_path_factory.mktemp("slow-clients")
    config = root / "serve.yaml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "JAXVIDEO_API_KEY"}
    env["JAXVIDEO_CACHE_DIR"] = str(e2e_cache_dir)
    with serve(config, root, env) as handle:
        # Compile the sync requests' shape first, so they wait on the queue, not on XLA.
        assert handle.post("/sdapi/v1/txt2img", json={**SYNC_BODY, "steps": 1}).status_code == 200
        yield handle


def connect(server) -> socket.socket:
    address = urlsplit(server.url)
    sock = socket.create_connection((address.hostname, address.port), timeout=30)
    return sock


def reply_of(sock: socket.socket) -> tuple[int, dict]:
    """(status, JSON body) of the one response a connection gets before it closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_trickling_and_waiting_clients_leave_the_server_answering(server):
    head = b"POST /sdcpp/v1/img_gen HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    heads = [connect(server) for _ in range(THREADS)]
    bodies = [connect(server) for _ in range(THREADS)]
    for sock in heads:
        sock.sendall(head)  # then one header line a second, never the blank line
    for sock in bodies:
        sock.sendall(head + b"Content-Length: 100\r\n\r\n" + b'{"pr')  # then a byte a second
    stop = threading.Event()

    def trickle():
        live = [(sock, b"X-Slow: 1\r\n") for sock in heads] + [(sock, b" ") for sock in bodies]
        while live and not stop.wait(1.0):
            for sock, data in list(live):
                try:
                    sock.sendall(data)
                except OSError:  # the server cut it off
                    live.remove((sock, data))

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    with ThreadPoolExecutor(THREADS) as pool:
        waiting = [
            pool.submit(server.post, "/sdapi/v1/txt2img", json={**SYNC_BODY, "seed": seed})
            for seed in range(THREADS)
        ]
        time.sleep(1.0)  # every generation thread now holds a waiting request
        assert not any(future.done() for future in waiting)

        health, health_s = timed(lambda: server.get("/health", timeout=5))
        submitted, submit_s = timed(
            lambda: server.post("/sdcpp/v1/img_gen", json={"prompt": "q", "seed": 1}, timeout=5)
        )
        job_id = submitted.json()["id"]
        status, status_s = timed(lambda: server.get(f"/sdcpp/v1/jobs/{job_id}", timeout=5))
        progress, progress_s = timed(lambda: server.get("/sdapi/v1/progress", timeout=5))
        cancelled, cancel_s = timed(
            lambda: server.post(f"/sdcpp/v1/jobs/{job_id}/cancel", timeout=5)
        )
        latencies = {
            "health": health_s,
            "submit": submit_s,
            "status": status_s,
            "progress": progress_s,
            "cancel": cancel_s,
        }
        print("answer times with 16 tricklers and 8 waiting requests:", latencies)
        assert max(latencies.values()) < 1.0, latencies
        assert health.status_code == 200 and submitted.status_code == 202
        assert status.json()["status"] == "queued" and progress.status_code == 200
        assert cancelled.json()["status"] == "cancelled"

        later = server.post("/sdcpp/v1/img_gen", json={"prompt": "after", "seed": 2}, timeout=5)
        assert later.status_code == 202
        # Every waiting client gets its images.
        assert [future.result().status_code for future in waiting] == [200] * THREADS
    assert server.poll(later.json()["id"], until=("completed", "failed"))[-1]["status"] == (
        "completed"
    )

    # The tricklers were cut off once their time was up, with a JSON answer, not a reset.
    started = time.monotonic()
    replies = [reply_of(sock) for sock in heads + bodies]
    stop.set()
    trickler.join()
    assert time.monotonic() - started < REQUEST_READ_S + 5
    for status_code, body in replies:
        assert status_code == 408
        assert body["error"] == "request not received in time"
        assert "plus 1 s per" in body["message"]  # sdcpp's envelope: {"error", "message"}
    for sock in heads + bodies:
        sock.close()


def test_a_client_that_stops_reading_mid_body_gets_408_and_others_are_served(server):
    sock = connect(server)
    sock.sendall(
        b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"prompt"'
    )
    assert server.get("/health", timeout=2).status_code == 200
    started = time.monotonic()
    status_code, body = reply_of(sock)
    assert status_code == 408 and body["error"]["code"] == "timeout"  # OpenAI's envelope
    assert time.monotonic() - started < REQUEST_READ_S + 3
    sock.close()


def test_gunicorn_s_own_refusals_answer_json(server):
    for request, status in (
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),  # limit_request_line
        (b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (b"NOT A REQUEST\r\n\r\n", 400),
        (b"GET /sdapi/v1/progress HTTP/1.1\r\n" + b"X-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
    ):
        sock = connect(server)
        sock.sendall(request)
        status_code, body = reply_of(sock)
        assert status_code == status, body
        assert "malformed request" in json.dumps(body)
        sock.close()
