"""Operator routes: which models are loaded, and loading or unloading one by hand.

Models marked `load: on_demand` load at their first request, and the engine unloads the least
recently used when the memory plan needs room (`jaxvideo.engine`); these routes show that state
and let an operator load a model before its clients arrive or free a device. They change what
every client sees, so they exist only behind the server's API key (`server.api_key`): without
one configured they answer 403.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from jaxvideo.errors import InvalidRequest
from webapp.core.errors import ApiError
from webapp.core.openapi import RouteDoc
from webapp.core.service import service

bp = Blueprint("admin", __name__, url_prefix="/admin/v1")

DOCS = (
    RouteDoc("/admin/v1/models", "get", None, None, "Served models: loaded or not (API key)"),
    RouteDoc("/admin/v1/models/{model}/load", "post", None, None, "Load a model (API key)"),
    RouteDoc("/admin/v1/models/{model}/unload", "post", None, None, "Unload a model (API key)"),
)


@bp.before_request
def needs_api_key() -> None:
    # With a key configured, the app-wide hook has already checked the Bearer token.
    if not service().config.server.api_key:
        raise ApiError(403, "admin routes need server.api_key to be set", code="forbidden")


@bp.get("/models")
def models() -> Response:
    return jsonify(service().model_states())


@bp.post("/models/<path:model>/load")
def load(model: str) -> Response:
    svc = service()
    _known(model)
    try:
        svc.load_model(model)
    except InvalidRequest as exc:
        raise ApiError(400, str(exc), code="does_not_fit", param="model") from exc
    return jsonify(_state(model))


@bp.post("/models/<path:model>/unload")
def unload(model: str) -> Response:
    _known(model)
    service().unload_model(model)
    return jsonify(_state(model))


def _known(model: str) -> None:
    if model not in {info.name for info in service().models}:
        raise ApiError(404, f"model {model!r} not found", code="model_not_found", param="model")


def _state(model: str) -> dict:
    return next(state for state in service().model_states() if state["name"] == model)
