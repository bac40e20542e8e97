"""diffusers `FluxTransformer2DModel` (Flux.1 dev / schnell / Kontext denoiser) in Flax NNX,
and its key map.

The network works on packed tokens: the pipeline folds 2x2 latent patches into 64-channel
tokens and gives each token a 3-axis position (index, row, column); text tokens sit at
position 0. Kontext's reference images are more image tokens with their own positions, so
the network is the same for all three. Dev models embed the distilled guidance scale
(`guidance_embeds`); schnell has no guidance embedder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvideo.convert.core import Rule
from jaxvideo.models.attention import dot_product_attention
from jaxvideo.models.context_parallel import token_stream
from jaxvideo.models.dit import (
    MMDIT_RULES,
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    FeedForward,
    TimeTextEmbedding,
    apply_rope,
    config_fields,
    fp32_layer_norm,
    rope_tables,
)
from jaxvideo.models.layers import Dtype
from jaxvideo.models.registry import ComponentSpec
from jaxvideo.sharding import constrain

ROPE_THETA = 10000.0
NORM_EPS = 1e-6
MLP_RATIO = 4


@dataclass(frozen=True)
class FluxTransformerConfig:
    """The fields of a diffusers FluxTransformer2DModel `config.json` (defaults: FLUX.1-dev)."""

    patch_size: int = 1
    in_channels: int = 64
    out_channels: int = 64
    num_layers: int = 19
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> FluxTransformerConfig:
        """Reads a diffusers config.json dict; unknown keys are ignored, bad values raise."""
        kwargs = config_fields(cls, d, tuples=("axes_dims_rope",))
        # diffusers: `out_channels = out_channels or in_channels`.
        if not kwargs.get("out_channels"):
            kwargs["out_channels"] = kwargs.get("in_channels", cls.in_channels)
        return cls(**kwargs)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.type == "int":
                # Sizes are positive; a model may have no blocks of one kind.
                low = 0 if f.name in ("num_layers", "num_single_layers") else 1
                if int(getattr(self, f.name)) < low:
                    raise ValueError(
                        f"{f.name} must be at least {low}, got {getattr(self, f.name)}"
                    )
        if self.patch_size != 1:
            # diffusers' Flux packs 2x2 latent patches in the pipeline; the network's own
            # patch size is 1 in every released model (and in diffusers' forward).
            raise ValueError(
                f"patch_size must be 1 (Flux packs in the pipeline), got {self.patch_size}"
            )
        if sum(self.axes_dims_rope) != self.attention_head_dim or any(
            d % 2 for d in self.axes_dims_rope
        ):
            raise ValueError(
                f"axes_dims_rope {self.axes_dims_rope} must be even and sum to "
                f"attention_head_dim ({self.attention_head_dim})"
            )

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


def flux_rope(
    positions: np.ndarray, config: FluxTransformerConfig
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables of the (tokens, 3) positions of text + image tokens, in that order."""
    return rope_tables(positions, config.axes_dims_rope, ROPE_THETA)


class FluxAttention(nnx.Module):
    """diffusers' FluxAttention: q/k RMS norm per head, RoPE over the joint sequence.

    With `context` (the double-stream blocks) the text tokens have their own projections and
    norms and attend jointly with the image tokens, text first; the two outputs split again.
    `pre_only` (single-stream blocks) has no output projection: the block projects it.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        context: bool,
        pre_only: bool,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        head_dim = dim // heads
        norm = dict(epsilon=NORM_EPS, rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype)
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nnx.Linear(dim, dim, **kw) for _ in range(3))
        self.norm_q, self.norm_k = nnx.RMSNorm(head_dim, **norm), nnx.RMSNorm(head_dim, **norm)
        self.to_out = None if pre_only else nnx.Linear(dim, dim, **kw)
        if context:
            self.add_q_proj, self.add_k_proj, self.add_v_proj = (
                nnx.Linear(dim, dim, **kw) for _ in range(3)
            )
            self.norm_added_q = nnx.RMSNorm(head_dim, **norm)
            self.norm_added_k = nnx.RMSNorm(head_dim, **norm)
            self.to_add_out = nnx.Linear(dim, dim, **kw)
        else:
            self.add_q_proj = self.add_k_proj = self.add_v_proj = None
            self.norm_added_q = self.norm_added_k = self.to_add_out = None

    def _qkv(self, x, q_proj, k_proj, v_proj, q_norm, k_norm):
        def heads(t: jax.Array) -> jax.Array:
            return t.reshape(*t.shape[:2], self.heads, -1)

        q, k = heads(q_proj(x)), heads(k_proj(x))
        return q_norm(q).astype(q.dtype), k_norm(k).astype(k.dtype), heads(v_proj(x))

    def __call__(
        self, x: jax.Array, rope: tuple[jax.Array, jax.Array], context: jax.Array | None = None
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Self-attention over `x`, or joint attention over [context, x] returning both."""
        q, k, v = self._qkv(x, self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)
        if context is not None:
            cq, ck, cv = self._qkv(
                context,
                self.add_q_proj,
                self.add_k_proj,
                self.add_v_proj,
                self.norm_added_q,
                self.norm_added_k,
            )
            q, k, v = (jnp.concatenate(pair, axis=1) for pair in ((cq, q), (ck, k), (cv, v)))
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = dot_product_attention(q, k, v)
        out = out.reshape(*out.shape[:2], -1)
        if context is None:
            return out if self.to_out is None else self.to_out(out)
        text = context.shape[1]
        return self.to_out(out[:, text:]), self.to_add_out(out[:, :text])


class FluxTransformerBlock(nnx.Module):
    """Double-stream (MMDiT) block: image and text keep their own weights, attend jointly."""

    def __init__(self, c: FluxTransformerConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        dim = c.inner_dim
        self.norm1 = AdaLayerNormZero(dim, 6, NORM_EPS, **kw)
        self.norm1_context = AdaLayerNormZero(dim, 6, NORM_EPS, **kw)
        self.attn = FluxAttention(dim, c.num_attention_heads, context=True, pre_only=False, **kw)
        self.ff = FeedForward(dim, MLP_RATIO * dim, dim, approximate=True, **kw)
        self.ff_context = FeedForward(dim, MLP_RATIO * dim, dim, approximate=True, **kw)

    def __call__(self, x, context, temb, rope):
        h, (gate, shift_mlp, scale_mlp, gate_mlp) = self.norm1(x, temb)
        ch, (c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp) = self.norm1_context(context, temb)
        attn, context_attn = self.attn(h, rope, ch)
        x = _feed_forward(x + gate[:, None] * attn, self.ff, shift_mlp, scale_mlp, gate_mlp)
        context = context + c_gate[:, None] * context_attn
        context = _feed_forward(context, self.ff_context, c_shift_mlp, c_scale_mlp, c_gate_mlp)
        return x, context


def _feed_forward(x, ff, shift, scale, gate):
    """x + gate * ff(modulated layer norm of x): the second half of a double-stream block."""
    h = (fp32_layer_norm(x, NORM_EPS) * (1 + scale[:, None]) + shift[:, None]).astype(x.dtype)
    return x + gate[:, None] * ff(h)


class FluxSingleTransformerBlock(nnx.Module):
    """Single-stream block on [text, image]: attention and MLP in parallel, one out projection."""

    def __init__(self, c: FluxTransformerConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        dim = c.inner_dim
        self.norm = AdaLayerNormZero(dim, 3, NORM_EPS, **kw)
        self.proj_mlp = nnx.Linear(dim, MLP_RATIO * dim, **kw)
        self.attn = FluxAttention(dim, c.num_attention_heads, context=False, pre_only=True, **kw)
        self.proj_out = nnx.Linear(dim + MLP_RATIO * dim, dim, **kw)

    def __call__(self, x, temb, rope):
        h, (gate,) = self.norm(x, temb)
        mlp = jax.nn.gelu(self.proj_mlp(h), approximate=True)
        out = self.proj_out(jnp.concatenate([self.attn(h, rope), mlp], axis=-1))
        return x + gate[:, None] * out


class FluxTransformer2DModel(nnx.Module):
    """Flux denoiser on packed tokens: (B, S, C_in) -> (B, S, C_out) flow velocity."""

    def __init__(
        self,
        config: FluxTransformerConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        c = config
        self.config = c
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        dim = c.inner_dim
        self.x_embedder = nnx.Linear(c.in_channels, dim, **kw)
        self.context_embedder = nnx.Linear(c.joint_attention_dim, dim, **kw)
        self.time_text_embed = TimeTextEmbedding(
            dim, c.pooled_projection_dim, guidance=c.guidance_embeds, **kw
        )
        self.transformer_blocks = nnx.List(
            [FluxTransformerBlock(c, **kw) for _ in range(c.num_layers)]
        )
        self.single_transformer_blocks = nnx.List(
            [FluxSingleTransformerBlock(c, **kw) for _ in range(c.num_single_layers)]
        )
        self.norm_out = AdaLayerNormContinuous(dim, dim, NORM_EPS, **kw)
        self.proj_out = nnx.Linear(dim, c.out_channels, **kw)

    def __call__(
        self,
        x: jax.Array,
        timestep: jax.Array,
        context: jax.Array,
        pooled: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        guidance: jax.Array | None = None,
    ) -> jax.Array:
        """Predicts the flow velocity of the image tokens.

        `x` (B, S, in_channels) packed latent tokens (the target image's, then any reference
        images'); `timestep` (B,) the sigma in [0, 1] (diffusers' transformer convention: it
        is scaled by 1000 here); `context` (B, L, joint_attention_dim) T5 text; `pooled`
        (B, pooled_projection_dim) CLIP's pooled text; `rope` the `flux_rope` tables of the
        L + S positions; `guidance` (B,) the distilled guidance scale of dev models.
        """
        c = self.config
        batch, tokens, channels = x.shape
        if channels != c.in_channels:
            raise ValueError(f"expected tokens (B, S, {c.in_channels}), got {x.shape}")
        text = context.shape[1]
        if rope[0].shape[0] != text + tokens:
            raise ValueError(
                f"rope covers {rope[0].shape[0]} positions, need {text} text + {tokens} image"
            )
        t = jnp.asarray(timestep, jnp.float32).reshape(batch) * 1000
        g = None if guidance is None else jnp.asarray(guidance, jnp.float32).reshape(batch) * 1000
        temb = self.time_text_embed(t, pooled, g)

        h = constrain(self.x_embedder(x.astype(self.dtype)), "batch", "seq", None)
        context = self.context_embedder(context.astype(self.dtype))
        with token_stream():  # self-attention over the split sequence: Ulysses
            for block in self.transformer_blocks:
                h, context = block(h, context, temb, rope)
                h = constrain(h, "batch", "seq", None)
            joint = jnp.concatenate([context, h], axis=1)
            for block in self.single_transformer_blocks:
                joint = constrain(block(joint, temb, rope), "batch", "seq", None)
        h = self.norm_out(joint[:, text:], temb)
        return self.proj_out(h)


# The MMDiT key rules serve Flux unchanged.
FLUX_TRANSFORMER_RULES: tuple[Rule, ...] = MMDIT_RULES

FLUX_TRANSFORMER_SPEC = ComponentSpec(
    config_from_hf=FluxTransformerConfig.from_hf,
    build=FluxTransformer2DModel,
    rules=FLUX_TRANSFORMER_RULES,
)
