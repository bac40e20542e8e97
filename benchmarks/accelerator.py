#!/usr/bin/env python
"""One-command accelerator benchmark: denoiser steps, VAE decodes and HTTP throughput of the
model families jaxvideo serves, on whatever device JAX sees, with model FLOPs and MFU.

Prints one JSON line per figure on stdout:

    figure, model, shape, dtype, seconds (median per call after a warm-up call), compile_s
    (lowering + XLA compile), tflops (model FLOPs of one call / 1e12, jaxvideo.cost's count of
    the same call), tflops_per_s, mfu (tflops_per_s / the device kind's peak dense bf16
    TFLOP/s; null when unknown, e.g. CPU), device ({kind, count}), attention (the attention
    kernels the traced program chose, jaxvideo.models.attention: kernel -> call sites traced)

Figures (full size: released architectures, bf16, RANDOM weights made on the device from the
configs in benchmarks/memory_plan.py; nothing is downloaded):

    sd15_unet_512     SD 1.5 UNet, one CFG step (batch 2) at 512 px
    sdxl_unet_1024    SDXL base UNet, one CFG step (batch 2) at 1024 px
    wan13b_480p81     Wan 2.1 T2V 1.3B transformer, one CFG step at 832x480 x 81 frames
    flux_dev_1024     FLUX.1-dev transformer, one step at 1024 px (guidance-distilled: batch 1)
    sd35m_1024        SD3.5 Medium transformer, one CFG step (batch 2) at 1024 px
    vae_sd15_512      SD VAE decode of one 512 px image
    vae_sdxl_1024     SDXL VAE decode of one 1024 px image
    vae_wan_480p81    Wan 2.1 VAE decode of a whole 832x480 x 81 frame video (21 latent frames)
    vae_flux_1024     FLUX.1 16-channel VAE decode of one 1024 px image
    http_batching     the real server (gunicorn webapp:app) under concurrent A1111 txt2img
                      requests, server.max_batch_size 4 vs 1 (benchmarks/http_throughput.py);
                      a real-size SD 1.5 random-weight folder, 512 px, 20 steps

    python benchmarks/accelerator.py                        # the accelerator run (< 8 min)
    python benchmarks/accelerator.py --tiny                 # toy configs, fp32, CPU: ~1-2 min
    python benchmarks/accelerator.py --only vae,flux_dev_1024 --budget-s 300

`--tiny` runs the same figures on the demo models' toy configs (jaxvideo/demo_*.py) at small
sizes. Each figure runs in a process of its own (so one model's device memory is gone before
the next is built, and a crash or an out-of-memory is that figure's `error` line); `--only`
takes figure names or their first word (`vae`, `http`). `--budget-s` (default 480) bounds the
whole run: a figure that would start with less than its minimum time left prints a `skipped`
line, and one still running at the budget is stopped and reported `skipped`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# Peak dense (no sparsity) bf16 TFLOP/s per chip, by a substring of `jax.Device.device_kind`
# (lower-cased), first match wins. Sources: the vendors' spec sheets (NVIDIA H100/H200, A100
# and L4 datasheets, whose "with sparsity" figures are twice these; Google Cloud TPU v4, v5e,
# v5p and v6e (Trillium) system-architecture pages).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h100", 989.0),
    ("h200", 989.0),
    ("a100", 312.0),
    ("l4", 121.0),
    ("v4", 275.0),
    ("v5 lite", 197.0),
    ("v5e", 197.0),
    ("v5p", 459.0),
    ("tpu v5", 459.0),  # v5p reports itself as "TPU v5"
    ("v6 lite", 918.0),
    ("v6e", 918.0),
)


def peak_tflops(device_kind: str) -> float | None:
    kind = device_kind.lower()
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in kind), None)


# --- the figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What one network figure runs: a model's configs and model_index, the request shape, and
    which of the pipeline's network calls (jaxvideo.cost.NetworkCall) is timed."""

    model: str
    configs: Mapping[str, Mapping[str, Any]]
    index: Mapping[str, Any]
    shape: Any  # jaxvideo.cost.Shape
    role: str  # "denoiser" or "decoder"
    whole_video: bool = False  # decode every latent frame in one VAE.decode (Wan)


@dataclass(frozen=True)
class Figure:
    name: str
    setup: Callable[[bool], Setup] | None  # tiny -> Setup; None: the HTTP figure
    min_s: tuple[float, float]  # (full, tiny): seconds left needed to start it


def _full(model: str, label: str, role: str, **kw: Any) -> Setup:
    import memory_plan  # benchmarks/memory_plan.py: the released configs

    m = memory_plan.MODELS[model]
    return Setup(model, m.configs, m.index, m.shapes[label], role, **kw)


def _tiny_sd(sdxl: bool = False) -> tuple[dict, dict]:
    from jaxvideo.demo_sd import sd1_tiny_configs

    configs = sd1_tiny_configs(1000)
    if not sdxl:
        return configs, {"family": "sd1"}
    # SDXL's layout at toy width (as tests/support/tiny_sd.py): no attention at the first
    # level, deeper transformers below it, pooled text + size ids (`text_time`).
    configs["unet"] = dict(
        configs["unet"],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        transformer_layers_per_block=[1, 2],
        attention_head_dim=[2, 4],
        cross_attention_dim=64,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    return configs, {"family": "sdxl"}


def _tiny_dit(family: str) -> tuple[dict, dict]:
    from jaxvideo import demo_dit

    build = demo_dit.flux_tiny_configs if family == "flux" else demo_dit.sd3_tiny_configs
    return build(1000, 1000), {"family": family, "max_sequence_length": demo_dit.DEMO_TEXT_LENGTH}


def _tiny_wan() -> tuple[dict, dict]:
    from jaxvideo.demo_wan import wan_tiny_configs

    return wan_tiny_configs(1000), {"family": "wan21"}


def _setup(full: tuple, tiny: tuple, role: str, **kw: Any) -> Callable[[bool], Setup]:
    """full: (memory_plan model, its shape label); tiny: (model label, configs() -> (configs,
    index), Shape kwargs)."""

    def make(is_tiny: bool) -> Setup:
        from jaxvideo.cost import Shape

        if not is_tiny:
            return _full(*full, role=role, **kw)
        label, configs, shape = tiny
        return Setup(label, *configs(), Shape(**shape), role, **kw)

    return make


FIGURES: tuple[Figure, ...] = (
    Figure(
        "sd15_unet_512",
        _setup(("sd1.5", "512px"), ("sd1-tiny", _tiny_sd, dict(width=256, height=256)), "denoiser"),
        (20, 3),
    ),
    Figure(
        "sdxl_unet_1024",
        _setup(
            ("sdxl", "1024px"),
            ("sdxl-tiny", lambda: _tiny_sd(sdxl=True), dict(width=512, height=512)),
            "denoiser",
        ),
        (40, 3),
    ),
    Figure(
        "wan13b_480p81",
        _setup(
            ("wan2.1-t2v-1.3b", "480p"),
            ("wan-tiny", _tiny_wan, dict(width=128, height=128, frames=17)),
            "denoiser",
        ),
        (30, 3),
    ),
    Figure(
        "flux_dev_1024",
        _setup(
            ("flux.1-dev", "1024px"),
            ("flux-tiny", lambda: _tiny_dit("flux"), dict(width=512, height=512, cfg=False)),
            "denoiser",
        ),
        (40, 3),
    ),
    Figure(
        "sd35m_1024",
        _setup(
            ("sd3.5-medium", "1024px"),
            ("sd3-tiny", lambda: _tiny_dit("sd3"), dict(width=512, height=512)),
            "denoiser",
        ),
        (30, 3),
    ),
    Figure(
        "vae_sd15_512",
        _setup(("sd1.5", "512px"), ("sd1-tiny", _tiny_sd, dict(width=256, height=256)), "decoder"),
        (15, 3),
    ),
    Figure(
        "vae_sdxl_1024",
        _setup(
            ("sdxl", "1024px"),
            ("sdxl-tiny", lambda: _tiny_sd(sdxl=True), dict(width=512, height=512)),
            "decoder",
        ),
        (15, 3),
    ),
    Figure(
        "vae_wan_480p81",
        _setup(
            ("wan2.1-t2v-1.3b", "480p"),
            ("wan-tiny", _tiny_wan, dict(width=128, height=128, frames=17)),
            "decoder",
            whole_video=True,
        ),
        (30, 3),
    ),
    Figure(
        "vae_flux_1024",
        _setup(
            ("flux.1-dev", "1024px"),
            ("flux-tiny", lambda: _tiny_dit("flux"), dict(width=512, height=512, cfg=False)),
            "decoder",
        ),
        (15, 3),
    ),
    Figure("http_batching", None, (120, 30)),
)
FIGURE_NAMES = tuple(f.name for f in FIGURES)

# The HTTP figure per mode: request size, sampler steps, requests per round, client threads,
# timed rounds per setting.
HTTP_FULL = dict(size=(512, 512), steps=20, requests=16, clients=4, rounds=2)
HTTP_TINY = dict(size=(64, 64), steps=8, requests=8, clients=4, rounds=2)
HTTP_BATCH_SIZES = (4, 1)  # batching on, off


def select(only: str | None) -> list[Figure]:
    if not only:
        return list(FIGURES)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    unknown = [w for w in wanted if not any(_matches(f.name, w) for f in FIGURES)]
    if unknown:
        raise SystemExit(f"unknown figures {unknown}; known: {', '.join(FIGURE_NAMES)}")
    return [f for f in FIGURES if any(_matches(f.name, w) for w in wanted)]


def _matches(name: str, wanted: str) -> bool:
    return name == wanted or name.split("_")[0] == wanted


# --- one figure, in its own process --------------------------------------------------------


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def device_info() -> dict[str, Any]:
    import jax

    device = jax.devices()[0]
    return {
        "kind": device.device_kind,
        "platform": device.platform,
        "count": 1,  # every figure runs on one device
        "available": jax.device_count(),
    }


def rates(tflop: float, seconds: float, kind: str) -> dict[str, Any]:
    per_s = tflop / seconds
    peak = peak_tflops(kind)
    return {
        "tflops_per_s": _sig(per_s),
        "mfu": None if peak is None else _sig(per_s / peak, 4),
        "peak_tflops_per_s": peak,
    }


def _leaf_name(path: tuple) -> str:
    from jax.tree_util import DictKey

    return str([k.key for k in path if isinstance(k, DictKey)][-1])


@functools.cache
def _random():
    """jit(seed, shape, dtype, std) -> pseudo-random values of standard deviation `std`:
    uniform, from an integer hash of each element's index and the seed. One small
    elementwise program per distinct shape; jax.random.normal's compile is ~10x longer on
    CPU (~0.5 s a shape), which the many shapes of a network multiply."""
    import math

    import jax
    import jax.numpy as jnp

    @functools.partial(jax.jit, static_argnums=(1, 2))
    def random(seed, shape, dtype, std):
        u32 = jnp.uint32
        x = jax.lax.iota(u32, math.prod(shape)) * u32(0x9E3779B1) + seed.astype(u32) * u32(
            0x85EBCA6B
        )
        x = (x ^ (x >> 16)) * u32(0x7FEB352D)  # a 32-bit integer hash (lowbias32)
        x = (x ^ (x >> 15)) * u32(0x846CA68B)
        x = x ^ (x >> 16)
        unit = (x >> 8).astype(jnp.float32) * (2.0 / (1 << 24)) - 1.0  # uniform in [-1, 1)
        return (unit * (std * 3**0.5)).astype(dtype).reshape(shape)

    return random


def device_weights(abstract: Any, seed: int = 0) -> Any:
    """Random weights for an abstract state (ShapeDtypeStructs), made on the default device
    inside jit, leaf by leaf: jaxvideo.demo.random_params's scheme (unit norm scales, zero
    biases, fan-in-scaled weights), never in host memory, so a 12B network needs its bf16
    bytes on the device and nothing on the host."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    out = []
    for i, (path, leaf) in enumerate(leaves):
        name, shape = _leaf_name(path), tuple(leaf.shape)
        if name == "scale":
            out.append(jnp.ones(shape, leaf.dtype))
        elif name == "bias":
            out.append(jnp.zeros(shape, leaf.dtype))
        else:
            fan_in = 1
            for n in shape[:-1]:
                fan_in *= n
            std = 0.02 if name == "embedding" else fan_in**-0.5
            out.append(_random()(jnp.uint32(seed * 100_003 + i), shape, leaf.dtype, std))
    return jax.tree_util.tree_unflatten(treedef, out)


def device_inputs(specs: Any, seed: int = 1) -> Any:
    """Arrays for a call's argument specs: unit-variance noise, and 0.5 for the per-row
    scalars (timesteps, guidance)."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree_util.tree_flatten(specs)
    out = [
        jnp.full(s.shape, 0.5, s.dtype)
        if len(s.shape) <= 1
        else _random()(jnp.uint32(seed * 100_003 + i), tuple(s.shape), s.dtype, 1.0)
        for i, s in enumerate(leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


@contextlib.contextmanager
def recording_attention() -> Iterator[Counter]:
    """Counts, while a program is traced, which attention kernel each attention call site
    went to (jaxvideo.models.attention: the kernel `choose_implementation` picked, and a
    kernel's refusal handed to XLA, e.g. cuDNN's trace-time checks)."""
    from jaxvideo.models import attention

    seen: Counter = Counter()
    refused: Counter = Counter()
    active: list[str] = []
    kernels = dict(attention._IMPLEMENTATIONS)
    xla = attention._xla_attention

    def wrap(name: str, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            seen[name] += 1
            active.append(name)
            try:
                return fn(*args, **kwargs)
            finally:
                active.pop()

        return run

    def xla_fallback(*args, **kwargs):
        if active and active[-1] != "xla":
            refused[active[-1]] += 1
        return xla(*args, **kwargs)

    attention._IMPLEMENTATIONS.update({n: wrap(n, f) for n, f in kernels.items()})
    attention._xla_attention = xla_fallback
    try:
        yield seen
    finally:
        attention._IMPLEMENTATIONS.update(kernels)
        attention._xla_attention = xla
        for name, n in refused.items():
            seen[name] -= n
            seen[f"xla ({name} refused)"] += n
        for name in [k for k, v in seen.items() if v <= 0]:
            del seen[name]


def the_call(setup: Setup) -> Any:
    """The pipeline's own network call of `setup.role` at `setup.shape` (what the engine plans
    and the sampler runs); for a whole Wan video, its per-frame decode widened to every latent
    frame through VAE.decode (decode_first, then decode_next in a scan)."""
    import dataclasses

    from jaxvideo.cost import spec
    from jaxvideo.memory_plan import ModelPlan

    plan = ModelPlan("", "fp32", {}, setup.configs, setup.index)
    call = next(c for c in plan.calls(setup.shape) if c.role == setup.role)
    if setup.whole_video:
        batch, _, h, w, z = call.args[0].shape
        video = spec((batch, call.count, h, w, z), call.args[0].dtype)
        call = dataclasses.replace(call, args=(video,), method="decode", count=1)
    return call


def time_calls(fn: Callable[[], Any], repeats: int, max_s: float) -> list[float]:
    """Up to `repeats` timed calls, stopping early once `max_s` is spent (at least one)."""
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < max_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run_network(fig: Figure, tiny: bool, dtype: str, repeats: int, max_s: float) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from jaxvideo.cost import abstract_component, call_cost, invoke

    setup = fig.setup(tiny)
    call = the_call(setup)
    config = setup.configs[call.component]
    started = time.perf_counter()
    module = abstract_component(config, dtype)  # shapes only, as the planner builds it
    flops = call_cost(module, call).flops  # model FLOPs: matmuls and convolutions
    graphdef, abstract = nnx.split(module)
    del module
    count_s = time.perf_counter() - started

    device = device_info()
    state = device_weights(abstract)
    args = device_inputs((call.args, dict(call.kwargs)))  # SDXL's added_cond is a keyword
    jax.block_until_ready((state, args))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))

    def run(state, args):
        return invoke(nnx.merge(graphdef, state), call, *args)

    t0 = time.perf_counter()
    with recording_attention() as kernels:
        lowered = jax.jit(run).lower(state, args)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(state, args))  # warm-up
    times = time_calls(lambda: jax.block_until_ready(compiled(state, args)), repeats, max_s)

    seconds = float(np.median(times))
    shape = setup.shape
    rows = int(call.args[0].shape[0])
    tflop = flops / 1e12
    return {
        "figure": fig.name,
        "model": setup.model,
        "component": call.component,
        "shape": {
            "width": shape.width,
            "height": shape.height,
            "frames": shape.frames,
            "batch": rows,
            "cfg": shape.cfg and setup.role == "denoiser",
            "input": list(call.args[0].shape),
        },
        "dtype": dtype,
        "seconds": _sig(seconds),
        "compile_s": round(compile_s, 3),
        "tflops": _sig(tflop),
        **rates(tflop, seconds, device["kind"]),
        "device": device,
        "attention": dict(sorted(kernels.items())),
        "params": params,
        "timed_calls": [_sig(t, 4) for t in times],
        "build_and_count_s": round(count_s, 2),  # abstract network + FLOP count
        "tiny": tiny,
    }


def sd15_random_folder() -> Path:
    """A real-size SD 1.5 model folder (CLIP ViT-L/14 text tower, the SD 1.x UNet, the SD VAE)
    with random weights, in the converted format: the demo builder (jaxvideo/demo_sd.py) with
    the released configs in place of its toy ones. Built once into the demo cache."""
    from unittest import mock

    import memory_plan

    from jaxvideo import demo_sd
    from jaxvideo.demo import READY_MARKER, cache_dir

    toy_configs = demo_sd.sd1_tiny_configs

    def released(vocab_size: int) -> dict:
        toy = toy_configs(vocab_size)  # its text encoder has the toy tokenizer's special ids
        return {
            "text_encoder": {**toy["text_encoder"], **memory_plan.CLIP_L},
            "unet": dict(memory_plan.SD15_UNET),
            "vae": dict(memory_plan.SD_VAE),
        }

    target = cache_dir() / "bench" / "sd15-random"
    if (target / READY_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sd15-random-", dir=target.parent))
    try:
        with mock.patch.object(demo_sd, "sd1_tiny_configs", released):
            demo_sd.build_sd1_tiny(tmp)
        (tmp / READY_MARKER).write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def run_http(tiny: bool) -> dict:
    # Two servers share the device with this process: none may take most of its memory.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import http_throughput as ht  # benchmarks/http_throughput.py

    from jaxvideo.cost import Shape
    from jaxvideo.demo import resolve_demo
    from jaxvideo.families import SD1
    from jaxvideo.memory_plan import ModelPlan
    from jaxvideo.weights import serving_dtype

    p = HTTP_TINY if tiny else HTTP_FULL
    model = "demo:sd1-tiny" if tiny else str(sd15_random_folder())
    folder = resolve_demo(model) if tiny else Path(model)
    width, height = p["size"]
    args = argparse.Namespace(
        model=model,
        family=SD1.name,
        width=width,
        height=height,
        steps=p["steps"],
        requests=p["requests"],
        clients=p["clients"],
        rounds=p["rounds"],
    )
    device = device_info()
    dtype = serving_dtype("auto")  # what the server's `dtype: auto` resolves to here
    # Model FLOPs of one image: one CFG UNet call per step (euler_a, the SD default) and one
    # VAE decode; text encoding left out.
    flops = ModelPlan(folder, dtype, {}).flops(Shape(width, height))
    tflop = (p["steps"] * flops["denoiser"] + flops["decoder"]) / 1e12

    worker = "webapp.worker.JaxvideoWorker"
    settings = []
    with tempfile.TemporaryDirectory(prefix="jaxvideo-accel-http-") as tmp:
        try:
            t0 = time.perf_counter()
            for batch_size in HTTP_BATCH_SIZES:
                settings.append(ht.start_setting(args, batch_size, worker, Path(tmp)))
            start_s = time.perf_counter() - t0
            for _ in range(args.rounds):  # interleaved, as http_throughput.py does
                for setting in settings:
                    ht.run_round(setting, args)
            runs = {s.batch_size: s.summary(args.requests) for s in settings}
        finally:
            for setting in settings:
                ht.stop(setting)
    on, off = runs[HTTP_BATCH_SIZES[0]], runs[1]
    seconds = 1.0 / on["images_per_s"]
    return {
        "figure": "http_batching",
        "model": "sd1-tiny (demo:sd1-tiny)" if tiny else "sd1.5 (random weights)",
        "shape": {"width": width, "height": height, "frames": 1, "batch": 1, "cfg": True},
        "dtype": dtype,
        "seconds": _sig(seconds),  # per image, batching on
        "compile_s": round(start_s, 2),  # both servers' start: load, warm-up compiles
        "tflops": _sig(tflop),  # per image
        **rates(tflop, seconds, device["kind"]),
        "device": device,
        "attention": None,
        "steps": p["steps"],
        "requests_per_round": args.requests,
        "clients": args.clients,
        "rounds": args.rounds,
        "batching": {"on": on, "off": off},
        "images_per_s": {"on": on["images_per_s"], "off": off["images_per_s"]},
        "throughput_on_vs_off": round(on["images_per_s"] / off["images_per_s"], 3),
        "tiny": tiny,
    }


def child(name: str, tiny: bool, dtype: str, repeats: int, max_s: float) -> None:
    """Runs one figure and prints its JSON line (an `error` line if it fails)."""

    def stop(signum, frame):  # the parent's budget: unwind, so servers are stopped
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    sys.path.insert(0, str(HERE))
    fig = next(f for f in FIGURES if f.name == name)
    try:
        if fig.setup is None:
            line = run_http(tiny)
        else:
            line = run_network(fig, tiny, dtype, repeats, max_s)
    except BaseException as exc:  # noqa: BLE001 -- any failure is this figure's error line
        tail = traceback.format_exc().strip().splitlines()[-6:]
        line = {"figure": name, "error": f"{type(exc).__name__}: {exc}", "traceback": tail}
    print(json.dumps(line), flush=True)


# --- the run --------------------------------------------------------------------------------


GRACE_S = 20.0  # after SIGTERM, before SIGKILL


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(pgid: int, grace: float = GRACE_S) -> None:
    """Ends a figure's process group (its process and any server it started): SIGTERM, then
    SIGKILL to whatever is left after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def run_child(fig: Figure, argv: list[str], timeout: float) -> dict:
    """The figure's JSON line from a process of its own (a session of its own, so it and the
    servers it starts are one process group), stopped with them at `timeout`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", fig.name, *argv]
    started = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=max(timeout, 0.5))
    except subprocess.TimeoutExpired:
        stop_group(process.pid)
        process.communicate()
        wall = time.perf_counter() - started
        return {"figure": fig.name, "skipped": f"stopped at the budget after {wall:.0f} s"}
    if _group_alive(process.pid):  # a server the figure did not stop
        stop_group(process.pid)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        line = {"figure": fig.name, "error": f"exited with code {process.returncode}, no result"}
    else:
        line = json.loads(lines[-1])
    line["figure_wall_s"] = round(time.perf_counter() - started, 2)
    return line


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="toy configs, fp32 (a CPU smoke run)")
    p.add_argument(
        "--only", help=f"comma-separated figures or groups, of {', '.join(FIGURE_NAMES)}"
    )
    p.add_argument("--budget-s", type=float, default=480.0, help="whole-run time limit")
    p.add_argument("--dtype", help="network dtype (default bf16; --tiny: fp32)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per figure (at most)")
    p.add_argument("--max-timed-s", type=float, default=20.0, help="stop timing after this")
    p.add_argument("--list", action="store_true", help="print the figure names and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    dtype = args.dtype or ("fp32" if args.tiny else "bf16")
    if args.child:
        child(args.child, args.tiny, dtype, args.repeats, args.max_timed_s)
        return
    if args.list:
        print("\n".join(FIGURE_NAMES))
        return
    figures = select(args.only)
    passed = ["--dtype", dtype, "--repeats", str(args.repeats), "--max-timed-s"]
    passed += [str(args.max_timed_s)] + (["--tiny"] if args.tiny else [])
    start = time.perf_counter()
    for fig in figures:
        left = args.budget_s - (time.perf_counter() - start)
        need = fig.min_s[1 if args.tiny else 0]
        if left < need:
            line = {
                "figure": fig.name,
                "skipped": f"budget: {max(left, 0):.0f} s left, needs {need:g}",
            }
        else:
            line = run_child(fig, passed, left - GRACE_S)  # stopping it takes up to GRACE_S
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
