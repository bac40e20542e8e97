"""The request check every surface runs: what a request may ask of its model and of this
server's limits, answered as a 400 at submission that names the surface's own field.

`Service.resolve` runs it around the merge with operator and family defaults:
- `check_text`, first: prompts within `server.max_prompt_chars` and valid Unicode, before
  anything tokenises them.
- `check_fields`, on what the client sent: fields the model's family cannot use (flow-only,
  k-diffusion-only), features the model lacks in this mode (`ModelInfo.features`), and
  `is_high_noise` LoRAs without a high-noise expert. Fields sd.cpp clients always send but only
  two-expert models use are dropped.
- `check_request`, on the merged request: the configured limits (size, batch, steps, frames),
  the model's size multiple and its sampler and schedule names.
What only the loaded model knows is its pipeline's `validate` (`Engine.prepare`), run next;
static ranges are the request's own (`jaxvideo.request.FIELD_RANGES`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jaxvideo.config import ServerConfig
from jaxvideo.families import FAMILIES
from jaxvideo.request import GenerationRequest
from jaxvideo.results import ModelInfo
from webapp.core.capabilities import Capabilities
from webapp.core.errors import NOT_YET, invalid

# Frames one request may ask for: Wan's longest published clips are 121 frames; memory grows
# with frames x width x height, and the size limits already bound the other two.
MAX_FRAMES = 257
# Reference images one request may carry (Flux Kontext): each adds its tokens to every step.
MAX_REF_IMAGES = 4
# Client field -> the feature the model must have in this mode.
GATED = {
    "init_image": "init_image",
    "continuation": "init_image",  # a continuation starts from the last frame it carries
    "end_image": "end_image",
    "mask_image": "mask_image",
    "loras": "lora",
    "vae_tiling": "vae_tiling",
    "guidance_scale_2": "high_noise_sample_params",
    "clip_skip": "clip_skip",  # a CLIP text encoder's depth (not an sd.cpp feature name)
    # Flow-matching DiT image models (jaxvideo extensions of sd.cpp's feature names).
    "distilled_guidance": "distilled_guidance",
    "slg": "slg",
    "ref_images": "ref_images",
}
# What a model lacks for a field, where the feature's name would not tell the client.
LACKS = {
    "guidance_scale_2": "has no second (low-noise) expert for guidance_scale_2",
    "clip_skip": "has no CLIP text encoder to skip layers of",
    "distilled_guidance": "has no distilled guidance (a Flux dev/Kontext feature)",
    "slg": "has no skip-layer guidance (an SD3.5 feature)",
    "ref_images": "takes no reference images (a Flux Kontext feature)",
}
# Values that ask for nothing beyond the model's own way (A1111's clip skip 1: the last layer;
# sd.cpp's default distilled guidance, which its clients send in every body), so clients that
# always send them work with every model. A model without the feature never sees them.
NEUTRAL = {"clip_skip": 1, "distilled_guidance": 3.5}
# Dropped on a model without the feature: sd.cpp clients send them, with their defaults, in
# every vid_gen body, and they mean nothing without a high-noise expert.
IGNORED_WITHOUT = {
    "high_noise": "high_noise_sample_params",
    "moe_boundary": "high_noise_sample_params",
}
FLOW_ONLY = ("flow_shift", "guidance_scale_2", "high_noise", "moe_boundary")
TEXT_FIELDS = ("prompt", "negative_prompt")


def check_text(fields: Mapping[str, Any], limits: ServerConfig, names: Mapping[str, str]) -> None:
    """Prompts a client sent must be at most `max_prompt_chars` long and encodable text (JSON
    can carry lone UTF-16 surrogates, which no tokenizer takes)."""
    for key in TEXT_FIELDS:
        text = fields.get(key)
        if text is None:
            continue
        param = names.get(key, key)
        if len(text) > limits.max_prompt_chars:
            raise invalid(
                param,
                f"{len(text)} characters; the limit is {limits.max_prompt_chars} "
                "(server.max_prompt_chars)",
                "prompt_too_long",
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise invalid(param, f"not valid Unicode text ({exc.reason})") from exc


KDIFFUSION_ONLY = ("custom_sigmas", "shifted_timestep")


def check_fields(
    fields: Mapping[str, Any], info: ModelInfo, mode: str, names: Mapping[str, str]
) -> dict[str, Any]:
    """The client fields `info` can serve in `mode`; 400 naming the field otherwise."""
    flow = info.family_spec.flow
    for key in KDIFFUSION_ONLY if flow else FLOW_ONLY:
        if key in fields:
            problem = f"not supported for {info.family} models" if flow else NOT_YET
            raise invalid(names.get(key, key), problem, "unsupported")
    declared = info.features.get(mode, ())
    for key, feature in GATED.items():
        asked = key in fields and (key not in NEUTRAL or fields[key] != NEUTRAL[key])
        if asked and feature not in declared:
            lacks = LACKS.get(key, f"does not support {feature} for {mode}")
            raise invalid(names.get(key, key), f"model {info.name!r} {lacks}", "unsupported")
    check_high_noise(fields.get("loras", ()), info, names.get("loras", "lora"))
    return {
        key: value
        for key, value in fields.items()
        if (key not in IGNORED_WITHOUT or IGNORED_WITHOUT[key] in declared)
        and not (key in NEUTRAL and value == NEUTRAL[key] and GATED[key] not in declared)
    }


def check_high_noise(loras: Sequence[Any], info: ModelInfo, param: str = "lora") -> None:
    """`is_high_noise` LoRAs need a model with a high-noise expert (Wan 2.2); 400 otherwise."""
    if info.family_spec.high_noise_expert:
        return
    for index, spec in enumerate(loras):
        if spec.is_high_noise:
            having = [f.title for f in FAMILIES.values() if f.high_noise_expert]
            raise invalid(
                f"{param}[{index}].is_high_noise",
                f"model {info.name!r} ({info.family}) has no high-noise expert; only "
                f"{' and '.join(having)} models do",
            )


def frames_field(count: int, param: str) -> int:
    """A frame count a client asked for (or that its `seconds` imply), within the limit."""
    if not 1 <= count <= MAX_FRAMES:
        raise invalid(param, f"must be within [1, {MAX_FRAMES}], got {count}")
    return count


def request_work(request: GenerationRequest) -> float:
    """Megapixel-steps a request asks for: what `server.max_work` bounds. Reference images
    count at their size as sent (Kontext's automatic resize keeps about as many pixels)."""
    frames = request.num_frames if request.mode == "vid_gen" else 1
    pixels = request.width * request.height * frames
    pixels += sum(image.shape[0] * image.shape[1] for image in request.ref_images)
    work = pixels * request.steps * request.batch_count
    hires = request.hires  # a HiresFix once the deferred fields are settled
    if hires is not None:  # its second pass runs at the hires size
        work += hires.width * hires.height * (hires.steps or request.steps) * request.batch_count
    return work / 1e6


def check_request(
    request: GenerationRequest,
    info: ModelInfo,
    caps: Capabilities,
    names: Mapping[str, str] | None = None,
) -> None:
    """The merged request must fit the configured limits and the model's sizes and names;
    errors use the surface's field names."""
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
        if value % info.size_multiple:
            raise invalid(
                name(field), f"{field} must be a multiple of {info.size_multiple}, got {value}"
            )
    if not 1 <= request.batch_count <= limits.max_batch_count:
        raise invalid(
            name("batch_count"),
            f"must be within [1, {limits.max_batch_count}], got {request.batch_count}",
        )
    if not 1 <= request.steps <= limits.max_steps:
        raise invalid(name("steps"), f"must be within [1, {limits.max_steps}], got {request.steps}")
    if len(request.ref_images) > MAX_REF_IMAGES:
        raise invalid(
            name("ref_images"),
            f"at most {MAX_REF_IMAGES} reference images, got {len(request.ref_images)}",
        )
    if request.mode == "vid_gen" and request.num_frames > MAX_FRAMES:
        raise invalid(
            name("num_frames"), f"must be within [1, {MAX_FRAMES}], got {request.num_frames}"
        )
    work = request_work(request)
    if work > limits.max_work:
        raise invalid(
            name("steps"),
            f"the request is {work:.1f} megapixel-steps of work (width x height x frames x "
            f"steps x images); this server takes at most {limits.max_work} (server.max_work)",
            "too_much_work",
        )
    own = caps.for_model(info)
    if request.sampler not in own.samplers:
        raise invalid(name("sampler"), f"unknown sampler {request.sampler!r}")
    # "default" (the family default): the pipeline picks the sampler's own schedule.
    if request.scheduler not in own.schedulers and request.scheduler != "default":
        raise invalid(name("scheduler"), f"unknown scheduler {request.scheduler!r}")
