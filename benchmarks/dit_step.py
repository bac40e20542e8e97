#!/usr/bin/env python
"""Denoiser step time of the flow-matching image DiTs: jaxvideo's Flax Flux / SD3 transformer
vs diffusers', same weights, same run; and FLOPs per forward of the full-size models.

One "step" is one denoiser call at batch 1 (Flux dev: distilled guidance, one forward per
step; SD3.5: batch 2, the CFG pair). The networks have their released width (Flux: 24 heads of
128, SD3.5 Medium: 24 heads of 64) with fewer blocks (`--blocks`), so both frameworks fit in a
CPU's memory; the run has two phases so the network never sits in memory twice (PyTorch
builds random weights, is timed and saves them; jaxvideo converts that folder, loads it and is
timed on the same inputs). FLOPs come from XLA's cost analysis of the whole released network at
1024x1024, lowered on abstract shapes (nothing is allocated). Prints one JSON line.

    python benchmarks/dit_step.py --family flux --size 256 --blocks 1
    python benchmarks/dit_step.py --family sd3 --size 256 --blocks 2
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
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from flax import nnx

from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.models import attention
from jaxvideo.models.flux import FluxTransformer2DModel as JaxFlux
from jaxvideo.models.flux import FluxTransformerConfig, flux_rope
from jaxvideo.models.sd3 import SD3Transformer2DModel as JaxSD3
from jaxvideo.models.sd3 import SD3TransformerConfig
from jaxvideo.weights import load_component

# The released configurations (FLUX.1-dev; SD3.5 Medium), and how their blocks are cut down.
FULL = {
    "flux": dict(
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ),
    "sd3": dict(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13)),
        qk_norm="rms_norm",
    ),
}
TEXT_LEN = {"flux": 512, "sd3": 333}  # T5 512 (Flux); 77 CLIP + 256 T5 (SD3)


def cut(family: str, blocks: int) -> dict:
    cfg = dict(FULL[family])
    if family == "flux":
        cfg.update(num_layers=blocks, num_single_layers=blocks)
    else:
        cfg.update(num_layers=blocks, dual_attention_layers=tuple(range(min(blocks, 1))))
    return cfg


def inputs(family: str, size: int, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    latent = size // 8
    text = rng.standard_normal((batch, TEXT_LEN[family], 4096)).astype(np.float32)
    if family == "flux":
        tokens = (latent // 2) ** 2
        return {
            "x": rng.standard_normal((batch, tokens, 64)).astype(np.float32),
            "ctx": text,
            "pooled": rng.standard_normal((batch, 768)).astype(np.float32),
            "t": np.full((batch,), 0.5, np.float32),
            "guidance": np.full((batch,), 3.5, np.float32),
        }
    return {
        "x": rng.standard_normal((batch, latent, latent, 16)).astype(np.float32),
        "ctx": text,
        "pooled": rng.standard_normal((batch, 2048)).astype(np.float32),
        "t": np.full((batch,), 500.0, np.float32),
    }


def positions(size: int) -> np.ndarray:
    """Flux's text (zeros) + image token positions at `size` pixels."""
    side = size // 16
    ids = np.zeros((side, side, 3), np.float32)
    ids[..., 1], ids[..., 2] = np.arange(side)[:, None], np.arange(side)[None, :]
    return np.concatenate([np.zeros((TEXT_LEN["flux"], 3), np.float32), ids.reshape(-1, 3)])


def time_calls(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def torch_phase(family: str, cfg: dict, data: dict, size: int, steps: int, folder: Path):
    torch.manual_seed(0)
    cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
    ref = cls(**cfg).eval()
    t = {k: torch.from_numpy(v) for k, v in data.items()}
    if family == "flux":
        ids = torch.from_numpy(positions(size))
        kwargs = dict(
            hidden_states=t["x"],
            encoder_hidden_states=t["ctx"],
            pooled_projections=t["pooled"],
            timestep=t["t"],
            guidance=t["guidance"],
            txt_ids=ids[: TEXT_LEN["flux"]],
            img_ids=ids[TEXT_LEN["flux"] :],
        )
    else:
        kwargs = dict(
            hidden_states=t["x"].permute(0, 3, 1, 2).contiguous(),
            encoder_hidden_states=t["ctx"],
            pooled_projections=t["pooled"],
            timestep=t["t"],
        )
    with torch.inference_mode():
        out = ref(**kwargs).sample.numpy()  # warm-up
        times = time_calls(lambda: ref(**kwargs), steps)
    if family == "sd3":
        out = out.transpose(0, 2, 3, 1)
    ref.save_pretrained(folder / "src" / "transformer")
    params = sum(p.numel() for p in ref.parameters())
    return out, times, params


def forward(family: str, size: int):
    """The jitted forward of a (graphdef, state) model and the arguments it takes."""
    rope = None
    if family == "flux":
        config = FluxTransformerConfig.from_hf(FULL["flux"])
        rope = tuple(jnp.asarray(a) for a in flux_rope(positions(size), config))

    def run(graphdef, state, data):
        model = nnx.merge(graphdef, state)
        if family == "flux":
            return model(data["x"], data["t"], data["ctx"], data["pooled"], rope, data["guidance"])
        return model(data["x"], data["t"], data["ctx"], data["pooled"])

    return run


def jax_phase(family: str, data: dict, size: int, steps: int, folder: Path):
    convert_component(folder / "src" / "transformer", folder / "dst" / "transformer")
    model = load_component(folder / "dst", "transformer")
    graphdef, state = nnx.split(model)
    del model
    run = forward(family, size)
    step = jax.jit(lambda state, data: run(graphdef, state, data))
    args = {k: jnp.asarray(v) for k, v in data.items()}
    t0 = time.perf_counter()
    out = np.asarray(step(state, args).block_until_ready())
    compile_s = time.perf_counter() - t0
    times = time_calls(lambda: step(state, args).block_until_ready(), steps)
    return out, times, compile_s


def full_size_flops(family: str, size: int = 1024) -> tuple[float, int]:
    """(FLOPs of one batch-1 forward, parameters) of the released network at `size`, from
    XLA's cost analysis of the lowered program on abstract shapes. Attention is lowered as the
    plain formula (what XLA runs on TPU): the CPU kernel's loop over query blocks would be
    counted once."""
    if family == "flux":
        config = FluxTransformerConfig.from_hf(FULL["flux"])
        abstract = nnx.eval_shape(lambda: JaxFlux(config, rngs=nnx.Rngs(0)))
    else:
        config = SD3TransformerConfig.from_hf(FULL["sd3"])
        abstract = nnx.eval_shape(lambda: JaxSD3(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    data = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in inputs(family, size, 1).items()}
    run = forward(family, size)
    backend = attention._backend
    attention._backend = lambda: "tpu"
    try:
        lowered = jax.jit(lambda state, data: run(graphdef, state, data)).lower(state, data)
    finally:
        attention._backend = backend
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
    return float(cost["flops"]), params


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--family", choices=tuple(FULL), default="flux")
    p.add_argument("--size", type=int, default=256, help="image size in pixels (square)")
    p.add_argument("--blocks", type=int, default=1, help="blocks of each kind kept")
    p.add_argument("--steps", type=int, default=3, help="timed calls per framework")
    args = p.parse_args()
    cfg = cut(args.family, args.blocks)
    # Flux dev: one forward per step (distilled guidance); SD3.5: the CFG pair.
    data = inputs(args.family, args.size, 1 if args.family == "flux" else 2)

    with tempfile.TemporaryDirectory(dir=os.environ.get("JAXVIDEO_BENCH_TMP")) as tmp:
        folder = Path(tmp)
        out_t, torch_times, params = torch_phase(
            args.family, cfg, data, args.size, args.steps, folder
        )
        gc.collect()
        out_j, jax_times, compile_s = jax_phase(args.family, data, args.size, args.steps, folder)
    flops, full_params = full_size_flops(args.family)

    jax_s, torch_s = float(np.median(jax_times)), float(np.median(torch_times))
    print(
        json.dumps(
            {
                "benchmark": f"{args.family}_step",
                "blocks": args.blocks,
                "params": params,
                "size": args.size,
                "batch": int(data["x"].shape[0]),
                "jax_s_per_step": round(jax_s, 4),
                "torch_s_per_step": round(torch_s, 4),
                "ratio_jax_over_torch": round(jax_s / torch_s, 3),
                "jax_compile_s": round(compile_s, 2),
                "max_abs_diff": float(np.abs(out_j - out_t).max()),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "full_model_params": full_params,
                "full_model_tflops_per_forward_1024": round(flops / 1e12, 2),
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
