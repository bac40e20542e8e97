"""The tiny random-weight SD 1.x demo model (`demo:sd1-tiny`).

Same folder format as a converted diffusers SD 1.x model: CLIP text encoder with a locally
written tokenizer, UNet and VAE at toy width, and the Euler scheduler config. Its pictures are
noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxvideo.demo import save_random_component
from jaxvideo.families import SD1
from jaxvideo.tokenizers import write_tiny_clip_tokenizer

SD1_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
}


def sd1_tiny_configs(vocab_size: int) -> dict[str, dict[str, Any]]:
    """SD 1.x architecture at toy width: same block types, 8x VAE, 77-token CLIP context."""
    return {
        "text_encoder": {
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
            "projection_dim": 32,
        },
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "attention_head_dim": 4,
            "cross_attention_dim": 32,
            "norm_num_groups": 8,
            "norm_eps": 1e-5,
            "use_linear_projection": False,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
        },
        "vae": {
            "_class_name": "AutoencoderKL",
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [16, 16, 32, 32],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 8,
            "sample_size": 64,
            "scaling_factor": 0.18215,
        },
    }


def build_sd1_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """Writes a complete tiny SD 1.x model folder (all components + tokenizer + scheduler)."""
    out = Path(out_dir)
    vocab_size = write_tiny_clip_tokenizer(out / "tokenizer")
    for i, (name, cfg) in enumerate(sd1_tiny_configs(vocab_size).items()):
        save_random_component(out / name, cfg, seed + i)
    write_sd1_folder_files(out, "demo (random weights)")
    return out


def write_sd1_folder_files(
    out: Path,
    source: str,
    dtype: str = "fp32",
    scheduler: dict[str, Any] = SD1_SCHEDULER,
    defaults: dict[str, Any] | None = None,
) -> None:
    """The scheduler config and model_index.json of an SD 1.x demo folder (`defaults`: the
    request fields the folder's model gets unless asked otherwise, pipelines/base.py)."""
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {
        "format": "jaxvideo",
        "format_version": 1,
        "family": SD1.name,
        "dtype": dtype,
        **({"defaults": defaults} if defaults else {}),
        "source_class": source,
        "components": {
            "text_encoder": "CLIPTextModel",
            "unet": "UNet2DConditionModel",
            "vae": "AutoencoderKL",
            "tokenizer": "copied",
            "scheduler": "copied",
        },
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
