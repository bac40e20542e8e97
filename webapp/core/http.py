"""Request plumbing shared by the surfaces: strict JSON bodies, CORS, and Bearer auth."""

from __future__ import annotations

import hmac
import json
import select
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from webapp.core.errors import ApiError

# Reachable without the API key: the health probe, and the web page, which asks for the key
# itself (its files hold no data; every API call it makes sends the key).
PUBLIC_PATHS = frozenset(("/health", "/"))
PUBLIC_PREFIXES = ("/ui/",)
# No request schema nests more than a few levels; deeper documents are refused before any code
# walks them recursively (Python's parser itself fails near 1,000 levels).
MAX_JSON_DEPTH = 32


def waits_for_generation(view: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a synchronous generation route: its request holds a thread until its job ends,
    so the server worker serves it on a pool of its own (webapp/worker.py)."""
    view.waits_for_generation = True  # type: ignore[attr-defined]
    return view


def waiting_routes(app: Flask) -> frozenset[str]:
    """The paths of the routes marked `waits_for_generation`."""
    return frozenset(
        rule.rule
        for rule in app.url_map.iter_rules()
        if getattr(app.view_functions[rule.endpoint], "waits_for_generation", False)
    )


def json_body() -> Any:
    """The request body as JSON: empty, malformed, non-standard or too deeply nested JSON
    answers 400."""
    if not request.is_json:  # also what keeps other sites' plain form posts out
        raise ApiError(
            415,
            "unsupported media type",
            detail=f"send the body as application/json, not {request.mimetype or 'untyped'}",
            code="unsupported_media_type",
        )
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    check_body_complete()
    if not raw.strip():
        raise ApiError(400, "empty body", code="empty_body")
    return parse_json(raw, "invalid json")


def client_connected() -> Callable[[], bool]:
    """A check that the current request's client still holds its connection open (a peek at
    gunicorn's socket: an orderly close reads as b""). Without a socket: always true."""
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        return lambda: True

    def connected() -> bool:
        # Polled first: with a send timeout on the socket, Python's recv would wait for data
        # for that long whatever MSG_DONTWAIT says.
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        try:
            if not poller.poll(0):
                return True  # nothing to read: still open
            return sock.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    return connected


def check_body_complete() -> None:
    """413 when a body sent without Content-Length (chunked) ran past the limit: Werkzeug
    stops reading there without a word, which would parse a truncated body."""
    limit = request.max_content_length
    if request.content_length is None and limit is not None:
        stream = request.environ.get("wsgi.input")
        if stream is not None and stream.read(1):
            raise RequestEntityTooLarge()


def parse_json(raw: bytes | str, headline: str, param: str | None = None) -> Any:
    """Strict JSON (no NaN/Infinity) nested at most MAX_JSON_DEPTH deep; a 400 with
    `headline` otherwise."""
    too_deep = f"nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, headline, detail=too_deep, code="invalid_json", param=param) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, headline, detail=str(exc), code="invalid_json", param=param) from exc
    if _depth(value) > MAX_JSON_DEPTH:
        raise ApiError(400, headline, detail=too_deep, code="invalid_json", param=param)
    return value


def _depth(value: Any) -> int:
    """How deep objects and arrays nest in `value` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# What a browser may send across origins here (an allowed origin's page).
CORS_HEADERS = "Authorization, Content-Type"
CORS_METHODS = "GET, POST, DELETE, OPTIONS"


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def install_hooks(app: Flask, api_key: str | None, cors_origins: tuple[str, ...] = ()) -> None:
    """Same-origin by default: a request a browser marks with another site's `Origin` is
    refused (403) unless `cors_origins` lists it ("*": any), and only allowed origins get CORS
    headers. Then optional Bearer auth on everything but the public paths."""

    def allowed(origin: str) -> bool:
        # Same origin by host: behind a TLS proxy the scheme the app sees may differ.
        return (
            "*" in cors_origins or origin in cors_origins or urlsplit(origin).netloc == request.host
        )

    @app.before_request
    def _origin_and_auth() -> Response | None:
        origin = request.headers.get("Origin")
        if origin is not None and not allowed(origin):
            raise ApiError(
                403,
                "origin not allowed",
                detail=f"{origin} is not in server.cors_origins",
                code="origin_not_allowed",
                retryable=False,
            )
        if request.method == "OPTIONS":
            response = app.response_class(status=204)
            response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
            return response
        if api_key and not is_public(request.path):
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), api_key.encode()
            ):
                raise ApiError(401, "invalid or missing API key", code="invalid_api_key")
        return None

    @app.after_request
    def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin is not None and allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.vary.add("Origin")
        return response
