"""The OpenAPI 3 document, generated from the marshmallow schemas with apispec."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema


class RouteDoc(NamedTuple):
    path: str  # OpenAPI template: /sdcpp/v1/jobs/{job_id}
    method: str
    request: type[Schema] | Schema | None
    response: type[Schema] | Schema | None
    summary: str
    status: int = 200
    content_type: str | tuple[str, ...] = "application/json"  # of the request body
    query: type[Schema] | None = None  # query-string parameters
    produces: tuple[str, ...] = ()  # binary response types (a response without a schema)


def _text(nullable: bool = False) -> dict[str, Any]:
    return {"type": "string", "nullable": True} if nullable else {"type": "string"}


# What an error answers on each surface (webapp/core/errors.py `error_body`), by path prefix.
ERROR_ENVELOPES: dict[str, dict[str, Any]] = {
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code", "param"],
                "additionalProperties": False,
                "properties": {
                    "message": _text(),
                    "type": _text(),
                    "code": _text(nullable=True),
                    "param": _text(nullable=True),
                },
            }
        },
    },
    "SdapiError": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {"error": _text(), "detail": _text()},
    },
    "SdcppError": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {"error": _text(), "message": _text()},
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {"error": _text(), "detail": _text()},
    },
}
_ENVELOPE_OF = (("/v1/", "OpenAIError"), ("/sdapi/", "SdapiError"), ("/sdcpp/", "SdcppError"))


def _error_envelope(path: str) -> str:
    return next((name for prefix, name in _ENVELOPE_OF if path.startswith(prefix)), "Error")


def build_openapi(routes: Iterable[RouteDoc], version: str, auth: bool) -> dict[str, Any]:
    spec = APISpec(
        title="jaxvideo",
        version=version,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "OpenAI-compatible, AUTOMATIC1111 (sdapi) and native sdcpp APIs"},
    )
    if auth:
        spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for name, envelope in ERROR_ENVELOPES.items():
        spec.components.schema(name, envelope)
    for route in routes:
        response: dict[str, Any] = {"description": "success"}
        if route.response is not None:
            response["content"] = {"application/json": {"schema": route.response}}
        elif route.produces:
            binary = {"schema": {"type": "string", "format": "binary"}}
            response["content"] = {kind: binary for kind in route.produces}
        operation: dict[str, Any] = {
            "summary": route.summary,
            "responses": {
                str(route.status): response,
                "default": {
                    "description": "error, in the envelope of the route's API surface",
                    "content": {
                        "application/json": {"schema": _error_envelope(route.path)},
                    },
                },
            },
        }
        if route.request is not None:
            kinds = route.content_type
            kinds = (kinds,) if isinstance(kinds, str) else kinds
            operation["requestBody"] = {
                "required": True,
                "content": {kind: {"schema": route.request} for kind in kinds},
            }
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        if route.query is not None:
            params.append({"in": "query", "schema": route.query})
        if params:
            operation["parameters"] = params
        if auth and route.path != "/health":
            operation["security"] = [{"bearer": []}]
        spec.path(path=route.path, operations={route.method: operation})
    return spec.to_dict()
