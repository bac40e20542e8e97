#!/usr/bin/env python
"""Denoiser step time: jaxvideo's Flax Wan transformer vs diffusers', same weights, same run.

One "step" is one CFG denoiser call: batch 2 (uncond + cond) on a video latent with a 512-token
UMT5 context, which is what one sampler step of Wan 2.1 T2V costs. Like unet_step.py the run has
two phases so the network never sits in memory twice: PyTorch builds random weights, is timed
and saves them as a diffusers folder; then jaxvideo converts that folder with its own
converter, loads it and is timed on the same inputs. Prints one JSON line.

    python benchmarks/wan_step.py --config tiny --steps 3          # quick smoke run
    python benchmarks/wan_step.py --config wan1.3b --frames 5      # 480x832, 2 latent frames
"""

from __future__ import annotations

import argparse
import gc
import json
import math
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
from diffusers import WanTransformer3DModel as TorchWan
from flax import nnx

from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.weights import load_component

TEXT_LEN = 512  # Wan pads the UMT5 prompt to 512 tokens
VAE_SPATIAL, VAE_TEMPORAL = 8, 4

CONFIGS: dict[str, dict] = {
    # Wan 2.1 T2V 1.3B.
    "wan1.3b": {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 12,
        "attention_head_dim": 128,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 4096,
        "freq_dim": 256,
        "ffn_dim": 8960,
        "num_layers": 30,
    },
    "tiny": {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 32,
        "freq_dim": 32,
        "ffn_dim": 48,
        "num_layers": 2,
    },
}


def latent_shape(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Pixel video size -> Wan VAE latent (F, H, W): 4x in time (plus the first frame), 8x."""
    if (frames - 1) % VAE_TEMPORAL:
        raise SystemExit(f"--frames must be 4k + 1, got {frames}")
    if height % (2 * VAE_SPATIAL) or width % (2 * VAE_SPATIAL):
        raise SystemExit("--height and --width must be multiples of 16 (VAE 8x, patch 2)")
    return (frames - 1) // VAE_TEMPORAL + 1, height // VAE_SPATIAL, width // VAE_SPATIAL


def time_calls(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def inputs(cfg: dict, latent: tuple[int, int, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((2, *latent, cfg["in_channels"])).astype(np.float32),
        "ctx": rng.standard_normal((2, TEXT_LEN, cfg["text_dim"])).astype(np.float32),
        "t": np.array([500.0, 500.0], np.float32),
    }


def torch_phase(name: str, latent, steps: int, folder: Path):
    torch.manual_seed(0)
    ref = TorchWan(**CONFIGS[name]).eval()
    cfg = dict(ref.config)
    data = inputs(cfg, latent)
    args = (
        torch.from_numpy(data["x"]).permute(0, 4, 1, 2, 3).contiguous(),
        torch.from_numpy(data["t"]),
        torch.from_numpy(data["ctx"]),
    )
    with torch.inference_mode():
        out = ref(*args).sample.permute(0, 2, 3, 4, 1).numpy()  # warm-up
        times = time_calls(lambda: ref(*args), steps)
    ref.save_pretrained(folder / "src" / "transformer")
    params = sum(p.numel() for p in ref.parameters())
    return data, out, times, params  # the torch model is freed when this returns


def jax_phase(data: dict, steps: int, folder: Path):
    convert_component(folder / "src" / "transformer", folder / "dst" / "transformer")
    model = load_component(folder / "dst", "transformer")
    graphdef, state = nnx.split(model)
    del model

    @jax.jit
    def step(state, x, t, ctx):
        return nnx.merge(graphdef, state)(x, t, ctx)

    x, t, ctx = (jnp.asarray(data[k]) for k in ("x", "t", "ctx"))
    t0 = time.perf_counter()
    out = np.asarray(step(state, x, t, ctx).block_until_ready())
    compile_s = time.perf_counter() - t0
    times = time_calls(lambda: step(state, x, t, ctx).block_until_ready(), steps)
    return out, times, compile_s


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", choices=tuple(CONFIGS), default="wan1.3b")
    p.add_argument("--frames", type=int, default=5, help="video frames (4k + 1)")
    p.add_argument("--height", type=int, default=480, help="video height in pixels")
    p.add_argument("--width", type=int, default=832, help="video width in pixels")
    p.add_argument("--steps", type=int, default=2, help="timed calls per framework")
    args = p.parse_args()
    latent = latent_shape(args.frames, args.height, args.width)

    with tempfile.TemporaryDirectory(dir=os.environ.get("JAXVIDEO_BENCH_TMP")) as tmp:
        folder = Path(tmp)
        data, out_t, torch_times, params = torch_phase(args.config, latent, args.steps, folder)
        gc.collect()
        out_j, jax_times, compile_s = jax_phase(data, args.steps, folder)

    jax_s, torch_s = float(np.median(jax_times)), float(np.median(torch_times))
    patch = CONFIGS[args.config]["patch_size"]
    print(
        json.dumps(
            {
                "benchmark": "wan_step_cfg",
                "config": args.config,
                "params": params,
                "frames": args.frames,
                "size": [args.height, args.width],
                "latent": list(latent),
                "tokens": math.prod(n // q for n, q in zip(latent, patch, strict=True)),
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
