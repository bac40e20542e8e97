"""Tiny random-weight Wan demo models (`demo:wan-tiny`, `demo:wan22-tiny`).

Same folder format as a converted diffusers Wan model: UMT5 text encoder with a locally written
T5 tokenizer, WanTransformer3DModel (two experts for Wan 2.2), AutoencoderKLWan with the real
8x/4x compression, and the UniPC flow scheduler config Wan ships. Their videos are noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxvideo.demo import save_random_component
from jaxvideo.families import WAN21, WAN22, FamilySpec
from jaxvideo.tokenizers import write_tiny_t5_tokenizer

# Wan 2.1's published latent statistics (the VAE config of every Wan 2.1/2.2 A14B model).
WAN_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]  # fmt: skip
WAN_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]  # fmt: skip

# diffusers' Wan scheduler config (what its Wan-AI/*-Diffusers folders ship).
WAN_SCHEDULER = {
    "_class_name": "UniPCMultistepScheduler",
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "solver_order": 2,
    "solver_type": "bh2",
    "predict_x0": True,
    "lower_order_final": True,
}

# Small enough that a CPU makes a 17-frame clip in seconds; requests may ask for more.
DEMO_DEFAULTS = {"width": 128, "height": 128, "num_frames": 17, "fps": 16}


def wan_tiny_configs(vocab_size: int, in_channels: int = 16) -> dict[str, dict[str, Any]]:
    """Wan architecture at toy width: 3D RoPE DiT with patch (1, 2, 2), causal 3D VAE."""
    return {
        "text_encoder": {
            "architectures": ["UMT5EncoderModel"],
            "model_type": "umt5",
            "vocab_size": vocab_size,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 64,
            "num_layers": 2,
            "num_heads": 4,
            "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu",
            "layer_norm_epsilon": 1e-6,
            "pad_token_id": 0,
            "eos_token_id": 1,
        },
        "transformer": {
            "_class_name": "WanTransformer3DModel",
            "patch_size": [1, 2, 2],
            "num_attention_heads": 2,
            "attention_head_dim": 16,
            "in_channels": in_channels,
            "out_channels": 16,
            "text_dim": 32,
            "freq_dim": 32,
            "ffn_dim": 64,
            "num_layers": 2,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "eps": 1e-6,
            "image_dim": None,
            "added_kv_proj_dim": None,
            "rope_max_seq_len": 1024,
        },
        "vae": {
            "_class_name": "AutoencoderKLWan",
            "base_dim": 8,
            "z_dim": 16,
            "dim_mult": [1, 2, 2, 2],
            "num_res_blocks": 1,
            "attn_scales": [],
            "temperal_downsample": [False, True, True],
            "dropout": 0.0,
            "latents_mean": WAN_LATENTS_MEAN,
            "latents_std": WAN_LATENTS_STD,
        },
    }


def _build(out_dir: str | Path, family: FamilySpec, seed: int, two_experts: bool) -> Path:
    out = Path(out_dir)
    vocab_size = write_tiny_t5_tokenizer(out / "tokenizer")
    # Wan 2.2's image-to-video experts take latents + 4 mask + 16 image-latent channels.
    configs = wan_tiny_configs(vocab_size, in_channels=36 if two_experts else 16)
    if two_experts:
        configs["transformer_2"] = configs["transformer"]
    for i, (name, config) in enumerate(configs.items()):
        save_random_component(out / name, config, seed + i)
    # Wan 2.2 I2V A14B's switch point between the experts.
    extra = {"boundary_ratio": 0.9} if two_experts else {}
    write_wan_folder_files(out, family, configs, extra=extra)
    return out


def write_wan_folder_files(
    out: Path,
    family: FamilySpec,
    configs: dict[str, dict[str, Any]],
    *,
    source: str = "demo (random weights)",
    dtype: str = "fp32",
    scheduler: dict[str, Any] = WAN_SCHEDULER,
    defaults: dict[str, Any] = DEMO_DEFAULTS,
    extra: dict[str, Any] | None = None,
) -> None:
    """The scheduler config and model_index.json of a Wan demo folder whose networks
    (`configs`: folder name -> diffusers config) are written (`defaults`: the request fields
    its model gets unless asked otherwise, pipelines/base.py; `extra`: more index fields)."""
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index: dict[str, Any] = {
        "format": "jaxvideo",
        "format_version": 1,
        "family": family.name,
        "dtype": dtype,
        "source_class": source,
        "components": {
            name: config.get("_class_name") or config["architectures"][0]
            for name, config in configs.items()
        }
        | {"tokenizer": "copied", "scheduler": "copied"},
        "defaults": defaults,
        **(extra or {}),
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def build_wan_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny Wan 2.1 text-to-video model."""
    return _build(out_dir, WAN21, seed, two_experts=False)


def build_wan22_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny Wan 2.2 two-expert image-to-video model (first and last frame conditioning)."""
    return _build(out_dir, WAN22, seed, two_experts=True)
