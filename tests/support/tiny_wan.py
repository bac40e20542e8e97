"""Tiny random diffusers Wan pipelines (2.1 T2V, 2.1 FLF2V with CLIP image tokens, 2.2 two
experts, 2.2 I2V) for pipeline parity tests, saved as users download them and converted with
the real CLI.

Every parameter is perturbed (diffusers zero-inits some projections, which would hide mapping
bugs). The tokenizer is the locally written tiny T5 tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    UMT5Config,
    UMT5EncoderModel,
)

from jaxvideo.tokenizers import write_tiny_t5_tokenizer
from tests.support.tiny_sd import perturb, save_and_convert

__all__ = ["components", "save_and_convert", "scheduler"]

CLIP_SIZE = 32
CLIP_TOKENS = (CLIP_SIZE // 8) ** 2 + 1  # patches + class token


def scheduler(shift: float = 3.0) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    )


def text_encoder(vocab_size: int) -> UMT5EncoderModel:
    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=vocab_size,
            d_model=32,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
        )
    )


def vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    )


def transformer(in_channels: int = 16, **kw) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=in_channels,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=48,
        num_layers=2,
        rope_max_seq_len=64,
        **kw,
    )


def image_encoder() -> CLIPVisionModel:
    return CLIPVisionModel(
        CLIPVisionConfig(
            image_size=CLIP_SIZE,
            patch_size=8,
            hidden_size=24,
            intermediate_size=40,
            num_hidden_layers=3,
            num_attention_heads=4,
        )
    )


def image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE}
    )


def components(root: Path, variant: str) -> dict:
    """Components for 't2v' (2.1), 'flf2v' (2.1 with CLIP tokens), 'moe' (2.2 two experts,
    text-to-video) or 'i2v22' (2.2 two experts, image-to-video)."""
    torch.manual_seed(0)
    write_tiny_t5_tokenizer(root / "tok")
    tok = AutoTokenizer.from_pretrained(str(root / "tok"))
    parts: dict = {
        "tokenizer": tok,
        "text_encoder": text_encoder(len(tok)),
        "vae": vae(),
        "scheduler": scheduler(),
    }
    if variant == "t2v":
        parts["transformer"] = transformer()
    elif variant == "flf2v":
        parts["transformer"] = transformer(
            in_channels=36,
            image_dim=24,
            added_kv_proj_dim=32,
            pos_embed_seq_len=2 * CLIP_TOKENS,
        )
        parts["image_encoder"] = image_encoder()
        parts["image_processor"] = image_processor()
    elif variant in ("moe", "i2v22"):
        channels = 36 if variant == "i2v22" else 16
        parts["transformer"] = transformer(in_channels=channels)
        parts["transformer_2"] = transformer(in_channels=channels)
        parts["boundary_ratio"] = 0.875
    else:
        raise ValueError(variant)
    for name in ("text_encoder", "vae", "transformer", "transformer_2", "image_encoder"):
        if name in parts:
            perturb(parts[name])
            parts[name].eval()  # freshly built modules train: UMT5 would apply dropout
    return parts
