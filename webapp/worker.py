"""jaxvideo's gunicorn worker: gunicorn's gthread worker, changed where slow or stopping clients
would otherwise lose answers (webapp/gunicorn_conf.py selects it).

- **Requests are read whole in the event loop** before a thread serves them (webapp/framing.py
  finds where one ends), so a client trickling its head or body holds no thread. A request
  must arrive within `REQUEST_READ_S`, plus one second per `MIN_RATE` bytes received; past
  that it answers 408. Bytes buffered at once are bounded (`max_buffered`: 503 past it).
- **Two thread pools**: synchronous generation requests (the routes marked
  `waits_for_generation`), which hold a thread until their job ends, run on the `threads`
  pool; everything else (health, status, progress, cancel, interrupt, async submissions,
  downloads) on `QUICK_THREADS` threads of its own, so waiting requests never keep it waiting.
- **A response send stalls at most `SEND_TIMEOUT_S`**: a client that stops reading is dropped.
- **SIGTERM drains instead of going deaf**: intake closes (new work answers 503) but the
  worker keeps accepting and answering (status, downloads, the 503s) while the job table stops:
  the running job gets `DRAIN_SHARE` of `graceful_timeout` to finish, waiting synchronous
  requests get their result or a 503, async jobs stay queued in the store for the next start.
  Requests still being read when the worker exits get a 503, not a reset.
- **gunicorn's own errors (bad request line, header limits) answer JSON** in the envelope of
  the route's API surface instead of HTML.

TLS is left to gunicorn's own path (a TLS stream cannot be framed before it is decrypted).
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, ThreadWorker

from webapp.core.errors import ApiError, error_body, error_headers, shutting_down, surface_of
from webapp.framing import Framing, request_end

REQUEST_READ_S = 10.0  # a request's head and body, beyond what MIN_RATE earns
MIN_RATE = 1024  # bytes per second a client sending a body must keep up (1 s earned per 1 KiB)
QUICK_THREADS = 8
SEND_TIMEOUT_S = 30.0
DRAIN_SHARE = 0.5  # of graceful_timeout: how long the running job may take to finish on stop
JOIN_SHARE = 0.25  # of graceful_timeout: then how long its cancellation may take
MIN_BUFFERED = 256 * 1024 * 1024  # bytes of requests buffered at once, at least 4 bodies' worth

# gunicorn's parse errors -> status (anything else it raises while parsing is a 400).
_PARSE_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (http_errors.LimitRequestLine, 414),
    (http_errors.LimitRequestHeaders, 431),
    (http_errors.ExpectationFailed, 417),
    (http_errors.UnsupportedTransferCoding, 501),
    (http_errors.ForbiddenProxyRequest, 403),
)


def error_bytes(error: ApiError, path: str | None) -> bytes:
    """`error` as a complete JSON response in the envelope of `path`'s surface; it closes the
    connection."""
    status = error.status
    body = json.dumps(error_body(error, surface_of(path or "/"))).encode()
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Connection: close"]
    head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in error_headers(error).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class _Reading:
    """A connection whose request is still arriving."""

    started: float
    data: bytearray = field(default_factory=bytearray)
    framing: Framing | None = None
    continued: bool = False  # "100 Continue" sent

    def deadline(self) -> float:
        return self.started + REQUEST_READ_S + len(self.data) / MIN_RATE


class JaxvideoWorker(ThreadWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.quick_pool: futures.ThreadPoolExecutor | None = None
        self._reading: dict[Any, _Reading] = {}  # TConn -> its partial request
        self._buffered = 0
        self._lingering: dict[socket.socket, float] = {}  # refused: closing once read out
        self._busy = 0  # requests handed to a pool and not finished
        self._local = threading.local()  # the path of the request a pool thread serves
        self._stop_at: float | None = None  # monotonic deadline of the drain, once stopping
        self._jobs_stopped = threading.Event()

    # -- setup ----------------------------------------------------------------------------------

    def init_process(self) -> None:
        self.quick_pool = futures.ThreadPoolExecutor(QUICK_THREADS, "quick")
        super().init_process()

    def load_wsgi(self) -> None:
        """Loads the app, then reads what the event loop needs from it once."""
        super().load_wsgi()
        cfg = self.cfg
        line = cfg.limit_request_line or 1024 * 1024
        self.max_head = line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 4
        self.max_body = getattr(self.wsgi, "config", {}).get("MAX_CONTENT_LENGTH")
        self.max_buffered = max(MIN_BUFFERED, 4 * (self.max_body or 0))
        extensions = getattr(self.wsgi, "extensions", {})
        self.waiting_routes = extensions.get("jaxvideo.waiting_routes", frozenset())

    # -- reading requests in the event loop -----------------------------------------------------

    def enqueue_req(self, conn: Any) -> None:
        """Where gthread hands a connection to a thread: read its request first."""
        if self.cfg.is_ssl:
            super().enqueue_req(conn)
            return
        reading = _Reading(time.monotonic())
        if conn.parser is not None:  # bytes a keep-alive client pipelined, read ahead
            reading.data += conn.parser.unreader.take_buffered()
            self._buffered += len(reading.data)
        self._reading[conn] = reading
        if reading.data and self._advance(conn, reading):
            return
        conn.sock.setblocking(False)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))
        self._readable(conn, conn.sock)  # a keep-alive request is usually there already

    def _readable(self, conn: Any, _sock: Any) -> None:
        reading = self._reading[conn]
        try:
            chunk = conn.sock.recv(256 * 1024)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client left before its request was whole
            self._forget(conn)
            self.nr_conns -= 1
            conn.close()
            return
        reading.data += chunk
        self._buffered += len(chunk)
        if self._buffered > self.max_buffered:
            busy = {"Retry-After": "1"}
            self._refuse(conn, ApiError(503, "server busy", code="server_busy", headers=busy))
            return
        self._advance(conn, reading)

    def _advance(self, conn: Any, reading: _Reading) -> bool:
        """Dispatches the request if it is whole; True when it was."""
        framing = reading.framing
        if framing is None or framing.wanted is None or len(reading.data) >= framing.wanted:
            framing = reading.framing = request_end(reading.data, self.max_head, self.max_body)
        if framing.end is None:
            if framing.expects_continue and not reading.continued:
                reading.continued = True
                self._send(conn.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
            return False
        self._forget(conn)
        conn.jv_data, conn.jv_path = bytes(reading.data), framing.path
        waits = framing.method == "POST" and framing.path in self.waiting_routes
        self._dispatch(conn, self.tpool if waits else self.quick_pool)
        return True

    def _forget(self, conn: Any) -> None:
        reading = self._reading.pop(conn)
        self._buffered -= len(reading.data)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)  # fails when it was whole on arrival

    def _refuse(self, conn: Any, error: ApiError) -> None:
        framing = self._reading[conn].framing
        self._forget(conn)
        self._send(conn.sock, error_bytes(error, framing and framing.path))
        self.nr_conns -= 1
        self._linger(conn.sock)

    def _linger(self, sock: socket.socket) -> None:
        """Closes after a reply without blocking the loop: the write side now, the read side
        when the client closes or after a second (closing with its bytes unread would send a
        reset, which can destroy the reply before the client reads it)."""
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self._lingering[sock] = time.monotonic() + 1.0
        self.poller.register(sock, selectors.EVENT_READ, self._drain_lingering)

    def _drain_lingering(self, sock: socket.socket) -> None:
        try:
            if sock.recv(65536):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._end_linger(sock)

    def _end_linger(self, sock: socket.socket) -> None:
        del self._lingering[sock]
        self.poller.unregister(sock)
        sock.close()

    def _expire_reads(self) -> None:
        now = time.monotonic()
        for sock, deadline in list(self._lingering.items()):
            if now >= deadline:
                self._end_linger(sock)
        for conn, reading in list(self._reading.items()):
            if now >= reading.deadline():
                limit = f"the limit is {REQUEST_READ_S:g} s plus 1 s per {MIN_RATE} bytes received"
                late = ApiError(408, "request not received in time", detail=limit, code="timeout")
                self._refuse(conn, late)

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        """A small reply on a non-blocking socket: a full send buffer drops it (the client
        is not reading anyway)."""
        with contextlib.suppress(OSError):
            sock.send(data)

    # -- serving in the pools -------------------------------------------------------------------

    def _dispatch(self, conn: Any, pool: futures.ThreadPoolExecutor) -> None:
        conn.data_ready = True  # gthread's own wait for a first byte is over
        self._busy += 1
        done = pool.submit(self.handle, conn)
        done.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def finish_request(self, conn: Any, fs: futures.Future) -> None:
        self._busy -= 1
        super().finish_request(conn, fs)

    def handle(self, conn: Any) -> Any:
        data = getattr(conn, "jv_data", b"")
        conn.jv_data = b""
        self._local.path = getattr(conn, "jv_path", None)
        if data:
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(data)
        return super().handle(conn)

    def handle_request(self, req: Any, conn: Any) -> bool:
        conn.sock.settimeout(SEND_TIMEOUT_S)  # every read is served from the buffer
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            self.log.info("client %s stopped reading its response; dropped", conn.client)
            raise StopIteration() from None

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's answer to what it cannot parse, as JSON in the surface's envelope."""
        request_start = datetime.now()
        server_side = (
            http_errors.InvalidResponseHeader,
            http_errors.InvalidResponseHeaderName,
            http_errors.ConfigurationProblem,
        )
        if isinstance(exc, http_errors.ParseException) and not isinstance(exc, server_side):
            status = next((s for kind, s in _PARSE_STATUS if isinstance(exc, kind)), 400)
            self.log.warning("Invalid request from %s: %s", (addr or ("",))[0], exc)
            message, code = f"malformed request: {exc}", "malformed_request"
        else:
            self.log.exception("Error handling request")
            status, message, code = 500, "internal server error", "internal_error"
        path = getattr(req, "path", None) or getattr(self._local, "path", None)
        data = error_bytes(ApiError(status, message, code=code), path)
        if req is not None:
            environ = default_environ(req, client, self.cfg)
            response = Response(req, client, self.cfg)
            response.status = f"{status} {HTTPStatus(status).phrase}"
            response.response_length = len(data)
            self.log.access(response, req, environ, datetime.now() - request_start)
        try:
            client.settimeout(1.0)
            client.sendall(data)
        except OSError:
            self.log.debug("Failed to send error message.")

    # -- stopping -------------------------------------------------------------------------------

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: only flags it (a signal handler must not take locks); the loop drains."""
        self.alive = False
        self.method_queue.defer(lambda: None)

    def _begin_stop(self) -> None:
        graceful = float(self.cfg.graceful_timeout)
        self._stop_at = time.monotonic() + max(graceful - 3.0, 1.0)
        self._cap_keepalive(time.monotonic() + STOP_KEEPALIVE_LINGER)
        module = sys.modules.get("webapp")
        if module is None:
            self._jobs_stopped.set()
            return
        module.close_intake()  # new work answers 503 from now on

        def stop_jobs() -> None:
            try:
                module.shutdown(drain_s=graceful * DRAIN_SHARE, join_s=graceful * JOIN_SHARE)
            finally:
                self._jobs_stopped.set()
                self.method_queue.defer(lambda: None)  # wake the loop

        threading.Thread(target=stop_jobs, name="jaxvideo-drain", daemon=True).start()
        self.log.info("stopping: new work answers 503; draining the job table")

    def _drained(self) -> bool:
        if time.monotonic() >= self._stop_at:
            return True
        arriving = any(reading.data for reading in self._reading.values())
        return self._jobs_stopped.is_set() and self._busy == 0 and not arriving

    def run(self) -> None:
        self.poller.register(
            self.method_queue.fileno(), selectors.EVENT_READ, self.method_queue.run_callbacks
        )
        self.set_accept_enabled(True)
        while True:
            self.notify()
            if not self.alive and self._stop_at is None:
                self._begin_stop()
            if self._stop_at is not None and self._drained():
                break
            can_accept = self.nr_conns < self.worker_connections
            if can_accept != self._accepting:
                self.set_accept_enabled(can_accept)
            self.wait_for_and_dispatch_events(timeout=0.5)
            if self.alive and not self.is_parent_alive():
                self.alive = False
            self.murder_keepalived()
            self.murder_pending()
            self._expire_reads()
        self._close_all()

    def _close_all(self) -> None:
        """The end of a stop: requests still arriving get a 503, then everything closes."""
        self.set_accept_enabled(False)
        for listener in self.sockets:
            listener.close()
        leftover = list(self._reading)
        for conn in leftover:
            framing = self._reading[conn].framing
            self._forget(conn)
            self._send(conn.sock, error_bytes(shutting_down(), framing and framing.path))
        for sock in list(self._lingering):
            self._end_linger(sock)
        _close_after_reply([conn.sock for conn in leftover], linger_s=1.0)
        self.murder_keepalived(force=True)
        self.tpool.shutdown(wait=False)
        self.quick_pool.shutdown(wait=False)
        self.poller.close()
        self.method_queue.close()


def _close_after_reply(socks: list[socket.socket], linger_s: float) -> None:
    """Half-closes each socket, reads what its client still sends for up to `linger_s` (a
    close with unread bytes would send a reset, which can destroy the reply), then closes."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_WR)
            selector.register(sock, selectors.EVENT_READ)
        except (OSError, ValueError):
            sock.close()
    deadline = time.monotonic() + linger_s
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(max(deadline - time.monotonic(), 0.0)):
            try:
                more = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                more = b""
            if not more:
                selector.unregister(key.fileobj)
                key.fileobj.close()
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    selector.close()
