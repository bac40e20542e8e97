"""The OpenAI-compatible image routes and the model list: `/v1/models` (and one model),
synchronous `/v1/images/generations` (also `/v1/images`, the route FastVideo's server code
serves) and `/v1/images/edits` (multipart)."""

from __future__ import annotations

import base64
import time
from typing import Any

from flask import Blueprint, Response, jsonify

from jaxvideo.results import ModelInfo
from webapp.core.errors import ApiError
from webapp.core.http import client_connected, json_body, waits_for_generation
from webapp.core.openapi import RouteDoc
from webapp.core.results import ImageResult
from webapp.core.schemas import load
from webapp.core.service import service
from webapp.openai.edits import EDIT_NAMES, edit_fields, read_upload
from webapp.openai.schemas import (
    ImageEditSchema,
    ImageGenerationSchema,
    ImagesResponseSchema,
    ModelListSchema,
    ModelSchema,
)
from webapp.openai.translate import NAMES, openai_fields

bp = Blueprint("openai", __name__, url_prefix="/v1")

DOCS = (
    RouteDoc("/v1/models", "get", None, ModelListSchema, "List served models"),
    RouteDoc("/v1/models/{model}", "get", None, ModelSchema, "One served model (404: unknown)"),
    RouteDoc(
        "/v1/images/generations", "post", ImageGenerationSchema, ImagesResponseSchema, "Images"
    ),
    RouteDoc(
        "/v1/images",
        "post",
        ImageGenerationSchema,
        ImagesResponseSchema,
        "Images (as /v1/images/generations; FastVideo's spelling)",
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
    svc = service()
    data = [model_object(m, svc.is_loaded(m.name)) for m in svc.models]
    return jsonify({"object": "list", "data": data})


@bp.get("/models/<path:model>")
def retrieve_model(model: str) -> Response:
    # <path:...>: model ids may contain "/" (OpenAI-style "org/name" ids).
    info = next((m for m in service().models if m.name == model), None)
    if info is None:
        raise ApiError(404, f"model {model!r} not found", code="model_not_found", param="model")
    return jsonify(model_object(info, service().is_loaded(info.name)))


def model_object(info: ModelInfo, loaded: bool) -> dict[str, Any]:
    """OpenAI's `Model` object, and whether the model is loaded (models may load on demand)."""
    return {
        "id": info.name,
        "object": "model",
        "created": int(info.created),
        "owned_by": "jaxvideo",
        "loaded": loaded,
    }


@bp.post("/images/generations")
@bp.post("/images")
@waits_for_generation
def generate_images() -> Response:
    svc = service()
    data = load(ImageGenerationSchema(), json_body())
    fields, output = openai_fields(data, svc.caps)
    prepared = svc.resolve({**fields, "mode": "img_gen"}, NAMES, guidance_is_distilled=True)
    return images_response(svc.generate_images(prepared, output, client_connected()))


@bp.post("/images/edits")
@waits_for_generation
def edit_images() -> Response:
    svc = service()
    upload = read_upload()
    # The model the edit goes to decides whether its images are references (Flux Kontext).
    info = svc.model_for("img_gen", upload.form.get("model") or None)
    references = "ref_images" in info.features.get("img_gen", ())
    fields, output = edit_fields(upload, svc.caps, references)
    prepared = svc.resolve({**fields, "mode": "img_gen"}, EDIT_NAMES, guidance_is_distilled=True)
    return images_response(svc.generate_images(prepared, output, client_connected()))


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
