"""Original Wan release transformer checkpoints (Wan-AI/Wan2.1, Wan2.2 layout) -> diffusers names.

The Wan repositories ship `WanModel` weights under the names of the Wan code (`self_attn.q`,
`ffn.0`, `head.head`, ...) and a `config.json` of its constructor arguments. The table below
renames the keys to diffusers' `WanTransformer3DModel` names, so `WAN_TRANSFORMER_SPEC`'s key
map and shape checks apply unchanged; the renames follow diffusers'
`convert_wan_transformer_to_diffusers` (and its conversion script for FLF2V's `emb_pos`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.ldm.keys import KeyRule, Plan, build_plan

# ComfyUI / LDM-style single files nest the network under this prefix.
LDM_PREFIX = "model.diffusion_model."

_P = r"(?P<p>weight|bias)"
_BLOCK = r"blocks\.(?P<n>\d+)\."

# Group values renamed on the way (named groups of the patterns below).
_RENAMES: dict[str, dict[str, str]] = {
    "attn": {"self_attn": "attn1", "cross_attn": "attn2"},
    "proj": {
        "q": "to_q",
        "k": "to_k",
        "v": "to_v",
        "o": "to_out.0",
        "norm_q": "norm_q",
        "norm_k": "norm_k",
        "k_img": "add_k_proj",
        "v_img": "add_v_proj",
        "norm_k_img": "norm_added_k",
    },
    # MLPProj: LayerNorm, Linear, GELU, Linear, LayerNorm.
    "img": {"0": "norm1", "1": "ff.net.0.proj", "3": "ff.net.2", "4": "norm2"},
}
_ATTN = "(?P<attn>" + "|".join(_RENAMES["attn"]) + ")"
_PROJ = "(?P<proj>" + "|".join(_RENAMES["proj"]) + ")"


def _rule(pattern: str, target: str) -> KeyRule:
    return KeyRule(pattern, (target,))


WAN_ORIGINAL_KEY_RULES: tuple[KeyRule, ...] = (
    _rule(rf"patch_embedding\.{_P}", "patch_embedding.{p}"),
    _rule(rf"text_embedding\.0\.{_P}", "condition_embedder.text_embedder.linear_1.{p}"),
    _rule(rf"text_embedding\.2\.{_P}", "condition_embedder.text_embedder.linear_2.{p}"),
    _rule(rf"time_embedding\.0\.{_P}", "condition_embedder.time_embedder.linear_1.{p}"),
    _rule(rf"time_embedding\.2\.{_P}", "condition_embedder.time_embedder.linear_2.{p}"),
    _rule(rf"time_projection\.1\.{_P}", "condition_embedder.time_proj.{p}"),
    _rule(rf"{_BLOCK}{_ATTN}\.{_PROJ}\.{_P}", "blocks.{n}.{attn}.{proj}.{p}"),
    # The Wan code runs norm1, norm3 (cross-attention, affine), norm2 (FFN, no parameters);
    # diffusers numbers them in order of use.
    _rule(rf"{_BLOCK}norm3\.{_P}", "blocks.{n}.norm2.{p}"),
    _rule(rf"{_BLOCK}ffn\.0\.{_P}", "blocks.{n}.ffn.net.0.proj.{p}"),
    _rule(rf"{_BLOCK}ffn\.2\.{_P}", "blocks.{n}.ffn.net.2.{p}"),
    _rule(rf"{_BLOCK}modulation", "blocks.{n}.scale_shift_table"),
    _rule(rf"head\.head\.{_P}", "proj_out.{p}"),
    _rule(r"head\.modulation", "scale_shift_table"),
    _rule(rf"img_emb\.proj\.(?P<img>[0134])\.{_P}", "condition_embedder.image_embedder.{img}.{p}"),
    _rule(r"img_emb\.emb_pos", "condition_embedder.image_embedder.pos_embed"),
)


def _derive(groups: dict[str, str]) -> dict[str, Any]:
    return {k: _RENAMES[k][v] if k in _RENAMES and v is not None else v for k, v in groups.items()}


# The same table over kohya's underscore spelling (`blocks_0_self_attn_q_weight`): the original
# vocabulary is closed, so each underscored name still parses one way only.
_DOTTED = [(re.compile(r.pattern), r) for r in WAN_ORIGINAL_KEY_RULES]
_UNDERSCORED = [(re.compile(r.pattern.replace(r"\.", "_")), r) for r in WAN_ORIGINAL_KEY_RULES]


def diffusers_module(module: str, *, underscored: bool = False) -> str | None:
    """The diffusers name of an original Wan module, as LoRA files name modules.

    `blocks.0.self_attn.q` -> `blocks.0.attn1.to_q`; with `underscored`, kohya's
    `blocks_0_self_attn_q` -> the same. None for a name outside the table.
    """
    key = module + ("_weight" if underscored else ".weight")
    for regex, rule in _UNDERSCORED if underscored else _DOTTED:
        m = regex.fullmatch(key)
        if m is not None:
            return rule.targets[0].format(**_derive(m.groupdict())).removesuffix(".weight")
    return None


def checkpoint_prefix(keys: Iterable[str]) -> str:
    """`LDM_PREFIX` when the file nests the network under it (ComfyUI repacks), else ""."""
    return LDM_PREFIX if any(k.startswith(LDM_PREFIX) for k in keys) else ""


def is_wan_transformer_original(keys: Iterable[str]) -> bool:
    """Whether a file holds a `WanModel` under the Wan code's names (any `LDM_PREFIX`)."""
    return any(k.removeprefix(LDM_PREFIX) == "blocks.0.self_attn.q.weight" for k in keys)


def wan_original_plan(keys: Iterable[str], *, what: str = "checkpoint") -> Plan:
    """{diffusers key: Source(file key)} for every key of an original Wan transformer file.

    A key the table does not know (VACE, S2V or Animate extras) raises `ConversionError`.
    """
    keys = list(keys)
    return build_plan(
        keys, checkpoint_prefix(keys), WAN_ORIGINAL_KEY_RULES, derive=_derive, what=what
    )


# `WanModel.__init__` defaults of the Wan code, for keys a config.json leaves out.
ORIGINAL_DEFAULTS: dict[str, Any] = {
    "model_type": "t2v",
    "patch_size": (1, 2, 2),
    "text_len": 512,
    "in_dim": 16,
    "dim": 2048,
    "ffn_dim": 8192,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "num_heads": 16,
    "num_layers": 32,
    "window_size": (-1, -1),
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
}
SUPPORTED_MODEL_TYPES = ("t2v", "i2v", "flf2v", "ti2v")
# The Wan code's RoPE table length (`rope_params(1024, ...)`).
ROPE_MAX_SEQ_LEN = 1024


# Every Wan release (1.3B, 5B, 14B, A14B) uses 128-wide attention heads.
HEAD_DIM = 128


def infer_original_config(
    keys: Iterable[str], shape: Callable[[str], tuple[int, ...]]
) -> dict[str, Any]:
    """An original-style config.json dict read from a checkpoint's tensor shapes.

    For files shipped without their config.json (ComfyUI repacks). Shapes give every size but
    the head count, taken as dim / `HEAD_DIM` like every release; `model_type` follows from the
    image branch and the input channels (36: image latents and mask, 48: TI2V's VAE).
    """
    keys = list(keys)
    prefix = checkpoint_prefix(keys)
    rel = {k.removeprefix(prefix) for k in keys}

    def size(key: str) -> tuple[int, ...]:
        if key not in rel:
            raise ConversionError(f"{prefix + key} is missing: not a complete Wan transformer")
        return tuple(shape(prefix + key))

    dim, in_dim, *patch = size("patch_embedding.weight")
    if dim % HEAD_DIM:
        raise ConversionError(
            f"Wan dim {dim} is not a multiple of {HEAD_DIM}: the head count cannot be inferred; "
            "put the model's original config.json next to the file"
        )
    if "img_emb.emb_pos" in rel:
        model_type = "flf2v"
    elif "img_emb.proj.0.weight" in rel or in_dim == 36:
        model_type = "i2v"
    else:
        model_type = "ti2v" if in_dim == 48 else "t2v"
    return {
        "model_type": model_type,
        "patch_size": patch,
        "dim": dim,
        "in_dim": in_dim,
        "ffn_dim": size("blocks.0.ffn.0.weight")[0],
        "freq_dim": size("time_embedding.0.weight")[1],
        "text_dim": size("text_embedding.0.weight")[1],
        "out_dim": size("head.head.weight")[0] // math.prod(patch),
        "num_heads": dim // HEAD_DIM,
        "num_layers": 1 + max(int(k.split(".")[1]) for k in rel if k.startswith("blocks.")),
        "cross_attn_norm": "blocks.0.norm3.weight" in rel,
    }


def _image_fields(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int | None, int | None]:
    """(image_dim, pos_embed_seq_len) from the CLIP branch's tensors, if the file has one."""
    rel = {k.removeprefix(LDM_PREFIX): tuple(v) for k, v in shapes.items()}
    image_dim = rel["img_emb.proj.0.weight"][0] if "img_emb.proj.0.weight" in rel else None
    pos_len = rel["img_emb.emb_pos"][1] if "img_emb.emb_pos" in rel else None
    return image_dim, pos_len


def wan_original_config(
    original: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, Any]:
    """A diffusers `WanTransformer3DModel` config.json dict for an original Wan checkpoint.

    `original` is the release's config.json (`dim`, `num_heads`, `in_dim`, `model_type`, ...;
    missing keys take the Wan code's defaults); `shapes` maps the checkpoint's keys to tensor
    shapes. The CLIP image branch is read from the tensors, not from `model_type`: Wan 2.1 and
    Wan 2.2 I2V both say "i2v" but only 2.1 has one. `text_len` has no diffusers counterpart
    (the pipelines pad prompts to 512 tokens).
    """
    o = {**ORIGINAL_DEFAULTS, **{k: v for k, v in original.items() if k in ORIGINAL_DEFAULTS}}
    if o["model_type"] not in SUPPORTED_MODEL_TYPES:
        raise ConversionError(
            f"Wan model_type {o['model_type']!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    if tuple(o["window_size"]) != (-1, -1):
        raise ConversionError(f"Wan local attention window_size={o['window_size']} unsupported")
    if not o["qk_norm"]:
        raise ConversionError("Wan qk_norm=False is not supported (diffusers always applies it)")
    if o["dim"] % o["num_heads"]:
        raise ConversionError(f"Wan dim {o['dim']} is not divisible by num_heads {o['num_heads']}")
    image_dim, pos_len = _image_fields(shapes)
    if o["model_type"] == "flf2v" and pos_len is None:
        raise ConversionError("Wan flf2v checkpoint has no img_emb.emb_pos")
    if o["model_type"] in ("t2v", "ti2v") and image_dim is not None:
        raise ConversionError(f"Wan {o['model_type']} checkpoint has an image branch (img_emb)")
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(o["patch_size"]),
        "num_attention_heads": o["num_heads"],
        "attention_head_dim": o["dim"] // o["num_heads"],
        "in_channels": o["in_dim"],
        "out_channels": o["out_dim"],
        "text_dim": o["text_dim"],
        "freq_dim": o["freq_dim"],
        "ffn_dim": o["ffn_dim"],
        "num_layers": o["num_layers"],
        "cross_attn_norm": bool(o["cross_attn_norm"]),
        "qk_norm": "rms_norm_across_heads",
        "eps": o["eps"],
        "image_dim": image_dim,
        "added_kv_proj_dim": o["dim"] if image_dim is not None else None,
        "rope_max_seq_len": ROPE_MAX_SEQ_LEN,
        "pos_embed_seq_len": pos_len,
    }
