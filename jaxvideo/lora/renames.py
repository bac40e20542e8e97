"""LoRA modules under the original release code's names -> diffusers modules, fused ones cut.

Transformer LoRAs are often written against the original code rather than diffusers:
ComfyUI / ai-toolkit's `diffusion_model.double_blocks.0.img_attn.qkv` (Flux),
`diffusion_model.joint_blocks.0.x_block.attn.qkv` (SD3), kohya's
`lora_unet_double_blocks_0_img_attn_qkv` / sd-scripts' SD3 `lora_unet_joint_blocks_0_...`,
musubi-tuner's `lora_unet_blocks_0_self_attn_q` (Wan), XLabs' `double_blocks.0.processor.
qkv_lora1`. The original-checkpoint tables of `convert` (`wan_release`, `dit_release`) rename
them, so these names are never written twice.

A fused original projection is several diffusers modules (`img_attn.qkv` -> to_q, to_k, to_v;
Flux's `linear1` -> to_q, to_k, to_v, proj_mlp), so its LoRA is too: the up matrix (rows =
output features) is cut by the row ranges the weight is cut by and the down matrix is shared,
`W_part + up_part @ down` being the part of `W + up @ down` (as ComfyUI and diffusers'
`_convert_kohya_flux_lora_to_diffusers` do). Every cut is computed from the LoRA's own shapes:
the width of the q/k/v thirds is the projection's input width (down's columns).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from jaxvideo.convert.dit_release import flux, sd3
from jaxvideo.convert.dit_release.cuts import Cut
from jaxvideo.convert.ldm.keys import KeyRule
from jaxvideo.convert.wan_release.transformer import diffusers_module as wan_module

# SD3's last block's text stream is pre-only: its adaptive norm emits (shift, scale), 2 x width
# rows, which diffusers swaps; the other blocks' emit 6 x width rows, kept. The conversion table
# decides by block index (it knows the depth); a LoRA shows it in its shape.
_PRE_ONLY = "pre_only"


@dataclass(frozen=True)
class Part:
    """One diffusers module a LoRA module updates, and how its rows come out of the LoRA's up
    matrix: a `convert.dit_release.cuts.Cut` op and part index ("copy": all of them)."""

    module: str
    op: str = "copy"
    index: int = 0


@dataclass(frozen=True)
class _Table:
    rules: tuple[KeyRule, ...]
    derive: Callable[[dict[str, str]], dict[str, Any]]


def _sd3_rules() -> tuple[KeyRule, ...]:
    # A zero-block table's "last block" rule matches no block; the shape decides instead.
    return tuple(
        KeyRule(r.pattern, r.targets, _PRE_ONLY)
        if r.op == "copy" and r.targets[0].endswith(".norm1_context.linear.{p}")
        else r
        for r in sd3.sd3_original_key_rules(0)
    )


_TABLES = (
    _Table(flux.FLUX_ORIGINAL_KEY_RULES, flux.derive),
    _Table(_sd3_rules(), sd3.derive),
)


@cache
def _compiled(underscored: bool) -> list[tuple[re.Pattern[str], KeyRule, _Table]]:
    # kohya's underscore spelling of the same closed vocabularies parses one way only.
    def pattern(rule: KeyRule) -> str:
        return rule.pattern.replace(r"\.", "_") if underscored else rule.pattern

    return [(re.compile(pattern(r)), r, t) for t in _TABLES for r in t.rules]


# XLabs' Flux LoRA processors, by the original module each one adds to. A single block's
# `qkv_lora` covers only the q/k/v rows of `linear1`, not its MLP rows.
_XLABS = re.compile(
    r"(?P<block>(?:double|single)_blocks\.\d+)\.processor\.(?P<lora>(?:qkv|proj)_lora[12]?)"
)
_XLABS_MODULES = {
    "qkv_lora1": "img_attn.qkv",
    "qkv_lora2": "txt_attn.qkv",
    "proj_lora1": "img_attn.proj",
    "proj_lora2": "txt_attn.proj",
    "qkv_lora": "linear1",
    "proj_lora": "linear2",
}


def _dit_parts(module: str, underscored: bool) -> tuple[Part, ...] | None:
    key = module + ("_weight" if underscored else ".weight")
    for regex, rule, table in _compiled(underscored):
        m = regex.fullmatch(key)
        if m is not None:
            fields = table.derive(m.groupdict())
            return tuple(
                Part(target.format(**fields).removesuffix(".weight"), rule.op, index)
                for index, target in enumerate(rule.targets)
            )
    return None


def original_parts(module: str, *, underscored: bool = False) -> tuple[Part, ...] | None:
    """The diffusers modules an original Wan / Flux / SD3 / XLabs module name stands for.

    `double_blocks.0.img_attn.qkv` -> to_q, to_k, to_v of `transformer_blocks.0.attn` (thirds);
    with `underscored`, kohya's `double_blocks_0_img_attn_qkv` -> the same. None for a name in
    none of the tables (a diffusers name, or an unknown one).
    """
    wan = wan_module(module, underscored=underscored)
    if wan is not None:
        return (Part(wan),)
    m = _XLABS.fullmatch(module)
    if m is not None:
        parts = _dit_parts(f"{m['block']}.{_XLABS_MODULES[m['lora']]}", False)
        if parts is not None and m["lora"] == "qkv_lora":
            return tuple(Part(p.module, "qkv", p.index) for p in parts[:3])
        return parts
    return _dit_parts(module, underscored)


def cut_up(up: np.ndarray, down: np.ndarray, part: Part) -> np.ndarray:
    """The rows of `up` that update `part.module`: fused q/k/v thirds are `down`'s input width
    each (the projection maps width -> 3 x width, or 3 x width + MLP for Flux's `linear1`)."""
    op = part.op
    if op == _PRE_ONLY:
        op = "swap" if up.shape[0] == 2 * down.shape[1] else "copy"
    if op == "copy":
        return up
    return Cut("", op, part.index, down.shape[1]).cut(up)
