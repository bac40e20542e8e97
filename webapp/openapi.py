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
    content_type: str = "application/json"  # of the request body


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
    for route in routes:
        response: dict[str, Any] = {"description": "success"}
        if route.response is not None:
            response["content"] = {"application/json": {"schema": route.response}}
        operation: dict[str, Any] = {
            "summary": route.summary,
            "responses": {str(route.status): response, "default": {"description": "error"}},
        }
        if route.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {route.content_type: {"schema": route.request}},
            }
        params = re.findall(r"{(\w+)}", route.path)
        if params:
            operation["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in params
            ]
        if auth and route.path != "/health":
            operation["security"] = [{"bearer": []}]
        spec.path(path=route.path, operations={route.method: operation})
    return spec.to_dict()
