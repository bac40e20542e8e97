"""Tiny random-weight flow-matching DiT image demo models (`demo:flux-tiny`, a Kontext-dev-like
Flux, and `demo:sd3-tiny`, an SD3.5-Medium-like model).

Same folder format as a converted diffusers FLUX.1-dev / SD3.5 model: CLIP (and T5) text
encoders with locally written tokenizers, the transformer at toy width, the 16-channel VAE
with the real 8x compression and the FlowMatchEuler scheduler config each ships. Their
pictures are noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxvideo.demo import save_random_component
from jaxvideo.demo_sd import sd1_tiny_configs
from jaxvideo.families import FLUX, SD3, FamilySpec
from jaxvideo.tokenizers import write_tiny_clip_tokenizer, write_tiny_t5_tokenizer

# black-forest-labs/FLUX.1-dev's scheduler config: the resolution-dependent shift.
FLUX_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# stabilityai/stable-diffusion-3.5-*'s scheduler config: a fixed shift of 3.
SD3_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
}
# Small enough that a CPU makes a picture in seconds; requests may ask for more.
DEMO_DEFAULTS = {"width": 128, "height": 128, "steps": 8}
# T5 tokens per prompt (FLUX.1-dev: 512); the toy model needs few.
DEMO_TEXT_LENGTH = 64
WIDTH = 32  # the toy model width of every network


def _t5_config(vocab_size: int, width: int = WIDTH) -> dict[str, Any]:
    """T5 v1.1 (gated GELU) at toy width, as Flux and SD3.5 use it."""
    return {
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "vocab_size": vocab_size,
        "d_model": width,
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
    }


def _vae_config(scaling: float, shift: float) -> dict[str, Any]:
    """The SD demo VAE with 16 latent channels, no quant convs and a latent shift."""
    vae = dict(sd1_tiny_configs(8)["vae"])
    vae.update(
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling,
        shift_factor=shift,
    )
    return vae


def flux_tiny_configs(clip_vocab: int, t5_vocab: int) -> dict[str, dict[str, Any]]:
    """FLUX.1-dev architecture at toy width: double and single blocks, guidance embedding."""
    return {
        "text_encoder": sd1_tiny_configs(clip_vocab)["text_encoder"],
        "text_encoder_2": _t5_config(t5_vocab),
        "transformer": {
            "_class_name": "FluxTransformer2DModel",
            "patch_size": 1,
            "in_channels": 64,
            "num_layers": 1,
            "num_single_layers": 2,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": WIDTH,
            "pooled_projection_dim": WIDTH,
            "guidance_embeds": True,
            "axes_dims_rope": [4, 6, 6],
        },
        "vae": _vae_config(scaling=0.3611, shift=0.1159),
    }


def sd3_tiny_configs(clip_vocab: int, t5_vocab: int) -> dict[str, dict[str, Any]]:
    """SD3.5 Medium architecture at toy width: qk RMS norm, an MMDiT-X dual-attention block,
    two projected CLIP encoders and T5."""
    clip = sd1_tiny_configs(clip_vocab)["text_encoder"]
    clip = dict(clip, architectures=["CLIPTextModelWithProjection"])
    clip_g = dict(clip, hidden_size=48, intermediate_size=96, projection_dim=48)
    # T5's width holds both CLIP layers side by side (SD3.5: 768 + 1280 <= 4096).
    joint = 96
    return {
        "text_encoder": clip,
        "text_encoder_2": clip_g,
        "text_encoder_3": _t5_config(t5_vocab, joint),
        "transformer": {
            "_class_name": "SD3Transformer2DModel",
            "sample_size": 32,
            "patch_size": 2,
            "in_channels": 16,
            "num_layers": 3,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": joint,
            "caption_projection_dim": 32,
            "pooled_projection_dim": 32 + 48,
            "out_channels": 16,
            "pos_embed_max_size": 64,
            "dual_attention_layers": [0],
            "qk_norm": "rms_norm",
        },
        "vae": _vae_config(scaling=1.5305, shift=0.0609),
    }


def _write(
    out: Path,
    family: FamilySpec,
    configs: dict[str, dict[str, Any]],
    scheduler: dict[str, Any],
    seed: int,
    source: str = "demo (random weights)",
    **settings: Any,
) -> Path:
    for i, (name, config) in enumerate(configs.items()):
        save_random_component(out / name, config, seed + i)
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    copied = [p.name for p in out.iterdir() if p.name.startswith("tokenizer")] + ["scheduler"]
    index: dict[str, Any] = {
        "format": "jaxvideo",
        "format_version": 1,
        "family": family.name,
        "dtype": "fp32",
        "source_class": source,
        "components": {
            name: config.get("_class_name") or config["architectures"][0]
            for name, config in configs.items()
        }
        | {name: "copied" for name in sorted(copied)},
        "defaults": DEMO_DEFAULTS,
        **settings,
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def build_flux_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny FLUX.1 Kontext-dev-like model: distilled guidance embedding, dynamic shift, and
    reference images (Kontext-dev is FLUX.1-dev's network; without references it draws as
    dev does)."""
    out = Path(out_dir)
    clip_vocab = write_tiny_clip_tokenizer(out / "tokenizer")
    t5_vocab = write_tiny_t5_tokenizer(out / "tokenizer_2")
    configs = flux_tiny_configs(clip_vocab, t5_vocab)
    source = "FluxKontextPipeline (demo, random weights)"
    return _write(
        out, FLUX, configs, FLUX_SCHEDULER, seed, source, max_sequence_length=DEMO_TEXT_LENGTH
    )


def build_sd3_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny SD3.5-Medium-like model (CFG, skip-layer guidance over 3 blocks)."""
    out = Path(out_dir)
    clip_vocab = write_tiny_clip_tokenizer(out / "tokenizer")
    write_tiny_clip_tokenizer(out / "tokenizer_2")
    t5_vocab = write_tiny_t5_tokenizer(out / "tokenizer_3")
    configs = sd3_tiny_configs(clip_vocab, t5_vocab)
    source = "StableDiffusion3Pipeline (demo, random weights)"
    return _write(
        out, SD3, configs, SD3_SCHEDULER, seed, source, max_sequence_length=DEMO_TEXT_LENGTH
    )
