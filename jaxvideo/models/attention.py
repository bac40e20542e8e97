"""Scaled dot-product attention shared by every network, with a kernel chosen per platform.

Networks call `dot_product_attention` only; which implementation runs is decided here, by one
small pure function of the backend and the problem (`choose_implementation`), never by flags
threaded through models:

- GPU (CUDA): cuDNN flash attention for half-precision inputs it accepts, else XLA.
- CPU: a memory-efficient chunked kernel for long attention, else XLA; half inputs run in fp32.
- TPU: Pallas splash attention (`attention_tpu.py`, flash-style, no score matrix in HBM) for
  attention without bias; biased attention (T5's short position-bias attention) on XLA.
- anything else: XLA.
- while a cost is being counted (`counting`, jaxvideo.cost): the plain formula inside one
  call named `fused_attention`, so FLOPs are the formula's and memory counts no score matrix.

Self-attention over a token sequence split over the mesh's `context` axis runs as Ulysses
(`context_parallel.py`: all-to-all to heads, one of the kernels above per device, all-to-all
back) unless the serve config asks for GSPMD's gather of keys and values.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator

import jax
import jax.extend.backend
import jax.numpy as jnp
import numpy as np

from jaxvideo.models import context_parallel
from jaxvideo.sharding import LOGICAL_AXIS_RULES

# On CPU, the full (q_len x kv_len) score matrix of a long self-attention does not fit in cache
# and XLA's elementwise softmax over it is memory-bound: at 4096 tokens the plain path is ~6x
# slower than processing one head and a block of queries at a time (docs/PERFORMANCE.md).
CPU_CHUNK_MIN_SCORES = 1024 * 1024
CPU_QUERY_CHUNK = 128

# What cuDNN flash attention takes without training (jax/_src/cudnn/fused_attention_stablehlo.py,
# `check_layout` and `check_is_flash_attention`): fp16/bf16 inputs and a head dim that is a
# multiple of 8, up to 256 on Hopper and later (128 before: jax refuses at trace time and we
# fall back to XLA).
_HALF_DTYPES = (np.dtype(jnp.float16), np.dtype(jnp.bfloat16))
_CUDNN_MAX_HEAD_DIM = 256

# Most negative bias handed to cuDNN per dtype: jax masks with these values (not finfo.min)
# to work around a cuDNN bug subtracting two large negatives.
_CUDNN_BIAS_FLOOR = {np.dtype(jnp.float16): -(2.0**15), np.dtype(jnp.bfloat16): -(2.0**41)}


def choose_implementation(
    backend: str,
    dtype,
    head_dim: int,
    q_len: int,
    kv_len: int,
    is_causal: bool = False,
    sequence_sharded: bool = False,
) -> str:
    """'cudnn', 'chunked', 'splash', 'xla' (or 'fused' while counting) for one problem.

    `backend` is `jax.default_backend()`, except that a GPU without CUDA is "rocm" (no cuDNN).
    `sequence_sharded`: the token sequence may be split over devices (sequence parallelism),
    which cuDNN's partitioning rules refuse; XLA's partitioner gathers keys/values instead.
    """
    dtype = np.dtype(dtype)
    if backend == "gpu":
        cudnn_ok = dtype in _HALF_DTYPES and head_dim % 8 == 0 and head_dim <= _CUDNN_MAX_HEAD_DIM
        return "cudnn" if cudnn_ok and not sequence_sharded else "xla"
    if backend == "cpu" and q_len * kv_len >= CPU_CHUNK_MIN_SCORES and not is_causal:
        return "chunked"
    if backend == "tpu" and not is_causal:
        return "splash"
    if backend == "count":
        return "fused"
    return "xla"


_counting = threading.local()


@contextlib.contextmanager
def counting() -> Iterator[None]:
    """Traces attention as one opaque `fused_attention` call (jaxvideo.cost), whatever the
    platform: what a flash kernel costs in FLOPs, without a score matrix in memory."""
    before = getattr(_counting, "on", False)
    _counting.on = True
    try:
        yield
    finally:
        _counting.on = before


def _backend() -> str:
    if getattr(_counting, "on", False):
        return "count"
    backend = jax.default_backend()
    if backend == "gpu" and "cuda" not in jax.extend.backend.get_backend().platform_version:
        return "rocm"
    return backend


def _sequence_sharded() -> bool:
    """Whether the mesh being traced under splits the `seq` logical axis (jaxvideo.sharding)."""
    sizes = dict(jax.sharding.get_abstract_mesh().shape)
    return any(sizes.get(axis, 1) > 1 for axis in LOGICAL_AXIS_RULES["seq"])


def _ulysses(query, key, bias, mask, is_causal) -> bool:
    """Self-attention over a DiT's token sequence split over `context`, in the (default)
    Ulysses mode: the explicit all-to-all kernel (context_parallel.py) rather than GSPMD's
    K/V gather."""
    return (
        context_parallel.ulysses_here()
        and _sequence_sharded()
        and query.shape[1] == key.shape[1]
        and bias is None
        and mask is None
        and not is_causal
    )


def _as_4d(x: jax.Array | None) -> jax.Array | None:
    return None if x is None else jnp.reshape(x, (1,) * (4 - x.ndim) + x.shape)


def _xla_attention(query, key, value, bias, mask, scale, is_causal):
    return jax.nn.dot_product_attention(
        query, key, value, bias=bias, mask=mask, scale=scale, is_causal=is_causal
    )


def _full_rows(x: jax.Array, q_len: int, kv_len: int) -> jax.Array:
    # cuDNN takes bias broadcast over batch and heads but not over queries or keys.
    return jnp.broadcast_to(x, x.shape[:2] + (q_len, kv_len))


def _cudnn_attention(query, key, value, bias, mask, scale, is_causal):
    q_len, kv_len, dtype = query.shape[1], key.shape[1], query.dtype
    if bias is not None:
        bias = jnp.maximum(bias, _CUDNN_BIAS_FLOOR[np.dtype(dtype)]).astype(dtype)
        bias = _full_rows(bias, q_len, kv_len)
    if mask is not None:
        mask = _full_rows(mask, q_len, kv_len)
    try:
        return jax.nn.dot_product_attention(
            query,
            key,
            value,
            bias=bias,
            mask=mask,
            scale=scale,
            is_causal=is_causal,
            implementation="cudnn",
        )
    except NotImplementedError:
        # jax's trace-time flash-attention checks depend on the GPU and cuDNN version
        # (e.g. head_dim > 128 before Hopper); what they refuse runs on XLA.
        return _xla_attention(query, key, value, bias, mask, scale, is_causal)


def _query_blocks(x: jax.Array, padded: int, chunk: int, fill) -> jax.Array:
    """A 4D operand broadcastable to (B, H, Q, K) -> (B|1, H|1, blocks|1, chunk|1, K|1).

    Rows are padded like the queries (with `fill`), so each query block is one index.
    """
    if x.shape[2] == 1:
        return x[:, :, None]
    x = jnp.pad(x, ((0, 0), (0, 0), (0, padded - x.shape[2]), (0, 0)), constant_values=fill)
    return x.reshape(x.shape[0], x.shape[1], padded // chunk, chunk, x.shape[3])


def _block(x: jax.Array, b, h, j) -> jax.Array:
    """The (chunk|1, K|1) slice of a `_query_blocks` operand for batch b, head h, block j."""
    return x[tuple(i if n > 1 else 0 for i, n in zip((b, h, j), x.shape[:3], strict=True))]


def chunked_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Non-causal attention one head and one block of queries at a time (memory-efficient).

    The score block (chunk x kv_len) of one head stays in cache; softmax is exact because every
    block sees all keys. `bias`/`mask` broadcast to (batch, heads, q_len, kv_len) as in
    `dot_product_attention` and are sliced per block, never broadcast in full.
    """
    batch, q_len, heads, head_dim = query.shape
    kv_len = key.shape[1]
    chunk = CPU_QUERY_CHUNK
    # Lengths that do not divide (video token counts rarely do) get zero query rows, sliced
    # off below: cheaper than falling back to small blocks.
    padded = -(-q_len // chunk) * chunk
    if padded != q_len:
        query = jnp.pad(query, ((0, 0), (0, padded - q_len), (0, 0), (0, 0)))
    scale = head_dim**-0.5 if scale is None else scale
    q = (query * scale).transpose(0, 2, 1, 3).reshape(batch * heads, padded // chunk, chunk, -1)
    k = key.transpose(0, 2, 1, 3).reshape(batch * heads, kv_len, head_dim)
    v = value.transpose(0, 2, 1, 3).reshape(batch * heads, kv_len, value.shape[-1])
    if bias is not None:
        bias = _query_blocks(_as_4d(bias).astype(q.dtype), padded, chunk, 0)
    if mask is not None:
        mask = _query_blocks(_as_4d(mask), padded, chunk, True)
    large_negative = jnp.finfo(q.dtype).min

    def one_head(args):
        index, q_blocks, k_head, v_head = args
        b, h = index // heads, index % heads

        def one_block(block_args):
            j, q_block = block_args
            scores = q_block @ k_head.T
            if bias is not None:
                scores = scores + _block(bias, b, h, j)
            if mask is not None:
                scores = jnp.where(_block(mask, b, h, j), scores, large_negative)
            # Normalising after the value matmul divides (chunk x head_dim), not the scores.
            weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
            return (weights @ v_head) / weights.sum(axis=-1, keepdims=True)

        return jax.lax.map(one_block, (jnp.arange(padded // chunk), q_blocks))

    out = jax.lax.map(one_head, (jnp.arange(batch * heads), q, k, v))
    return out.reshape(batch, heads, padded, -1)[:, :, :q_len].transpose(0, 2, 1, 3)


def _chunked(query, key, value, bias, mask, scale, is_causal):
    return chunked_attention(query, key, value, bias=bias, mask=mask, scale=scale)


def _splash(query, key, value, bias, mask, scale, is_causal):
    from jaxvideo.models.attention_tpu import key_padding, splash_attention

    usable, key_valid = key_padding(mask, key.shape[1])
    if bias is not None or not usable:  # a position bias (T5) or a general mask: XLA
        return _xla_attention(query, key, value, bias, mask, scale, is_causal)
    return splash_attention(query, key, value, key_valid=key_valid, scale=scale)


@functools.partial(jax.jit, static_argnums=(5, 6))
def fused_attention(query, key, value, bias, mask, scale, is_causal):
    return _xla_attention(query, key, value, bias, mask, scale, is_causal)


def _fused(query, key, value, bias, mask, scale, is_causal):
    return fused_attention(query, key, value, bias, mask, scale, is_causal)


_IMPLEMENTATIONS: dict[str, Callable[..., jax.Array]] = {
    "fused": _fused,
    "xla": _xla_attention,
    "cudnn": _cudnn_attention,
    "chunked": _chunked,
    "splash": _splash,
}


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    scale: float | None = None,
    is_causal: bool = False,
) -> jax.Array:
    """Attention over (batch, length, heads, head_dim) arrays; returns the same layout and dtype.

    softmax(scale * q.k + bias, masked) @ v. `bias` is additive float and `mask` boolean (True
    where attending is allowed), each broadcastable to (batch, heads, q_len, kv_len); `scale`
    None is 1/sqrt(head_dim). Half-precision inputs are computed in float32 on CPU, which has
    no fast half path.
    """
    dtype = query.dtype
    backend = _backend()
    if backend == "cpu" and np.dtype(dtype) in _HALF_DTYPES:
        query, key, value = (x.astype(jnp.float32) for x in (query, key, value))
    if _ulysses(query, key, bias, mask, is_causal):

        def local(q, k, v, key_mask):
            impl = choose_implementation(backend, q.dtype, q.shape[-1], q.shape[1], k.shape[1])
            return _IMPLEMENTATIONS[impl](q, k, v, None, key_mask, scale, False)

        out = context_parallel.ulysses_attention(
            query,
            key,
            value,
            local,
            seq_axes=LOGICAL_AXIS_RULES["seq"],
            batch_axes=LOGICAL_AXIS_RULES["batch"],
            head_axes=LOGICAL_AXIS_RULES["heads"],
        )
        return out.astype(dtype)
    impl = choose_implementation(
        backend,
        dtype,
        query.shape[-1],
        query.shape[1],
        key.shape[1],
        is_causal,
        sequence_sharded=_sequence_sharded(),
    )
    out = _IMPLEMENTATIONS[impl](query, key, value, _as_4d(bias), _as_4d(mask), scale, is_causal)
    return out.astype(dtype)
