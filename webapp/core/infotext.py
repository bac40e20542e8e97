"""The A1111 infotext: the `parameters` string A1111 writes into PNGs and `info.infotexts`.

Every surface's images carry it (PNG `parameters` chunk), so it lives with the shared pieces.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from webapp.core.names import display_name, scheduler_label


def infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The A1111 `parameters` string: prompt, optional negative prompt, then `Key: value, ...`."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in params.items()))
    return "\n".join(lines)


def infotext_params(
    *,
    steps: int,
    sampler: str,
    scheduler: str,
    default_scheduler: str | None,
    guidance_scale: float,
    seed: int,
    width: int,
    height: int,
    model: str,
    clip_skip: int,
    version: str,
    denoising_strength: float | None = None,
) -> dict[str, object]:
    params: dict[str, object] = {
        "Steps": steps,
        "Sampler": display_name(sampler),
        # "Automatic" is A1111's word for "the sampler's own choice".
        "Schedule type": (
            "Automatic" if scheduler == default_scheduler else scheduler_label(scheduler)
        ),
        "CFG scale": f"{guidance_scale:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model": model,
    }
    if denoising_strength is not None:  # img2img only, where A1111 writes it
        params["Denoising strength"] = f"{denoising_strength:g}"
    if clip_skip > 0:
        params["Clip skip"] = clip_skip
    params["Version"] = version
    return params


def _quote(value: object) -> str:
    text = str(value)
    # A1111 quotes values that would break its `key: value, ...` parsing.
    if any(ch in text for ch in ',:"\n'):
        return json.dumps(text, ensure_ascii=False)
    return text
