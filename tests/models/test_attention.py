"""The attention wrapper against the textbook formula, the CPU chunked path against the plain
one, and the per-platform choice of kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvideo.models import attention
from jaxvideo.models.attention import (
    choose_implementation,
    chunked_attention,
    dot_product_attention,
)


def _qkv(seed, batch, q_len, kv_len, heads, head_dim, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    shapes = [(batch, q_len, heads, head_dim)] + [(batch, kv_len, heads, head_dim)] * 2
    return [jnp.asarray(rng.standard_normal(s), dtype) for s in shapes]


def _reference(q, k, v, *, bias=None, mask=None, scale=None, is_causal=False):
    """softmax(scale * q.k + bias, masked) @ v in float64 numpy, (B, L, H, D) layout."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = scale * np.einsum("bqhd,bkhd->bhqk", q, k)
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    allowed = np.ones(logits.shape, bool)
    if mask is not None:
        allowed &= np.asarray(mask)
    if is_causal:
        allowed &= np.tril(np.ones(logits.shape[-2:], bool))
    logits = np.where(allowed, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def _bias(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _mask(seed, shape):
    mask = np.random.default_rng(seed).random(shape) > 0.3
    mask[..., 0] = True  # every row keeps a key (fully masked rows have no textbook answer)
    return jnp.asarray(mask)


B, Q, K, H, D = 2, 12, 9, 3, 8


def _case(name: str, q_len: int) -> dict:
    """Keyword arguments for one case, including the broadcast forms networks use: T5's
    per-head position bias (+ padding), padding over keys."""
    return {
        "plain": {},
        "scale": {"scale": 0.37},
        "bias_per_head": {"bias": _bias(1, (1, H, q_len, K)), "scale": 1.0},
        "bias_full": {"bias": _bias(2, (B, H, q_len, K))},
        "bias_keys_2d": {"bias": _bias(3, (q_len, K))},
        "mask_keys": {"mask": _mask(4, (B, 1, 1, K))},
        "bias_and_mask": {"bias": _bias(5, (1, H, q_len, K)), "mask": _mask(6, (B, H, q_len, K))},
    }[name]


CASES = (
    "plain",
    "scale",
    "bias_per_head",
    "bias_full",
    "bias_keys_2d",
    "mask_keys",
    "bias_and_mask",
)


@pytest.mark.parametrize("name", CASES)
def test_wrapper_matches_the_formula(name):
    q, k, v = _qkv(0, B, Q, K, H, D)
    kwargs = _case(name, Q)
    expected = _reference(q, k, v, **kwargs)
    np.testing.assert_allclose(dot_product_attention(q, k, v, **kwargs), expected, atol=1e-5)


def test_causal_matches_the_formula():
    q, k, v = _qkv(0, B, Q, Q, H, D)
    out = dot_product_attention(q, k, v, is_causal=True, scale=0.5)
    np.testing.assert_allclose(out, _reference(q, k, v, is_causal=True, scale=0.5), atol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_chunked_path_matches_the_formula(name):
    # 200 queries: the last 128-query block is padded, the bias/mask rows with it.
    q, k, v = _qkv(0, B, 200, K, H, D)
    kwargs = _case(name, 200)
    expected = _reference(q, k, v, **kwargs)
    np.testing.assert_allclose(jax.jit(chunked_attention)(q, k, v, **kwargs), expected, atol=1e-5)


# 96 and 3120 do not divide the 128-query block: the padded rows must not leak through.
@pytest.mark.parametrize("q_len,kv_len", [(256, 256), (1024, 77), (96, 320), (3120, 40)])
def test_chunked_attention_matches_plain_attention(q_len, kv_len):
    q, k, v = _qkv(0, 2, q_len, kv_len, 3, 8)
    expected = jax.nn.dot_product_attention(q, k, v)
    np.testing.assert_allclose(jax.jit(chunked_attention)(q, k, v), expected, atol=1e-5)


def test_long_biased_attention_takes_the_chunked_path_and_agrees():
    q, k, v = _qkv(1, 1, 1024, 1024, 2, 8)
    bias = _bias(7, (1, 2, 1024, 1024))
    mask = _mask(8, (1, 1, 1, 1024))

    def call(q, k, v, bias, mask):
        return dot_product_attention(q, k, v, bias=bias, mask=mask, scale=0.2)

    assert "while" in jax.jit(call).lower(q, k, v, bias, mask).as_text()  # lax.map over blocks
    expected = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=0.2)
    np.testing.assert_allclose(call(q, k, v, bias, mask), expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("q_len", [Q, 1024])  # plain and chunked paths
def test_half_inputs_keep_their_dtype(dtype, q_len):
    q, k, v = _qkv(2, 1, q_len, 1024 if q_len > Q else K, 2, D)
    bias = _bias(9, (1, 2, q_len, k.shape[1]))
    out = dot_product_attention(*(x.astype(dtype) for x in (q, k, v)), bias=bias.astype(dtype))
    assert out.dtype == dtype
    half = [np.asarray(x.astype(dtype), np.float64) for x in (q, k, v, bias)]
    expected = _reference(*half[:3], bias=half[3])
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=2e-2)


@pytest.mark.parametrize(
    "args,expected",
    [
        (("gpu", jnp.bfloat16, 64, 4096, 4096), "cudnn"),
        (("gpu", jnp.float16, 128, 77, 77, True), "cudnn"),
        (("gpu", jnp.bfloat16, 256, 16, 16), "cudnn"),
        (("gpu", jnp.float32, 64, 4096, 4096), "xla"),  # cuDNN flash attention is half only
        (("gpu", jnp.bfloat16, 60, 4096, 4096), "xla"),  # head_dim not a multiple of 8
        (("gpu", jnp.bfloat16, 512, 4096, 4096), "xla"),  # head_dim beyond cuDNN's limit
        (("rocm", jnp.bfloat16, 64, 4096, 4096), "xla"),  # no cuDNN
        (("tpu", jnp.bfloat16, 64, 4096, 4096), "splash"),
        (("tpu", jnp.float32, 128, 77, 77, True), "xla"),  # causal (CLIP): short, plain XLA
        (("cpu", jnp.float32, 40, 4096, 4096), "chunked"),
        (("cpu", jnp.bfloat16, 128, 3120, 3120), "chunked"),
        (("cpu", jnp.float32, 64, 1024, 1023), "xla"),  # small: fits in cache
        (("cpu", jnp.float32, 64, 4096, 4096, True), "xla"),  # causal
    ],
)
def test_choose_implementation(args, expected):
    assert choose_implementation(*args) == expected


def test_sequence_parallel_attention_avoids_cudnn():
    # cuDNN's partitioning refuses queries split over the sequence; XLA gathers keys instead.
    problem = ("gpu", jnp.bfloat16, 128, 3120, 3120)
    assert choose_implementation(*problem, sequence_sharded=True) == "xla"
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2, 1), ("context", "data"))):
        assert attention._sequence_sharded()
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1, 2), ("context", "data"))):
        assert not attention._sequence_sharded()
    assert not attention._sequence_sharded()  # no mesh


def test_gpu_path_prepares_bias_for_cudnn_and_falls_back_when_refused(monkeypatch):
    """On GPU, half inputs go to cuDNN with a query-dtype bias over full (q_len, kv_len) rows,
    clipped above cuDNN's large-negative bug; a trace-time refusal falls back to XLA."""
    real = jax.nn.dot_product_attention
    seen = {}

    def fake(query, key, value, *, bias, mask, scale, is_causal, implementation=None):
        if implementation == "cudnn":
            seen.update(bias=bias, mask=mask)
            raise NotImplementedError("The head dim must be <= 128")
        return real(query, key, value, bias=bias, mask=mask, scale=scale, is_causal=is_causal)

    monkeypatch.setattr(attention, "_backend", lambda: "gpu")
    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(3, B, Q, K, H, D))
    bias = _bias(10, (1, H, 1, K)).at[0, 0, 0, 1].set(jnp.finfo(jnp.float32).min)
    mask = _mask(11, (B, 1, 1, K))
    out = dot_product_attention(q, k, v, bias=bias, mask=mask, scale=1.0)
    assert seen["bias"].dtype == jnp.bfloat16 and seen["bias"].shape == (1, H, Q, K)
    assert seen["mask"].shape == (B, 1, Q, K)
    assert float(seen["bias"].min()) == -(2.0**41)
    assert out.dtype == jnp.bfloat16
    half = [np.asarray(x, np.float64) for x in (q, k, v)]
    expected = _reference(*half, bias=np.asarray(seen["bias"], np.float64), mask=mask, scale=1.0)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=2e-2)
