"""LoRA support: read kohya/A1111 and diffusers/PEFT LoRA files and merge them into Flax states.

    from jaxvideo.lora import LoraCache, LoraSpec, resolve_lora_path

    cache = LoraCache(max_entries=4)
    spec = LoraSpec(resolve_lora_path(lora_dir, "my_style"), multiplier=0.8)
    states = cache.get_or_merge({"unet": unet_state, "text_encoder": text_state}, [spec])

`formats` parses files, `renames` turns the original release code's module names (Wan, Flux,
SD3, XLabs) into diffusers' and cuts fused projections' LoRAs, `targets` maps module names to
Flax parameters through each component's conversion rules, `merge` computes and applies the
deltas, `files` finds LoRAs in a folder without leaving it.
"""

from jaxvideo.lora.files import list_loras, resolve_lora_path
from jaxvideo.lora.formats import LORA_EXTS, parse_lora
from jaxvideo.lora.merge import LoraCache, default_rules, merge_loras
from jaxvideo.lora.spec import LoraError, LoraPair, LoraSpec

__all__ = [
    "LORA_EXTS",
    "LoraCache",
    "LoraError",
    "LoraPair",
    "LoraSpec",
    "default_rules",
    "list_loras",
    "merge_loras",
    "parse_lora",
    "resolve_lora_path",
]
