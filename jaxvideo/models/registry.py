"""Which Flax network, config parser and key map serve each PyTorch class name.

Converted component folders keep the diffusers/transformers `config.json`; its `_class_name`
(diffusers) or `architectures[0]` (transformers) selects the `ComponentSpec` here. Specs are
imported lazily so loading one network does not import every other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flax import nnx

from jaxvideo.convert.core import Rule


@dataclass(frozen=True)
class ComponentSpec:
    """How to build, and fill from PyTorch, one kind of network.

    `config_from_hf` turns the reference `config.json` dict into the network's frozen config;
    `build(config, rngs=..., dtype=..., param_dtype=...)` creates the NNX module; `rules` map
    PyTorch keys to Flax paths; `ignore` lists regexes of PyTorch keys that are not parameters.
    """

    config_from_hf: Callable[[dict[str, Any]], Any]
    build: Callable[..., nnx.Module]
    rules: Sequence[Rule]
    ignore: Sequence[str] = field(default_factory=tuple)


_SPECS: dict[str, str] = {
    "CLIPTextModel": "jaxvideo.models.clip:CLIP_TEXT_SPEC",
    "CLIPTextModelWithProjection": "jaxvideo.models.clip:CLIP_TEXT_PROJ_SPEC",
    "UNet2DConditionModel": "jaxvideo.models.unet:UNET_SPEC",
    "AutoencoderKL": "jaxvideo.models.vae:VAE_SPEC",
    "UMT5EncoderModel": "jaxvideo.models.t5:UMT5_SPEC",
    "T5EncoderModel": "jaxvideo.models.t5:T5_SPEC",
    "CLIPVisionModel": "jaxvideo.models.clip_vision:CLIP_VISION_SPEC",
    "CLIPVisionModelWithProjection": "jaxvideo.models.clip_vision:CLIP_VISION_PROJ_SPEC",
    "WanTransformer3DModel": "jaxvideo.models.wan:WAN_TRANSFORMER_SPEC",
    "AutoencoderKLWan": "jaxvideo.models.wan_vae:WAN_VAE_SPEC",
    "SD3Transformer2DModel": "jaxvideo.models.sd3:SD3_TRANSFORMER_SPEC",
    "FluxTransformer2DModel": "jaxvideo.models.flux:FLUX_TRANSFORMER_SPEC",
}


def class_name_of(hf_config: dict[str, Any]) -> str:
    name = hf_config.get("_class_name")
    if name is None and hf_config.get("architectures"):
        name = hf_config["architectures"][0]
    if name is None:
        raise ValueError("config.json names no _class_name or architectures")
    return name


def spec_for(class_name: str) -> ComponentSpec:
    try:
        target = _SPECS[class_name]
    except KeyError:
        raise ValueError(
            f"no Flax network for {class_name!r}; supported: {', '.join(sorted(_SPECS))}"
        ) from None
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)
