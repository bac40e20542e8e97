"""What a request may ask of the model it resolved to: a 400 at submission, not a failed job.

Models declare per mode the sd.cpp feature names that really work (`ModelInfo.features`,
e.g. Wan's vid_gen: init_image, end_image, lora, high_noise_sample_params); a model that
declares nothing for a mode is not gated here (its pipeline checks what it must). Fields that
only exist for flow-matching (Wan) models, or only for SD, are checked by family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxvideo.request import GenerationRequest
from jaxvideo.results import ModelInfo
from webapp.errors import invalid
from webapp.translate import NOT_YET
from webapp.video_fields import MAX_FRAMES

FLOW_FAMILIES = frozenset(("wan21", "wan22"))
# Client field -> the feature the model must have in this mode.
GATED = {
    "init_image": "init_image",
    "continuation": "init_image",  # a continuation starts from the last frame it carries
    "end_image": "end_image",
    "mask_image": "mask_image",
    "loras": "lora",
    "vae_tiling": "vae_tiling",
    "guidance_scale_2": "high_noise_sample_params",
}
# Dropped on a model without the feature: sd.cpp clients send them, with their defaults, in
# every vid_gen body, and they mean nothing without a high-noise expert.
IGNORED_WITHOUT = {
    "high_noise": "high_noise_sample_params",
    "moe_boundary": "high_noise_sample_params",
}
FLOW_ONLY = ("flow_shift", "guidance_scale_2", "high_noise", "moe_boundary")
SD_ONLY = ("custom_sigmas", "shifted_timestep")


def gate(
    fields: Mapping[str, Any], info: ModelInfo, mode: str, names: Mapping[str, str]
) -> dict[str, Any]:
    """The client fields `info` can serve in `mode`; 400 naming the field otherwise."""
    flow = info.family in FLOW_FAMILIES
    for key in SD_ONLY if flow else FLOW_ONLY:
        if key in fields:
            problem = f"not supported for {info.family} models" if flow else NOT_YET
            raise invalid(names.get(key, key), problem, "unsupported")
    if info.needs_init_image and "init_image" not in fields and "continuation" not in fields:
        raise invalid(
            names.get("init_image", "init_image"),
            f"model {info.name!r} is an image-to-video model: send a first frame",
        )
    declared = info.features.get(mode)
    if declared is None:
        return dict(fields)
    for key, feature in GATED.items():
        if key in fields and feature not in declared:
            raise invalid(
                names.get(key, key),
                f"model {info.name!r} does not support {feature} for {mode}",
                "unsupported",
            )
    return {
        key: value
        for key, value in fields.items()
        if key not in IGNORED_WITHOUT or IGNORED_WITHOUT[key] in declared
    }


def check_merged(request: GenerationRequest, info: ModelInfo, names: Mapping[str, str]) -> None:
    """Checks on the merged request that depend on the model family or the mode."""
    if info.size_multiple > 8:  # 8 is checked for every model at translation
        for field in ("width", "height"):
            value = getattr(request, field)
            if value % info.size_multiple:
                raise invalid(
                    names.get(field, field),
                    f"{field} must be a multiple of {info.size_multiple} for {info.family} "
                    f"models, got {value}",
                )
    if request.mode != "vid_gen":
        return
    if not 1 <= request.num_frames <= MAX_FRAMES:
        raise invalid(
            names.get("num_frames", "num_frames"),
            f"must be within [1, {MAX_FRAMES}], got {request.num_frames}",
        )
    if not 1 <= request.fps <= 120:
        raise invalid(names.get("fps", "fps"), f"must be within [1, 120], got {request.fps}")
