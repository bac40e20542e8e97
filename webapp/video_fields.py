"""Video payloads -> client-explicit GenerationRequest fields, for both video surfaces.

- sd.cpp's native `POST /sdcpp/v1/vid_gen` (`vidgen_fields`), also used for
  `<sd_cpp_extra_args>` blocks in a video prompt;
- FastVideo's VideoGenerationsRequest on `/v1/videos*` (`fastvideo_fields`).

As everywhere, only fields the client sent are returned. FastVideo's hard-coded fallback layer
(`FASTVIDEO_FALLBACK`: fps 24) sits between the operator's `default_request` and the family
defaults, and a `seconds` the client sent becomes `num_frames = seconds x fps` once the fps is
known (`with_seconds`), unless the client also sent `num_frames`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jaxvideo.continuation import parse_state
from jaxvideo.errors import InvalidRequest
from jaxvideo.request import HighNoiseParams
from webapp.errors import ApiError, invalid
from webapp.images import decode_image
from webapp.references import reference_image, url_image
from webapp.schemas.sdcpp import VidGenSchema
from webapp.translate import (
    NOT_YET,
    Capabilities,
    extra_args_fields,
    extract_extra_args,
    native_fields,
    parse_size,
    sampler_name,
    scheduler_name,
)

SDCPP_VIDEO_FORMATS = ("webm", "webp", "avi")  # sd.cpp's vid_gen containers; webm first
OPENAI_VIDEO_FORMAT = "mp4"  # what /v1/videos/{id}/content serves
DEFAULT_VIDEO_QUALITY = 90
FASTVIDEO_FALLBACK = {"fps": 24}  # FastVideo's hard-coded fps
# Frames one request may ask for: Wan's longest published clips are 121 frames; memory grows
# with frames x width x height, and the size limits already bound the other two.
MAX_FRAMES = 257

# Field names of the native video surface, for messages about merged fields.
VIDGEN_NAMES = {
    "steps": "sample_params.sample_steps",
    "guidance_scale": "sample_params.guidance.txt_cfg",
    "sampler": "sample_params.sample_method",
    "scheduler": "sample_params.scheduler",
    "flow_shift": "sample_params.flow_shift",
    "custom_sigmas": "sample_params.custom_sigmas",
    "shifted_timestep": "sample_params.shifted_timestep",
    "loras": "lora",
    "num_frames": "video_frames",
    "high_noise": "high_noise_sample_params",
    "vae_tiling": "vae_tiling_params",
}
# ... and of FastVideo's (fields it lacks come from an sd_cpp_extra_args block).
FASTVIDEO_NAMES = {
    **{
        k: f"sd_cpp_extra_args.{v}"
        for k, v in VIDGEN_NAMES.items()
        if k not in ("steps", "guidance_scale", "num_frames")
    },
    "end_image": "sd_cpp_extra_args.end_image",
    "width": "size",
    "height": "size",
    "steps": "num_inference_steps",
    "init_image": "input_reference",
    "continuation": "state",
}


@dataclass(frozen=True)
class VideoOutput:
    """How a finished video is encoded and where else it goes (not part of the request)."""

    output_format: str = OPENAI_VIDEO_FORMAT
    quality: int = DEFAULT_VIDEO_QUALITY
    output_path: str | None = None  # as the client sent it; resolved with the job id


@dataclass(frozen=True)
class FastVideoRequest:
    """A parsed `/v1/videos*` body: client fields plus what is not a GenerationRequest field."""

    fields: dict[str, Any]
    seconds: float | None
    output: VideoOutput
    job_id: str | None


# -- sd.cpp vid_gen -------------------------------------------------------------------------


def vidgen_fields(data: Mapping[str, Any], caps: Capabilities) -> tuple[dict[str, Any], dict]:
    """Native vid_gen payload -> (client fields, output option updates)."""
    if data.get("control_frames"):
        raise invalid(
            "control_frames", "VACE (control frames) is not supported by this server", "unsupported"
        )
    fields = native_fields(data, caps)
    if data.get("end_image"):
        fields["end_image"] = decode_image(data["end_image"], "end_image", caps.limits)
    if "video_frames" in data:
        fields["num_frames"] = frames_field(data["video_frames"], "video_frames")
    for key in ("fps", "moe_boundary"):
        if key in data:
            fields[key] = data[key]
    high = high_noise_field(data.get("high_noise_sample_params"), caps)
    if high is not None:
        fields["high_noise"] = high
    output: dict[str, Any] = {}
    if "output_format" in data:
        output["output_format"] = video_format(data["output_format"])
    if "output_compression" in data:
        output["quality"] = min(max(data["output_compression"], 0), 100)
    return fields, output


def high_noise_field(params: Mapping[str, Any] | None, caps: Capabilities):
    """`high_noise_sample_params` -> HighNoiseParams (None fields inherit the main ones), or
    None when nothing was sent."""
    if not params:
        return None
    where = "high_noise_sample_params"
    if ((params.get("guidance") or {}).get("slg") or {}).get("scale"):
        raise invalid(f"{where}.guidance.slg.scale", NOT_YET, "unsupported")
    if params.get("shifted_timestep"):
        raise invalid(f"{where}.shifted_timestep", "applies to SD epsilon models only")
    steps = params.get("sample_steps", -1)
    if steps > caps.limits.max_steps:
        raise invalid(f"{where}.sample_steps", f"must be <= {caps.limits.max_steps}, got {steps}")
    guidance = params.get("guidance") or {}
    return HighNoiseParams(
        sampler=sampler_name(params.get("sample_method"), caps, f"{where}.sample_method"),
        scheduler=scheduler_name(params.get("scheduler"), caps, f"{where}.scheduler"),
        steps=steps,
        guidance_scale=guidance.get("txt_cfg"),
        eta=params.get("eta"),
        flow_shift=params.get("flow_shift") or None,  # 0: the main stage's shift
    )


def video_format(name: str) -> str:
    fmt = name.strip().lower()
    if fmt not in SDCPP_VIDEO_FORMATS:
        raise ApiError(
            400,
            f"invalid output_format, must be one of [{', '.join(SDCPP_VIDEO_FORMATS)}]",
            param="output_format",
            code="invalid_value",
        )
    return fmt


def frames_field(count: int, param: str) -> int:
    if not 1 <= count <= MAX_FRAMES:
        raise invalid(param, f"must be within [1, {MAX_FRAMES}], got {count}")
    return count


# -- FastVideo / OpenAI ---------------------------------------------------------------------


def fastvideo_fields(data: Mapping[str, Any], caps: Capabilities) -> FastVideoRequest:
    """A loaded VideoGenerationSchema body -> client fields and the surface's extras.

    Nulls mean "not sent" (FastVideo's fields default to None). An `sd_cpp_extra_args` block
    in the prompt is parsed with the vid_gen schema and wins over the outer fields.
    """
    data = {key: value for key, value in data.items() if value is not None}
    if data.get("enable_teacache"):
        raise invalid("enable_teacache", "TeaCache is not supported by this server", "unsupported")
    prompt, block = extract_extra_args(data["prompt"])
    fields: dict[str, Any] = {"prompt": prompt}
    for key in ("model", "negative_prompt", "seed", "fps", "guidance_scale", "guidance_scale_2"):
        if key in data:
            fields[key] = data[key]
    if "num_frames" in data:
        fields["num_frames"] = frames_field(data["num_frames"], "num_frames")
    if "num_inference_steps" in data:
        fields["steps"] = data["num_inference_steps"]
    if "true_cfg_scale" in data:
        # Wan's guidance is true CFG already: one scale under two names.
        if data.get("guidance_scale", data["true_cfg_scale"]) != data["true_cfg_scale"]:
            raise invalid("true_cfg_scale", "differs from guidance_scale (its alias here)")
        fields["guidance_scale"] = data["true_cfg_scale"]
    size = parse_size(data["size"]) if data.get("size") else None
    if size is not None:
        fields["width"], fields["height"] = size
    image = first_frame(data, caps)
    if image is not None:
        fields["init_image"] = image
    if "state" in data:
        fields.update(continuation_fields(data["state"], fields))
    output = data.get("output") or {}
    return_state = _one_of(data, output, "return_state")
    if return_state is not None:
        fields["return_state"] = return_state
    video = VideoOutput(output_path=_one_of(data, output, "output_path"))
    if block is not None:
        block_fields, block_output = extra_args_fields(block, caps, VidGenSchema, vidgen_fields)
        if "output_format" in block_output:
            raise invalid("sd_cpp_extra_args.output_format", "videos on /v1/videos are always MP4")
        fields.update(block_fields)
        if "quality" in block_output:
            video = VideoOutput(OPENAI_VIDEO_FORMAT, block_output["quality"], video.output_path)
    return FastVideoRequest(fields, data.get("seconds"), video, data.get("id"))


def first_frame(data: Mapping[str, Any], caps: Capabilities):
    """`input_reference` (a path, data URL, base64, {image_url} or an upload's bytes) or a
    `reference_url` data URL -> HxWx3 uint8; None when neither was sent."""
    if "input_reference" in data and "reference_url" in data:
        raise invalid("reference_url", "send input_reference or reference_url, not both")
    if "reference_url" in data:
        return url_image(data["reference_url"], "reference_url", caps.limits)
    value = data.get("input_reference")
    if value is None:
        return None
    if isinstance(value, bytes):  # a multipart upload
        return decode_image(value, "input_reference", caps.limits)
    return reference_image(value, "input_reference", caps.limits)


def continuation_fields(raw: Any, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A `state` envelope -> the continuation, plus the model, size and fps of the segment it
    continues wherever the client did not choose them (they are the client's own input)."""
    try:
        state = parse_state(raw)
    except InvalidRequest as exc:
        raise ApiError(400, str(exc), code="invalid_state", param="state") from exc
    if "init_image" in fields:
        raise invalid("state", "a continuation starts from its last frame; drop input_reference")
    payload = state.payload
    if fields.get("model", payload["model"]) != payload["model"]:
        raise invalid(
            "state", f"produced by model {payload['model']!r}; continue with the same model"
        )
    out: dict[str, Any] = {"continuation": state, "model": payload["model"]}
    for key in ("width", "height", "fps"):
        out[key] = fields.get(key, payload[key])
    return out


def with_seconds(
    fields: Mapping[str, Any], seconds: float | None, operator: Mapping[str, Any]
) -> dict[str, Any]:
    """FastVideo's rule: `seconds` without `num_frames` asks for seconds x fps frames, at the
    fps the request will really have (client > operator > the surface's fallback 24)."""
    fields = dict(fields)
    if seconds is None or "num_frames" in fields:
        return fields
    fps = fields.get("fps", operator.get("fps", FASTVIDEO_FALLBACK["fps"]))
    fields["num_frames"] = frames_field(max(1, math.floor(seconds * fps)), "seconds")
    return fields


def _one_of(data: Mapping[str, Any], output: Mapping[str, Any], key: str) -> Any:
    """A key FastVideo takes both top-level and under `output`; both must agree."""
    top, nested = data.get(key), output.get(key)
    if top is not None and nested is not None and top != nested:
        raise invalid(f"output.{key}", f"differs from the top-level {key}")
    return nested if nested is not None else top
