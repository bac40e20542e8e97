"""Scaled dot-product attention shared by every network, with a kernel chosen per platform.

Networks call `dot_product_attention` only; which implementation runs is decided here, in one
small table, from the backend and the problem size (never by flags threaded through models).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# On CPU, the full (q_len x kv_len) score matrix of a long self-attention does not fit in cache
# and XLA's elementwise softmax over it is memory-bound: at 4096 tokens the plain path is ~5x
# slower than processing one head and a block of queries at a time.
CPU_CHUNK_MIN_SCORES = 1024 * 1024
CPU_QUERY_CHUNK = 128


def _xla_attention(query, key, value, mask, is_causal):
    return jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=is_causal)


def chunked_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """Unmasked attention one head and one block of queries at a time (memory-efficient).

    The score block (chunk x kv_len) of one head stays in cache; softmax is exact because every
    block sees all keys.
    """
    batch, q_len, heads, head_dim = query.shape
    kv_len = key.shape[1]
    chunk = CPU_QUERY_CHUNK
    # Lengths that do not divide (video token counts rarely do) get zero query rows, sliced
    # off below: cheaper than falling back to small blocks.
    padded = -(-q_len // chunk) * chunk
    if padded != q_len:
        query = jnp.pad(query, ((0, 0), (0, padded - q_len), (0, 0), (0, 0)))
    scale = head_dim**-0.5
    q = (query * scale).transpose(0, 2, 1, 3).reshape(batch * heads, padded // chunk, chunk, -1)
    k = key.transpose(0, 2, 1, 3).reshape(batch * heads, kv_len, head_dim)
    v = value.transpose(0, 2, 1, 3).reshape(batch * heads, kv_len, value.shape[-1])

    def one_head(args):
        q_blocks, k_head, v_head = args

        def one_block(q_block):
            scores = q_block @ k_head.T
            weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
            return (weights @ v_head) / weights.sum(axis=-1, keepdims=True)

        return jax.lax.map(one_block, q_blocks)

    out = jax.lax.map(one_head, (q, k, v))
    return out.reshape(batch, heads, padded, -1)[:, :, :q_len].transpose(0, 2, 1, 3)


def _cpu_attention(query, key, value, mask, is_causal):
    large = query.shape[1] * key.shape[1] >= CPU_CHUNK_MIN_SCORES
    if large and mask is None and not is_causal:
        return chunked_attention(query, key, value)
    return _xla_attention(query, key, value, mask, is_causal)


_BY_BACKEND: dict[str, Callable[..., jax.Array]] = {"cpu": _cpu_attention}


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None = None,
    is_causal: bool = False,
) -> jax.Array:
    """Attention over (batch, length, heads, head_dim) arrays; returns the same layout.

    `mask` is boolean, broadcastable to (batch, heads, q_len, kv_len), True where attending is
    allowed. Half-precision inputs are computed in float32 on CPU, which has no fast fp16 path.
    """
    dtype = query.dtype
    impl = _BY_BACKEND.get(jax.default_backend(), _xla_attention)
    if dtype == jnp.float16:
        query, key, value = (x.astype(jnp.float32) for x in (query, key, value))
    out = impl(query, key, value, mask, is_causal)
    return out.astype(dtype)
