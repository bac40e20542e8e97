"""The native async sdcpp surface: capabilities, img_gen and vid_gen submission, job polling
and cancel."""

from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, Response, jsonify

from jaxvideo.media import IMAGE_FORMATS
from jaxvideo.request import GenerationRequest
from jaxvideo.results import ModelInfo
from webapp.http import json_body
from webapp.jobs import COMPLETED, JobView
from webapp.lora_fields import available_loras
from webapp.openapi import RouteDoc
from webapp.schemas.common import load
from webapp.schemas.sdcpp import ImgGenSchema, JobSchema, JobSubmittedSchema, VidGenSchema
from webapp.service import ImageResult, Service, VideoResult, service
from webapp.translate import OutputOptions, apply_output, sdcpp_fields
from webapp.video_fields import (
    DEFAULT_VIDEO_QUALITY,
    MAX_FRAMES,
    SDCPP_VIDEO_FORMATS,
    VIDGEN_NAMES,
    VideoOutput,
    vidgen_fields,
)

bp = Blueprint("sdcpp", __name__, url_prefix="/sdcpp/v1")

SDCPP_NAMES = {
    "steps": "sample_params.sample_steps",
    "guidance_scale": "sample_params.guidance.txt_cfg",
    "sampler": "sample_params.sample_method",
    "scheduler": "sample_params.scheduler",
    "flow_shift": "sample_params.flow_shift",
    "custom_sigmas": "sample_params.custom_sigmas",
    "shifted_timestep": "sample_params.shifted_timestep",
    "loras": "lora",
    "vae_tiling": "vae_tiling_params",
}
FEATURES = {
    "img_gen": (
        "init_image",
        "mask_image",
        "control_image",
        "ref_images",
        "lora",
        "vae_tiling",
        "cache",
        "cancel_queued",
        "cancel_generating",
    ),
    "vid_gen": (
        "init_image",
        "end_image",
        "control_frames",
        "high_noise_sample_params",
        "lora",
        "vae_tiling",
        "cache",
        "cancel_queued",
        "cancel_generating",
    ),
}
# Refused by this server whatever the model (translate.py / video_fields.py answer 400).
REFUSED = frozenset(("control_image", "ref_images", "control_frames", "cache"))
# What a model that declares no img_gen features (the SD pipeline) supports.
SD_IMG_FEATURES = (
    "init_image",
    "mask_image",
    "lora",
    "vae_tiling",
    "cancel_queued",
    "cancel_generating",
)


def mode_features(svc: Service, info: ModelInfo, mode: str) -> dict[str, bool]:
    """A feature is advertised only when it really works here: the model supports it, this
    server does not refuse it, and LoRA needs a LoRA folder."""
    declared = info.features.get(mode, SD_IMG_FEATURES if mode == "img_gen" else ())
    lora_ok = svc.caps.limits.lora_dir is not None
    return {
        name: name in declared and name not in REFUSED and (name != "lora" or lora_ok)
        for name in FEATURES[mode]
    }


DOCS = (
    RouteDoc("/sdcpp/v1/capabilities", "get", None, None, "Models, defaults, limits, features"),
    RouteDoc("/sdcpp/v1/img_gen", "post", ImgGenSchema, JobSubmittedSchema, "Queue an image", 202),
    RouteDoc("/sdcpp/v1/vid_gen", "post", VidGenSchema, JobSubmittedSchema, "Queue a video", 202),
    RouteDoc("/sdcpp/v1/jobs/{job_id}", "get", None, JobSchema, "Poll a job"),
    RouteDoc("/sdcpp/v1/jobs/{job_id}/cancel", "post", None, JobSchema, "Cancel a job"),
)


@bp.get("/capabilities")
def capabilities() -> Response:
    svc = service()
    info = svc.model_info(svc.config.default_request.get("model"))
    limits = svc.caps.limits
    modes = [mode for mode in FEATURES if any(mode in m.modes for m in svc.models)]
    by_mode = {mode: svc.model_for(mode) for mode in modes}
    defaults = {mode: MODE_DEFAULTS[mode](svc, model.name) for mode, model in by_mode.items()}
    features = {mode: mode_features(svc, model, mode) for mode, model in by_mode.items()}
    formats = {"img_gen": list(IMAGE_FORMATS), "vid_gen": list(SDCPP_VIDEO_FORMATS)}
    current = info.modes[0]
    own = svc.caps.for_model(info)
    return jsonify(
        {
            "model": {"name": info.name, "stem": info.name, "path": info.path},
            "models": [model_entry(svc, m) for m in svc.models],
            "current_mode": current,
            "supported_modes": modes,
            "defaults": defaults[current],
            "defaults_by_mode": defaults,
            "output_formats": formats[current],
            "output_formats_by_mode": {mode: formats[mode] for mode in modes},
            "features": features[current],
            "features_by_mode": features,
            "samplers": list(own.samplers),
            "schedulers": list(own.schedulers),
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
                "max_video_frames": MAX_FRAMES,
            },
        }
    )


def model_entry(svc: Service, info: ModelInfo) -> dict[str, Any]:
    """A served model with what it really supports (Wan has its own samplers/schedulers)."""
    own = svc.caps.for_model(info)
    return {
        "name": info.name,
        "family": info.family,
        "modes": list(info.modes),
        "samplers": list(own.samplers),
        "schedulers": list(own.schedulers),
        "features_by_mode": {mode: mode_features(svc, info, mode) for mode in info.modes},
    }


@bp.post("/img_gen")
def img_gen() -> tuple[Response, int]:
    svc = service()
    data = load(ImgGenSchema(), json_body())
    fields, output = sdcpp_fields(data, svc.caps)
    request = svc.resolve({**fields, "mode": "img_gen"}, SDCPP_NAMES)
    return submitted(svc.submit_images(request, apply_output(OutputOptions(), output)))


@bp.post("/vid_gen")
def vid_gen() -> tuple[Response, int]:
    svc = service()
    data = load(VidGenSchema(), json_body())
    fields, output = vidgen_fields(data, svc.caps)
    request = svc.resolve({**fields, "mode": "vid_gen"}, VIDGEN_NAMES)
    options = VideoOutput(output.get("output_format", "webm"), output.get("quality", 90))
    return submitted(svc.submit_video(request, options, "sdcpp"))


def submitted(view: JobView) -> tuple[Response, int]:
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
    elif view.status == COMPLETED and isinstance(view.result, VideoResult):
        video = view.result
        result = {
            "output_format": video.output_format,
            "mime_type": video.mime_type,
            "fps": video.fps,
            "frame_count": video.frame_count,
            "seed": video.seed,
            "b64_json": base64.b64encode(video.data).decode("ascii"),
        }
    return view.to_dict(result)


def effective_request(svc: Service, model: str) -> tuple[GenerationRequest, int]:
    """What a request sending nothing gets on `model` (operator over family), and its seed
    (-1: random)."""
    merged = {**svc.family_defaults(model), **svc.config.default_request, "model": model}
    return GenerationRequest(**{k: v for k, v in merged.items() if k != "seed"}), merged.get(
        "seed", -1
    )


def sample_defaults(req: GenerationRequest, guidance: float, steps: int) -> dict[str, Any]:
    return {
        "scheduler": req.scheduler,
        "sample_method": req.sampler,
        "sample_steps": steps,
        "eta": req.eta,
        "shifted_timestep": 0,
        "flow_shift": req.flow_shift,
        "guidance": {
            "txt_cfg": guidance,
            "img_cfg": None,
            "distilled_guidance": 3.5,
            "slg": {"layers": [7, 8, 9], "layer_start": 0.01, "layer_end": 0.2, "scale": 0.0},
        },
    }


def shared_defaults(req: GenerationRequest, seed: int) -> dict[str, Any]:
    """The defaults img_gen and vid_gen share, in the native request shape."""
    return {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "clip_skip": req.clip_skip,
        "width": req.width,
        "height": req.height,
        "strength": req.strength,
        "seed": seed,
        "sample_params": sample_defaults(req, req.guidance_scale, req.steps),
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
    }


def image_defaults(svc: Service, model: str) -> dict[str, Any]:
    """The effective img_gen defaults of `model`."""
    req, seed = effective_request(svc, model)
    return {
        **shared_defaults(req, seed),
        "batch_count": req.batch_count,
        "auto_resize_ref_image": True,
        "increase_ref_index": False,
        "control_strength": 0.9,
        "embed_image_metadata": True,
        "output_format": "png",
        "output_compression": 100,
    }


def video_defaults(svc: Service, model: str) -> dict[str, Any]:
    """The effective vid_gen defaults of `model`; the high-noise stage inherits the main
    sampling settings and splits the steps at `moe_boundary` (sample_steps -1)."""
    req, seed = effective_request(svc, model)
    return {
        **shared_defaults(req, seed),
        "video_frames": req.num_frames,
        "fps": req.fps,
        "moe_boundary": 0.875 if req.moe_boundary is None else req.moe_boundary,
        "vace_strength": 1.0,
        "high_noise_sample_params": sample_defaults(req, req.guidance_scale, -1),
        "output_format": SDCPP_VIDEO_FORMATS[0],
        "output_compression": DEFAULT_VIDEO_QUALITY,
    }


MODE_DEFAULTS = {"img_gen": image_defaults, "vid_gen": video_defaults}
