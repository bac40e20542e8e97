"""Tiny random-weight demo models, built locally in the converted-model folder format.

`gunicorn webapp:app` with no configuration serves these so every endpoint works on a fresh
machine with no downloads. Their weights are random: the pictures they make are noise. The
folders are exactly what `tools/convert_weights.py` writes for real checkpoints, so the demo
exercises the same loading code as a real deployment.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from jaxvideo.config import DEMO_PREFIX
from jaxvideo.models.registry import class_name_of, spec_for
from jaxvideo.tokenizers import write_tiny_clip_tokenizer
from jaxvideo.weights import abstract_model, param_shapes, save_component

READY_MARKER = ".complete"

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


def random_params(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Scaled-normal weights, unit norm scales, zero biases: numbers, not a trained model.

    Drawn with numpy rather than the modules' initialisers, which run op by op and take
    minutes on a CPU even for a toy network.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for path, shape in shapes.items():
        leaf = path.rsplit(".", 1)[-1]
        if leaf == "scale":
            params[path] = np.ones(shape, np.float32)
        elif leaf == "bias":
            params[path] = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            std = 0.02 if leaf == "embedding" else fan_in**-0.5
            params[path] = (rng.standard_normal(shape) * std).astype(np.float32)
    return params


def save_random_component(out_dir: Path, hf_config: dict[str, Any], seed: int) -> None:
    spec = spec_for(class_name_of(hf_config))
    shapes = param_shapes(abstract_model(spec, spec.config_from_hf(hf_config)))
    save_component(out_dir, hf_config, random_params(shapes, seed))


def build_sd1_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """Writes a complete tiny SD 1.x model folder (all components + tokenizer + scheduler)."""
    out = Path(out_dir)
    vocab_size = write_tiny_clip_tokenizer(out / "tokenizer")
    for i, (name, cfg) in enumerate(sd1_tiny_configs(vocab_size).items()):
        save_random_component(out / name, cfg, seed + i)
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD1_SCHEDULER, indent=2))
    index = {
        "format": "jaxvideo",
        "format_version": 1,
        "family": "sd1",
        "dtype": "fp32",
        "source_class": "demo (random weights)",
        "components": {
            "text_encoder": "CLIPTextModel",
            "unet": "UNet2DConditionModel",
            "vae": "AutoencoderKL",
            "tokenizer": "copied",
            "scheduler": "copied",
        },
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def _build_wan_tiny(out_dir: Path) -> Path:
    from jaxvideo.demo_wan import build_wan_tiny

    return build_wan_tiny(out_dir)


def _build_wan22_tiny(out_dir: Path) -> Path:
    from jaxvideo.demo_wan import build_wan22_tiny

    return build_wan22_tiny(out_dir)


BUILDERS = {
    "sd1-tiny": build_sd1_tiny,
    "wan-tiny": _build_wan_tiny,
    "wan22-tiny": _build_wan22_tiny,
}


def cache_dir() -> Path:
    return Path(os.environ.get("JAXVIDEO_CACHE_DIR", Path.home() / ".cache" / "jaxvideo"))


def resolve_demo(path: str) -> Path:
    """Path of the demo model named by `demo:<name>`, building it on first use.

    Built in a temporary folder then renamed, so a crash or a concurrent start never leaves a
    half-written model behind.
    """
    name = path[len(DEMO_PREFIX) :]
    if name not in BUILDERS:
        raise ValueError(f"unknown demo model {name!r}; available: {', '.join(BUILDERS)}")
    target = cache_dir() / "demo" / name
    if (target / READY_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        BUILDERS[name](tmp)
        (tmp / READY_MARKER).write_text("ok\n")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not (target / READY_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
