"""Original Flux.1 transformer files (Black Forest Labs' `flux` code) -> diffusers names.

FLUX.1 [dev], [schnell], Kontext [dev] (and Fill / Depth: the same layout with wider inputs)
ship BFL's `Flux` module: `double_blocks.N.{img,txt}_{mod,attn,mlp}`, `single_blocks.N.linear1`
(q, k, v and the MLP input fused), `final_layer`, the `time_in` / `vector_in` / `guidance_in`
embedders; ComfyUI repacks nest it under `model.diffusion_model.`. The table below renames every
key to diffusers' `FluxTransformer2DModel` names, so `FLUX_TRANSFORMER_SPEC`'s key map and shape
checks apply unchanged. It follows diffusers' `convert_flux_transformer_checkpoint_to_diffusers`:
fused q/k/v split in thirds, `linear1` split (inner, inner, inner, rest), and the halves of
`final_layer.adaLN_modulation.1` swapped (BFL's final layer emits shift then scale).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.dit_release.cuts import layout
from jaxvideo.convert.ldm.keys import KeyRule
from jaxvideo.convert.wan_release.transformer import LDM_PREFIX

_P = r"(?P<p>weight|bias)"
_S = r"(?P<s>img|txt)"
_DOUBLE = r"double_blocks\.(?P<n>\d+)\."
_SINGLE = r"single_blocks\.(?P<n>\d+)\."
_QK = r"norm\.(?P<qk>query_norm|key_norm)\.scale"

# Group values renamed on the way.
_EMBEDDERS = {
    "time": "timestep_embedder",
    "vector": "text_embedder",
    "guidance": "guidance_embedder",
}
_LAYERS = {"in": "linear_1", "out": "linear_2"}
# A double block's two streams: the diffusers names of each stream's modules.
_STREAMS: dict[str, dict[str, str]] = {
    "img": {
        "mod": "norm1",
        "q": "to_q",
        "k": "to_k",
        "v": "to_v",
        "query_norm": "norm_q",
        "key_norm": "norm_k",
        "proj": "to_out.0",
        "mlp": "ff",
    },
    "txt": {
        "mod": "norm1_context",
        "q": "add_q_proj",
        "k": "add_k_proj",
        "v": "add_v_proj",
        "query_norm": "norm_added_q",
        "key_norm": "norm_added_k",
        "proj": "to_add_out",
        "mlp": "ff_context",
    },
}
_SINGLE_NORMS = {"query_norm": "norm_q", "key_norm": "norm_k"}


def _rule(pattern: str, *targets: str, op: str = "copy") -> KeyRule:
    return KeyRule(pattern, targets, op)


_BLOCK = "transformer_blocks.{n}."
_ONE = "single_transformer_blocks.{n}."
FLUX_ORIGINAL_KEY_RULES: tuple[KeyRule, ...] = (
    _rule(rf"img_in\.{_P}", "x_embedder.{p}"),
    _rule(rf"txt_in\.{_P}", "context_embedder.{p}"),
    _rule(
        rf"(?P<e>time|vector|guidance)_in\.(?P<l>in|out)_layer\.{_P}",
        "time_text_embed.{e}.{l}.{p}",
    ),
    _rule(rf"{_DOUBLE}{_S}_mod\.lin\.{_P}", _BLOCK + "{mod}.linear.{p}"),
    _rule(
        rf"{_DOUBLE}{_S}_attn\.qkv\.{_P}",
        _BLOCK + "attn.{q}.{p}",
        _BLOCK + "attn.{k}.{p}",
        _BLOCK + "attn.{v}.{p}",
        op="qkv",
    ),
    _rule(rf"{_DOUBLE}{_S}_attn\.{_QK}", _BLOCK + "attn.{norm}.weight"),
    _rule(rf"{_DOUBLE}{_S}_attn\.proj\.{_P}", _BLOCK + "attn.{proj}.{p}"),
    _rule(rf"{_DOUBLE}{_S}_mlp\.0\.{_P}", _BLOCK + "{mlp}.net.0.proj.{p}"),
    _rule(rf"{_DOUBLE}{_S}_mlp\.2\.{_P}", _BLOCK + "{mlp}.net.2.{p}"),
    _rule(rf"{_SINGLE}modulation\.lin\.{_P}", _ONE + "norm.linear.{p}"),
    _rule(
        rf"{_SINGLE}linear1\.{_P}",
        _ONE + "attn.to_q.{p}",
        _ONE + "attn.to_k.{p}",
        _ONE + "attn.to_v.{p}",
        _ONE + "proj_mlp.{p}",
        op="qkv_mlp",
    ),
    _rule(rf"{_SINGLE}{_QK}", _ONE + "attn.{norm}.weight"),
    _rule(rf"{_SINGLE}linear2\.{_P}", _ONE + "proj_out.{p}"),
    _rule(rf"final_layer\.linear\.{_P}", "proj_out.{p}"),
    _rule(rf"final_layer\.adaLN_modulation\.1\.{_P}", "norm_out.linear.{p}", op="swap"),
)


def derive(g: dict[str, str]) -> dict[str, Any]:
    """Template fields of a match: the group values plus their diffusers names."""
    out: dict[str, Any] = dict(g)
    if g.get("e") is not None:
        out["e"], out["l"] = _EMBEDDERS[g["e"]], _LAYERS[g["l"]]
    if g.get("s") is not None:
        out.update(_STREAMS[g["s"]])
    if g.get("qk") is not None:
        out["norm"] = (_STREAMS[g["s"]] if g.get("s") else _SINGLE_NORMS)[g["qk"]]
    return out


# Newer BFL-lineage layouts that share `double_blocks` names but not the network.
_OTHER_LAYOUTS = {
    "single_stream_modulation.lin.weight": "FLUX.2",
    "distilled_guidance_layer.in_proj.bias": "Chroma",
}
_MARKER = "double_blocks.0.img_attn.norm.key_norm.scale"  # diffusers' own Flux marker


def is_flux_original(keys: Iterable[str]) -> bool:
    """Whether a file holds a BFL-layout Flux transformer (any `LDM_PREFIX`)."""
    return any(k.removeprefix(LDM_PREFIX) == _MARKER for k in keys)


def check_flux_layout(rel: set[str], what: str) -> None:
    """Refuses the layouts that look like Flux.1 but are other networks, by name."""
    for key, name in _OTHER_LAYOUTS.items():
        if key in rel:
            raise ConversionError(f"{what}: a {name} transformer ({key}); only Flux.1 is supported")


# The rope axes of every Flux.1 release, whose heads are 128 wide (BFL's `axes_dim`).
AXES_DIMS_ROPE = {128: [16, 56, 56]}


def _count(rel: Iterable[str], pattern: str) -> int:
    """1 + the highest block index (as diffusers counts): a block missing in the middle is then
    reported by its keys."""
    regex = re.compile(pattern)
    return 1 + max((int(m[1]) for k in rel if (m := regex.match(k))), default=-1)


def infer_flux_config(rel: set[str], shape: Callable[[str], tuple[int, ...]]) -> dict[str, Any]:
    """A diffusers `FluxTransformer2DModel` config.json dict from prefix-relative keys' shapes.

    Every size is read from shapes: the head width from the q/k RMSNorm scales, the guidance
    embedder from `guidance_in`'s presence. Only the rope axes are not in the weights: BFL's
    (16, 56, 56) for 128-wide heads; other widths need `axes_dims_rope` as an override (None
    here).
    """
    hidden, in_channels = shape("img_in.weight")
    doubles = _count(rel, r"double_blocks\.(\d+)\.")
    singles = _count(rel, r"single_blocks\.(\d+)\.")
    norm = (
        "double_blocks.0.img_attn.norm.query_norm.scale"
        if doubles
        else "single_blocks.0.norm.query_norm.scale"
    )
    head_dim = shape(norm)[0]
    if hidden % head_dim:
        raise ConversionError(
            f"{norm}: heads {head_dim} wide do not divide the model width {hidden}"
        )
    return {
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": shape("final_layer.linear.weight")[0],
        "num_layers": doubles,
        "num_single_layers": singles,
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shape("txt_in.weight")[1],
        "pooled_projection_dim": shape("vector_in.in_layer.weight")[1],
        "guidance_embeds": "guidance_in.in_layer.weight" in rel,
        "axes_dims_rope": AXES_DIMS_ROPE.get(head_dim),
    }


_TOP = (
    "img_in",
    "txt_in",
    "time_in.in_layer",
    "time_in.out_layer",
    "vector_in.in_layer",
    "vector_in.out_layer",
    "final_layer.linear",
    "final_layer.adaLN_modulation.1",
)
_GUIDANCE = ("guidance_in.in_layer", "guidance_in.out_layer")
_DOUBLE_LINEARS = tuple(
    f"{s}_{m}"
    for s in ("img", "txt")
    for m in ("mod.lin", "attn.qkv", "attn.proj", "mlp.0", "mlp.2")
)
_DOUBLE_SCALES = tuple(
    f"{s}_attn.norm.{q}.scale" for s in ("img", "txt") for q in ("query_norm", "key_norm")
)
_SINGLE_LINEARS = ("modulation.lin", "linear1", "linear2")
_SINGLE_SCALES = ("norm.query_norm.scale", "norm.key_norm.scale")


def flux_original_keys(config: dict[str, Any]) -> set[str]:
    """Every (prefix-relative) key of a BFL Flux.1 file of this config: what a complete file
    holds, so a missing tensor is named by its original key."""
    keys = layout("", _TOP + (_GUIDANCE if config["guidance_embeds"] else ()))
    for n in range(config["num_layers"]):
        keys |= layout(f"double_blocks.{n}.", _DOUBLE_LINEARS, _DOUBLE_SCALES)
    for n in range(config["num_single_layers"]):
        keys |= layout(f"single_blocks.{n}.", _SINGLE_LINEARS, _SINGLE_SCALES)
    return keys
