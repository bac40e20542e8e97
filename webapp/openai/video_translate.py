"""`/v1/videos*` payloads (FastVideo's VideoGenerationsRequest, the OpenAI SDK's
`videos.create`) -> client-explicit GenerationRequest fields and the surface's extras.

As everywhere, only fields the client sent are returned. FastVideo's hard-coded fallback layer
(`FALLBACK`: fps 24) sits between the operator's `default_request` and the family defaults,
and a `seconds` the client sent becomes `num_frames = seconds x fps` once the fps is known
(`with_seconds`), unless the client also sent `num_frames`. An `<sd_cpp_extra_args>` block in
the prompt is parsed with the native vid_gen schema and translation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jaxvideo.continuation import parse_state
from jaxvideo.errors import InvalidRequest
from jaxvideo.sampling import cache_modes
from webapp.core.capabilities import Capabilities
from webapp.core.checks import frames_field
from webapp.core.errors import ApiError, invalid
from webapp.core.images import decode_image
from webapp.core.outputs import OPENAI_VIDEO_FORMAT, VideoOutput
from webapp.core.references import reference_image, url_image
from webapp.openai.translate import parse_size
from webapp.sdcpp.schemas import VidGenSchema
from webapp.sdcpp.translate import NAMES as NATIVE_NAMES
from webapp.sdcpp.translate import extra_args_fields, extract_extra_args, vidgen_fields

FALLBACK = {"fps": 24}  # FastVideo's hard-coded fps
# GenerationRequest field -> its name here; fields FastVideo lacks come from an
# sd_cpp_extra_args block.
NAMES = {
    **{
        k: f"sd_cpp_extra_args.{v}"
        for k, v in NATIVE_NAMES.items()
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
class FastVideoRequest:
    """A parsed `/v1/videos*` body: client fields plus what is not a GenerationRequest field."""

    fields: dict[str, Any]
    seconds: float | None
    output: VideoOutput
    job_id: str | None


def fastvideo_fields(data: Mapping[str, Any], caps: Capabilities) -> FastVideoRequest:
    """A loaded VideoGenerationSchema body -> client fields and the surface's extras.

    Nulls mean "not sent" (FastVideo's fields default to None). An `sd_cpp_extra_args` block
    in the prompt is parsed with the vid_gen schema and wins over the outer fields.
    """
    data = {key: value for key, value in data.items() if value is not None}
    prompt, block = extract_extra_args(data["prompt"])
    fields: dict[str, Any] = {"prompt": prompt}
    if data.get("enable_teacache"):  # the model's support is the engine's check
        fields["step_cache"] = cache_modes.parse(cache_modes.TEACACHE)
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
    fps = fields.get("fps", operator.get("fps", FALLBACK["fps"]))
    fields["num_frames"] = frames_field(max(1, math.floor(seconds * fps)), "seconds")
    return fields


def _one_of(data: Mapping[str, Any], output: Mapping[str, Any], key: str) -> Any:
    """A key FastVideo takes both top-level and under `output`; both must agree."""
    top, nested = data.get(key), output.get(key)
    if top is not None and nested is not None and top != nested:
        raise invalid(f"output.{key}", f"differs from the top-level {key}")
    return nested if nested is not None else top
