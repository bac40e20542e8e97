"""Error envelopes per API surface, and the app-wide handlers that use them.

The surface is chosen by URL prefix, not by blueprint, because routing errors (404/405) and body
limits (413) happen before Flask knows which blueprint would have answered. OpenAI routes get
`{"error": {"message", "type", "code", "param"}}`; sdapi `{"error", "detail"}`; sdcpp
`{"error", "message"}`; anything else a flat `{"error"}`. Tracebacks are logged, never sent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from jaxvideo.distributed import SliceBroken
from jaxvideo.errors import InvalidRequest
from webapp.core.jobs import (
    Halted,
    JobExists,
    JobExpired,
    JobNotFound,
    QueueFull,
    ShuttingDown,
)

log = logging.getLogger(__name__)

# What a field this server knows but does not implement answers (400, code "unsupported").
NOT_YET = "not supported by this server yet"

# Statuses the OpenAI SDK retries by default; on every other failure we tell it not to, so a
# request that cannot succeed is not sent three times.
_RETRYABLE = frozenset((408, 409, 429, 502, 503, 504))
# A full queue frees a slot when a job finishes; clients should come back soon, not at once.
QUEUE_FULL_RETRY_AFTER_S = 2
# A stopping server is gone for a restart's time (or another replica takes the retry).
SHUTDOWN_RETRY_AFTER_S = 5


class ApiError(Exception):
    """An HTTP error answer. `message` is the headline, `detail` the specifics, `param` the
    offending request field (OpenAI's `param`). `retryable` overrides the status's default
    for the `x-should-retry` header (a cancelled job must not be sent again); `headers` go
    with the answer (a 405's `Allow`, a 429's `Retry-After`)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        detail: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retryable: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.code = code
        self.param = param
        self.retryable = error_retryable(status) if retryable is None else retryable
        self.headers = dict(headers or {})


def error_retryable(status: int) -> bool:
    return status in _RETRYABLE


def shutting_down() -> ApiError:
    """503 while the server stops: new work is refused, clients retry after a restart."""
    retry_after = {"Retry-After": str(SHUTDOWN_RETRY_AFTER_S)}
    return ApiError(503, "server is shutting down", code="shutting_down", headers=retry_after)


def unavailable(error: Mapping[str, str]) -> ApiError:
    """503 after the job table halted (a process of a multi-host slice was lost): nothing
    runs until the orchestrator restarts the slice; accepted async jobs resume then."""
    retry_after = {"Retry-After": str(SHUTDOWN_RETRY_AFTER_S)}
    return ApiError(
        503,
        "server unavailable",
        detail=error.get("message"),
        code=error.get("code", "unavailable"),
        headers=retry_after,
    )


def invalid(param: str | None, problem: str, code: str = "invalid_value") -> ApiError:
    """A 400 about one request field: `"<param>: <problem>"`."""
    message = f"{param}: {problem}" if param else problem
    return ApiError(400, message, code=code, param=param)


def refused(exc: InvalidRequest, names: Mapping[str, str]) -> ApiError:
    """The library's InvalidRequest as a 400 naming the field as this surface spells it."""
    field = exc.field
    return invalid(names.get(field, field) if field else None, str(exc))


def surface_of(path: str) -> str:
    for prefix, surface in (("/v1/", "openai"), ("/sdapi/", "sdapi"), ("/sdcpp/", "sdcpp")):
        if path.startswith(prefix) or path == prefix.rstrip("/"):
            return surface
    return "plain"


def error_body(error: ApiError, surface: str) -> dict[str, Any]:
    """The JSON an error answers on `surface` (also written by the server worker, outside
    Flask, for requests it refuses before the app sees them)."""
    if surface == "openai":
        message = f"{error.message}: {error.detail}" if error.detail else error.message
        kind, code = "server_error" if error.status >= 500 else "invalid_request_error", error.code
        if error.status == 429:  # what OpenAI's API answers when it is out of capacity
            kind, code = "requests", "rate_limit_exceeded"
        return {"error": {"message": message, "type": kind, "code": code, "param": error.param}}
    body = {"error": error.message}
    if error.detail:
        body[{"sdapi": "detail", "sdcpp": "message"}.get(surface, "detail")] = error.detail
    return body


def error_headers(error: ApiError) -> dict[str, str]:
    headers = dict(error.headers)
    if not error.retryable:
        headers["x-should-retry"] = "false"
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def error_response(error: ApiError, surface: str | None = None) -> Response:
    response = jsonify(error_body(error, surface or surface_of(request.path)))
    response.status_code = error.status
    response.headers.update(error_headers(error))
    return response


_HTTP_MESSAGES = {
    404: ("not found", "not_found"),
    405: ("method not allowed", "method_not_allowed"),
    413: ("request body too large", "body_too_large"),
}


def _from_http(exc: HTTPException) -> ApiError:
    status = exc.code or 500
    message, code = _HTTP_MESSAGES.get(status, ((exc.name or "error").lower(), None))
    detail = None
    if status == 413:
        limit = request.max_content_length
        detail = f"the limit is {limit} bytes" if limit else None
    elif status not in _HTTP_MESSAGES and exc.description:
        detail = exc.description
    # Werkzeug's own headers for the status (a 405's Allow), not its HTML content type.
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return ApiError(status, message, detail=detail, code=code, headers=headers)


def register_error_handlers(app: Flask) -> None:
    """Every error, on every route, answers JSON in its surface's envelope."""
    app.register_error_handler(ApiError, error_response)
    app.register_error_handler(  # an admin load/unload on a slice that lost a process
        SliceBroken,
        lambda exc: error_response(unavailable({"code": exc.code, "message": str(exc)})),
    )
    app.register_error_handler(HTTPException, lambda exc: error_response(_from_http(exc)))
    retry_after = {"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)}
    app.register_error_handler(
        QueueFull,
        lambda exc: error_response(
            ApiError(429, "job queue is full", code="queue_full", headers=retry_after)
        ),
    )
    app.register_error_handler(
        ShuttingDown,
        lambda exc: error_response(
            unavailable(exc.error) if isinstance(exc, Halted) else shutting_down()
        ),
    )
    app.register_error_handler(
        JobNotFound, lambda exc: error_response(ApiError(404, "job not found", code="not_found"))
    )
    app.register_error_handler(
        JobExists,
        lambda exc: error_response(
            ApiError(409, "job id already exists", code="job_exists", param="id", retryable=False)
        ),
    )
    app.register_error_handler(
        JobExpired, lambda exc: error_response(ApiError(410, "job expired", code="expired"))
    )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError(500, "internal server error", code="internal_error"))
