"""The AUTOMATIC1111-compatible surface: synchronous txt2img/img2img, discovery endpoints,
options (model switch), progress, interrupt and skip.

Interrupt and skip stop the job that is generating, whichever surface queued it (A1111 has one
job slot). The waiting sdapi request then answers 409 `{"error": "job cancelled", "detail":
"job interrupted (POST /sdapi/v1/interrupt)"}`: A1111 answers 200 with the images finished so
far, but a batch runs as one sampler loop here, so a stopped job has none.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from typing import Any

from flask import Blueprint, Response, jsonify

from webapp.core.errors import invalid
from webapp.core.http import client_connected, json_body, waits_for_generation
from webapp.core.jobs import INTERRUPTED, SKIPPED, JobView
from webapp.core.loras import available_loras
from webapp.core.names import display_name, sampler_aliases, scheduler_aliases, scheduler_label
from webapp.core.openapi import RouteDoc
from webapp.core.outputs import OutputOptions, apply_output
from webapp.core.results import ImageResult
from webapp.core.schemas import load
from webapp.core.service import service
from webapp.sdapi.options import EXTENSION, SdapiOptions, sdapi_options
from webapp.sdapi.schemas import (
    Img2ImgSchema,
    LoraFileSchema,
    OptionsSchema,
    OptionsUpdateSchema,
    SamplerSchema,
    SchedulerSchema,
    SdapiProgressSchema,
    SdModelSchema,
    Txt2ImgResponseSchema,
    Txt2ImgSchema,
)
from webapp.sdapi.translate import NAMES, sdapi_fields

log = logging.getLogger(__name__)

bp = Blueprint("sdapi", __name__, url_prefix="/sdapi/v1")
bp.record_once(lambda state: state.app.extensions.setdefault(EXTENSION, SdapiOptions()))

DOCS = (
    RouteDoc("/sdapi/v1/txt2img", "post", Txt2ImgSchema, Txt2ImgResponseSchema, "Text to image"),
    RouteDoc("/sdapi/v1/img2img", "post", Img2ImgSchema, Txt2ImgResponseSchema, "Image to image"),
    RouteDoc("/sdapi/v1/samplers", "get", None, SamplerSchema(many=True), "A1111 sampler names"),
    RouteDoc("/sdapi/v1/schedulers", "get", None, SchedulerSchema(many=True), "Schedulers"),
    RouteDoc("/sdapi/v1/sd-models", "get", None, SdModelSchema(many=True), "Served models"),
    RouteDoc("/sdapi/v1/options", "get", None, OptionsSchema, "Current options"),
    RouteDoc(
        "/sdapi/v1/options",
        "post",
        OptionsUpdateSchema,
        OptionsSchema,
        "Switch the sdapi default model (sd_model_checkpoint); other keys are ignored",
    ),
    RouteDoc("/sdapi/v1/loras", "get", None, LoraFileSchema(many=True), "LoRAs in server.lora_dir"),
    RouteDoc("/sdapi/v1/progress", "get", None, SdapiProgressSchema, "The generating job"),
    RouteDoc("/sdapi/v1/interrupt", "post", None, None, "Stop the generating job"),
    RouteDoc("/sdapi/v1/skip", "post", None, None, "Stop the generating job (as interrupt)"),
)


@bp.post("/txt2img")
@waits_for_generation
def txt2img() -> Response:
    data = load(Txt2ImgSchema(), json_body())
    return _generate(data, img2img=False)


@bp.post("/img2img")
@waits_for_generation
def img2img() -> Response:
    data = load(Img2ImgSchema(), json_body())
    return _generate(data, img2img=True)


def _generate(data: dict[str, Any], img2img: bool) -> Response:
    svc = service()
    fields, output = sdapi_fields(data, svc.caps, img2img=img2img)
    # POST /sdapi/v1/options may have switched the model.
    fields.setdefault("model", sdapi_options().model(svc))
    prepared = svc.resolve({**fields, "mode": "img_gen"}, NAMES, guidance_is_distilled=True)
    # A1111 clients expect PNG (with the `parameters` chunk unless told otherwise).
    options = apply_output(OutputOptions(), output)
    result = svc.generate_images(prepared, options, client_connected())
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
        "sampler_name": display_name(request.sampler),
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
    # As in A1111: what the current checkpoint (the sdapi default model) can run.
    return jsonify(
        [
            {"name": display_name(s), "aliases": sampler_aliases(s), "options": {}}
            for s in _model_caps().samplers
        ]
    )


@bp.get("/schedulers")
def schedulers() -> Response:
    # `name` is what this server calls it (and accepts back), `label` A1111's display name.
    entries = [{"name": "automatic", "label": "Automatic", "aliases": ["default"]}]
    entries += [
        {"name": s, "label": scheduler_label(s), "aliases": scheduler_aliases(s)}
        for s in _model_caps().schedulers
    ]
    return jsonify(entries)


def _model_caps():
    svc = service()
    return svc.caps.for_model(svc.model_info(sdapi_options().model(svc)))


@bp.get("/sd-models")
def sd_models() -> Response:
    entries = []
    # sdapi makes pictures: models that cannot (image-to-video only) are not checkpoints here.
    for model in (m for m in service().models if "img_gen" in m.modes):
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
    return jsonify(
        {"samples_format": "png", "sd_model_checkpoint": sdapi_options().model(service())}
    )


@bp.post("/options")
def set_options() -> Response:
    """A1111 saves every setting sent; here only `sd_model_checkpoint` means something (the
    model sdapi requests naming none get, for this server process). Other keys are accepted,
    logged and ignored, so clients that post their whole settings page keep working."""
    data = load(OptionsUpdateSchema(), json_body())
    if "sd_model_checkpoint" in data:
        if not data["sd_model_checkpoint"]:
            raise invalid("sd_model_checkpoint", "must name a served model")
        model = sdapi_options().switch_model(service(), data["sd_model_checkpoint"])
        log.info("sdapi default model is now %s", model)
    return options()


@bp.get("/loras")
def loras() -> Response:
    return jsonify(available_loras(service().caps.limits.lora_dir))


@bp.get("/progress")
def progress() -> Response:
    """A1111's progress shape for the job generating now (any surface's); idle: zeros."""
    return jsonify(progress_json(service().jobs.current()))


@bp.post("/interrupt")
def interrupt() -> Response:
    service().jobs.cancel_running(INTERRUPTED)
    return jsonify({})


@bp.post("/skip")
def skip() -> Response:
    # A1111 skips to the next image of a batch; one batch is one sampler loop here.
    service().jobs.cancel_running(SKIPPED)
    return jsonify({})


def progress_json(view: JobView | None) -> dict[str, Any]:
    if view is None:
        state = {"skipped": False, "interrupted": False, "job": "", "job_count": 0}
        state |= {"job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        return {
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": state,
            "current_image": None,
            "textinfo": None,
        }
    fraction = min(view.step / view.total, 1.0) if view.total else 0.0
    started = view.started if view.started is not None else time.time()
    elapsed = max(time.time() - started, 0.0)
    reason = view.cancel_reason
    state = {
        "skipped": reason == SKIPPED,
        "interrupted": reason is not None and reason != SKIPPED,
        "job": view.id,
        "job_count": 1,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)),
        "job_no": 0,
        "sampling_step": view.step,
        "sampling_steps": view.total,
    }
    return {
        "progress": fraction,
        "eta_relative": elapsed / fraction - elapsed if fraction else 0.0,
        "state": state,
        "current_image": None,
        "textinfo": f"{view.kind} {view.id}: step {view.step}/{view.total}",
    }


def _index_sha256(path: str) -> str | None:
    """A stable identity for a converted folder: the hash of its model_index.json."""
    index = os.path.join(path, "model_index.json")
    try:
        with open(index, "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()
    except OSError:
        return None
