"""Native sdcpp payloads (`img_gen`, `vid_gen`) -> the client-explicit GenerationRequest fields.

Every function here returns only the fields the client really sent (plus what the surface
fixes), so `build_request` can apply client > operator `default_request` > family defaults.
This is the translation the other surfaces reuse: an `<sd_cpp_extra_args>` block in an OpenAI
or sdapi prompt is parsed with these schemas and functions (`extra_args_fields`), and its
errors name `sd_cpp_extra_args.<field>`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from marshmallow import Schema

from jaxvideo.errors import InvalidRequest
from jaxvideo.request import HighNoiseParams, SkipLayerGuidance
from jaxvideo.sampling import cache_modes, custom_sigmas
from jaxvideo.sampling.cache_modes import StepCache
from webapp.core.capabilities import Capabilities
from webapp.core.checks import MAX_REF_IMAGES, frames_field
from webapp.core.errors import NOT_YET, ApiError, invalid
from webapp.core.http import parse_json
from webapp.core.images import decode_image
from webapp.core.loras import lora_specs
from webapp.core.names import native_sampler, native_scheduler
from webapp.core.outputs import image_format
from webapp.core.schemas import load
from webapp.core.tiling import tiling_field
from webapp.sdcpp.schemas import ImgGenSchema

EXTRA_ARGS = re.compile(r"<sd_cpp_extra_args>(.*?)</sd_cpp_extra_args>", re.DOTALL)
# A native payload -> (client fields, output option updates).
NativeTranslation = Callable[[Mapping[str, Any], Capabilities], tuple[dict, dict]]
VIDEO_FORMATS = ("webm", "webp", "avi")  # sd.cpp's vid_gen containers; webm first
# GenerationRequest field -> its name in native payloads, for messages about merged fields.
NAMES = {
    "steps": "sample_params.sample_steps",
    "guidance_scale": "sample_params.guidance.txt_cfg",
    "sampler": "sample_params.sample_method",
    "scheduler": "sample_params.scheduler",
    "eta": "sample_params.eta",
    "flow_shift": "sample_params.flow_shift",
    "custom_sigmas": "sample_params.custom_sigmas",
    "shifted_timestep": "sample_params.shifted_timestep",
    "loras": "lora",
    "vae_tiling": "vae_tiling_params",
    "num_frames": "video_frames",
    "high_noise": "high_noise_sample_params",
    "distilled_guidance": "sample_params.guidance.distilled_guidance",
    "slg": "sample_params.guidance.slg",
    "step_cache": "cache_mode",
}


def extract_extra_args(prompt: str) -> tuple[str, dict[str, Any] | None]:
    """Removes every `<sd_cpp_extra_args>` block from the prompt and parses the first one."""
    blocks = EXTRA_ARGS.findall(prompt)
    if not blocks:
        return prompt, None
    cleaned = EXTRA_ARGS.sub("", prompt).strip()
    parsed = parse_json(blocks[0], "invalid sd_cpp_extra_args", param="prompt")
    if not isinstance(parsed, dict):
        raise ApiError(
            400, "invalid sd_cpp_extra_args", detail="expected a JSON object", param="prompt"
        )
    return cleaned, parsed


def extra_args_fields(
    block: Mapping[str, Any],
    caps: Capabilities,
    schema: type[Schema] = ImgGenSchema,
    translate: NativeTranslation | None = None,
) -> tuple[dict, dict]:
    """An `sd_cpp_extra_args` block -> (client fields, output option updates), parsed with the
    native `schema` and `translate` (default: img_gen's); errors name
    `sd_cpp_extra_args.<field>`."""
    try:
        data = load(schema(), block)
    except ApiError as exc:
        param = f"sd_cpp_extra_args.{exc.param}" if exc.param else "sd_cpp_extra_args"
        raise ApiError(400, f"invalid sd_cpp_extra_args: {exc.message}", param=param) from exc
    try:
        return (translate or sdcpp_fields)(data, caps)
    except ApiError as exc:
        if not exc.param:
            raise
        param = f"sd_cpp_extra_args.{exc.param}"
        raise ApiError(
            400, f"invalid sd_cpp_extra_args: {exc.message}", code=exc.code, param=param
        ) from exc


def sdcpp_fields(data: Mapping[str, Any], caps: Capabilities) -> tuple[dict[str, Any], dict]:
    """Native img_gen payload -> (client fields, output option updates)."""
    if data.get("control_image"):
        raise invalid("control_image", NOT_YET, code="unsupported")
    fields = native_fields(data, caps)
    fields.update(reference_fields(data.get("ref_images"), caps, "ref_images"))
    for key in ("auto_resize_ref_image", "increase_ref_index"):
        if key in data:
            fields[key] = data[key]
    if data.get("mask_image"):
        fields["mask_image"] = decode_image(data["mask_image"], "mask_image", caps.limits, "mask")
    if "batch_count" in data:
        fields["batch_count"] = min(max(data["batch_count"], 1), caps.limits.max_batch_count)
    output: dict[str, Any] = {}
    if "output_format" in data:
        output["output_format"] = image_format(data["output_format"])
    if "output_compression" in data:
        output["quality"] = min(max(data["output_compression"], 0), 100)
    if "embed_image_metadata" in data:
        output["embed_metadata"] = data["embed_image_metadata"]
    return fields, output


def reference_fields(images: list[str] | None, caps: Capabilities, param: str) -> dict[str, Any]:
    """Reference images (base64 / data URLs) -> the request's `ref_images`; none sent, none
    set (so a model without them is only refused when a client really sends some)."""
    if not images:
        return {}
    if len(images) > MAX_REF_IMAGES:
        raise invalid(param, f"at most {MAX_REF_IMAGES} reference images, got {len(images)}")
    decoded = (decode_image(image, f"{param}[{i}]", caps.limits) for i, image in enumerate(images))
    return {"ref_images": tuple(decoded)}


def native_fields(data: Mapping[str, Any], caps: Capabilities) -> dict[str, Any]:
    """The fields img_gen and vid_gen share -> client fields (only what was sent)."""
    fields: dict[str, Any] = {}
    cache = step_cache_field(data)
    if cache is not None:
        fields["step_cache"] = cache
    for key in ("model", "prompt", "negative_prompt", "width", "height", "seed", "strength"):
        if key in data:
            fields[key] = data[key]
    # Empty strings and nulls mean "no image", as in the peer.
    if data.get("init_image"):
        fields["init_image"] = decode_image(data["init_image"], "init_image", caps.limits)
    if data.get("clip_skip", 0) > 0:  # <= 0 means "the model's default", as in the peer
        fields["clip_skip"] = data["clip_skip"]
    loras = lora_specs(data.get("lora"), caps.limits.lora_dir)
    if loras:
        fields["loras"] = loras
    tiling = tiling_field(data.get("vae_tiling_params"))
    if tiling is not None:
        fields["vae_tiling"] = tiling
    params = data.get("sample_params") or {}
    method = native_sampler(params.get("sample_method"), caps, "sample_params.sample_method")
    if method:
        fields["sampler"] = method
    scheduler = native_scheduler(params.get("scheduler"), caps, "sample_params.scheduler")
    if scheduler:
        fields["scheduler"] = scheduler
    if "sample_steps" in params:
        fields["steps"] = params["sample_steps"]
    if params.get("eta") is not None:
        fields["eta"] = params["eta"]
    if params.get("shifted_timestep"):
        fields["shifted_timestep"] = params["shifted_timestep"]
    if params.get("custom_sigmas"):
        fields.update(sigma_fields(params["custom_sigmas"], caps.limits.max_steps))
    if params.get("flow_shift"):  # 0 and null: the model's own shift, as in the peer
        fields["flow_shift"] = params["flow_shift"]
    guidance = params.get("guidance") or {}
    if "txt_cfg" in guidance:
        fields["guidance_scale"] = guidance["txt_cfg"]
    if "distilled_guidance" in guidance:
        fields["distilled_guidance"] = guidance["distilled_guidance"]
    slg = guidance.get("slg") or {}
    if slg.get("scale"):  # 0 (the default every sd.cpp client sends): off
        keys = ("layers", "layer_start", "layer_end", "scale")
        fields["slg"] = SkipLayerGuidance(**{key: slg[key] for key in keys if key in slg})
    return fields


def sigma_fields(values: list[float], max_steps: int) -> dict[str, Any]:
    """`sample_params.custom_sigmas` -> the request's sigmas and the step count they imply.

    Checked here with the pipeline's own rules, so a bad list is a 400 at submission rather
    than a failed job. The sigmas replace the schedule and `sample_steps`: the step count is
    len - 1 (with the final 0 the pipeline appends), and `max_steps` bounds it."""
    param = "sample_params.custom_sigmas"
    try:
        steps = len(custom_sigmas(values)) - 1
    except ValueError as exc:
        raise invalid(param, str(exc)) from exc
    if steps > max_steps:
        raise invalid(param, f"{steps} steps, the limit is {max_steps}")
    return {"custom_sigmas": tuple(float(v) for v in values), "steps": steps}


def step_cache_field(data: Mapping[str, Any]) -> StepCache | None:
    """cache_mode, cache_option, scm_mask and scm_policy_dynamic -> the request's step cache
    (None: disabled). Whether the model supports the mode is the engine's check."""
    try:
        return cache_modes.parse(
            data.get("cache_mode") or "",
            data.get("cache_option") or "",
            data.get("scm_mask") or "",
            data.get("scm_policy_dynamic", True),
        )
    except InvalidRequest as exc:
        raise invalid(exc.field, str(exc)) from exc


# -- vid_gen -------------------------------------------------------------------------------


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
        raise invalid(f"{where}.guidance.slg.scale", "applies to SD3.5 models only", "unsupported")
    if params.get("shifted_timestep"):
        raise invalid(f"{where}.shifted_timestep", "applies to SD epsilon models only")
    steps = params.get("sample_steps", -1)
    if steps > caps.limits.max_steps:
        raise invalid(f"{where}.sample_steps", f"must be <= {caps.limits.max_steps}, got {steps}")
    guidance = params.get("guidance") or {}
    return HighNoiseParams(
        sampler=native_sampler(params.get("sample_method"), caps, f"{where}.sample_method"),
        scheduler=native_scheduler(params.get("scheduler"), caps, f"{where}.scheduler"),
        steps=steps,
        guidance_scale=guidance.get("txt_cfg"),
        eta=params.get("eta"),
        flow_shift=params.get("flow_shift") or None,  # 0: the main stage's shift
    )


def video_format(name: str) -> str:
    fmt = name.strip().lower()
    if fmt not in VIDEO_FORMATS:
        raise ApiError(
            400,
            f"invalid output_format, must be one of [{', '.join(VIDEO_FORMATS)}]",
            param="output_format",
            code="invalid_value",
        )
    return fmt
