#!/usr/bin/env python
"""Denoiser step time: jaxvideo's Flax UNet vs the diffusers PyTorch UNet, same weights, same run.

One "step" is one CFG denoiser call: batch 2 (uncond + cond) at the given latent size with a
77-token context, which is what one sampler step costs. Both models get identical random
weights (the PyTorch model is converted in memory by jaxvideo's own key map). Prints one JSON
line.

    python benchmarks/unet_step.py --config sd15 --size 512 --steps 3
    python benchmarks/unet_step.py --config demo --size 256 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import UNet2DConditionModel as TorchUNet
from flax import nnx

from jaxvideo.convert.core import convert_tensors
from jaxvideo.demo import sd1_tiny_configs
from jaxvideo.models.registry import spec_for
from jaxvideo.weights import abstract_model, param_shapes

# diffusers' UNet2DConditionModel defaults are exactly the SD 1.x UNet.
SD15 = {"_class_name": "UNet2DConditionModel", "sample_size": 64, "cross_attention_dim": 768}


def build_pair(hf_config: dict):
    torch.manual_seed(0)
    kwargs = {k: v for k, v in hf_config.items() if not k.startswith("_")}
    ref = TorchUNet(**kwargs).eval()
    full_config = dict(ref.config)
    full_config["_class_name"] = "UNet2DConditionModel"
    spec = spec_for("UNet2DConditionModel")
    abstract = abstract_model(spec, spec.config_from_hf(full_config))
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    params = convert_tensors(sd, sd.keys(), spec.rules, param_shapes(abstract), ignore=spec.ignore)
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    for path, var in flat.items():
        var.set_value(jnp.asarray(params[".".join(str(p) for p in path)]))
    ours = nnx.merge(graphdef, nnx.from_flat_state(flat))
    return ref, ours, full_config


def time_calls(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", choices=("sd15", "demo"), default="sd15")
    p.add_argument("--size", type=int, default=512, help="image size in pixels (latent = size/8)")
    p.add_argument("--steps", type=int, default=3, help="timed calls per framework")
    args = p.parse_args()

    hf_config = SD15 if args.config == "sd15" else sd1_tiny_configs(514)["unet"]
    ref, ours, cfg = build_pair(hf_config)
    latent = args.size // 8
    ctx_dim = cfg["cross_attention_dim"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, latent, latent, cfg["in_channels"])).astype(np.float32)
    ctx = rng.standard_normal((2, 77, ctx_dim)).astype(np.float32)
    t = np.array([500.0, 500.0], np.float32)

    graphdef, state = nnx.split(ours)

    @jax.jit
    def step(state, x, t, ctx):
        return nnx.merge(graphdef, state)(x, t, ctx)

    jx, jt, jctx = jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)
    t0 = time.perf_counter()
    out_j = step(state, jx, jt, jctx).block_until_ready()
    compile_s = time.perf_counter() - t0
    jax_times = time_calls(lambda: step(state, jx, jt, jctx).block_until_ready(), args.steps)

    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    tt, tctx = torch.from_numpy(t), torch.from_numpy(ctx)
    with torch.inference_mode():
        out_t = ref(tx, tt, tctx).sample  # warm-up
        torch_times = time_calls(lambda: ref(tx, tt, tctx), args.steps)
    err = float(np.abs(np.asarray(out_j) - out_t.permute(0, 2, 3, 1).numpy()).max())

    jax_s, torch_s = float(np.median(jax_times)), float(np.median(torch_times))
    print(
        json.dumps(
            {
                "benchmark": "unet_step_cfg",
                "config": args.config,
                "size": args.size,
                "batch": 2,
                "jax_s_per_step": round(jax_s, 4),
                "torch_s_per_step": round(torch_s, 4),
                "ratio_jax_over_torch": round(jax_s / torch_s, 3),
                "jax_compile_s": round(compile_s, 2),
                "max_abs_diff": err,
                "jax": jax.__version__,
                "torch": torch.__version__,
                "cpu_count": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
                "devices": str(jax.devices()),
            }
        )
    )


if __name__ == "__main__":
    main()
