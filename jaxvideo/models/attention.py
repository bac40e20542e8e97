"""Scaled dot-product attention shared by every network.

One entry point so the kernel can be chosen per platform in one place (cuDNN flash attention on
GPU, a chunked memory-efficient path on CPU) without touching the networks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
    allowed. Softmax runs in float32 whatever the input dtype.
    """
    dtype = query.dtype
    out = jax.nn.dot_product_attention(
        query.astype(jnp.float32) if dtype == jnp.float16 else query,
        key.astype(jnp.float32) if dtype == jnp.float16 else key,
        value.astype(jnp.float32) if dtype == jnp.float16 else value,
        mask=mask,
        is_causal=is_causal,
    )
    return out.astype(dtype)
