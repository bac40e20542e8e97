"""Attention on TPU: Pallas splash attention (`jax.experimental.pallas.ops.tpu`), a flash-style
kernel that streams key/value blocks through VMEM, so no score matrix is ever whole in HBM.

At Wan 2.1 480p x 81 frames (32,760 tokens) one head's scores are 32,760^2 values, ~2 GB in
bf16: XLA's plain attention cannot run that on a 16 GB v5e chip, splash attention can.

The kernel wants (heads, length, head_dim) per example, lengths in whole blocks and a head
dim in whole 128-lane vregs; inputs are padded to that, padded keys are kept out of every
softmax with segment ids (real tokens segment 1, padding 0), and the padding is dropped after.
`interpret=True` runs the same kernel on CPU through Pallas' interpreter (the tests do).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

LANES = 128  # the TPU vector register's minor dimension: head dims are padded to it
MIN_BLOCK = 128
MAX_BLOCK = 512  # larger blocks stop paying off and crowd VMEM at head_dim 128


def block_size(length: int) -> int:
    """Query/key block length for a sequence: whole 128s, at most 512 (short sequences use
    one block rather than padding up to 512)."""
    return min(MAX_BLOCK, -(-length // MIN_BLOCK) * MIN_BLOCK)


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, q_len: int, kv_len: int, block_q: int, block_kv: int, interpret: bool):
    mask = masks.MultiHeadMask([masks.FullMask((q_len, kv_len))] * heads)
    sizes = splash.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv)
    return splash.make_splash_mha(
        mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def splash_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    key_valid: jax.Array | None = None,
    scale: float | None = None,
    interpret: bool = False,
) -> jax.Array:
    """softmax(scale * q.k) @ v over (B, S, H, D) arrays (no bias); `key_valid` (K,) bool
    keeps keys out where False (a padding mask). Returns (B, S_q, H, D) in the query's dtype."""
    b, q_len, heads, dim = query.shape
    kv_len = key.shape[1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    block_q, block_kv = block_size(q_len), block_size(kv_len)
    q_pad, kv_pad = -(-q_len // block_q) * block_q, -(-kv_len // block_kv) * block_kv
    d_pad = -(-dim // LANES) * LANES

    def layout(x: jax.Array, length: int) -> jax.Array:
        """(B, S, H, D) -> (B, H, S_padded, D_padded); zero padding changes no dot product."""
        x = jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, d_pad - dim)))
        return x.transpose(0, 2, 1, 3)

    q = layout(query * jnp.asarray(scale, query.dtype), q_pad)
    k, v = layout(key, kv_pad), layout(value, kv_pad)
    valid = jnp.arange(kv_pad) < kv_len
    if key_valid is not None:
        valid = valid & jnp.pad(key_valid, (0, kv_pad - kv_len))
    segments = splash.SegmentIds(
        q=(jnp.arange(q_pad) < q_len).astype(jnp.int32), kv=valid.astype(jnp.int32)
    )
    kernel = _kernel(heads, q_pad, kv_pad, block_q, block_kv, interpret)
    out = jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=segments))(q, k, v)
    return out.transpose(0, 2, 1, 3)[:, :q_len, :, :dim].astype(query.dtype)


def key_padding(mask: jax.Array | None, kv_len: int) -> tuple[bool, jax.Array | None]:
    """(usable, key_valid) for a 4D attention mask: a mask over keys only (1, 1, 1, K), as
    Ulysses' padding is, becomes segment ids; any other mask is not this kernel's."""
    if mask is None:
        return True, None
    if mask.shape[:3] == (1, 1, 1) and mask.shape[3] == kv_len:
        return True, mask[0, 0, 0]
    return False, None
