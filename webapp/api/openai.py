"""The OpenAI-compatible surface: `/v1/models`, synchronous `/v1/images/generations` and
`/v1/images/edits` (multipart)."""

from __future__ import annotations

import base64
import time

from flask import Blueprint, Response, jsonify

from webapp.edits import EDIT_NAMES, edit_fields, read_upload
from webapp.http import json_body
from webapp.openapi import RouteDoc
from webapp.schemas.common import load
from webapp.schemas.openai import (
    ImageEditSchema,
    ImageGenerationSchema,
    ImagesResponseSchema,
    ModelListSchema,
)
from webapp.service import ImageResult, service
from webapp.translate import OPENAI_NAMES, openai_fields

bp = Blueprint("openai", __name__, url_prefix="/v1")

DOCS = (
    RouteDoc("/v1/models", "get", None, ModelListSchema, "List served models"),
    RouteDoc(
        "/v1/images/generations", "post", ImageGenerationSchema, ImagesResponseSchema, "Images"
    ),
    RouteDoc(
        "/v1/images/edits",
        "post",
        ImageEditSchema,
        ImagesResponseSchema,
        "Edit an image (img2img, inpainting with a mask)",
        content_type="multipart/form-data",
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
    return images_response(svc.generate_images(request, output))


@bp.post("/images/edits")
def edit_images() -> Response:
    svc = service()
    fields, output = edit_fields(read_upload(), svc.caps)
    request = svc.resolve({**fields, "mode": "img_gen"}, EDIT_NAMES)
    return images_response(svc.generate_images(request, output))


def images_response(result: ImageResult) -> Response:
    request = result.request
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
