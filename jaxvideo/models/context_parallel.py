"""Context parallelism as explicit collectives: Ulysses self-attention under `shard_map`.

With the token sequence split over the mesh's `context` axis (jaxvideo.sharding's `seq`),
GSPMD's partitioner runs attention by all-gathering every key and value onto every device:
each device then holds the whole sequence's K/V, which does not scale to long videos.
Ulysses (DeepSpeed-Ulysses, Jacobs et al. 2023) instead swaps what is split: one all-to-all
turns "my tokens, all heads" into "all tokens, my heads", each device runs ordinary attention
on its heads over the full sequence (cuDNN, the CPU kernel, ...), and a second all-to-all
swaps back. Per device it moves 4 x (sequence x width / n) values instead of gathering
2 x sequence x width.

A sequence that does not divide by the context size is padded (the padded keys are masked
out, the padded queries dropped); so are heads that do not divide by the context size times
the tensor axis they are already split over (zero heads, dropped after).

The mode is the serve config's `context_parallel` (`ulysses`, the default, or `gspmd`),
set for tracing by `jaxvideo.sharding.activate`; the DiTs mark their block stacks with
`token_stream`, where the sequence is the one split over `context`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxvideo.config import CONTEXT_PARALLEL_MODES

MODES = CONTEXT_PARALLEL_MODES  # "ulysses" | "gspmd"
_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("context_parallel", default="ulysses")
_TOKENS: contextvars.ContextVar[bool] = contextvars.ContextVar("token_stream", default=False)

# (query, key, value, mask) -> attention on one device's heads over the whole sequence.
LocalAttention = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


@contextlib.contextmanager
def mode(name: str) -> Iterator[None]:
    """Traces under `name` (one of MODES) until the block ends."""
    if name not in MODES:
        raise ValueError(f"context_parallel must be one of {', '.join(MODES)}, got {name!r}")
    token = _MODE.set(name)
    try:
        yield
    finally:
        _MODE.reset(token)


def current_mode() -> str:
    return _MODE.get()


@contextlib.contextmanager
def token_stream() -> Iterator[None]:
    """Marks the transformer blocks whose token sequence the model pins on `seq` (traced
    inside this block): their self-attention is what Ulysses splits. Elsewhere (a VAE's
    attention over image rows split across every axis) attention stays GSPMD's."""
    token = _TOKENS.set(True)
    try:
        yield
    finally:
        _TOKENS.reset(token)


def ulysses_here() -> bool:
    """Whether self-attention traced now runs as Ulysses."""
    return _MODE.get() == "ulysses" and _TOKENS.get()


def _axes(sizes: dict[str, int], names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(a for a in names if sizes.get(a, 1) > 1)


def _spec_axes(axes: tuple[str, ...]) -> str | tuple[str, ...] | None:
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def ulysses_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    local: LocalAttention,
    *,
    seq_axes: tuple[str, ...],
    batch_axes: tuple[str, ...],
    head_axes: tuple[str, ...],
) -> jax.Array:
    """Self-attention over (B, S, H, D) arrays split over `seq_axes` along S (and over
    `batch_axes` / `head_axes` where those divide), under the current mesh."""
    sizes = dict(jax.sharding.get_abstract_mesh().shape)
    seq_axes = _axes(sizes, seq_axes)
    n = math.prod(sizes[a] for a in seq_axes)
    b, s, h, _ = query.shape
    batch = _axes(sizes, batch_axes)
    if batch and b % math.prod(sizes[a] for a in batch):
        batch = ()
    heads = _axes(sizes, head_axes)
    t = (
        math.prod(sizes[a] for a in heads)
        if heads and h % math.prod(sizes[a] for a in heads) == 0
        else 1
    )
    if t == 1:
        heads = ()
    s_pad, h_pad = -(-s // n) * n, -(-h // (t * n)) * (t * n)

    def padded(x: jax.Array) -> jax.Array:
        return jnp.pad(x, ((0, 0), (0, s_pad - s), (0, h_pad - h), (0, 0)))

    spec = P(_spec_axes(batch), _spec_axes(seq_axes), _spec_axes(heads), None)

    def body(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        # (b, S/n, h, D) -> (b, S, h/n, D): all tokens, a slice of the heads.
        q, k, v = (
            jax.lax.all_to_all(x, seq_axes, split_axis=2, concat_axis=1, tiled=True)
            for x in (q, k, v)
        )
        mask = (jnp.arange(s_pad) < s)[None, None, None, :]  # padded keys attend nowhere
        out = local(q, k, v, mask)
        return jax.lax.all_to_all(out, seq_axes, split_axis=1, concat_axis=2, tiled=True)

    out = jax.shard_map(body, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(
        padded(query), padded(key), padded(value)
    )
    return out[:, :s, :h]
