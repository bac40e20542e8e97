"""FLOPs and activation memory counted from traced programs (jaxvideo.cost), and the memory
plan built on them (jaxvideo.memory_plan): cross-checked against XLA's own cost analysis on
every family's demo model, exact on hand-made networks, and scaled the way shapes and meshes
say they must. Nothing here compiles or runs a network."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxvideo.cost import NetworkCall, Shape, call_cost, spec, split_factor, xla_flops
from jaxvideo.demo import resolve_demo
from jaxvideo.memory_plan import ModelPlan
from jaxvideo.models.attention import dot_product_attention

# Small request shapes per demo model (the demos' default size; Wan: 2 latent frames).
DEMOS = {
    "sd1-tiny": Shape(128, 128),
    "wan-tiny": Shape(128, 128, frames=5),
    "flux-tiny": Shape(128, 128),
    "sd3-tiny": Shape(128, 128),
}


@pytest.fixture(scope="module")
def plans() -> dict[str, ModelPlan]:
    """Unsharded fp32 plans of the demo folders (built on first use, cached between runs)."""
    return {name: ModelPlan(resolve_demo(f"demo:{name}"), "fp32", {}) for name in DEMOS}


def _call(plan: ModelPlan, shape: Shape, role: str) -> NetworkCall:
    (call,) = [c for c in plan.calls(shape) if c.role == role]
    return call


def _cost(plan: ModelPlan, shape: Shape, role: str):
    (cost,) = [cost for call, cost in plan.costs(shape) if call.role == role]
    return cost


class _Stateless(nnx.Module):
    """A network without parameters; its calls pass a function as `method`."""


# --- against XLA ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["denoiser", "decoder"])
@pytest.mark.parametrize("name", list(DEMOS))
def test_flops_agree_with_xla_cost_analysis(plans, name, role):
    """Our count is matrix products and convolutions only, so it is at most XLA's (which adds
    the elementwise work) and, these being what a diffusion network spends its time on, at
    least 0.88 of it. (XLA leaves out a convolution's taps on zero padding, which we count; at
    a few latent rows that alone would put us above XLA, hence the 128 px shapes.)"""
    plan, shape = plans[name], DEMOS[name]
    call = _call(plan, shape, role)
    module = plan.module(call.component)
    ours, xla = call_cost(module, call).flops, xla_flops(module, call)
    assert ours > 0
    assert 0.88 * xla <= ours <= xla, f"{name} {role}: ours {ours:.4g}, XLA {xla:.4g}"


# --- exact counts on hand-made networks ----------------------------------------------------------


class _LinearConv(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.linear = nnx.Linear(24, 40, rngs=rngs)
        self.conv = nnx.Conv(40, 8, (3, 5), padding="VALID", rngs=rngs)

    def __call__(self, x):
        return self.conv(self.linear(x))


def test_flops_exact_for_linear_and_conv():
    batch, height, width = 2, 12, 16
    call = NetworkCall("net", "denoiser", (spec((batch, height, width, 24)),))
    linear = 2 * (batch * height * width) * 24 * 40  # 2 M K N
    out_pixels = batch * (height - 3 + 1) * (width - 5 + 1)
    conv = 2 * out_pixels * 8 * (3 * 5 * 40)  # 2 x outputs x (taps x input channels)
    assert call_cost(_LinearConv(), call).flops == linear + conv


def test_flops_count_every_scan_iteration_and_the_costlier_cond_branch():
    module = nnx.Linear(32, 32, rngs=nnx.Rngs(0))
    one = 2 * 8 * 32 * 32

    def repeated(n):  # call arguments are traced, so the count is closed over
        return lambda m, x: jax.lax.scan(lambda h, _: (m(h), None), x, None, length=n)[0]

    for n in (1, 3, 7):
        call = NetworkCall("net", "denoiser", (spec((8, 32)),), method=repeated(n))
        assert call_cost(module, call).flops == n * one

    def either(m, x, flag):  # one branch applies the layer twice, the other not at all
        return jax.lax.cond(flag, lambda h: m(m(h)), lambda h: h, x)

    call = NetworkCall("net", "denoiser", (spec((8, 32)), spec((), jnp.bool_)), method=either)
    assert call_cost(module, call).flops == 2 * one


# --- attention ----------------------------------------------------------------------------------


class _SelfAttention(nnx.Module):
    def __init__(self, channels: int, heads: int, head_dim: int):
        rngs = nnx.Rngs(0)
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nnx.Linear(channels, 3 * heads * head_dim, rngs=rngs)
        self.out = nnx.Linear(heads * head_dim, channels, rngs=rngs)

    def __call__(self, x):
        b, length, _ = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(b, length, 3 * self.heads, self.head_dim), 3, 2)
        return self.out(dot_product_attention(q, k, v).reshape(b, length, -1))


def test_attention_counts_the_formula_flops_but_no_score_matrix():
    b, length, channels, heads, head_dim = 1, 4096, 32, 1, 64
    module = _SelfAttention(channels, heads, head_dim)
    call = NetworkCall("net", "denoiser", (spec((b, length, channels)),))
    cost = call_cost(module, call)

    inner = heads * head_dim
    projections = 2 * b * length * channels * 3 * inner + 2 * b * length * inner * channels
    attention = 4 * b * heads * length * length * head_dim  # q.k and p.v
    assert cost.flops == projections + attention

    scores = b * heads * length * length * 4  # one fp32 (B, H, L, L) matrix: 64 MiB
    assert cost.activation_bytes < scores / 4

    # The plain formula, not routed through the project's attention, does hold the scores:
    # what the estimate above would have been without the flash-kernel treatment.
    def plain(m, x):
        q, k, v = jnp.split(m.qkv(x).reshape(b, length, 3 * heads, head_dim), 3, 2)
        return m.out(jax.nn.dot_product_attention(q, k, v).reshape(b, length, -1))

    naive = call_cost(module, NetworkCall("net", "denoiser", call.args, method=plain))
    assert naive.flops == cost.flops
    assert naive.activation_bytes >= scores


# --- liveness -----------------------------------------------------------------------------------


def test_peak_counts_values_alive_together_not_every_value():
    """A chain of N elementwise ops holds at most an input and an output at a time."""
    size = 1024 * 1024 * 4  # one fp32 (1024, 1024) array

    def chain(n):
        def run(_, x):
            for i in range(n):
                x = jnp.sin(x) * (i + 2.0) if i % 2 else jnp.exp(x) + 1.0
            return x

        return run

    for n in (4, 32):
        call = NetworkCall("net", "denoiser", (spec((1024, 1024)),), method=chain(n))
        cost = call_cost(_Stateless(), call)
        assert 2 * size <= cost.activation_bytes <= 3 * size, (n, cost.activation_bytes / size)

    # Values used again later stay alive: keeping every step's output to sum at the end does.
    def kept(_, x):
        outs = [x := jnp.sin(x) + i for i in range(8)]
        return sum(outs)

    call = NetworkCall("net", "denoiser", (spec((1024, 1024)),), method=kept)
    assert call_cost(_Stateless(), call).activation_bytes >= 8 * size


def test_weights_are_not_activations():
    module = nnx.Linear(2048, 2048, rngs=nnx.Rngs(0))  # 16 MiB of weights
    cost = call_cost(module, NetworkCall("net", "denoiser", (spec((4, 2048)),)))
    assert cost.activation_bytes <= 3 * 4 * 2048 * 4  # input, output, a broadcast bias


# --- how costs scale ----------------------------------------------------------------------------


def test_wan_denoiser_grows_with_frames_and_doubles_under_cfg(plans):
    plan = plans["wan-tiny"]
    costs = [_cost(plan, Shape(64, 64, frames=f), "denoiser") for f in (1, 5, 9, 17)]
    for smaller, larger in zip(costs, costs[1:], strict=False):
        assert larger.flops > smaller.flops
        assert larger.activation_bytes > smaller.activation_bytes

    cfg = _cost(plan, Shape(64, 64, frames=9, cfg=True), "denoiser").flops
    plain = _cost(plan, Shape(64, 64, frames=9, cfg=False), "denoiser").flops
    assert cfg == pytest.approx(2 * plain, rel=0.01)
    assert plan.flops(Shape(64, 64, frames=9))["denoiser"] == cfg


# --- weights ------------------------------------------------------------------------------------


def _safetensors_bytes(folder: Path) -> int:
    """Bytes of every tensor in the folder's component files, from the headers alone."""
    total = 0
    for path in folder.glob("*/*.safetensors"):
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        total += sum(end - begin for begin, end in (t["data_offsets"] for t in header.values()))
    return total


@pytest.mark.parametrize("name", list(DEMOS))
def test_weight_bytes_match_the_files(plans, name):
    plan = plans[name]
    on_disk = _safetensors_bytes(Path(resolve_demo(f"demo:{name}")))
    assert on_disk > 0
    assert plan.weight_bytes == pytest.approx(on_disk, rel=0.01)


def test_weight_bytes_shrink_with_the_mesh_and_the_dtype():
    folder = resolve_demo("demo:wan-tiny")
    whole = ModelPlan(folder, "fp32", {}).weight_bytes
    fsdp = ModelPlan(folder, "fp32", {"fsdp": 2}).weight_bytes
    both = ModelPlan(folder, "fp32", {"fsdp": 2, "tensor": 2}).weight_bytes
    assert fsdp < 0.6 * whole
    assert both < fsdp
    # Batch and sequence axes replicate the weights.
    assert ModelPlan(folder, "fp32", {"data": 2, "context": 2}).weight_bytes == whole
    assert ModelPlan(folder, "bf16", {}).weight_bytes == whole // 2


# --- the estimate -------------------------------------------------------------------------------


def test_estimate_adds_up_and_grows_with_the_request(plans):
    plan = plans["sd1-tiny"]
    small = plan.estimate(Shape(256, 256))
    assert small.total == small.weights + small.activations
    assert small.weights == plan.weight_bytes
    assert small.peak_call in {"unet", "vae"}
    assert "256x256" in small.describe()
    assert plan.estimate(Shape(512, 512)).activations > small.activations
    assert plan.estimate(Shape(256, 256, batch=2)).activations > small.activations


def test_data_axis_halves_the_denoiser_activations_of_a_batch(plans):
    plan = plans["sd1-tiny"]
    pair = Shape(256, 256, batch=2)
    call = _call(plan, pair, "denoiser")
    assert split_factor(call, {"data": 2}) == 2
    assert split_factor(call, {"fsdp": 2, "tensor": 2}) == 1

    whole = _cost(plan, pair, "denoiser").activation_bytes
    split = math.ceil(whole / split_factor(call, {"data": 2}))
    # Half the rows on each device is what one image (half the rows) needs on one device.
    single = _cost(plan, Shape(256, 256, batch=1), "denoiser").activation_bytes
    assert split == pytest.approx(whole / 2, rel=0.1)
    assert split == pytest.approx(single, rel=0.1)

    # The VAE's rows split over every axis too, so the whole estimate about halves.
    sharded = ModelPlan(resolve_demo("demo:sd1-tiny"), "fp32", {"data": 2}).estimate(pair)
    assert sharded.activations == pytest.approx(plan.estimate(pair).activations / 2, rel=0.1)


def test_split_factor_keeps_whole_what_does_not_divide():
    call = NetworkCall("x", "decoder", (), split=(("rows", 60),))
    assert split_factor(call, {"fsdp": 4}) == 4
    assert split_factor(call, {"fsdp": 8}) == 1  # 60 rows over 8 devices: not split
    seq = NetworkCall("x", "denoiser", (), split=(("batch", 2), ("seq", None)))
    assert split_factor(seq, {"context": 8}) == 8  # padded to divide
    assert split_factor(seq, {"data": 2, "context": 4}) == 8
    assert split_factor(seq, {"data": 4}) == 1


def test_keyword_inputs_are_traced_like_the_others(plans):
    # SDXL's UNet takes its pooled text and size ids as the keyword `added_cond`.
    sd1 = plans["sd1-tiny"]
    unet = {
        **sd1.configs["unet"],
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 6 * 8 + 32,
    }
    sdxl = ModelPlan(
        "unused", "fp32", {}, {**sd1.configs, "unet": unet}, {**sd1.index, "family": "sdxl"}
    )
    call = _call(sdxl, DEMOS["sd1-tiny"], "denoiser")
    assert set(call.kwargs) == {"added_cond"}
    counted = _cost(sdxl, DEMOS["sd1-tiny"], "denoiser").flops
    assert counted > _cost(sd1, DEMOS["sd1-tiny"], "denoiser").flops  # the added embedding
    assert 0.85 < counted / xla_flops(sdxl.module("unet"), call) <= 1.0
    assert sdxl.estimate(DEMOS["sd1-tiny"]).total > sdxl.weight_bytes
