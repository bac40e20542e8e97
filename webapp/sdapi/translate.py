"""`/sdapi/v1/txt2img` and `img2img` payloads -> client-explicit GenerationRequest fields.

A1111's conventions: sampler display names with a schedule suffix ("DPM++ 2M Karras", parsed
by `webapp.core.names`), `batch_size` x `n_iter`, `override_settings`, model titles
("name [hash]"), the hires fix (`webapp.sdapi.hires`) and the SDXL refiner fields. An
`<sd_cpp_extra_args>` block is read with the native translation, but the outer request wins for
the fields A1111 clients always send.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from webapp.core.capabilities import Capabilities
from webapp.core.errors import invalid
from webapp.core.images import decode_image
from webapp.core.loras import lora_specs
from webapp.core.names import parse_sampler, parse_scheduler
from webapp.sdapi.hires import hires_field
from webapp.sdcpp.translate import extra_args_fields, extract_extra_args, reference_fields

# GenerationRequest field -> its sdapi name, for messages about merged fields.
NAMES = {
    "ref_images": "extra_images",
    "batch_count": "batch_size",
    "guidance_scale": "cfg_scale",
    "sampler": "sampler_name",
    "init_image": "init_images",
    "mask_image": "mask",
    "strength": "denoising_strength",
    "loras": "lora",
    "hires": "enable_hr",
    "refiner": "refiner_checkpoint",
    "refiner_switch": "refiner_switch_at",
    "step_cache": "sd_cpp_extra_args.cache_mode",
}
# On sdapi the outer request wins over an sd_cpp_extra_args block for these (the peer's rule).
_OUTER_WINS = ("clip_skip", "sampler", "scheduler", "init_image", "mask_image", "loras")


def sdapi_fields(
    data: Mapping[str, Any], caps: Capabilities, *, img2img: bool = False
) -> tuple[dict[str, Any], dict]:
    """`/sdapi/v1/txt2img` (or, with `img2img`, `/sdapi/v1/img2img`) payload ->
    (client fields, output option updates)."""
    data = {key: value for key, value in data.items() if value is not None}
    overrides = data.get("override_settings") or {}
    prompt, block = extract_extra_args(data["prompt"])
    # sd.cpp's sdapi extension: reference images (Flux Kontext).
    fields: dict[str, Any] = {
        "prompt": prompt,
        **reference_fields(data.get("extra_images"), caps, "extra_images"),
    }
    for key, target in (
        ("negative_prompt", "negative_prompt"),
        ("width", "width"),
        ("height", "height"),
        ("steps", "steps"),
        ("cfg_scale", "guidance_scale"),
        ("seed", "seed"),
        ("eta", "eta"),
    ):
        if key in data:
            fields[target] = data[key]
    if "batch_size" in data or "n_iter" in data:
        size, batches = data.get("batch_size", 1), data.get("n_iter", 1)
        for key, value in (("batch_size", size), ("n_iter", batches)):
            if value < 1:
                raise invalid(key, f"must be >= 1, got {value}")
        if size * batches > caps.limits.max_batch_count:
            raise invalid(
                "batch_size",
                f"batch_size x n_iter must not exceed {caps.limits.max_batch_count}, "
                f"got {size} x {batches}",
            )
        fields["batch_count"] = size * batches
    clip_skip = data.get("clip_skip", overrides.get("CLIP_stop_at_last_layers"))
    if clip_skip is not None:
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int):
            raise invalid("override_settings.CLIP_stop_at_last_layers", "Not a valid integer.")
        if clip_skip > 0:
            fields["clip_skip"] = clip_skip
    sampler, implied = parse_sampler(data.get("sampler_name") or data.get("sampler_index"), caps)
    if sampler:
        fields["sampler"] = sampler
    scheduler = parse_scheduler(data.get("scheduler"), caps) or implied
    if scheduler:
        fields["scheduler"] = scheduler
    model = data.get("sd_model_checkpoint", overrides.get("sd_model_checkpoint"))
    if model is not None:
        if not isinstance(model, str):
            raise invalid("override_settings.sd_model_checkpoint", "Not a valid string.")
        fields["model"] = model_name(model)
    loras = lora_specs(data.get("lora"), caps.limits.lora_dir)
    if loras:  # an empty list is "no LoRA", so a block's LoRAs still apply
        fields["loras"] = loras
    if img2img:
        fields.update(img2img_fields(data, caps))
    else:
        hires = hires_field(data)
        if hires is not None:
            fields["hires"] = hires
    refiner = data.get("refiner_checkpoint")
    if refiner and refiner.strip().lower() not in ("", "none"):
        fields["refiner"] = model_name(refiner)
        if "refiner_switch_at" in data:
            fields["refiner_switch"] = float(data["refiner_switch_at"])
    output: dict[str, Any] = {}
    if "embed_image_metadata" in data:
        output["embed_metadata"] = data["embed_image_metadata"]
    if block is not None:
        block_fields, block_output = extra_args_fields(block, caps)
        outer = {key: fields[key] for key in _OUTER_WINS if key in fields}
        fields.update(block_fields)
        fields.update(outer)
        # sdapi answers PNG images whatever the block says; only the metadata switch applies.
        if "embed_metadata" in block_output:
            output["embed_metadata"] = block_output["embed_metadata"]
    return fields, output


def model_name(title: str) -> str:
    """A1111 model titles look like "name [hash]"; the name is what identifies the model."""
    return re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", title.strip())


def img2img_fields(data: Mapping[str, Any], caps: Capabilities) -> dict[str, Any]:
    """The img2img part of an sdapi payload: init image, mask and denoising strength.

    Only `init_images[0]` is used (A1111 cycles several over a batch; one init image per
    request is what the pipeline takes). `resize_mode`, `mask_blur`, `inpainting_fill`,
    `inpaint_full_res`, ... are accepted and ignored: the pipeline resizes the init image to
    the output size and blends the mask at latent resolution.
    """
    images = data.get("init_images") or []
    if not images or not images[0]:
        raise invalid("init_images", "at least one init image is required")
    fields: dict[str, Any] = {
        "init_image": decode_image(images[0], "init_images[0]", caps.limits),
    }
    if data.get("mask"):
        mask = decode_image(data["mask"], "mask", caps.limits, "mask")
        # A1111's "inpaint not masked": repaint what the mask leaves out.
        fields["mask_image"] = 255 - mask if data.get("inpainting_mask_invert") else mask
    if "denoising_strength" in data:
        fields["strength"] = min(max(float(data["denoising_strength"]), 0.0), 1.0)
    return fields
