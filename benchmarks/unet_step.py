#!/usr/bin/env python
"""Denoiser step time: jaxvideo's Flax UNet vs the diffusers PyTorch UNet, same weights, same run.

One "step" is one CFG denoiser call: batch 2 (uncond + cond) at the given latent size with a
77-token context (SDXL: its pooled text embeds and size time_ids too), which is what one sampler
step costs. The run has two phases so a large UNet never sits in memory twice: PyTorch builds
random weights, is timed and saves them as a diffusers folder; then jaxvideo converts that folder
with its own converter, loads it and is timed on the same inputs. Prints one JSON line.

    python benchmarks/unet_step.py --config sd15 --size 512 --steps 3
    python benchmarks/unet_step.py --config sdxl-base --size 1024 --steps 2
    python benchmarks/unet_step.py --config demo --size 256 --steps 10
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import UNet2DConditionModel as TorchUNet
from flax import nnx

from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.demo_sd import sd1_tiny_configs
from jaxvideo.weights import load_component

# diffusers' UNet2DConditionModel defaults are exactly the SD 1.x UNet.
SD15: dict = {"sample_size": 64, "cross_attention_dim": 768}
SDXL: dict = {
    "sample_size": 128,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def unet_kwargs(name: str) -> dict:
    if name == "demo":
        cfg = sd1_tiny_configs(514)["unet"]
        return {k: v for k, v in cfg.items() if not k.startswith("_")}
    return {"sd15": SD15, "sdxl-base": SDXL}[name]


def time_calls(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def inputs(cfg: dict, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    latent = size // 8
    out = {
        "x": rng.standard_normal((2, latent, latent, cfg["in_channels"])).astype(np.float32),
        "ctx": rng.standard_normal((2, 77, cfg["cross_attention_dim"])).astype(np.float32),
        "t": np.array([500.0, 500.0], np.float32),
    }
    if cfg.get("addition_embed_type") == "text_time":
        pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        out["text_embeds"] = rng.standard_normal((2, pooled)).astype(np.float32)
        out["time_ids"] = np.tile(np.array([size, size, 0, 0, size, size], np.float32), (2, 1))
    return out


def torch_phase(name: str, size: int, steps: int, folder: Path):
    torch.manual_seed(0)
    ref = TorchUNet(**unet_kwargs(name)).eval()
    cfg = dict(ref.config)
    data = inputs(cfg, size)
    args = (
        torch.from_numpy(data["x"]).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(data["t"]),
        torch.from_numpy(data["ctx"]),
    )
    extra = {}
    if "text_embeds" in data:
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.from_numpy(data["text_embeds"]),
            "time_ids": torch.from_numpy(data["time_ids"]),
        }
    with torch.inference_mode():
        out = ref(*args, **extra).sample.permute(0, 2, 3, 1).numpy()  # warm-up
        times = time_calls(lambda: ref(*args, **extra), steps)
    ref.save_pretrained(folder / "src" / "unet")
    params = sum(p.numel() for p in ref.parameters())
    return cfg, data, out, times, params  # the torch model is freed when this returns


def jax_phase(data: dict, steps: int, folder: Path):
    convert_component(folder / "src" / "unet", folder / "dst" / "unet")
    unet = load_component(folder / "dst", "unet")
    graphdef, state = nnx.split(unet)
    added = (
        (jnp.asarray(data["text_embeds"]), jnp.asarray(data["time_ids"]))
        if ("text_embeds" in data)
        else None
    )

    @jax.jit
    def step(state, x, t, ctx, added):
        return nnx.merge(graphdef, state)(x, t, ctx, added_cond=added)

    x, t, ctx = (jnp.asarray(data[k]) for k in ("x", "t", "ctx"))
    t0 = time.perf_counter()
    out = np.asarray(step(state, x, t, ctx, added).block_until_ready())
    compile_s = time.perf_counter() - t0
    times = time_calls(lambda: step(state, x, t, ctx, added).block_until_ready(), steps)
    return out, times, compile_s


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", choices=("sd15", "sdxl-base", "demo"), default="sd15")
    p.add_argument("--size", type=int, default=512, help="image size in pixels (latent = size/8)")
    p.add_argument("--steps", type=int, default=3, help="timed calls per framework")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(dir=os.environ.get("JAXVIDEO_BENCH_TMP")) as tmp:
        folder = Path(tmp)
        cfg, data, out_t, torch_times, params = torch_phase(
            args.config, args.size, args.steps, folder
        )
        gc.collect()
        out_j, jax_times, compile_s = jax_phase(data, args.steps, folder)

    jax_s, torch_s = float(np.median(jax_times)), float(np.median(torch_times))
    print(
        json.dumps(
            {
                "benchmark": "unet_step_cfg",
                "config": args.config,
                "params": params,
                "size": args.size,
                "batch": 2,
                "jax_s_per_step": round(jax_s, 4),
                "torch_s_per_step": round(torch_s, 4),
                "ratio_jax_over_torch": round(jax_s / torch_s, 3),
                "jax_compile_s": round(compile_s, 2),
                "max_abs_diff": float(np.abs(out_j - out_t).max()),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "jax": jax.__version__,
                "torch": torch.__version__,
                "cpu_count": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
