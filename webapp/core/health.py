"""Liveness (`/health`) and the OpenAPI document (`/openapi.json`)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from webapp.core.openapi import RouteDoc
from webapp.core.service import service

bp = Blueprint("health", __name__)

DOCS = (
    RouteDoc("/health", "get", None, None, "Liveness probe (no auth)"),
    RouteDoc("/openapi.json", "get", None, None, "This OpenAPI document"),
)


@bp.get("/health")
def health() -> tuple[Response, int]:
    svc = service()
    halted = svc.jobs.halted
    if halted is not None:  # a lost process of a multi-host slice: restart the slice
        return jsonify({"status": "unavailable", "reason": halted["message"]}), 503
    if not svc.jobs.accepting:
        return jsonify({"status": "shutting_down"}), 503
    return jsonify({"status": "ok", "models": [m.name for m in svc.models]}), 200


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(current_app.extensions["jaxvideo.openapi"])
