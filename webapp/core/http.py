"""Request plumbing shared by the surfaces: strict JSON bodies, CORS, and Bearer auth."""

from __future__ import annotations

import hmac
import json
from typing import Any

from flask import Flask, Response, request

from webapp.core.errors import ApiError

PUBLIC_PATHS = frozenset(("/health",))


def json_body() -> Any:
    """The request body as JSON: empty, malformed or non-standard JSON answers 400."""
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    if not raw.strip():
        raise ApiError(400, "empty body", code="empty_body")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid json", detail=str(exc), code="invalid_json") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def install_hooks(app: Flask, api_key: str | None) -> None:
    """CORS for browser frontends (any origin, no credentials) and optional Bearer auth."""

    @app.before_request
    def _preflight_and_auth() -> Response | None:
        if request.method == "OPTIONS":
            response = app.response_class(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = (
                request.headers.get("Access-Control-Request-Headers")
                or "Authorization, Content-Type"
            )
            response.headers["Access-Control-Max-Age"] = "600"
            return response
        if api_key and request.path not in PUBLIC_PATHS:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), api_key.encode()
            ):
                raise ApiError(401, "invalid or missing API key", code="invalid_api_key")
        return None

    @app.after_request
    def _cors(response: Response) -> Response:
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response
