"""The native async sdcpp surface: capabilities, img_gen submission, job polling and cancel."""

from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, Response, jsonify

from jaxvideo.media import IMAGE_FORMATS
from jaxvideo.request import GenerationRequest
from webapp.http import json_body
from webapp.jobs import COMPLETED, JobView
from webapp.lora_fields import available_loras
from webapp.openapi import RouteDoc
from webapp.schemas.common import load
from webapp.schemas.sdcpp import ImgGenSchema, JobSchema, JobSubmittedSchema
from webapp.service import ImageResult, Service, service
from webapp.translate import OutputOptions, apply_output, sdcpp_fields

bp = Blueprint("sdcpp", __name__, url_prefix="/sdcpp/v1")

SDCPP_NAMES = {
    "steps": "sample_params.sample_steps",
    "guidance_scale": "sample_params.guidance.txt_cfg",
    "sampler": "sample_params.sample_method",
    "scheduler": "sample_params.scheduler",
    "loras": "lora",
}


def img_features(svc: Service) -> dict[str, bool]:
    """A feature is advertised only when it really works on this server: LoRA needs a folder."""
    return {
        "init_image": True,
        "mask_image": True,
        "control_image": False,
        "ref_images": False,
        "lora": svc.caps.limits.lora_dir is not None,
        "vae_tiling": True,
        "cache": False,
        "cancel_queued": True,
        "cancel_generating": True,
    }


DOCS = (
    RouteDoc("/sdcpp/v1/capabilities", "get", None, None, "Models, defaults, limits, features"),
    RouteDoc("/sdcpp/v1/img_gen", "post", ImgGenSchema, JobSubmittedSchema, "Queue an image", 202),
    RouteDoc("/sdcpp/v1/jobs/{job_id}", "get", None, JobSchema, "Poll a job"),
    RouteDoc("/sdcpp/v1/jobs/{job_id}/cancel", "post", None, JobSchema, "Cancel a job"),
)


@bp.get("/capabilities")
def capabilities() -> Response:
    svc = service()
    info = svc.model_info(svc.config.default_request.get("model"))
    limits = svc.caps.limits
    img_defaults = image_defaults(svc, info.name)
    features = img_features(svc)
    return jsonify(
        {
            "model": {"name": info.name, "stem": info.name, "path": info.path},
            "models": [
                {"name": m.name, "family": m.family, "modes": list(m.modes)} for m in svc.models
            ],
            "current_mode": "img_gen",
            "supported_modes": ["img_gen"],
            "defaults": img_defaults,
            "defaults_by_mode": {"img_gen": img_defaults},
            "output_formats": list(IMAGE_FORMATS),
            "output_formats_by_mode": {"img_gen": list(IMAGE_FORMATS)},
            "features": features,
            "features_by_mode": {"img_gen": features},
            "samplers": list(svc.caps.samplers),
            "schedulers": list(svc.caps.schedulers),
            "loras": available_loras(limits.lora_dir),
            "upscalers": [],
            "limits": {
                "min_width": limits.min_width,
                "max_width": limits.max_width,
                "min_height": limits.min_height,
                "max_height": limits.max_height,
                "max_batch_count": limits.max_batch_count,
                "max_queue_size": limits.max_queue_size,
                "max_steps": limits.max_steps,
            },
        }
    )


@bp.post("/img_gen")
def img_gen() -> tuple[Response, int]:
    svc = service()
    data = load(ImgGenSchema(), json_body())
    fields, output = sdcpp_fields(data, svc.caps)
    request = svc.resolve({**fields, "mode": "img_gen"}, SDCPP_NAMES)
    view = svc.submit_images(request, apply_output(OutputOptions(), output))
    body = {
        "id": view.id,
        "kind": view.kind,
        "status": view.status,
        "created": view.created,
        "poll_url": f"/sdcpp/v1/jobs/{view.id}",
    }
    return jsonify(body), 202


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    return jsonify(job_json(service().jobs.get(job_id)))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    return jsonify(job_json(service().jobs.cancel(job_id)))


def job_json(view: JobView) -> dict[str, Any]:
    result = None
    if view.status == COMPLETED and isinstance(view.result, ImageResult):
        result = {
            "output_format": view.result.output_format,
            "images": [
                {
                    "index": image.index,
                    "b64_json": base64.b64encode(image.data).decode("ascii"),
                    "seed": image.seed,
                }
                for image in view.result.images
            ],
        }
    return view.to_dict(result)


def image_defaults(svc: Service, model: str) -> dict[str, Any]:
    """The effective img_gen defaults (operator over family) in the native request shape."""
    merged = {**svc.family_defaults(model), **svc.config.default_request, "model": model}
    req = GenerationRequest(**{k: v for k, v in merged.items() if k != "seed"})
    return {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "clip_skip": req.clip_skip,
        "width": req.width,
        "height": req.height,
        "strength": req.strength,
        "seed": merged.get("seed", -1),
        "batch_count": req.batch_count,
        "auto_resize_ref_image": True,
        "increase_ref_index": False,
        "control_strength": 0.9,
        "embed_image_metadata": True,
        "sample_params": {
            "scheduler": req.scheduler,
            "sample_method": req.sampler,
            "sample_steps": req.steps,
            "eta": req.eta,
            "shifted_timestep": 0,
            "flow_shift": None,
            "guidance": {
                "txt_cfg": req.guidance_scale,
                "img_cfg": None,
                "distilled_guidance": 3.5,
                "slg": {"layers": [7, 8, 9], "layer_start": 0.01, "layer_end": 0.2, "scale": 0.0},
            },
        },
        "vae_tiling_params": {
            "enabled": False,
            "tile_size_x": 0,
            "tile_size_y": 0,
            "target_overlap": 0.5,
            "rel_size_x": 0.0,
            "rel_size_y": 0.0,
        },
        "cache_mode": "disabled",
        "cache_option": "",
        "scm_mask": "",
        "scm_policy_dynamic": True,
        "output_format": "png",
        "output_compression": 100,
    }
