"""A whole SD 1.x pipeline converted by tools/convert_weights.py matches diffusers' pipeline.

A tiny random diffusers StableDiffusionPipeline is saved as users download one, converted with
the real CLI, then both pipelines run text encoding, the Euler sampler with CFG over the UNet and
the VAE decode from the same initial latents; the images must agree to within one 8-bit level.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers import StableDiffusionPipeline as TorchSDPipeline
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from jaxvideo.pipelines.sd import StableDiffusionPipeline
from jaxvideo.request import build_request
from jaxvideo.tokenizers import write_tiny_clip_tokenizer

REPO = Path(__file__).resolve().parents[1]
CONVERT = [sys.executable, str(REPO / "tools" / "convert_weights.py"), "--quiet"]


def perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    """Random weights everywhere: diffusers zero-inits conv_out, which would hide mapping bugs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def tiny_torch_pipeline(tokenizer_dir: Path, karras: bool) -> TorchSDPipeline:
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="quick_gelu",
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    for m in (text_encoder, unet, vae):
        perturb(m)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="linspace",
        use_karras_sigmas=karras,
    )
    return TorchSDPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1")
    write_tiny_clip_tokenizer(root / "tok")
    pipe = tiny_torch_pipeline(root / "tok", karras=False)
    pipe.save_pretrained(root / "src", safe_serialization=True)
    out = subprocess.run(
        CONVERT + [str(root / "src"), str(root / "dst")], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    return pipe, root


def test_cli_writes_the_jaxvideo_folder_format(converted):
    _, root = converted
    index = json.loads((root / "dst" / "model_index.json").read_text())
    assert index["family"] == "sd1"
    assert set(index["components"]) >= {"text_encoder", "unet", "vae", "tokenizer", "scheduler"}
    for name in ("text_encoder", "unet", "vae"):
        assert (root / "dst" / name / "model.safetensors").is_file()
    assert (root / "dst" / "tokenizer" / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("scheduler", ["discrete", "karras"])
def test_pipeline_matches_diffusers_from_the_same_latents(converted, scheduler):
    pipe, root = converted
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, use_karras_sigmas=scheduler == "karras"
    )
    ours = StableDiffusionPipeline(root / "dst")
    req = build_request(
        {
            "prompt": "a red fox in the snow",
            "negative_prompt": "blurry",
            "width": 64,
            "height": 64,
            "steps": 5,
            "guidance_scale": 5.0,
            "sampler": "euler",
            "scheduler": scheduler,
            "seed": 3,
        }
    )
    noise, keys = ours.initial_noise(req)
    pixels = ours.sample(noise, keys, req)
    latents = torch.from_numpy(np.asarray(noise)).permute(0, 3, 1, 2).contiguous()
    ref = pipe(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        height=64,
        width=64,
        num_inference_steps=5,
        guidance_scale=5.0,
        latents=latents,
        output_type="np",
    ).images
    ref_u8 = np.round(ref * 255).astype(np.int32)
    assert pixels.shape == (1, 64, 64, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(np.int32) - ref_u8).max() <= 1
    assert pixels.std() > 1  # not a flat image


def test_cli_names_a_mis_shaped_tensor(converted, tmp_path):
    pipe, root = converted
    bad = tmp_path / "bad"
    pipe.save_pretrained(bad, safe_serialization=True)
    weights = bad / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    key = "down_blocks.0.resnets.0.conv1.weight"
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, weights)
    out = subprocess.run(
        CONVERT + [str(bad), str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 1
    assert key in out.stderr and "shape" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_rejects_a_folder_without_model_index(tmp_path):
    out = subprocess.run(
        CONVERT + [str(tmp_path), str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 1 and "model_index.json" in out.stderr
