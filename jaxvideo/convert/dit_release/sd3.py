"""Original SD3 / SD3.5 transformer files (Stability AI's MMDiT code) -> diffusers names.

`sd3_medium.safetensors`, `sd3.5_large.safetensors` (and Large Turbo) and
`sd3.5_medium.safetensors` hold the `MMDiT` under `model.diffusion_model.` (ComfyUI's
diffusion-model files drop the prefix): `joint_blocks.N.{x_block,context_block}` with fused
`attn.qkv`, SD3.5's q/k RMSNorms `ln_q` / `ln_k`, SD3.5 Medium's second image attention
`x_block.attn2` (MMDiT-X), `pos_embed`, `x_embedder`, `t_embedder`, `y_embedder`,
`context_embedder`, `final_layer`. The table renames every key to diffusers'
`SD3Transformer2DModel` names, following `convert_sd3_transformer_checkpoint_to_diffusers`: q/k/v
split in thirds, and the (shift, scale) halves of the adaptive norms diffusers runs as
`AdaLayerNormContinuous` swapped: `final_layer`'s and the last block's `context_block`'s (that
block only updates the image tokens: its text stream has no output projection and no MLP).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.dit_release.cuts import layout
from jaxvideo.convert.ldm.keys import KeyRule
from jaxvideo.convert.wan_release.transformer import LDM_PREFIX

_P = r"(?P<p>weight|bias)"
_X = r"joint_blocks\.(?P<n>\d+)\.x_block\."
_C = r"joint_blocks\.(?P<n>\d+)\.context_block\."
_B = "transformer_blocks.{n}."
_LN = {"ln_q": "norm_q", "ln_k": "norm_k"}
_CONTEXT_LN = {"ln_q": "norm_added_q", "ln_k": "norm_added_k"}
_MLP = {"fc1": "net.0.proj", "fc2": "net.2"}


def _rule(pattern: str, *targets: str, op: str = "copy") -> KeyRule:
    return KeyRule(pattern, targets, op)


def sd3_original_key_rules(num_layers: int) -> tuple[KeyRule, ...]:
    """The renames of a `num_layers`-block MMDiT (its last block's context norm is swapped)."""
    last = num_layers - 1
    return (
        _rule(r"pos_embed", "pos_embed.pos_embed"),
        _rule(rf"x_embedder\.proj\.{_P}", "pos_embed.proj.{p}"),
        _rule(rf"t_embedder\.mlp\.(?P<i>[02])\.{_P}", "time_text_embed.timestep_embedder.{i}.{p}"),
        _rule(rf"y_embedder\.mlp\.(?P<i>[02])\.{_P}", "time_text_embed.text_embedder.{i}.{p}"),
        _rule(rf"context_embedder\.{_P}", "context_embedder.{p}"),
        _rule(
            rf"{_X}(?P<a>attn2?)\.qkv\.{_P}",
            _B + "{a}.to_q.{p}",
            _B + "{a}.to_k.{p}",
            _B + "{a}.to_v.{p}",
            op="qkv",
        ),
        _rule(
            rf"{_C}attn\.qkv\.{_P}",
            _B + "attn.add_q_proj.{p}",
            _B + "attn.add_k_proj.{p}",
            _B + "attn.add_v_proj.{p}",
            op="qkv",
        ),
        _rule(rf"{_X}(?P<a>attn2?)\.(?P<ln>ln_[qk])\.weight", _B + "{a}.{ln}.weight"),
        _rule(rf"{_C}attn\.(?P<cln>ln_[qk])\.weight", _B + "attn.{cln}.weight"),
        _rule(rf"{_X}(?P<a>attn2?)\.proj\.{_P}", _B + "{a}.to_out.0.{p}"),
        _rule(rf"{_C}attn\.proj\.{_P}", _B + "attn.to_add_out.{p}"),
        _rule(rf"{_X}adaLN_modulation\.1\.{_P}", _B + "norm1.linear.{p}"),
        _rule(
            rf"joint_blocks\.(?P<n>{last})\.context_block\.adaLN_modulation\.1\.{_P}",
            _B + "norm1_context.linear.{p}",
            op="swap",
        ),
        _rule(rf"{_C}adaLN_modulation\.1\.{_P}", _B + "norm1_context.linear.{p}"),
        _rule(rf"{_X}mlp\.(?P<fc>fc[12])\.{_P}", _B + "ff.{fc}.{p}"),
        _rule(rf"{_C}mlp\.(?P<fc>fc[12])\.{_P}", _B + "ff_context.{fc}.{p}"),
        _rule(rf"final_layer\.linear\.{_P}", "proj_out.{p}"),
        _rule(rf"final_layer\.adaLN_modulation\.1\.{_P}", "norm_out.linear.{p}", op="swap"),
    )


def derive(g: dict[str, str]) -> dict[str, Any]:
    """Template fields of a match: the group values plus their diffusers names."""
    out: dict[str, Any] = dict(g)
    if g.get("i") is not None:
        out["i"] = "linear_1" if g["i"] == "0" else "linear_2"
    if g.get("ln") is not None:
        out["ln"] = _LN[g["ln"]]
    if g.get("cln") is not None:
        out["cln"] = _CONTEXT_LN[g["cln"]]
    if g.get("fc") is not None:
        out["fc"] = _MLP[g["fc"]]
    return out


_MARKER = "joint_blocks.0.context_block.adaLN_modulation.1.bias"  # diffusers' own SD3 marker


def is_sd3_original(keys: Iterable[str]) -> bool:
    """Whether a file holds an MMDiT under Stability's names (any `LDM_PREFIX`)."""
    return any(k.removeprefix(LDM_PREFIX) == _MARKER for k in keys)


# MMDiT builds `hidden_size = 64 * depth` with `num_heads = depth`: 64-wide heads in every
# release. SD3.5's q/k norms tell the width themselves.
HEAD_DIM = 64
# Every published SD3 / SD3.5 diffusers config: 1024 px images, 128 latent pixels.
SAMPLE_SIZE = 128


def _indices(rel: Iterable[str], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m[1]) for k in rel if (m := regex.match(k))})


def infer_sd3_config(rel: set[str], shape: Callable[[str], tuple[int, ...]]) -> dict[str, Any]:
    """A diffusers `SD3Transformer2DModel` config.json dict from prefix-relative keys' shapes.

    As diffusers' converter reads them: `dual_attention_layers` are the blocks with an
    `x_block.attn2`, `qk_norm` is "rms_norm" when any `ln_q` exists; the position table
    `pos_embed` (1, M * M, width) gives `pos_embed_max_size` M.
    """
    hidden, in_channels, patch, _ = shape("x_embedder.proj.weight")
    layers = _indices(rel, r"joint_blocks\.(\d+)\.")
    if not layers:
        raise ConversionError("no joint_blocks: not an MMDiT")
    # As diffusers counts: a block missing in the middle is then reported by its keys.
    num_layers = layers[-1] + 1
    qk_norm = any(".ln_q." in k for k in rel)
    head_dim = shape("joint_blocks.0.x_block.attn.ln_q.weight")[0] if qk_norm else HEAD_DIM
    positions = shape("pos_embed")[1]
    table = math.isqrt(positions)
    if table * table != positions:
        raise ConversionError(f"pos_embed: {positions} positions are not a square table")
    if hidden % head_dim:
        raise ConversionError(
            f"x_embedder.proj.weight: width {hidden} is not a multiple of {head_dim}-wide heads"
        )
    return {
        "_class_name": "SD3Transformer2DModel",
        "sample_size": SAMPLE_SIZE,
        "patch_size": patch,
        "in_channels": in_channels,
        "num_layers": num_layers,
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shape("context_embedder.weight")[1],
        "caption_projection_dim": shape("context_embedder.weight")[0],
        "pooled_projection_dim": shape("y_embedder.mlp.0.weight")[1],
        "out_channels": shape("final_layer.linear.weight")[0] // (patch * patch),
        "pos_embed_max_size": table,
        "dual_attention_layers": _indices(rel, r"joint_blocks\.(\d+)\.x_block\.attn2\."),
        "qk_norm": "rms_norm" if qk_norm else None,
    }


_TOP = (
    "x_embedder.proj",
    "t_embedder.mlp.0",
    "t_embedder.mlp.2",
    "y_embedder.mlp.0",
    "y_embedder.mlp.2",
    "context_embedder",
    "final_layer.linear",
    "final_layer.adaLN_modulation.1",
)
_STREAM = ("attn.qkv", "attn.proj", "adaLN_modulation.1", "mlp.fc1", "mlp.fc2")
# The last block's text stream feeds nothing after its attention.
_LAST_CONTEXT = ("attn.qkv", "adaLN_modulation.1")
_QK = ("attn.ln_q.weight", "attn.ln_k.weight")
_ATTN2 = ("attn2.qkv", "attn2.proj")
_ATTN2_QK = ("attn2.ln_q.weight", "attn2.ln_k.weight")


def sd3_original_keys(config: dict[str, Any]) -> set[str]:
    """Every (prefix-relative) key of an MMDiT file of this config: what a complete file
    holds, so a missing tensor is named by its original key."""
    qk = config["qk_norm"] is not None
    keys = layout("", _TOP, ("pos_embed",))
    last = config["num_layers"] - 1
    for n in range(config["num_layers"]):
        x, c = f"joint_blocks.{n}.x_block.", f"joint_blocks.{n}.context_block."
        keys |= layout(x, _STREAM, _QK if qk else ())
        keys |= layout(c, _LAST_CONTEXT if n == last else _STREAM, _QK if qk else ())
        if n in config["dual_attention_layers"]:
            keys |= layout(x, _ATTN2, _ATTN2_QK if qk else ())
    return keys
