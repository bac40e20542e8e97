"""Tiny random diffusers Flux.1 pipelines (dev, schnell, Kontext) for pipeline parity tests,
saved as users download them and converted with the real CLI.

Every parameter is perturbed (diffusers zero-inits some projections, which would hide mapping
bugs). The tokenizers are the locally written tiny CLIP and T5 tokenizers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
)
from transformers import (
    AutoTokenizer,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from jaxvideo.tokenizers import write_tiny_t5_tokenizer
from tests.support.tiny_sd import perturb, save_and_convert, text_config, tokenizer

__all__ = [
    "assert_close_u8",
    "deterministic_posterior",
    "flux_components",
    "gradient_image",
    "save_and_convert",
    "sd3_components",
]

WIDTH = 32
SD3_JOINT = 80  # T5's width: both CLIP layers (2 x 32) fit side by side


def t5_encoder(vocab_size: int, width: int = WIDTH) -> T5EncoderModel:
    """T5 v1.1 (gated GELU) at toy width."""
    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=width,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
        )
    )


def vae16(scaling: float = 0.3611, shift: float = 0.1159) -> AutoencoderKL:
    """The 16-channel Flux/SD3 VAE at toy width, 8x compression."""
    return AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling,
        shift_factor=shift,
    )


def flux_transformer(guidance: bool) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        in_channels=64,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=WIDTH,
        pooled_projection_dim=WIDTH,
        guidance_embeds=guidance,
        axes_dims_rope=(4, 6, 6),
    )


def flux_scheduler(dynamic: bool) -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1-dev's resolution-dependent shift, or schnell's fixed shift of 1."""
    if dynamic:
        return FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)


def flux_components(root: Path, variant: str) -> dict:
    """Components of a diffusers FluxPipeline: 'dev' (guidance embedding, dynamic shift),
    'schnell' (neither) or 'kontext' (dev's, for FluxKontextPipeline)."""
    torch.manual_seed(0)
    clip_tok = tokenizer(root)
    write_tiny_t5_tokenizer(root / "t5tok")
    t5_tok = AutoTokenizer.from_pretrained(str(root / "t5tok"))

    distilled = variant != "schnell"
    parts = {
        "tokenizer": clip_tok,
        "text_encoder": CLIPTextModel(text_config(clip_tok)),
        "tokenizer_2": t5_tok,
        "text_encoder_2": t5_encoder(len(t5_tok)),
        "transformer": flux_transformer(guidance=distilled),
        "vae": vae16(),
        "scheduler": flux_scheduler(dynamic=distilled),
    }
    for name in ("text_encoder", "text_encoder_2", "transformer", "vae"):
        perturb(parts[name])
        parts[name].eval()
    return parts


def sd3_transformer() -> SD3Transformer2DModel:
    """SD3.5 Medium at toy width: qk RMS norm and one dual-attention (MMDiT-X) block."""
    return SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        num_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=SD3_JOINT,
        caption_projection_dim=32,
        pooled_projection_dim=2 * WIDTH,
        out_channels=16,
        pos_embed_max_size=32,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )


def sd3_components(root: Path, t5: bool = True) -> dict:
    """Components of a diffusers StableDiffusion3Pipeline (T5 optional, as diffusers allows)."""
    torch.manual_seed(0)
    clip_tok = tokenizer(root)
    write_tiny_t5_tokenizer(root / "t5tok")
    t5_tok = AutoTokenizer.from_pretrained(str(root / "t5tok"))
    parts = {
        "tokenizer": clip_tok,
        "text_encoder": CLIPTextModelWithProjection(text_config(clip_tok, projection_dim=WIDTH)),
        "tokenizer_2": clip_tok,
        "text_encoder_2": CLIPTextModelWithProjection(
            text_config(clip_tok, act="gelu", projection_dim=WIDTH)
        ),
        "tokenizer_3": t5_tok if t5 else None,
        "text_encoder_3": t5_encoder(len(t5_tok), SD3_JOINT) if t5 else None,
        "transformer": sd3_transformer(),
        "vae": vae16(scaling=1.5305, shift=0.0609),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
    }
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"):
        if parts[name] is not None:
            perturb(parts[name])
            parts[name].eval()
    return parts


def assert_close_u8(ours: np.ndarray, ref: np.ndarray) -> None:
    """uint8 pictures within one 8-bit level of the reference's (int), and not flat."""
    assert ours.shape == ref.shape
    assert np.abs(ours.astype(np.int32) - ref).max() <= 1
    assert ours.std() > 1


def gradient_image(size: int) -> np.ndarray:
    """A size x size RGB test picture (smooth gradients, so every pixel is different)."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x * 4, y * 4, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)


def deterministic_posterior(vae: AutoencoderKL) -> None:
    """Pushes the encoder's log-variance channels to the clamp: an encode draws the mean."""
    with torch.no_grad():
        vae.encoder.conv_out.bias[vae.config.latent_channels :] = -100.0
