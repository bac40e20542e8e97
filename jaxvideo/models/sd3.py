"""diffusers `SD3Transformer2DModel` (Stable Diffusion 3 / 3.5 MMDiT denoiser) in Flax NNX.

One network serves SD3 Medium, SD3.5 Large (q/k RMS norm) and SD3.5 Medium (q/k RMS norm plus
MMDiT-X blocks: a second, image-only self-attention in the first `dual_attention_layers`).
Image and text tokens keep separate weights but attend jointly; the last block only updates
the image tokens (`context_pre_only`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvideo.convert.core import Rule
from jaxvideo.models.attention import dot_product_attention
from jaxvideo.models.context_parallel import token_stream
from jaxvideo.models.dit import (
    MMDIT_RULES,
    FeedForward,
    TimeTextEmbedding,
    config_fields,
    fp32_layer_norm,
)
from jaxvideo.models.layers import Dtype, conv2d
from jaxvideo.models.registry import ComponentSpec
from jaxvideo.sharding import constrain

EPS = 1e-6  # every LayerNorm and q/k RMSNorm of the SD3 transformer
QK_NORMS = (None, "rms_norm")


@dataclass(frozen=True)
class SD3TransformerConfig:
    """The fields of a diffusers SD3Transformer2DModel `config.json` (defaults are diffusers').

    `sample_size` is not read: it only seeds the position-embedding table, which checkpoints
    store (`pos_embed.pos_embed`) and which is loaded like a parameter.
    """

    patch_size: int = 2
    in_channels: int = 16
    num_layers: int = 18
    attention_head_dim: int = 64
    num_attention_heads: int = 18
    joint_attention_dim: int = 4096
    caption_projection_dim: int = 1152
    pooled_projection_dim: int = 2048
    out_channels: int = 16
    pos_embed_max_size: int = 96
    dual_attention_layers: tuple[int, ...] = ()
    qk_norm: str | None = None

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> SD3TransformerConfig:
        """Reads a diffusers config.json dict; unknown keys are ignored, bad values raise."""
        kwargs = config_fields(cls, d, tuples=("dual_attention_layers",))
        # diffusers: `out_channels if out_channels is not None else in_channels`.
        if kwargs.get("out_channels") is None:
            kwargs["out_channels"] = kwargs.get("in_channels", cls.in_channels)
        return cls(**kwargs)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # Every plain-int field is a size or a count (pos_embed_max_size too: every SD3
            # checkpoint stores a table of that size, there is no uncropped variant to serve).
            if f.type == "int" and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{f.name} must be a positive int, got {value!r}")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        if self.caption_projection_dim != self.inner_dim:
            # The blocks take the projected text at the model width.
            raise ValueError(
                f"caption_projection_dim ({self.caption_projection_dim}) must equal "
                f"num_attention_heads * attention_head_dim ({self.inner_dim})"
            )
        bad = [i for i in self.dual_attention_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"dual_attention_layers {bad} outside 0..{self.num_layers - 1}")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


def _modulate(normed: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """`norm(x) * (1 + scale) + shift` with per-sample (B, dim) shift and scale, in float32."""
    return normed * (1 + scale[:, None]) + shift[:, None]


def _gated_add(x: jax.Array, gate: jax.Array, y: jax.Array) -> jax.Array:
    """The residual `x + gate * y`, summed in float32 and cast back to the stream's dtype."""
    return (x.astype(jnp.float32) + gate[:, None] * y.astype(jnp.float32)).astype(x.dtype)


class AdaLayerNorm(nnx.Module):
    """The `linear` of diffusers' adaptive norms: silu(temb) -> `chunks` (B, dim) vectors.

    AdaLayerNormZero has 6 chunks (shift, scale, gate of attention, then of the MLP),
    SD35AdaLayerNormZeroX 9 (plus shift, scale, gate of attn2), AdaLayerNormContinuous 2
    (scale, then shift). The projection runs on B rows only, so it is kept in float32.
    """

    def __init__(self, dim: int, chunks: int, *, rngs: nnx.Rngs, param_dtype: Dtype):
        self.chunks = chunks
        self.linear = nnx.Linear(
            dim, chunks * dim, rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype
        )

    def __call__(self, temb: jax.Array) -> list[jax.Array]:
        return jnp.split(self.linear(jax.nn.silu(temb)), self.chunks, axis=-1)


class PatchEmbed(nnx.Module):
    """Patchify conv plus the centre crop of the stored 2D sincos position table."""

    def __init__(self, c: SD3TransformerConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        p, m = c.patch_size, c.pos_embed_max_size
        self.max_size = m
        self.proj = conv2d(
            c.in_channels,
            c.inner_dim,
            p,
            stride=p,
            padding=0,
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
        )
        # diffusers' persistent buffer, row-major over an (m, m) grid; filled by the loader.
        self.pos_embed = nnx.Param(jnp.zeros((1, m * m, c.inner_dim), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C_in) -> (B, rows * columns, dim), tokens row-major."""
        h = self.proj(x)
        b, rows, cols, dim = h.shape
        top, left = (self.max_size - rows) // 2, (self.max_size - cols) // 2
        table = self.pos_embed[...].reshape(self.max_size, self.max_size, dim)
        pos = table[top : top + rows, left : left + cols].reshape(1, rows * cols, dim)
        return (h.reshape(b, rows * cols, dim) + pos).astype(h.dtype)


class JointAttention(nnx.Module):
    """diffusers' Attention with JointAttnProcessor2_0.

    Image tokens, and context tokens through their own `add_*` projections, are concatenated
    (image first) into one softmax; outputs are split back. `added_kv=False` is SD3.5 Medium's
    image-only `attn2`; `context_out=False` (last block) has no `to_add_out`: the context's
    output is dropped, though its queries are still projected, as diffusers stores them.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        qk_norm: bool,
        *,
        added_kv: bool,
        context_out: bool,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        head_dim = dim // heads

        def rms_norm() -> nnx.RMSNorm | None:
            # Per head (over head_dim), statistics and scale in float32.
            if not qk_norm:
                return None
            return nnx.RMSNorm(
                head_dim, epsilon=EPS, rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype
            )

        self.heads = heads
        self.to_q = nnx.Linear(dim, dim, **kw)
        self.to_k = nnx.Linear(dim, dim, **kw)
        self.to_v = nnx.Linear(dim, dim, **kw)
        self.to_out = nnx.Linear(dim, dim, **kw)
        self.norm_q, self.norm_k = rms_norm(), rms_norm()
        if added_kv:
            self.add_q_proj = nnx.Linear(dim, dim, **kw)
            self.add_k_proj = nnx.Linear(dim, dim, **kw)
            self.add_v_proj = nnx.Linear(dim, dim, **kw)
            self.norm_added_q, self.norm_added_k = rms_norm(), rms_norm()
        else:
            self.add_q_proj = self.add_k_proj = self.add_v_proj = None
            self.norm_added_q = self.norm_added_k = None
        self.to_add_out = nnx.Linear(dim, dim, **kw) if context_out else None

    def _heads(self, x: jax.Array, norm: nnx.RMSNorm | None = None) -> jax.Array:
        x = x.reshape(*x.shape[:2], self.heads, -1)
        return x if norm is None else norm(x).astype(x.dtype)

    def __call__(
        self, x: jax.Array, context: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array | None]:
        """(image output, context output or None): self-attention alone when `context` is None."""
        q = self._heads(self.to_q(x), self.norm_q)
        k = self._heads(self.to_k(x), self.norm_k)
        v = self._heads(self.to_v(x))
        if context is not None:
            q = jnp.concatenate([q, self._heads(self.add_q_proj(context), self.norm_added_q)], 1)
            k = jnp.concatenate([k, self._heads(self.add_k_proj(context), self.norm_added_k)], 1)
            v = jnp.concatenate([v, self._heads(self.add_v_proj(context))], 1)
        out = dot_product_attention(q, k, v)
        out = out.reshape(*out.shape[:2], -1)
        tokens = x.shape[1]
        context_out = None
        if context is not None and self.to_add_out is not None:
            context_out = self.to_add_out(out[:, tokens:])
        return self.to_out(out[:, :tokens]), context_out


class JointTransformerBlock(nnx.Module):
    """diffusers' JointTransformerBlock: adaLN-Zero modulated joint attention and MLPs.

    `context_pre_only` (the last block): the context is only normed (AdaLayerNormContinuous)
    to feed the joint attention, and the block returns no context. `dual_attention`
    (SD3.5 Medium): `attn2` is a self-attention of the image tokens on the same normed input
    with its own shift/scale/gate, added after the joint attention's residual.
    """

    def __init__(
        self,
        c: SD3TransformerConfig,
        *,
        context_pre_only: bool,
        dual_attention: bool,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        dim, heads, qk_norm = c.inner_dim, c.num_attention_heads, c.qk_norm is not None
        self.context_pre_only = context_pre_only
        self.norm1 = AdaLayerNorm(
            dim, 9 if dual_attention else 6, rngs=rngs, param_dtype=param_dtype
        )
        self.norm1_context = AdaLayerNorm(
            dim, 2 if context_pre_only else 6, rngs=rngs, param_dtype=param_dtype
        )
        self.attn = JointAttention(
            dim, heads, qk_norm, added_kv=True, context_out=not context_pre_only, **kw
        )
        self.attn2 = (
            JointAttention(dim, heads, qk_norm, added_kv=False, context_out=False, **kw)
            if dual_attention
            else None
        )
        self.ff = FeedForward(dim, 4 * dim, dim, approximate=True, **kw)
        self.ff_context = (
            None if context_pre_only else FeedForward(dim, 4 * dim, dim, approximate=True, **kw)
        )

    def __call__(
        self, x: jax.Array, context: jax.Array, temb: jax.Array
    ) -> tuple[jax.Array, jax.Array | None]:
        """(image tokens, context tokens or None after the last block)."""
        dtype = x.dtype
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp, *attn2_mod = self.norm1(temb)
        normed = fp32_layer_norm(x, EPS)
        if self.context_pre_only:
            c_scale, c_shift = self.norm1_context(temb)
        else:
            c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(
                temb
            )
        c = _modulate(fp32_layer_norm(context, EPS), c_shift, c_scale).astype(dtype)

        attn_out, context_attn_out = self.attn(_modulate(normed, shift, scale).astype(dtype), c)
        x = _gated_add(x, gate, attn_out)
        if self.attn2 is not None:
            shift2, scale2, gate2 = attn2_mod
            attn2_out, _ = self.attn2(_modulate(normed, shift2, scale2).astype(dtype))
            x = _gated_add(x, gate2, attn2_out)
        h = _modulate(fp32_layer_norm(x, EPS), shift_mlp, scale_mlp).astype(dtype)
        x = _gated_add(x, gate_mlp, self.ff(h))

        if self.context_pre_only:
            return x, None
        context = _gated_add(context, c_gate, context_attn_out)
        h = _modulate(fp32_layer_norm(context, EPS), c_shift_mlp, c_scale_mlp).astype(dtype)
        return x, _gated_add(context, c_gate_mlp, self.ff_context(h))


class SD3Transformer2DModel(nnx.Module):
    """SD3 / SD3.5 denoiser on channels-last latents: (B, H, W, C_in) -> (B, H, W, C_out)."""

    def __init__(
        self,
        config: SD3TransformerConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        c = config
        self.config = c
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        dim, p = c.inner_dim, c.patch_size
        self.pos_embed = PatchEmbed(c, **kw)
        # Kept in float32: it runs on B rows and feeds every modulation.
        self.time_text_embed = TimeTextEmbedding(
            dim,
            c.pooled_projection_dim,
            guidance=False,
            rngs=rngs,
            dtype=jnp.float32,
            param_dtype=param_dtype,
        )
        self.context_embedder = nnx.Linear(c.joint_attention_dim, c.caption_projection_dim, **kw)
        self.transformer_blocks = nnx.List(
            [
                JointTransformerBlock(
                    c,
                    context_pre_only=i == c.num_layers - 1,
                    dual_attention=i in c.dual_attention_layers,
                    **kw,
                )
                for i in range(c.num_layers)
            ]
        )
        self.norm_out = AdaLayerNorm(dim, 2, rngs=rngs, param_dtype=param_dtype)
        self.proj_out = nnx.Linear(dim, p * p * c.out_channels, **kw)

    def __call__(
        self,
        x: jax.Array,
        timestep: jax.Array,
        encoder_hidden_states: jax.Array,
        pooled_projections: jax.Array,
        skip_layers: tuple[int, ...] = (),
    ) -> jax.Array:
        """Predicts the flow velocity.

        `timestep` (B,) in [0, 1000]; `encoder_hidden_states` (B, L, joint_attention_dim) the
        CLIP-L/G + T5 text tokens; `pooled_projections` (B, pooled_projection_dim) the pooled
        CLIP embeddings. `skip_layers` (static: it changes the traced program) lists blocks
        to leave out entirely, image and context tokens passing through unchanged, as
        diffusers' skip-layer guidance does.
        """
        c = self.config
        batch, height, width = self._check_inputs(
            x, timestep, encoder_hidden_states, pooled_projections
        )
        skip = frozenset(int(i) for i in skip_layers)
        if any(not 0 <= i < c.num_layers for i in skip):
            raise ValueError(f"skip_layers {sorted(skip)} outside 0..{c.num_layers - 1}")

        # Under a mesh the image tokens are split over `context` (sequence parallelism).
        h = constrain(self.pos_embed(x.astype(self.dtype)), "batch", "seq", None)
        temb = self.time_text_embed(jnp.asarray(timestep, jnp.float32), pooled_projections)
        context = self.context_embedder(encoder_hidden_states.astype(self.dtype))
        with token_stream():  # self-attention over the split sequence: Ulysses
            for i, block in enumerate(self.transformer_blocks):
                if i not in skip:
                    h, context = block(h, context, temb)
                    h = constrain(h, "batch", "seq", None)

        scale, shift = self.norm_out(temb)
        h = self.proj_out(_modulate(fp32_layer_norm(h, EPS), shift, scale).astype(self.dtype))
        # Unpatchify: (B, rows * cols, p * p * C_out) -> (B, H, W, C_out).
        p = c.patch_size
        h = h.reshape(batch, height // p, width // p, p, p, -1).transpose(0, 1, 3, 2, 4, 5)
        return h.reshape(batch, height, width, -1)

    def _check_inputs(
        self, x: jax.Array, timestep: jax.Array, text: jax.Array, pooled: jax.Array
    ) -> tuple[int, int, int]:
        """(B, H, W) of the latents, after checking every input's shape."""
        c = self.config
        if x.ndim != 4 or x.shape[-1] != c.in_channels:
            raise ValueError(f"expected latents (B, H, W, {c.in_channels}), got {x.shape}")
        batch, height, width, _ = x.shape
        if height % c.patch_size or width % c.patch_size:
            raise ValueError(f"latent H, W {(height, width)} must be multiples of {c.patch_size}")
        if max(height, width) // c.patch_size > c.pos_embed_max_size:
            raise ValueError(
                f"latent H, W {(height, width)} exceed pos_embed_max_size "
                f"{c.pos_embed_max_size} patches"
            )
        if jnp.shape(timestep) != (batch,):
            raise ValueError(f"timestep must have shape ({batch},), got {jnp.shape(timestep)}")
        if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != c.joint_attention_dim:
            raise ValueError(
                f"encoder_hidden_states must be ({batch}, L, {c.joint_attention_dim}), "
                f"got {text.shape}"
            )
        if pooled.shape != (batch, c.pooled_projection_dim):
            raise ValueError(
                f"pooled_projections must be ({batch}, {c.pooled_projection_dim}), "
                f"got {pooled.shape}"
            )
        return batch, height, width


# The patch embedding's conv and its stored position table, then the MMDiT key rules.
SD3_TRANSFORMER_RULES: tuple[Rule, ...] = (
    Rule(r"pos_embed\.proj\.weight", "pos_embed.proj.kernel", "conv2d"),
    Rule(r"pos_embed\.pos_embed", "pos_embed.pos_embed"),
    *MMDIT_RULES,
)

SD3_TRANSFORMER_SPEC = ComponentSpec(
    config_from_hf=SD3TransformerConfig.from_hf,
    build=SD3Transformer2DModel,
    rules=SD3_TRANSFORMER_RULES,
)
