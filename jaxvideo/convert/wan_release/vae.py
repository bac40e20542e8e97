"""The original Wan 2.1 VAE file (`Wan2.1_VAE.pth`) -> diffusers `AutoencoderKLWan` names.

The Wan code's `WanVAE_` keeps its layers in flat `nn.Sequential`s: `encoder.downsamples.i`
(resnets and resamples in one list, as diffusers' `encoder.down_blocks.i`), `decoder.upsamples.u`
(each level's resnets then its resample; diffusers nests them as `up_blocks.b.resnets.j` /
`up_blocks.b.upsamplers.0`), `middle.{0,1,2}`, `head.{0,2}`, and the latent 1x1 convs `conv1` /
`conv2`. Resnets are `residual.{0,2,3,6}` (norm, conv, norm, conv) + `shortcut`. The table
follows diffusers' `convert_wan_vae_to_diffusers`, computed from the block layout instead of
written out for the released one. The config is read from the tensor shapes (the release ships
none). Wan 2.2's 48-channel VAE (`Wan2.2_VAE.pth`) has another layout and is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.ldm.keys import KeyRule, Plan, build_plan

_P = r"(?P<p>weight|bias)"
_CODER = r"(?P<c>encoder|decoder)"
# `residual.N` entries that hold tensors: RMS_norm (gamma), CausalConv3d (weight, bias).
_RESNET = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}
_RES = "(?P<r>" + "|".join(re.escape(k) for k in _RESNET) + ")"
# A Resample: `resample.1` is its Conv2d (after the Upsample / ZeroPad2d), `time_conv` the
# temporal CausalConv3d of the 3d modes.
_SAMPLE = r"(?P<s>resample\.1|time_conv)"


def _rule(pattern: str, target: str) -> KeyRule:
    return KeyRule(pattern, (target,))


WAN_VAE_ORIGINAL_KEY_RULES: tuple[KeyRule, ...] = (
    _rule(rf"conv1\.{_P}", "quant_conv.{p}"),
    _rule(rf"conv2\.{_P}", "post_quant_conv.{p}"),
    _rule(rf"{_CODER}\.conv1\.{_P}", "{c}.conv_in.{p}"),
    _rule(rf"{_CODER}\.head\.0\.gamma", "{c}.norm_out.gamma"),
    _rule(rf"{_CODER}\.head\.2\.{_P}", "{c}.conv_out.{p}"),
    _rule(rf"{_CODER}\.middle\.(?P<m>[02])\.{_RES}", "{c}.mid_block.resnets.{m}.{r}"),
    _rule(
        rf"{_CODER}\.middle\.1\.(?P<a>norm\.gamma|(?:to_qkv|proj)\.(?:weight|bias))",
        "{c}.mid_block.attentions.0.{a}",
    ),
    _rule(rf"encoder\.downsamples\.(?P<i>\d+)\.{_RES}", "encoder.down_blocks.{i}.{r}"),
    _rule(rf"encoder\.downsamples\.(?P<i>\d+)\.{_SAMPLE}\.{_P}", "encoder.down_blocks.{i}.{s}.{p}"),
    _rule(rf"decoder\.upsamples\.(?P<u>\d+)\.{_RES}", "decoder.up_blocks.{b}.resnets.{j}.{r}"),
    _rule(
        rf"decoder\.upsamples\.(?P<u>\d+)\.{_SAMPLE}\.{_P}",
        "decoder.up_blocks.{b}.upsamplers.0.{s}.{p}",
    ),
)


def _fields(num_res_blocks: int) -> Callable[[dict[str, str]], dict[str, Any]]:
    """Decoder level b holds num_res_blocks + 1 resnets then its resample: R + 2 entries.

    A key whose slot does not fit its kind lands on a name the model lacks, and the shape
    check refuses it by name.
    """

    def derive(g: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = dict(g)
        if g.get("u") is not None:
            out["b"], out["j"] = divmod(int(g["u"]), num_res_blocks + 2)
        if g.get("m") is not None:
            out["m"] = int(g["m"]) // 2
        if g.get("r") is not None:
            out["r"] = _RESNET[g["r"]]
        return out

    return derive


def wan_vae_original_plan(
    keys: Iterable[str], num_res_blocks: int, *, what: str = "checkpoint"
) -> Plan:
    """{diffusers key: Source(file key)} for every key of an original Wan 2.1 VAE file."""
    return build_plan(
        keys, "", WAN_VAE_ORIGINAL_KEY_RULES, derive=_fields(num_res_blocks), what=what
    )


# Wan 2.2's VAE nests resnets inside `downsamples.i.downsamples.j` and averages shortcuts.
_WAN22_VAE = re.compile(
    r"(?:encoder\.downsamples|decoder\.upsamples)\.\d+\.(?:downsamples|upsamples|avg_shortcut)\..*"
)


def is_wan_vae_original(keys: Iterable[str]) -> bool:
    """Whether a file holds an original-layout Wan VAE (2.1 or 2.2)."""
    return any(k.startswith("decoder.middle.0.residual.0.") for k in keys)


def wan_vae_original_config(
    keys: Iterable[str], shape: Callable[[str], tuple[int, ...]], *, what: str = "checkpoint"
) -> dict[str, Any]:
    """A diffusers `AutoencoderKLWan` config.json dict for an original Wan 2.1 VAE file.

    `shape(key)` gives a tensor's shape. The Wan code builds the encoder's levels from
    `num_res_blocks` resnets each, a resample between levels; those resamples' positions give
    the layout, their `time_conv`s the temporal downsamples, the resnets' widths `dim_mult`.
    """
    from jaxvideo.models.wan_vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD

    present = set(keys)
    if any(_WAN22_VAE.fullmatch(k) for k in present):
        raise ConversionError(
            f"{what}: this is the Wan 2.2 (48-channel) VAE, whose original layout is not "
            "supported; take the vae from a diffusers Wan2.2-TI2V-5B folder (--base DIR)"
        )
    if any(re.fullmatch(r"encoder\.downsamples\.\d+\.to_qkv\.weight", k) for k in present):
        raise ConversionError(f"{what}: attention in the encoder levels (attn_scales) unsupported")
    entries = {int(m[1]) for k in present if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))}
    resamples = sorted(
        i for i in entries if f"encoder.downsamples.{i}.resample.1.weight" in present
    )
    per_level = resamples[0] + 1 if resamples else len(entries) + 1
    levels = len(resamples) + 1
    if not entries or resamples != [n * per_level + per_level - 1 for n in range(levels - 1)]:
        raise ConversionError(f"{what}: encoder levels of an unknown Wan VAE layout")
    base = shape("encoder.conv1.weight")[0]
    dim_mult = [
        shape(f"encoder.downsamples.{n * per_level}.residual.2.weight")[0] // base
        for n in range(levels)
    ]
    decoder_base = shape("decoder.head.2.weight")[1] // dim_mult[0]
    z_dim = shape("conv2.weight")[0]
    if z_dim != len(WAN21_LATENTS_MEAN):
        raise ConversionError(
            f"{what}: a {z_dim}-channel latent space; the file carries no latent statistics "
            f"and only the Wan 2.1 VAE's ({len(WAN21_LATENTS_MEAN)} channels) are known"
        )
    return {
        "_class_name": "AutoencoderKLWan",
        "base_dim": base,
        "decoder_base_dim": None if decoder_base == base else decoder_base,
        "z_dim": z_dim,
        "dim_mult": dim_mult,
        "num_res_blocks": per_level - 1,
        "attn_scales": [],
        "temperal_downsample": [
            f"encoder.downsamples.{i}.time_conv.weight" in present for i in resamples
        ],
        "in_channels": shape("encoder.conv1.weight")[1],
        "out_channels": shape("decoder.head.2.weight")[0],
        "latents_mean": list(WAN21_LATENTS_MEAN),
        "latents_std": list(WAN21_LATENTS_STD),
    }
