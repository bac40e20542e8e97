"""The AUTOMATIC1111-compatible surface: synchronous txt2img/img2img and discovery endpoints."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from flask import Blueprint, Response, jsonify
from marshmallow import EXCLUDE

from webapp import a1111
from webapp.http import json_body
from webapp.openapi import RouteDoc
from webapp.schemas.common import load
from webapp.schemas.sdapi import (
    Img2ImgSchema,
    LoraFileSchema,
    OptionsSchema,
    SamplerSchema,
    SchedulerSchema,
    SdModelSchema,
    Txt2ImgResponseSchema,
    Txt2ImgSchema,
)
from webapp.service import ImageResult, service
from webapp.translate import OutputOptions, apply_output

bp = Blueprint("sdapi", __name__, url_prefix="/sdapi/v1")

DOCS = (
    RouteDoc("/sdapi/v1/txt2img", "post", Txt2ImgSchema, Txt2ImgResponseSchema, "Text to image"),
    RouteDoc("/sdapi/v1/img2img", "post", Img2ImgSchema, Txt2ImgResponseSchema, "Image to image"),
    RouteDoc("/sdapi/v1/samplers", "get", None, SamplerSchema(many=True), "A1111 sampler names"),
    RouteDoc("/sdapi/v1/schedulers", "get", None, SchedulerSchema(many=True), "Schedulers"),
    RouteDoc("/sdapi/v1/sd-models", "get", None, SdModelSchema(many=True), "Served models"),
    RouteDoc("/sdapi/v1/options", "get", None, OptionsSchema, "Current options"),
    RouteDoc("/sdapi/v1/loras", "get", None, LoraFileSchema(many=True), "Available LoRAs"),
)


@bp.post("/txt2img")
def txt2img() -> Response:
    data = load(Txt2ImgSchema(), json_body(), unknown=EXCLUDE)
    return _generate(data, img2img=False)


@bp.post("/img2img")
def img2img() -> Response:
    data = load(Img2ImgSchema(), json_body(), unknown=EXCLUDE)
    return _generate(data, img2img=True)


def _generate(data: dict[str, Any], img2img: bool) -> Response:
    svc = service()
    fields, output = a1111.sdapi_fields(data, svc.caps, img2img=img2img)
    request = svc.resolve({**fields, "mode": "img_gen"}, a1111.SDAPI_NAMES)
    # A1111 clients expect PNG (with the `parameters` chunk unless told otherwise).
    result = svc.generate_images(request, apply_output(OutputOptions(), output))
    images = [base64.b64encode(image.data).decode("ascii") for image in result.images]
    if data.get("send_images") is False:
        images = []
    if img2img and not data.get("include_init_images"):
        # A1111 does not echo the (large) input images unless asked to.
        data = {**data, "init_images": None, "mask": None}
    return jsonify({"images": images, "parameters": data, "info": json.dumps(info(result))})


def info(result: ImageResult) -> dict[str, Any]:
    request = result.request
    seeds = [image.seed for image in result.images]
    count = len(result.images)
    return {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * count,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * count,
        "seed": request.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * count,
        "cfg_scale": request.guidance_scale,
        "width": request.width,
        "height": request.height,
        "steps": request.steps,
        "sampler_name": a1111.display_name(request.sampler),
        "scheduler": request.scheduler,
        "clip_skip": request.clip_skip,
        "eta": request.eta,
        "denoising_strength": request.strength if result.img2img else None,
        "batch_size": request.batch_count,
        "index_of_first_image": 0,
        "infotexts": result.infotexts,
        "sd_model_name": result.model,
        "version": service().version,
    }


@bp.get("/samplers")
def samplers() -> Response:
    return jsonify(
        [
            {"name": a1111.display_name(s), "aliases": a1111.sampler_aliases(s), "options": {}}
            for s in service().caps.samplers
        ]
    )


@bp.get("/schedulers")
def schedulers() -> Response:
    entries = [{"name": "automatic", "label": "Automatic"}]
    entries += [
        {"name": s, "label": a1111.SCHEDULER_LABELS.get(s, s)} for s in service().caps.schedulers
    ]
    return jsonify(entries)


@bp.get("/sd-models")
def sd_models() -> Response:
    entries = []
    for model in service().models:
        sha256 = _index_sha256(model.path)
        entries.append(
            {
                "title": model.name,
                "model_name": model.name,
                "filename": model.path,
                "hash": sha256[:10] if sha256 else None,
                "sha256": sha256,
                "config": None,
            }
        )
    return jsonify(entries)


@bp.get("/options")
def options() -> Response:
    svc = service()
    default = svc.model_info(svc.config.default_request.get("model"))
    return jsonify({"samples_format": "png", "sd_model_checkpoint": default.name})


@bp.get("/loras")
def loras() -> Response:
    return jsonify([])  # LoRA support (and the configured folder scan) comes later


def _index_sha256(path: str) -> str | None:
    """A stable identity for a converted folder: the hash of its model_index.json."""
    index = os.path.join(path, "model_index.json")
    try:
        with open(index, "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()
    except OSError:
        return None
