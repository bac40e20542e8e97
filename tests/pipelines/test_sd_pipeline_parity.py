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
from diffusers import EulerDiscreteScheduler
from diffusers import StableDiffusionPipeline as TorchSDPipeline
from safetensors.torch import load_file, save_file

from jaxvideo.pipelines.sd import StableDiffusionPipeline
from jaxvideo.request import build_request
from tests.support import tiny_sd

REPO = Path(__file__).resolve().parents[2]
CONVERT = [sys.executable, str(REPO / "tools" / "convert_weights.py"), "--quiet"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1")
    pipe = TorchSDPipeline(
        **tiny_sd.components(root, "sd1"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tiny_sd.save_and_convert(pipe, root)
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
