"""The OpenAI-compatible surface: `/v1/models` and synchronous `/v1/images/generations`."""

from __future__ import annotations

import base64
import time

from flask import Blueprint, Response, jsonify

from webapp.http import json_body
from webapp.openapi import RouteDoc
from webapp.schemas.common import load
from webapp.schemas.openai import ImageGenerationSchema, ImagesResponseSchema, ModelListSchema
from webapp.service import service
from webapp.translate import OPENAI_NAMES, openai_fields

bp = Blueprint("openai", __name__, url_prefix="/v1")

DOCS = (
    RouteDoc("/v1/models", "get", None, ModelListSchema, "List served models"),
    RouteDoc(
        "/v1/images/generations", "post", ImageGenerationSchema, ImagesResponseSchema, "Images"
    ),
)


@bp.get("/models")
def list_models() -> Response:
    models = [
        {"id": m.name, "object": "model", "created": int(m.created), "owned_by": "jaxvideo"}
        for m in service().models
    ]
    return jsonify({"object": "list", "data": models})


@bp.post("/images/generations")
def generate_images() -> Response:
    svc = service()
    data = load(ImageGenerationSchema(), json_body())
    fields, output = openai_fields(data, svc.caps)
    request = svc.resolve({**fields, "mode": "img_gen"}, OPENAI_NAMES)
    result = svc.generate_images(request, output)
    return jsonify(
        {
            "created": int(time.time()),
            "data": [
                {"b64_json": base64.b64encode(image.data).decode("ascii")}
                for image in result.images
            ],
            "output_format": result.output_format,
            "size": f"{request.width}x{request.height}",
        }
    )
