"""The TPU attention path (Pallas splash attention) run on CPU through Pallas' interpreter,
against the float64 formula: lengths and head dims that need padding, cross-attention, a
key-padding mask (what Ulysses passes), and the dispatch that sends biased attention to XLA."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvideo.models import attention
from jaxvideo.models.attention_tpu import block_size, key_padding, splash_attention


def reference(q, k, v, key_valid=None, scale=None):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if key_valid is not None:
        scores = np.where(np.asarray(key_valid)[None, None, None], scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def tensors(b, q_len, kv_len, heads, dim, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, q_len, heads, dim)).astype(np.float32)
    k, v = (rng.standard_normal((b, kv_len, heads, dim)).astype(np.float32) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize(
    ("q_len", "kv_len", "heads", "dim"),
    [
        (256, 256, 2, 128),  # whole blocks, a full vreg of head dim
        (200, 200, 2, 64),  # padded to a 256 block and to 128 lanes (SD3.5's head dim)
        (130, 77, 3, 40),  # cross-attention on text tokens, everything padded
    ],
)
def test_splash_attention_in_interpret_mode_matches_the_formula(q_len, kv_len, heads, dim):
    q, k, v = tensors(2, q_len, kv_len, heads, dim)
    out = splash_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), interpret=True)
    assert out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out, np.float64), reference(q, k, v), atol=5e-5)


def test_padded_keys_are_kept_out_and_scale_applies():
    q, k, v = tensors(1, 96, 96, 2, 32, seed=1)
    valid = np.arange(96) < 70  # Ulysses' padding of a length that did not divide
    out = splash_attention(
        *(jnp.asarray(x) for x in (q, k, v)), key_valid=jnp.asarray(valid), scale=0.3,
        interpret=True,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(out), reference(q, k, v, valid, 0.3), atol=5e-5)


def test_bf16_inputs_stay_bf16_and_close():
    q, k, v = tensors(1, 128, 128, 2, 128, seed=2)
    out = splash_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), interpret=True)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float64), reference(q, k, v), atol=3e-2)


def test_blocks_grow_with_the_sequence_up_to_512():
    assert [block_size(n) for n in (1, 77, 128, 200, 512, 4096, 32760)] == [
        128, 128, 128, 256, 512, 512, 512,
    ]  # fmt: skip


def test_the_tpu_dispatch_keeps_biased_attention_on_xla(monkeypatch):
    seen = []
    monkeypatch.setattr(attention, "_backend", lambda: "tpu")
    monkeypatch.setattr(
        "jaxvideo.models.attention_tpu.splash_attention",
        lambda *a, **kw: seen.append("splash") or splash_attention(*a, **kw, interpret=True),
    )
    q, k, v = tensors(1, 64, 64, 2, 32, seed=3)
    args = [jnp.asarray(x) for x in (q, k, v)]
    out = attention.dot_product_attention(*args)
    np.testing.assert_allclose(np.asarray(out), reference(q, k, v), atol=5e-5)
    bias = np.random.default_rng(4).standard_normal((1, 2, 64, 64)).astype(np.float32)
    attention.dot_product_attention(*args, bias=jnp.asarray(bias))
    assert seen == ["splash"]  # the biased call went to XLA
    assert key_padding(jnp.ones((1, 1, 1, 64), bool), 64)[0]
    assert not key_padding(jnp.ones((1, 2, 64, 64), bool), 64)[0]
