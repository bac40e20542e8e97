#!/usr/bin/env python
"""Expected per-chip memory of full-size models on common accelerator meshes, from the planner.

No weights and no accelerator: each model is its published diffusers-style configs, built as
an abstract network (shapes only) and traced at the request's shapes by jaxvideo.memory_plan /
jaxvideo.cost, as the engine does before it loads a model. For each model, request size and
mesh it prints one Markdown row (per-chip weights, the activations of the largest network
call, their total, and whether the total fits in the usable memory of a v5e, v6e and H100
chip, bf16), then the FLOPs of one denoiser call and of one full decode, and one JSON line per
row (`--json-only`: those alone).

    python benchmarks/memory_plan.py                       # Wan 2.1 1.3B and 14B, 480p / 720p
    python benchmarks/memory_plan.py --models all          # + SD 1.5, SDXL, FLUX.1-dev, SD3.5 M

The figures are the planner's: weights as jaxvideo.sharding places them, activations as a
liveness peak over the traced program with flash attention (no score matrix) and no XLA
fusion (so they err high). The planner keeps `memory_plan.RESERVE_FRACTION` of each chip free.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jaxvideo.cost import Cost, NetworkCall, Shape
from jaxvideo.memory_plan import GIB, RESERVE_FRACTION, ModelPlan, usable
from jaxvideo.models.wan_vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD

# --- the published configs (diffusers / transformers config.json) ------------------------------

UMT5_XXL = {  # google/umt5-xxl encoder: Wan's text encoder
    "architectures": ["UMT5EncoderModel"],
    "model_type": "umt5",
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
}
T5_XXL = {  # google/t5-v1_1-xxl encoder: FLUX.1's and SD3's
    "architectures": ["T5EncoderModel"],
    "model_type": "t5",
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
}
CLIP_L = {  # openai/clip-vit-large-patch14 text tower
    "architectures": ["CLIPTextModel"],
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
CLIP_G = {  # OpenCLIP ViT-bigG/14 text tower (SDXL's and SD3's text_encoder_2)
    "architectures": ["CLIPTextModelWithProjection"],
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

WAN_TRANSFORMER_1_3B = {
    "_class_name": "WanTransformer3DModel",
    "patch_size": [1, 2, 2],
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
WAN_TRANSFORMER_14B = {
    **WAN_TRANSFORMER_1_3B,
    "num_attention_heads": 40,
    "ffn_dim": 13824,
    "num_layers": 40,
}
WAN_VAE = {
    "_class_name": "AutoencoderKLWan",
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": list(WAN21_LATENTS_MEAN),
    "latents_std": list(WAN21_LATENTS_STD),
}

_KL_BLOCKS = {
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "in_channels": 3,
    "out_channels": 3,
}
SD_VAE = {"_class_name": "AutoencoderKL", **_KL_BLOCKS, "latent_channels": 4}
SDXL_VAE = {**SD_VAE, "scaling_factor": 0.13025}
FLUX_VAE = {
    "_class_name": "AutoencoderKL",
    **_KL_BLOCKS,
    "latent_channels": 16,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
SD3_VAE = {**FLUX_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}

SD15_UNET = {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768}  # the defaults
SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
FLUX_DEV_TRANSFORMER = {
    "_class_name": "FluxTransformer2DModel",
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
SD35_MEDIUM_TRANSFORMER = {
    "_class_name": "SD3Transformer2DModel",
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)),
    "qk_norm": "rms_norm",
}


@dataclass(frozen=True)
class Model:
    name: str
    configs: Mapping[str, Mapping[str, Any]]  # component folder -> config.json
    index: Mapping[str, Any]  # model_index.json (its "family")
    shapes: Mapping[str, Shape]  # label -> request shape


VIDEO = {
    "480p": Shape(832, 480, frames=81),
    "720p": Shape(1280, 720, frames=81),
}


def _wan(name: str, transformer: Mapping[str, Any]) -> Model:
    configs = {"text_encoder": UMT5_XXL, "transformer": transformer, "vae": WAN_VAE}
    return Model(name, configs, {"family": "wan21"}, VIDEO)


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        _wan("wan2.1-t2v-1.3b", WAN_TRANSFORMER_1_3B),
        _wan("wan2.1-t2v-14b", WAN_TRANSFORMER_14B),
        Model(
            "sd1.5",
            {"text_encoder": CLIP_L, "unet": SD15_UNET, "vae": SD_VAE},
            {"family": "sd1"},
            {"512px": Shape(512, 512)},
        ),
        Model(
            "sdxl",
            {
                "text_encoder": CLIP_L,
                "text_encoder_2": CLIP_G,
                "unet": SDXL_UNET,
                "vae": SDXL_VAE,
            },
            {"family": "sdxl"},
            {"1024px": Shape(1024, 1024)},
        ),
        Model(  # FLUX.1-dev is guidance-distilled: one pass a step, no CFG
            "flux.1-dev",
            {
                "text_encoder": CLIP_L,
                "text_encoder_2": T5_XXL,
                "transformer": FLUX_DEV_TRANSFORMER,
                "vae": FLUX_VAE,
            },
            {"family": "flux", "max_sequence_length": 512},
            {"1024px": Shape(1024, 1024, cfg=False)},
        ),
        Model(
            "sd3.5-medium",
            {
                "text_encoder": {**CLIP_L, "architectures": ["CLIPTextModelWithProjection"]},
                "text_encoder_2": CLIP_G,
                "text_encoder_3": T5_XXL,
                "transformer": SD35_MEDIUM_TRANSFORMER,
                "vae": SD3_VAE,
            },
            {"family": "sd3", "max_sequence_length": 256},
            {"1024px": Shape(1024, 1024)},
        ),
    )
}
WAN_MODELS = ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b")

# Chips (HBM per chip) whose 8-chip hosts the meshes are sized for.
CHIPS: dict[str, float] = {"v5e": 16.0, "v6e": 32.0, "H100": 80.0}
MESHES: tuple[dict[str, int], ...] = (
    {},  # one chip
    {"context": 8},
    {"fsdp": 8},
    {"fsdp": 2, "context": 4},
    {"fsdp": 4, "context": 2},
    {"data": 2, "fsdp": 4},
    {"data": 2, "context": 4},
    {"fsdp": 4, "tensor": 2},
)


class _MeshPlan(ModelPlan):
    """`base`'s plan on another mesh: its abstract networks and per-call costs (which do not
    depend on the mesh) are shared, only the division over devices differs."""

    def __init__(self, base: ModelPlan, mesh: Mapping[str, int]):
        super().__init__("", base.dtype, mesh, base.configs, base.index)
        self._base = base

    def module(self, component: str):
        return self._base.module(component)

    def costs(self, shape: Shape) -> tuple[tuple[NetworkCall, Cost], ...]:
        return self._base.costs(shape)


def mesh_label(mesh: Mapping[str, int]) -> str:
    return ",".join(f"{axis}={size}" for axis, size in mesh.items()) or "1 chip"


def rows(
    model: Model,
    meshes: Sequence[Mapping[str, int]] = MESHES,
    chips: Mapping[str, float] = CHIPS,
    dtype: str = "bf16",
) -> Iterable[dict[str, Any]]:
    """One dict per (request shape, mesh): per-chip GiB, and whether it fits on each chip."""
    base = ModelPlan("", dtype, {}, model.configs, model.index)
    for label, shape in model.shapes.items():
        flops = base.flops(shape)
        for mesh in meshes:
            estimate = (_MeshPlan(base, mesh) if mesh else base).estimate(shape)
            yield {
                "model": model.name,
                "size": label,
                "width": shape.width,
                "height": shape.height,
                "frames": shape.frames,
                "batch": shape.batch,
                "cfg": shape.cfg,
                "dtype": dtype,
                "mesh": dict(mesh),
                "weights_gib": round(estimate.weights / GIB, 2),
                "activations_gib": round(estimate.activations / GIB, 2),
                "peak_call": estimate.peak_call,
                "total_gib": round(estimate.total / GIB, 2),
                "weights_bytes": estimate.weights,
                "activations_bytes": estimate.activations,
                "total_bytes": estimate.total,
                "fits": {
                    chip: estimate.total <= usable(int(gib * GIB)) for chip, gib in chips.items()
                },
                "denoiser_tflop": round(flops.get("denoiser", 0.0) / 1e12, 1),
                "decode_tflop": round(flops.get("decoder", 0.0) / 1e12, 1),
            }


def markdown(table: Sequence[dict[str, Any]], chips: Mapping[str, float] = CHIPS) -> str:
    fit_heads = [f"{chip} ({gib:g} GiB)" for chip, gib in chips.items()]
    head = ["model", "size", "mesh", "weights", "activations (peak call)", "total", *fit_heads]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        fits = ["yes" if r["fits"][chip] else "no" for chip in chips]
        lines.append(
            f"| {r['model']} | {r['size']} | {mesh_label(r['mesh'])} | {r['weights_gib']:.2f} | "
            f"{r['activations_gib']:.2f} ({r['peak_call']}) | {r['total_gib']:.2f} | "
            + " | ".join(fits)
            + " |"
        )
    flops_head = ["model", "size", "denoiser call (TFLOP)", "full decode (TFLOP)"]
    lines += ["", "| " + " | ".join(flops_head) + " |", "|" + "---|" * len(flops_head)]
    seen = set()
    for r in table:
        if (r["model"], r["size"]) not in seen:
            seen.add((r["model"], r["size"]))
            lines.append(
                f"| {r['model']} | {r['size']} | {r['denoiser_tflop']:.1f} | "
                f"{r['decode_tflop']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        default=",".join(WAN_MODELS),
        help=f"comma-separated, or 'all' (of {', '.join(MODELS)})",
    )
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--json-only", action="store_true", help="print the JSON lines alone")
    args = p.parse_args(argv)
    names = list(MODELS) if args.models == "all" else args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")

    start = time.perf_counter()
    table = [row for name in names for row in rows(MODELS[name], dtype=args.dtype)]
    if not args.json_only:
        sizes = {label: s for name in names for label, s in MODELS[name].shapes.items()}
        described = ", ".join(
            f"{label} = {s.width}x{s.height}" + (f", {s.frames} frames" if s.frames > 1 else "")
            for label, s in sizes.items()
        )
        print(
            f"Per-chip memory in GiB ({args.dtype}, batch 1, CFG on but for FLUX.1-dev; "
            f"{described}); a chip fits the model when the total is within its usable "
            f"memory ({1 - RESERVE_FRACTION:.0%} of it). FLOPs are of the whole mesh.\n"
        )
        print(markdown(table))
        print(f"\n({time.perf_counter() - start:.1f} s)\n")
    for row in table:
        print(json.dumps(row))
    return table


if __name__ == "__main__":
    main()
