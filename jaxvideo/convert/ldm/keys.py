"""Original LDM / A1111 single-file key names -> diffusers / transformers key names, as tables.

A single-file checkpoint stores every network under one prefix (`model.diffusion_model.`,
`first_stage_model.`, `cond_stage_model.`, `conditioner.embedders.N.`) with the names of the
original CompVis / Stability code. Each table below renames one network's keys to the names the
diffusers / transformers classes use, so the component key maps in `jaxvideo/models/*` (which
accept diffusers names) and their shape checks apply unchanged. The renames follow diffusers'
own single-file loader (`diffusers.loaders.single_file_utils`) so both read a file identically.

A plan maps each diffusers key to its `Source`: the file key and how to cut it (OpenCLIP fuses
q/k/v into one `in_proj_weight`; its `text_projection` is stored as (in, out), not torch's
Linear (out, in)).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxvideo.convert.core import ConversionError


@dataclass(frozen=True)
class Source:
    """Where one diffusers tensor comes from: a file key, cut by `op`.

    `op` is "copy", "transpose", or "qkv" (the `part`-th third of a fused projection whose
    thirds are `width` rows each, as diffusers' `convert_open_clip_checkpoint` slices them).
    """

    key: str
    op: str = "copy"
    part: int = 0
    width: int = 0

    def cut(self, t: np.ndarray) -> np.ndarray:
        if self.op == "transpose":
            return np.ascontiguousarray(t.T)
        if self.op == "qkv":
            stop = (self.part + 1) * self.width if self.part < 2 else None
            return t[self.part * self.width : stop]
        return t


Plan = dict[str, Source]


@dataclass(frozen=True)
class KeyRule:
    """`pattern` matches a whole key (after the network prefix); `targets` are str.format
    templates over its named groups plus the fields the table's `derive` adds. Several targets
    split one tensor (fused q/k/v) with `op`."""

    pattern: str
    targets: tuple[str, ...]
    op: str = "copy"


def _rule(pattern: str, *targets: str, op: str = "copy") -> KeyRule:
    return KeyRule(pattern, targets, op)


_P = r"(?P<p>weight|bias)"

# --- UNet (`model.diffusion_model.`) ---------------------------------------------------------

# LDM ResBlock sub-modules -> diffusers ResnetBlock2D names (indices skip the SiLU/Dropout).
UNET_RESNET_RENAMES: dict[str, str] = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "emb_layers.1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
}
_RES = "(?P<r>" + "|".join(re.escape(k) for k in UNET_RESNET_RENAMES) + ")"

# LDM numbers its down path as one flat `input_blocks.i` list (i = 0 is conv_in; each level
# holds `layers_per_block` [ResBlock, SpatialTransformer] entries then one Downsample) and its
# up path as `output_blocks.o` (layers_per_block + 1 entries per level, the last one carrying the
# Upsample). `{b}`/`{l}` are the diffusers block and layer of `i` or `o`. Transformer internals
# (`norm`, `proj_in`, `transformer_blocks.N.attn1.to_q`, ...) already have diffusers' names.
UNET_KEY_RULES: tuple[KeyRule, ...] = (
    _rule(rf"time_embed\.0\.{_P}", "time_embedding.linear_1.{p}"),
    _rule(rf"time_embed\.2\.{_P}", "time_embedding.linear_2.{p}"),
    _rule(rf"label_emb\.0\.0\.{_P}", "add_embedding.linear_1.{p}"),
    _rule(rf"label_emb\.0\.2\.{_P}", "add_embedding.linear_2.{p}"),
    _rule(rf"input_blocks\.0\.0\.{_P}", "conv_in.{p}"),
    _rule(rf"out\.0\.{_P}", "conv_norm_out.{p}"),
    _rule(rf"out\.2\.{_P}", "conv_out.{p}"),
    _rule(rf"input_blocks\.(?P<i>\d+)\.0\.op\.{_P}", "down_blocks.{b}.downsamplers.0.conv.{p}"),
    _rule(rf"input_blocks\.(?P<i>\d+)\.0\.{_RES}\.{_P}", "down_blocks.{b}.resnets.{l}.{r}.{p}"),
    _rule(r"input_blocks\.(?P<i>\d+)\.1\.(?P<rest>.+)", "down_blocks.{b}.attentions.{l}.{rest}"),
    _rule(rf"middle_block\.0\.{_RES}\.{_P}", "mid_block.resnets.0.{r}.{p}"),
    _rule(r"middle_block\.1\.(?P<rest>.+)", "mid_block.attentions.0.{rest}"),
    _rule(rf"middle_block\.2\.{_RES}\.{_P}", "mid_block.resnets.1.{r}.{p}"),
    _rule(rf"output_blocks\.(?P<o>\d+)\.0\.{_RES}\.{_P}", "up_blocks.{b}.resnets.{l}.{r}.{p}"),
    # The Upsample sits at index 1 of a level's last entry, or 2 after a SpatialTransformer.
    _rule(rf"output_blocks\.(?P<o>\d+)\.[12]\.conv\.{_P}", "up_blocks.{b}.upsamplers.0.conv.{p}"),
    _rule(r"output_blocks\.(?P<o>\d+)\.1\.(?P<rest>.+)", "up_blocks.{b}.attentions.{l}.{rest}"),
)


def unet_fields(layers_per_block: int) -> Callable[[dict[str, str]], dict[str, Any]]:
    def derive(g: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = dict(g)
        if g.get("i") is not None:
            out["b"], out["l"] = divmod(int(g["i"]) - 1, layers_per_block + 1)
        if g.get("o") is not None:
            out["b"], out["l"] = divmod(int(g["o"]), layers_per_block + 1)
        if g.get("r") is not None:
            out["r"] = UNET_RESNET_RENAMES[g["r"]]
        return out

    return derive


# --- VAE (`first_stage_model.`) --------------------------------------------------------------

VAE_RESNET_RENAMES = {n: n for n in ("norm1", "conv1", "norm2", "conv2")} | {
    "nin_shortcut": "conv_shortcut"
}
VAE_ATTENTION_RENAMES = {
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}
_VRES = "(?P<r>" + "|".join(VAE_RESNET_RENAMES) + ")"
_VATT = "(?P<a>" + "|".join(VAE_ATTENTION_RENAMES) + ")"
_CODER = "(?P<c>encoder|decoder)"

# The decoder's `up.u` counts from the lowest resolution's opposite end: diffusers'
# `up_blocks.{n-1-u}`. LDM's attention q/k/v/proj_out are 1x1 convs; the VAE key map squeezes
# them (`linear_or_1x1`), as diffusers' `conv_attn_to_linear` does.
VAE_KEY_RULES: tuple[KeyRule, ...] = (
    _rule(rf"{_CODER}\.conv_in\.{_P}", "{c}.conv_in.{p}"),
    _rule(rf"{_CODER}\.conv_out\.{_P}", "{c}.conv_out.{p}"),
    _rule(rf"{_CODER}\.norm_out\.{_P}", "{c}.conv_norm_out.{p}"),
    _rule(rf"(?P<q>quant_conv|post_quant_conv)\.{_P}", "{q}.{p}"),
    _rule(
        rf"encoder\.down\.(?P<i>\d+)\.block\.(?P<j>\d+)\.{_VRES}\.{_P}",
        "encoder.down_blocks.{i}.resnets.{j}.{r}.{p}",
    ),
    _rule(
        rf"encoder\.down\.(?P<i>\d+)\.downsample\.conv\.{_P}",
        "encoder.down_blocks.{i}.downsamplers.0.conv.{p}",
    ),
    _rule(
        rf"decoder\.up\.(?P<u>\d+)\.block\.(?P<j>\d+)\.{_VRES}\.{_P}",
        "decoder.up_blocks.{u}.resnets.{j}.{r}.{p}",
    ),
    _rule(
        rf"decoder\.up\.(?P<u>\d+)\.upsample\.conv\.{_P}",
        "decoder.up_blocks.{u}.upsamplers.0.conv.{p}",
    ),
    _rule(rf"{_CODER}\.mid\.block_(?P<m>[12])\.{_VRES}\.{_P}", "{c}.mid_block.resnets.{m}.{r}.{p}"),
    _rule(rf"{_CODER}\.mid\.attn_1\.{_VATT}\.{_P}", "{c}.mid_block.attentions.0.{a}.{p}"),
)

# Training-only tensors some VAE checkpoints carry (LPIPS / discriminator): not part of the model.
VAE_IGNORE = (r"loss\..*",)


def vae_fields(num_blocks: int) -> Callable[[dict[str, str]], dict[str, Any]]:
    def derive(g: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = dict(g)
        if g.get("u") is not None:
            out["u"] = num_blocks - 1 - int(g["u"])
        if g.get("m") is not None:
            out["m"] = int(g["m"]) - 1
        if g.get("r") is not None:
            out["r"] = VAE_RESNET_RENAMES[g["r"]]
        if g.get("a") is not None:
            out["a"] = VAE_ATTENTION_RENAMES[g["a"]]
        return out

    return derive


# --- Text encoders ---------------------------------------------------------------------------

# OpenAI CLIP (SD1 `cond_stage_model.transformer.`, SDXL `conditioner.embedders.0.transformer.`)
# is a pickled transformers CLIPTextModel: its keys only lose the prefix.
CLIP_KEY_RULES: tuple[KeyRule, ...] = (_rule(r"(?P<k>.+)", "{k}"),)

_BLOCK = r"transformer\.resblocks\.(?P<n>\d+)\."
_LAYER = "text_model.encoder.layers.{n}."

# OpenCLIP (SD2 `cond_stage_model.model.`, SDXL `conditioner.embedders.1.model.`).
OPEN_CLIP_KEY_RULES: tuple[KeyRule, ...] = (
    _rule(r"token_embedding\.weight", "text_model.embeddings.token_embedding.weight"),
    _rule(r"positional_embedding", "text_model.embeddings.position_embedding.weight"),
    _rule(rf"ln_final\.{_P}", "text_model.final_layer_norm.{p}"),
    _rule(r"text_projection", "text_projection.weight", op="transpose"),
    _rule(rf"{_BLOCK}ln_(?P<j>[12])\.{_P}", _LAYER + "layer_norm{j}.{p}"),
    _rule(rf"{_BLOCK}mlp\.c_fc\.{_P}", _LAYER + "mlp.fc1.{p}"),
    _rule(rf"{_BLOCK}mlp\.c_proj\.{_P}", _LAYER + "mlp.fc2.{p}"),
    _rule(rf"{_BLOCK}attn\.out_proj\.{_P}", _LAYER + "self_attn.out_proj.{p}"),
    _rule(
        rf"{_BLOCK}attn\.in_proj_{_P}",
        _LAYER + "self_attn.q_proj.{p}",
        _LAYER + "self_attn.k_proj.{p}",
        _LAYER + "self_attn.v_proj.{p}",
        op="qkv",
    ),
)

# Not parameters of the text tower: CLIP's contrastive temperature and a causal-mask buffer.
OPEN_CLIP_IGNORE = (r"logit_scale", r"attn_mask")


def _identity(g: dict[str, str]) -> dict[str, Any]:
    return dict(g)


def build_plan(
    keys: Iterable[str],
    prefix: str,
    rules: tuple[KeyRule, ...],
    *,
    derive: Callable[[dict[str, str]], dict[str, Any]] = _identity,
    ignore: tuple[str, ...] = (),
    skip: Callable[[str], bool] = lambda _key: False,
    width: int = 0,
    what: str = "checkpoint",
) -> Plan:
    """Renames every key under `prefix` with the first matching rule.

    Keys for which `skip(relative_key)` holds are dropped on purpose (SD2's unused last text
    layer); a key under `prefix` that no rule matches is an error naming it, so a layout
    variant is never half-converted silently.
    """
    compiled = [(re.compile(r.pattern), r) for r in rules]
    ignored = [re.compile(p) for p in ignore]
    plan: Plan = {}
    unknown: list[str] = []
    for key in keys:
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix) :]
        if skip(rel) or any(p.fullmatch(rel) for p in ignored):
            continue
        for regex, rule in compiled:
            m = regex.fullmatch(rel)
            if m is None:
                continue
            fields = derive(m.groupdict())
            for part, target in enumerate(rule.targets):
                name = target.format(**fields)
                if name in plan:
                    raise ConversionError(
                        f"{what}: keys {plan[name].key!r} and {key!r} both map to {name!r}"
                    )
                plan[name] = Source(key, rule.op, part, width)
            break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"{what}: {len(unknown)} key(s) of an unrecognised layout under {prefix!r}: "
            + ", ".join(unknown[:10])
            + (" ..." if len(unknown) > 10 else "")
        )
    return plan


def annotate(message: str, plan: Mapping[str, Source]) -> str:
    """Names the file key next to each diffusers key an error message mentions."""

    def sub(m: re.Match[str]) -> str:
        src = plan.get(m.group(0))
        return m.group(0) if src is None else f"{src.key} (as {m.group(0)})"

    return re.sub(r"[A-Za-z0-9_.]+", sub, message)
