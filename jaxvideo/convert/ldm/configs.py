"""diffusers / transformers configs inferred from the tensor shapes of an LDM single file.

A single file carries weights but no config. Widths, depths and layer counts are read from
shapes, never assumed from SD 1.5, so any model of the supported architectures is recognised.
What shapes cannot tell is filled from the family's published configs (the diffusers hub
configs that diffusers' single-file loader falls back to):

- attention heads: SD1 uses 8 heads everywhere; SD2 and SDXL use 64-wide heads, i.e.
  `attention_head_dim = [width // 64 per level]` (`Layout.unet_heads`); CLIP / OpenCLIP text
  towers use 64-wide heads;
- `norm_num_groups` 32 and the VAE's `scaling_factor` (`Layout.vae_scaling`: 0.18215, SDXL
  0.13025);
- the OpenAI CLIP towers use `quick_gelu`, the OpenCLIP ones `gelu`.

Callers may override any field (`config_overrides`), which models built with other head counts
or group norms (e.g. tiny test models) need.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.ldm.layouts import Layout

Shape = Callable[[str], tuple[int, ...]]

HEAD_WIDTH = 64  # SD2/SDXL UNets and every CLIP text tower use 64-wide attention heads
NORM_GROUPS = 32


def indices(keys: Iterable[str], pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one group) at the start of keys."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def _same_or_list(values: list[Any]) -> Any:
    # diffusers configs write a per-block option as a scalar when every block agrees.
    return values[0] if len(set(values)) == 1 else values


def _has_prefix(keys: set[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def infer_unet_config(
    keys: Iterable[str], shape: Shape, layout: Layout, *, pooled_dim: int | None = None
) -> dict[str, Any]:
    """UNet2DConditionModel config from `model.diffusion_model.`-relative keys.

    `pooled_dim` (SDXL) is the width of the pooled text embedding that, with six sinusoid-
    embedded size/crop ids, makes up `label_emb`'s input.
    """
    keyset = set(keys)
    first = shape("input_blocks.0.0.weight")
    blocks = [i for i in indices(keyset, r"input_blocks\.(\d+)\.") if i > 0]
    downs = [i for i in blocks if f"input_blocks.{i}.0.op.weight" in keyset]
    lpb = downs[0] - 1 if downs else len(blocks)
    levels = len(downs) + 1
    if lpb < 1 or blocks != list(range(1, levels * (lpb + 1))):
        raise ConversionError(
            "UNet input_blocks do not form levels of equal depth: unsupported layout"
        )

    def level_start(b: int) -> int:
        return 1 + b * (lpb + 1)

    widths = [
        shape(f"input_blocks.{level_start(b)}.0.out_layers.3.weight")[0] for b in range(levels)
    ]
    down_attn = [_has_prefix(keyset, f"input_blocks.{level_start(b)}.1.") for b in range(levels)]

    def depth(prefix: str) -> int:
        return len(indices(keyset, re.escape(prefix) + r"transformer_blocks\.(\d+)\.")) or 1

    depths = [depth(f"input_blocks.{level_start(b)}.1.") for b in range(levels)]
    up_attn, up_depths = [], []
    for b in range(levels):
        prefix = f"output_blocks.{b * (lpb + 1)}.1."
        attn = _has_prefix(keyset, prefix) and not _has_prefix(keyset, prefix + "conv.")
        up_attn.append(attn)
        up_depths.append(depth(prefix) if attn else 1)

    attn_key = next((k for k in sorted(keyset) if k.endswith("attn2.to_k.weight")), None)
    proj_key = next((k for k in sorted(keyset) if k.endswith(".proj_in.weight")), None)
    config: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        "in_channels": first[1],
        "out_channels": shape("out.2.weight")[0],
        "block_out_channels": widths,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
        "mid_block_type": "UNetMidBlock2DCrossAttn"
        if _has_prefix(keyset, "middle_block.1.")
        else None,
        "layers_per_block": lpb,
        "cross_attention_dim": shape(attn_key)[1] if attn_key else None,
        # SD1 projects in/out of its transformers with 1x1 convs, SD2/SDXL with Linears.
        "use_linear_projection": bool(proj_key) and len(shape(proj_key)) == 2,
        "transformer_layers_per_block": _same_or_list(depths),
        "attention_head_dim": _unet_heads(layout, widths),
        "norm_num_groups": NORM_GROUPS,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "conv_in_kernel": first[2],
        "conv_out_kernel": shape("out.2.weight")[2],
    }
    if up_depths != depths[::-1]:
        config["reverse_transformer_layers_per_block"] = up_depths
    if shape("time_embed.0.weight")[0] != 4 * widths[0]:
        config["time_embedding_dim"] = shape("time_embed.0.weight")[0]
    if "label_emb.0.0.weight" in keyset:
        config.update(_text_time(layout, shape("label_emb.0.0.weight")[1], pooled_dim))
    return config


def _unet_heads(layout: Layout, widths: list[int]) -> int | list[int] | None:
    if layout.unet_heads is not None:
        return layout.unet_heads
    if any(w % HEAD_WIDTH for w in widths):
        return None  # left to an override; `check_unet_heads` says so if none comes
    return [w // HEAD_WIDTH for w in widths]


def check_unet_heads(config: dict[str, Any], layout: Layout) -> None:
    """Fails when the family's head rule did not fit and no override gave the head counts."""
    if config.get("attention_head_dim") is None and config.get("num_attention_heads") is None:
        raise ConversionError(
            f"UNet widths {config['block_out_channels']} are not multiples of the "
            f"{HEAD_WIDTH}-wide heads of {layout.family}: pass the head counts as a config "
            "override (unet.attention_head_dim)"
        )


def _text_time(layout: Layout, adm_in: int, pooled_dim: int | None) -> dict[str, Any]:
    # label_emb input = pooled text embedding + 6 size/crop ids, each sinusoid-embedded to
    # addition_time_embed_dim (256 in SDXL: 1280 + 6 * 256 = 2816).
    if not layout.text_time or pooled_dim is None or (adm_in - pooled_dim) % 6:
        raise ConversionError(
            f"UNet has a label embedding of input width {adm_in} that is not SDXL's "
            "text_time conditioning (class-conditioned UNets are not supported)"
        )
    return {
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": (adm_in - pooled_dim) // 6,
        "projection_class_embeddings_input_dim": adm_in,
    }


def infer_vae_config(keys: Iterable[str], shape: Shape, layout: Layout) -> dict[str, Any]:
    """AutoencoderKL config from `first_stage_model.`-relative keys."""
    keyset = set(keys)
    levels = indices(keyset, r"encoder\.down\.(\d+)\.")
    if not levels:
        raise ConversionError("VAE has no encoder.down blocks: unsupported layout")
    n = len(levels)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": shape("encoder.conv_in.weight")[1],
        "out_channels": shape("decoder.conv_out.weight")[0],
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": [shape(f"encoder.down.{i}.block.0.conv1.weight")[0] for i in levels],
        "layers_per_block": len(indices(keyset, r"encoder\.down\.0\.block\.(\d+)\.")),
        "latent_channels": shape("decoder.conv_in.weight")[1],
        "norm_num_groups": NORM_GROUPS,
        "act_fn": "silu",
        "scaling_factor": layout.vae_scaling,
        "use_quant_conv": "quant_conv.weight" in keyset,
        "use_post_quant_conv": "post_quant_conv.weight" in keyset,
        "mid_block_add_attention": _has_prefix(keyset, "encoder.mid.attn_1."),
    }


def _text_config(
    architecture: str,
    vocab_size: int,
    hidden: int,
    intermediate: int,
    layers: int,
    positions: int,
    hidden_act: str,
    projection_dim: int,
) -> dict[str, Any]:
    return {
        "architectures": [architecture],
        "model_type": "clip_text_model",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": max(hidden // HEAD_WIDTH, 1),
        "max_position_embeddings": positions,
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-5,
        "projection_dim": projection_dim,
    }


def infer_clip_config(keys: Iterable[str], shape: Shape) -> dict[str, Any]:
    """CLIPTextModel config from a pickled transformers CLIP (keys without the prefix)."""
    keyset = set(keys)
    p = "text_model." if _has_prefix(keyset, "text_model.") else ""
    vocab, hidden = shape(p + "embeddings.token_embedding.weight")
    return _text_config(
        "CLIPTextModel",
        vocab,
        hidden,
        shape(p + "encoder.layers.0.mlp.fc1.weight")[0],
        len(indices(keyset, re.escape(p) + r"encoder\.layers\.(\d+)\.")),
        shape(p + "embeddings.position_embedding.weight")[0],
        "quick_gelu",
        hidden,
    )


def open_clip_layers(keys: Iterable[str]) -> int:
    return len(indices(keys, r"transformer\.resblocks\.(\d+)\."))


def infer_open_clip_config(
    keys: Iterable[str], shape: Shape, *, with_projection: bool, drop_last_layer: bool
) -> dict[str, Any]:
    """CLIPTextModel(WithProjection) config from an OpenCLIP text tower (keys w/o the prefix)."""
    keyset = set(keys)
    vocab, hidden = shape("token_embedding.weight")
    projection = shape("text_projection")[1] if "text_projection" in keyset else hidden
    return _text_config(
        "CLIPTextModelWithProjection" if with_projection else "CLIPTextModel",
        vocab,
        hidden,
        shape("transformer.resblocks.0.mlp.c_fc.weight")[0],
        open_clip_layers(keyset) - int(drop_last_layer),
        shape("positional_embedding")[0],
        "gelu",
        projection,
    )
