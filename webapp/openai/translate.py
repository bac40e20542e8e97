"""`/v1/images/generations` (and `/v1/images`) payloads -> client-explicit GenerationRequest
fields and output options.

OpenAI's own fields plus the extensions other diffusion servers take through the SDK's
`extra_body` (seed, negative_prompt, steps, guidance_scale, sampler, scheduler, ...); sampler
names may be native, A1111 display names or k-diffusion ids. An `<sd_cpp_extra_args>` block in
the prompt is read with the native translation and wins over the outer fields (the peer's rule).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from webapp.core.capabilities import Capabilities
from webapp.core.errors import invalid
from webapp.core.names import parse_sampler, parse_scheduler
from webapp.core.outputs import OutputOptions, apply_output, image_format
from webapp.sdcpp.translate import extra_args_fields, extract_extra_args

# OpenAI requests carry LoRAs only inside an sd_cpp_extra_args block.
# GenerationRequest field -> its OpenAI name, for messages about merged fields.
NAMES = {
    "width": "size",
    "height": "size",
    "batch_count": "n",
    "loras": "sd_cpp_extra_args.lora",
    "step_cache": "sd_cpp_extra_args.cache_mode",
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


def parse_size(size: str, param: str = "size") -> tuple[int, int] | None:
    """`"WxH"` -> (W, H); `"auto"` -> None (the model's default size)."""
    text = size.strip().lower()
    if text == "auto":
        return None
    match = re.fullmatch(r"(\d{1,6})x(\d{1,6})", text)
    if not match:
        raise invalid(param, f"expected WIDTHxHEIGHT or auto, got {size!r}")
    return int(match.group(1)), int(match.group(2))
