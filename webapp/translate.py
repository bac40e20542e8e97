"""Turning parsed surface payloads into the client-explicit fields of a GenerationRequest.

Every function here returns only the fields the client really sent (plus the surface's fixed
`mode`), so `build_request` can apply client > operator `default_request` > family defaults.
The native sdcpp translation is shared: `sd_cpp_extra_args` blocks on the OpenAI and sdapi
surfaces use the same schema and rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from marshmallow import Schema

from jaxvideo.config import ServerConfig
from jaxvideo.media import IMAGE_FORMATS
from jaxvideo.request import GenerationRequest
from jaxvideo.results import ModelInfo
from webapp.errors import ApiError, invalid
from webapp.images import decode_image, fit_size
from webapp.lora_fields import lora_specs
from webapp.sampler_names import DEFAULT_NAMES, parse_sampler, parse_scheduler
from webapp.schemas.common import load
from webapp.schemas.sdcpp import ImgGenSchema
from webapp.tiling_fields import tiling_field

EXTRA_ARGS = re.compile(r"<sd_cpp_extra_args>(.*?)</sd_cpp_extra_args>", re.DOTALL)
NOT_YET = "not supported by this server yet"
# A native payload -> (client fields, output option updates).
NativeTranslation = Callable[[Mapping[str, Any], "Capabilities"], tuple[dict, dict]]
# The native surface takes native names, plus sd.cpp's own alias.
SCHEDULER_ALIASES = {"normal": "discrete"}


@dataclass(frozen=True)
class Capabilities:
    """What requests are checked against: the sampling catalog and the configured limits.

    `samplers`/`schedulers` are every name some served model knows (what a request may name);
    `catalog_*` is the global catalog a model without its own lists uses (empty: the same)."""

    samplers: tuple[str, ...]
    schedulers: tuple[str, ...]
    limits: ServerConfig
    catalog_samplers: tuple[str, ...] = ()
    catalog_schedulers: tuple[str, ...] = ()

    @classmethod
    def serving(cls, samplers, schedulers, limits: ServerConfig, models) -> Capabilities:
        """The global catalog plus the names only some served models know (Wan's unipc)."""
        extra_samplers = [s for m in models for s in m.samplers if s not in samplers]
        extra_schedulers = [s for m in models for s in m.schedulers if s not in schedulers]
        return cls(
            tuple(dict.fromkeys((*samplers, *extra_samplers))),
            tuple(dict.fromkeys((*schedulers, *extra_schedulers))),
            limits,
            tuple(samplers),
            tuple(schedulers),
        )

    def for_model(self, info: ModelInfo) -> Capabilities:
        """The names `info` really supports (its own lists, else the global catalog)."""
        return replace(
            self,
            samplers=info.samplers or self.catalog_samplers or self.samplers,
            schedulers=info.schedulers or self.catalog_schedulers or self.schedulers,
        )


@dataclass(frozen=True)
class OutputOptions:
    """How finished images are encoded (not part of GenerationRequest: pixels do not change)."""

    output_format: str = "png"
    quality: int = 100
    embed_metadata: bool = True


def extract_extra_args(prompt: str) -> tuple[str, dict[str, Any] | None]:
    """Removes every `<sd_cpp_extra_args>` block from the prompt and parses the first one."""
    blocks = EXTRA_ARGS.findall(prompt)
    if not blocks:
        return prompt, None
    cleaned = EXTRA_ARGS.sub("", prompt).strip()
    try:
        parsed = json.loads(blocks[0])
    except ValueError as exc:
        raise ApiError(400, "invalid sd_cpp_extra_args", detail=str(exc), param="prompt") from exc
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
    for key in ("control_image", "ref_images"):
        if data.get(key):
            raise invalid(key, NOT_YET, code="unsupported")
    fields = native_fields(data, caps)
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


def native_fields(data: Mapping[str, Any], caps: Capabilities) -> dict[str, Any]:
    """The fields img_gen and vid_gen share -> client fields (only what was sent)."""
    reject_unsupported(data)
    fields: dict[str, Any] = {}
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
    method = sampler_name(params.get("sample_method"), caps, "sample_params.sample_method")
    if method:
        fields["sampler"] = method
    scheduler = scheduler_name(params.get("scheduler"), caps, "sample_params.scheduler")
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
    return fields


def sigma_fields(values: list[float], max_steps: int) -> dict[str, Any]:
    """`sample_params.custom_sigmas` -> the request's sigmas and the step count they imply.

    Checked here with the pipeline's own rules, so a bad list is a 400 at submission rather
    than a failed job. The sigmas replace the schedule and `sample_steps`: the step count is
    len - 1 (with the final 0 the pipeline appends), and `max_steps` bounds it."""
    from jaxvideo.sampling import custom_sigmas  # imports JAX; the web layer loads it lazily

    param = "sample_params.custom_sigmas"
    try:
        steps = len(custom_sigmas(values)) - 1
    except ValueError as exc:
        raise invalid(param, str(exc)) from exc
    if steps > max_steps:
        raise invalid(param, f"{steps} steps, the limit is {max_steps}")
    return {"custom_sigmas": tuple(float(v) for v in values), "steps": steps}


def reject_unsupported(data: Mapping[str, Any]) -> None:
    """Shared fields that would change the output but are not implemented answer 400 by name.

    Fields that only matter together with one of these (img_cfg, cache_option, ...) are
    type-checked and accepted. What depends on the model (flow_shift, end_image, ...) is
    checked once the model is known (`webapp.features`).
    """
    if data.get("cache_mode", "disabled") not in ("", "disabled"):
        raise invalid("cache_mode", NOT_YET, code="unsupported")
    params = data.get("sample_params") or {}
    shift = params.get("shifted_timestep", 0)
    if not 0 <= shift <= 1000:
        raise invalid("sample_params.shifted_timestep", f"must be within [0, 1000], got {shift}")
    if ((params.get("guidance") or {}).get("slg") or {}).get("scale"):
        raise invalid("sample_params.guidance.slg.scale", NOT_YET, code="unsupported")


def image_fields(
    fields: Mapping[str, Any], caps: Capabilities, names: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Completes the client fields of an img2img request: a mask needs an init image, and a
    size the client did not send is the init image's (rounded down to a multiple of 8 and
    clamped into the limits), as in the peer. The init image counts as client input, so its
    size wins over operator and family defaults."""
    fields = dict(fields)
    init = fields.get("init_image")
    if init is None:
        if fields.get("mask_image") is not None:
            param = (names or {}).get("mask_image", "mask_image")
            raise invalid(param, "a mask needs an init image")
        return fields
    width, height = fit_size(init.shape[1], init.shape[0], caps.limits)
    fields.setdefault("width", width)
    fields.setdefault("height", height)
    return fields


def sampler_name(name: str | None, caps: Capabilities, param: str) -> str | None:
    """A native sampler name, or None for the family default; unknown names answer 400.

    The native surface is strict: A1111 display names belong to sdapi and OpenAI."""
    if name is None or name.strip().lower() in DEFAULT_NAMES:
        return None
    key = name.strip().lower()
    if key not in caps.samplers:
        raise invalid(param, f"unknown sampler {name!r}, must be one of {_listing(caps.samplers)}")
    return key


def scheduler_name(name: str | None, caps: Capabilities, param: str) -> str | None:
    """A native scheduler name, or None for the family default; unknown names answer 400."""
    if name is None or name.strip().lower() in DEFAULT_NAMES:
        return None
    key = SCHEDULER_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in caps.schedulers:
        raise invalid(
            param, f"unknown scheduler {name!r}, must be one of {_listing(caps.schedulers)}"
        )
    return key


def image_format(name: str) -> str:
    fmt = name.strip().lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in IMAGE_FORMATS:
        raise ApiError(
            400,
            f"invalid output_format, must be one of [{', '.join(IMAGE_FORMATS)}]",
            param="output_format",
            code="invalid_value",
        )
    return fmt


def apply_output(options: OutputOptions, updates: Mapping[str, Any]) -> OutputOptions:
    return replace(options, **updates) if updates else options


def parse_size(size: str, param: str = "size") -> tuple[int, int] | None:
    """`"WxH"` -> (W, H); `"auto"` -> None (the model's default size)."""
    text = size.strip().lower()
    if text == "auto":
        return None
    match = re.fullmatch(r"(\d{1,6})x(\d{1,6})", text)
    if not match:
        raise invalid(param, f"expected WIDTHxHEIGHT or auto, got {size!r}")
    return int(match.group(1)), int(match.group(2))


def check_request(
    request: GenerationRequest, caps: Capabilities, names: Mapping[str, str] | None = None
) -> None:
    """The merged request must fit the configured limits; errors use the surface's field names."""
    names = names or {}
    limits = caps.limits

    def name(field: str) -> str:
        return names.get(field, field)

    for field, low, high in (
        ("width", limits.min_width, limits.max_width),
        ("height", limits.min_height, limits.max_height),
    ):
        value = getattr(request, field)
        if not low <= value <= high:
            raise invalid(name(field), f"{field} must be within [{low}, {high}], got {value}")
        if value % 8:
            raise invalid(name(field), f"{field} must be a multiple of 8, got {value}")
    if not 1 <= request.batch_count <= limits.max_batch_count:
        raise invalid(
            name("batch_count"),
            f"must be within [1, {limits.max_batch_count}], got {request.batch_count}",
        )
    if not 1 <= request.steps <= limits.max_steps:
        raise invalid(name("steps"), f"must be within [1, {limits.max_steps}], got {request.steps}")
    if not 0.0 <= request.strength <= 1.0:
        raise invalid(name("strength"), f"must be within [0, 1], got {request.strength}")
    if request.guidance_scale < 0:
        raise invalid(name("guidance_scale"), f"must be >= 0, got {request.guidance_scale}")
    if request.sampler not in caps.samplers:
        raise invalid(name("sampler"), f"unknown sampler {request.sampler!r}")
    # "default" (the family default): the pipeline picks the sampler's own schedule.
    if request.scheduler not in caps.schedulers and request.scheduler != "default":
        raise invalid(name("scheduler"), f"unknown scheduler {request.scheduler!r}")


def _listing(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(names) + "]"


# -- OpenAI ---------------------------------------------------------------------------------

# OpenAI requests carry LoRAs only inside an sd_cpp_extra_args block.
OPENAI_NAMES = {
    "width": "size",
    "height": "size",
    "batch_count": "n",
    "loras": "sd_cpp_extra_args.lora",
}


def openai_fields(
    data: Mapping[str, Any], caps: Capabilities
) -> tuple[dict[str, Any], OutputOptions]:
    """`/v1/images/generations` payload -> (client fields, output options).

    An `sd_cpp_extra_args` block in the prompt wins over the outer fields (the peer's rule).
    """
    data = {key: value for key, value in data.items() if value is not None}
    if data.get("response_format", "b64_json") != "b64_json":
        raise invalid(
            "response_format",
            f"{data['response_format']!r} is not supported; images are returned as b64_json",
            code="unsupported",
        )
    if data.get("stream"):
        raise invalid("stream", "streaming is not supported", code="unsupported")
    prompt, block = extract_extra_args(data["prompt"])
    fields: dict[str, Any] = {"prompt": prompt}
    if "model" in data:
        fields["model"] = data["model"]
    if "n" in data:
        if data["n"] > caps.limits.max_batch_count:
            raise invalid("n", f"must be within [1, {caps.limits.max_batch_count}]")
        fields["batch_count"] = data["n"]
    size = parse_size(data["size"]) if "size" in data else None
    if size is not None:
        fields["width"], fields["height"] = size
    for key, target in (
        ("seed", "seed"),
        ("negative_prompt", "negative_prompt"),
        ("num_inference_steps", "steps"),
        ("steps", "steps"),
        ("cfg_scale", "guidance_scale"),
        ("guidance_scale", "guidance_scale"),
        ("eta", "eta"),
    ):
        if key in data:
            fields[target] = data[key]
    if data.get("clip_skip", 0) > 0:
        fields["clip_skip"] = data["clip_skip"]
    # Native names, A1111 display names ("DPM++ 2M Karras") and k-diffusion ids all work.
    sampler, implied = parse_sampler(data.get("sampler"), caps, "sampler")
    if sampler:
        fields["sampler"] = sampler
    scheduler = parse_scheduler(data.get("scheduler"), caps, "scheduler") or implied
    if scheduler:
        fields["scheduler"] = scheduler
    output: dict[str, Any] = {}
    if "output_format" in data:
        output["output_format"] = image_format(data["output_format"])
    if "output_compression" in data:
        output["quality"] = min(max(data["output_compression"], 0), 100)
    if block is not None:
        block_fields, block_output = extra_args_fields(block, caps)
        fields.update(block_fields)
        output.update(block_output)
    return fields, apply_output(OutputOptions(), output)
