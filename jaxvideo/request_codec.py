"""GenerationRequest to and from plain JSON plus named numpy arrays: how a request outlives the
process that accepted it (the durable job store) and, later, travels to other hosts.

Scalars stay as they are; the image fields become arrays; LoRAs, VAE tiling, the hires fix,
the high-noise stage and a continuation state become small JSON objects. Decoding checks the
request as building it always does (GenerationRequest's static ranges).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxvideo.continuation import parse_state
from jaxvideo.hires import HiresFix
from jaxvideo.request import GenerationRequest, HighNoiseParams, SkipLayerGuidance
from jaxvideo.sampling.cache_modes import StepCache
from jaxvideo.tiling import VaeTiling

ARRAY_FIELDS = ("init_image", "mask_image", "end_image")
# Fields holding several images: stored as arrays named "<field>.<index>".
ARRAY_LIST_FIELDS = ("ref_images",)


def _encode_loras(loras: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [
        {"path": str(spec.path), "multiplier": spec.multiplier, "is_high_noise": spec.is_high_noise}
        for spec in loras
    ]


def _decode_loras(entries: list[dict[str, Any]]) -> tuple[Any, ...]:
    from jaxvideo.lora import LoraSpec  # the lora package imports JAX; only needed with LoRAs

    return tuple(LoraSpec(**entry) for entry in entries)


def _encode_step_cache(cache: StepCache | None) -> dict[str, Any] | None:
    if cache is None:
        return None
    return {"mode": cache.mode, "options": dict(cache.options),
            "scm_mask": list(cache.scm_mask), "scm_dynamic": cache.scm_dynamic}  # fmt: skip


def _decode_step_cache(data: dict[str, Any] | None) -> StepCache | None:
    if data is None:
        return None
    options = tuple(data["options"].items())
    return StepCache(data["mode"], options, tuple(data["scm_mask"]), data["scm_dynamic"])


def _optional(kind: type) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """A codec for a field holding a flat dataclass or None."""
    return (
        lambda value: None if value is None else dataclasses.asdict(value),
        lambda data: None if data is None else kind(**data),
    )


# Field -> (to JSON, from JSON), for the fields that are not JSON scalars already.
_CODECS: Mapping[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "loras": (_encode_loras, _decode_loras),
    "custom_sigmas": (list, tuple),
    "vae_tiling": _optional(VaeTiling),
    "hires": _optional(HiresFix),
    "high_noise": _optional(HighNoiseParams),
    "slg": _optional(SkipLayerGuidance),
    "step_cache": (_encode_step_cache, _decode_step_cache),
    "continuation": (
        lambda state: None if state is None else state.to_json(),
        lambda data: None if data is None else parse_state(data),
    ),
}


def encode_request(request: GenerationRequest) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON-able fields, arrays by field name) of `request`; unset images are left out."""
    data: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for field in dataclasses.fields(request):
        value = getattr(request, field.name)
        if field.name in ARRAY_FIELDS:
            if value is not None:
                arrays[field.name] = np.asarray(value)
        elif field.name in ARRAY_LIST_FIELDS:
            arrays.update({f"{field.name}.{i}": np.asarray(a) for i, a in enumerate(value)})
        elif field.name in _CODECS:
            data[field.name] = _CODECS[field.name][0](value)
        else:
            data[field.name] = value
    return data, arrays


def decode_request(
    data: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
) -> GenerationRequest:
    """The request `encode_request` described (InvalidRequest if it no longer checks out)."""
    fields = {
        name: _CODECS[name][1](value) if name in _CODECS else value for name, value in data.items()
    }
    arrays = dict(arrays or {})
    for name in ARRAY_LIST_FIELDS:
        count = sum(1 for key in arrays if key.startswith(f"{name}."))
        listed = tuple(arrays.pop(f"{name}.{i}") for i in range(count))
        if listed:
            fields[name] = listed
    return GenerationRequest(**fields, **arrays)
