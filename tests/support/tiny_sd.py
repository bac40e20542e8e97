"""Tiny random diffusers SD pipelines (SD1, SD2 v-prediction, SDXL, inpainting) for parity tests.

Weights are perturbed everywhere (diffusers zero-inits conv_out and some projections, which
would hide conversion bugs). Tokenizers are the locally written character-level CLIP BPE.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from jaxvideo.tokenizers import write_tiny_clip_tokenizer

REPO = Path(__file__).resolve().parents[2]


def perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def tokenizer(root: Path) -> CLIPTokenizer:
    write_tiny_clip_tokenizer(root / "tok")
    return CLIPTokenizer.from_pretrained(str(root / "tok"))


def text_config(tok: CLIPTokenizer, act: str = "quick_gelu", **kw) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
        hidden_act=act,
        **kw,
    )


def vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )


def unet(**kw) -> UNet2DConditionModel:
    args = dict(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    args.update(kw)
    return UNet2DConditionModel(**args)


def scheduler(prediction_type: str = "epsilon") -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="linspace",
        prediction_type=prediction_type,
    )


def components(root: Path, family: str) -> dict:
    """Pipeline components for 'sd1', 'sd2' (v-prediction), 'sdxl' or 'inpaint' (SD1, 9 ch)."""
    torch.manual_seed(0)
    tok = tokenizer(root)
    parts: dict = {"vae": vae(), "tokenizer": tok}
    if family == "sdxl":
        parts["text_encoder"] = CLIPTextModel(text_config(tok))
        parts["text_encoder_2"] = CLIPTextModelWithProjection(
            text_config(tok, act="gelu", projection_dim=24)
        )
        parts["tokenizer_2"] = tok
        parts["unet"] = unet(
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 24,
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
        )
        parts["scheduler"] = scheduler()
    else:
        act = "gelu" if family == "sd2" else "quick_gelu"
        parts["text_encoder"] = CLIPTextModel(text_config(tok, act=act))
        extra = {"in_channels": 9} if family == "inpaint" else {}
        if family == "sd2":
            extra = {"use_linear_projection": True, "attention_head_dim": (2, 4)}
        parts["unet"] = unet(**extra)
        parts["scheduler"] = scheduler("v_prediction" if family == "sd2" else "epsilon")
    for name in ("vae", "unet", "text_encoder", "text_encoder_2"):
        if name in parts:
            perturb(parts[name])
    return parts


def save_and_convert(pipe, root: Path) -> Path:
    """Saves `pipe` as a diffusers folder and converts it with the real CLI; returns the dst."""
    pipe.save_pretrained(root / "src", safe_serialization=True)
    cli = [sys.executable, str(REPO / "tools" / "convert_weights.py"), "--quiet"]
    out = subprocess.run(
        cli + [str(root / "src"), str(root / "dst")], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    return root / "dst"
