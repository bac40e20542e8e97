#!/usr/bin/env python
"""Host memory while a model loads: peak RSS of a fresh process that loads a full-size SD 1.5
(fp32, random weights) with jaxvideo, and with diffusers, against the bytes of the weights.

`--build DIR` writes DIR/diffusers (a diffusers folder: UNet2DConditionModel's SD 1.x defaults,
CLIP ViT-L/14 text encoder, the SD VAE) and DIR/jaxvideo (its conversion). `--measure` then
loads each in a new process (so nothing else is in its memory) and prints one JSON line.

    python benchmarks/load_peak.py --build /tmp/sd15
    python benchmarks/load_peak.py --measure /tmp/sd15
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

LOAD_JAX = """
import resource, sys
from jaxvideo.pipelines.sd import StableDiffusionPipeline
pipe = StableDiffusionPipeline(sys.argv[1])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
LOAD_DIFFUSERS = """
import resource, sys, torch
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(
    sys.argv[1], torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# diffusers' tensors may still be pages of the mapped file: a forward reads every one.
for module in (pipe.unet, pipe.vae, pipe.text_encoder):
    for p in module.parameters():
        p.sum()
print(loaded)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
BASELINE = """
import resource{imports}
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def build(root: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from jaxvideo.convert.diffusers_folder import convert_diffusers_folder
    from jaxvideo.tokenizers import write_tiny_clip_tokenizer

    torch.manual_seed(0)
    write_tiny_clip_tokenizer(root / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tok"))
    text = CLIPTextModel(
        CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                       num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77)
    )  # fmt: skip
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(root / "diffusers", safe_serialization=True)
    del pipe, text, unet, vae
    convert_diffusers_folder(root / "diffusers", root / "jaxvideo", "fp32")


def peak_gb(script: str, folder: Path | None = None, line: int = -1) -> float:
    args = [sys.executable, "-c", script] + ([str(folder)] if folder else [])
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[line]) / 2**20


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def measure(root: Path) -> None:
    jax_gb = peak_gb(LOAD_JAX, root / "jaxvideo")
    torch_loaded_gb = peak_gb(LOAD_DIFFUSERS, root / "diffusers", line=-2)
    torch_gb = peak_gb(LOAD_DIFFUSERS, root / "diffusers")
    # What each process holds before any weight: the interpreter and its imports.
    jax_base = peak_gb(BASELINE.format(imports="\nimport jaxvideo.pipelines.sd"))
    torch_base = peak_gb(BASELINE.format(imports="\nimport diffusers, torch"))
    weights = weight_bytes(root / "jaxvideo") / 2**30
    print(
        json.dumps(
            {
                "benchmark": "load_peak_sd15_fp32",
                "weights_gb": round(weights, 2),
                "jax_peak_rss_gb": round(jax_gb, 2),
                "jax_imports_gb": round(jax_base, 2),
                "jax_peak_over_weights": round((jax_gb - jax_base) / weights, 2),
                "diffusers_loaded_rss_gb": round(torch_loaded_gb, 2),
                "diffusers_peak_rss_gb": round(torch_gb, 2),
                "diffusers_imports_gb": round(torch_base, 2),
                "diffusers_peak_over_weights": round((torch_gb - torch_base) / weights, 2),
                "machine": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "self_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--build", type=Path, help="write the diffusers folder and its conversion")
    p.add_argument("--measure", type=Path, help="measure the folders --build wrote")
    args = p.parse_args()
    if args.build:
        args.build.mkdir(parents=True, exist_ok=True)
        build(args.build)
    if args.measure:
        measure(args.measure)


if __name__ == "__main__":
    main()
