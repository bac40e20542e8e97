"""Pieces shared by the diffusion transformers (Wan, Flux, SD3): float32 layer norm, RoPE,
feed-forward and projection MLPs, adaptive layer norms and the timestep + pooled-text embedding.

Each mirrors one diffusers class, named in its docstring, so its parameters keep diffusers'
names and the key tables stay one regex per kind of tensor.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvideo.convert.core import Rule
from jaxvideo.models.layers import Dtype, TimestepEmbedding, timestep_embedding

# diffusers' Timesteps(256) in every DiT time embedding (flip_sin_to_cos, no shift).
TIME_PROJ_DIM = 256

# The key rules of the MMDiTs (Flux, SD3): Flax paths mirror the diffusers names except the
# ModuleLists padded with Dropout (`to_out.0`, `ff[_context].net.{0.proj,2}`) and `.weight` ->
# `.kernel` (every other weight is a Linear's, the adaptive norms' `linear` included) or
# `.scale` (q/k RMS norms). First match wins.
_FF = r"(.*\.(?:ff|ff_context))\.net\."
MMDIT_RULES: tuple[Rule, ...] = (
    Rule(r"(.*)\.to_out\.0\.weight", r"\1.to_out.kernel", "linear"),
    Rule(r"(.*)\.to_out\.0\.bias", r"\1.to_out.bias"),
    Rule(_FF + r"0\.proj\.weight", r"\1.proj.kernel", "linear"),
    Rule(_FF + r"0\.proj\.bias", r"\1.proj.bias"),
    Rule(_FF + r"2\.weight", r"\1.out.kernel", "linear"),
    Rule(_FF + r"2\.bias", r"\1.out.bias"),
    Rule(r"(.*\.norm_(?:q|k|added_q|added_k))\.weight", r"\1.scale"),
    Rule(r"(.*)\.weight", r"\1.kernel", "linear"),
    Rule(r"(.*)\.bias", r"\1.bias"),
)


def config_fields(cls: type, d: dict[str, Any], tuples: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys of a diffusers config.json dict that the config dataclass `cls` has (unknown
    keys are ignored), with the JSON lists named in `tuples` made tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names}
    for name in tuples:
        if name in kwargs:
            kwargs[name] = tuple(kwargs[name])
    return kwargs


def fp32_layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm without affine parameters: two-pass statistics in float32 (returns float32)."""
    x = x.astype(jnp.float32)
    centred = x - x.mean(-1, keepdims=True)
    var = jnp.square(centred).mean(-1, keepdims=True)
    return centred * jax.lax.rsqrt(var + eps)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates adjacent channel pairs of (B, S, heads, head_dim) by per-token angles.

    `cos`/`sin` are (S, head_dim / 2): diffusers' interleaved real form
    (`repeat_interleave_real=True`, `use_real_unbind_dim=-1`) without the repetition.
    """
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    x1, x2 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None], sin[None, :, None]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def rope_angles(positions: np.ndarray, axes_dim: tuple[int, ...], theta: float) -> np.ndarray:
    """(S, sum(axes_dim) / 2) RoPE angles of (S, axes) integer positions, in float64.

    Each axis owns `axes_dim[i]` channels of the head (diffusers' `FluxPosEmbed` and the Wan
    3D RoPE); computed in float64 like diffusers' buffers and rounded once by the caller.
    """
    positions = np.asarray(positions, np.float64)
    if positions.ndim != 2 or positions.shape[1] != len(axes_dim):
        raise ValueError(f"positions must be (tokens, {len(axes_dim)}), got {positions.shape}")
    angles = []
    for axis, dim in enumerate(axes_dim):
        freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        angles.append(np.outer(positions[:, axis], freqs))
    return np.concatenate(angles, -1)


def rope_tables(
    positions: np.ndarray, axes_dim: tuple[int, ...], theta: float
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (S, head_dim / 2) float32 for `apply_rope`."""
    angles = rope_angles(positions, axes_dim, theta)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class FeedForward(nnx.Module):
    """diffusers' FeedForward with a GELU input projection: proj -> gelu -> out."""

    def __init__(
        self,
        dim: int,
        inner_dim: int,
        dim_out: int,
        *,
        approximate: bool,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.approximate = approximate
        self.proj = nnx.Linear(dim, inner_dim, **kw)
        self.out = nnx.Linear(inner_dim, dim_out, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.gelu(self.proj(x), approximate=self.approximate))


class TextProjection(nnx.Module):
    """diffusers' PixArtAlphaTextProjection: linear_1 -> gelu (tanh) or silu -> linear_2."""

    def __init__(
        self,
        in_features: int,
        dim: int,
        *,
        act: str = "gelu_tanh",
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ):
        if act not in ("gelu_tanh", "silu"):
            raise ValueError(f"act must be 'gelu_tanh' or 'silu', got {act!r}")
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.silu = act == "silu"
        self.linear_1 = nnx.Linear(in_features, dim, **kw)
        self.linear_2 = nnx.Linear(dim, dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.linear_1(x)
        return self.linear_2(jax.nn.silu(h) if self.silu else jax.nn.gelu(h, approximate=True))


class AdaLayerNormZero(nnx.Module):
    """diffusers' AdaLayerNormZero (6 chunks) and AdaLayerNormZeroSingle (3 chunks).

    silu(emb) -> linear -> (shift, scale, gate, ...); the input is normalised without affine
    parameters and modulated by the first two; the rest are returned for the caller.
    """

    def __init__(
        self,
        dim: int,
        chunks: int,
        eps: float = 1e-6,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ):
        self.chunks, self.eps = chunks, eps
        self.linear = nnx.Linear(dim, chunks * dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, emb: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        params = jnp.split(self.linear(jax.nn.silu(emb)), self.chunks, axis=-1)
        shift, scale = params[0][:, None], params[1][:, None]
        h = fp32_layer_norm(x, self.eps) * (1 + scale) + shift
        return h.astype(x.dtype), params[2:]


class AdaLayerNormContinuous(nnx.Module):
    """diffusers' AdaLayerNormContinuous without affine norm parameters (the DiT output norm).

    Note the chunk order: scale first, then shift.
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        eps: float = 1e-6,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ):
        self.eps = eps
        self.linear = nnx.Linear(cond_dim, 2 * dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        scale, shift = jnp.split(self.linear(jax.nn.silu(cond)), 2, axis=-1)
        h = fp32_layer_norm(x, self.eps) * (1 + scale[:, None]) + shift[:, None]
        return h.astype(x.dtype)


class TimeTextEmbedding(nnx.Module):
    """diffusers' CombinedTimestepTextProjEmbeddings, with the guidance embedder of
    CombinedTimestepGuidanceTextProjEmbeddings when `guidance` (Flux dev's distilled guidance).

    timestep (and guidance) -> sinusoids -> MLP, summed with the pooled text projection.
    """

    def __init__(
        self,
        dim: int,
        pooled_dim: int,
        *,
        guidance: bool,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.dtype = dtype
        self.timestep_embedder = TimestepEmbedding(TIME_PROJ_DIM, dim, **kw)
        self.guidance_embedder = TimestepEmbedding(TIME_PROJ_DIM, dim, **kw) if guidance else None
        self.text_embedder = TextProjection(pooled_dim, dim, act="silu", **kw)

    def _embed(self, embedder: TimestepEmbedding, t: jax.Array) -> jax.Array:
        freqs = timestep_embedding(t, TIME_PROJ_DIM, flip_sin_to_cos=True, downscale_freq_shift=0)
        return embedder(freqs.astype(self.dtype))

    def __call__(
        self, timestep: jax.Array, pooled: jax.Array, guidance: jax.Array | None = None
    ) -> jax.Array:
        """(B,) timesteps in [0, 1000], (B, pooled_dim) pooled text [, (B,) guidance x 1000]."""
        emb = self._embed(self.timestep_embedder, timestep)
        if (guidance is None) != (self.guidance_embedder is None):
            raise ValueError(
                "guidance is required by a guidance-distilled transformer and refused otherwise"
            )
        if guidance is not None:
            emb = emb + self._embed(self.guidance_embedder, guidance)
        return emb + self.text_embedder(pooled.astype(self.dtype))
