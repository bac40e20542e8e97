"""The native async sdcpp surface: capabilities, img_gen and vid_gen submission, job polling
and cancel."""

from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, Response, jsonify

from jaxvideo.media import IMAGE_FORMATS
from jaxvideo.sampling import cache_modes
from webapp.core.checks import MAX_FRAMES
from webapp.core.http import json_body
from webapp.core.jobs import COMPLETED, JobView
from webapp.core.loras import available_loras
from webapp.core.openapi import RouteDoc
from webapp.core.outputs import DEFAULT_VIDEO_QUALITY, OutputOptions, VideoOutput, apply_output
from webapp.core.results import ImageResult, VideoResult
from webapp.core.schemas import load
from webapp.core.service import service
from webapp.sdcpp.discovery import FEATURES, model_entry
from webapp.sdcpp.schemas import ImgGenSchema, JobSchema, JobSubmittedSchema, VidGenSchema
from webapp.sdcpp.translate import NAMES, VIDEO_FORMATS, sdcpp_fields, vidgen_fields

bp = Blueprint("sdcpp", __name__, url_prefix="/sdcpp/v1")

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
    entries = {m.name: model_entry(svc, m) for m in svc.models}
    # Each mode's defaults and features are its default model's, already in that model's entry.
    default_entries = {mode: entries[model.name] for mode, model in by_mode.items()}
    defaults = {mode: e["defaults_by_mode"][mode] for mode, e in default_entries.items()}
    features = {mode: e["features_by_mode"][mode] for mode, e in default_entries.items()}
    formats = {"img_gen": list(IMAGE_FORMATS), "vid_gen": list(VIDEO_FORMATS)}
    current = info.modes[0]
    own = svc.caps.for_model(info)
    return jsonify(
        {
            "model": {"name": info.name, "stem": info.name, "path": info.path},
            "models": list(entries.values()),
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
            # jaxvideo's: the model's step-cache modes and each one's cache_option defaults.
            "cache_modes": list(info.cache_modes),
            "cache_options": {mode: cache_modes.defaults(mode) for mode in info.cache_modes},
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


@bp.post("/img_gen")
def img_gen() -> tuple[Response, int]:
    svc = service()
    data = load(ImgGenSchema(), json_body())
    fields, output = sdcpp_fields(data, svc.caps)
    prepared = svc.resolve({**fields, "mode": "img_gen"}, NAMES)
    options = apply_output(OutputOptions(), output)
    return submitted(svc.submit_images(prepared, options, resumable=True))


@bp.post("/vid_gen")
def vid_gen() -> tuple[Response, int]:
    svc = service()
    data = load(VidGenSchema(), json_body())
    fields, output = vidgen_fields(data, svc.caps)
    prepared = svc.resolve({**fields, "mode": "vid_gen"}, NAMES)
    options = VideoOutput(
        output.get("output_format", VIDEO_FORMATS[0]),
        output.get("quality", DEFAULT_VIDEO_QUALITY),
    )
    return submitted(svc.submit_video(prepared, options, "sdcpp", resumable=True))


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
        if view.result.info.get("step_cache"):
            result["step_cache"] = view.result.info["step_cache"]
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
        if video.step_cache:
            result["step_cache"] = video.step_cache
    return view.to_dict(result)
