"""diffusers `WanTransformer3DModel` (Wan 2.1 / 2.2 video denoiser) in Flax NNX, and its key map.

One network serves every Wan variant diffusers supports, chosen by config: text-to-video
(in 16), Wan 2.1 I2V / FLF2V (in 36, CLIP image tokens through extra key/value projections),
Wan 2.2 A14B (the 2.1 architecture) and Wan 2.2 TI2V-5B (in 48, one timestep per token).
"""

from __future__ import annotations

import dataclasses
import math
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
    FeedForward,
    TextProjection,
    apply_rope,
    config_fields,
    fp32_layer_norm,
)
from jaxvideo.models.dit import rope_tables as dit_rope_tables
from jaxvideo.models.layers import Dtype, TimestepEmbedding, layer_norm, timestep_embedding
from jaxvideo.models.registry import ComponentSpec
from jaxvideo.sharding import constrain

ROPE_THETA = 10000.0
# diffusers' FP32LayerNorm default, used by the image embedder (the blocks use `eps`).
IMAGE_NORM_EPS = 1e-5


@dataclass(frozen=True)
class WanTransformerConfig:
    """The fields of a diffusers WanTransformer3DModel `config.json` (defaults are diffusers').

    `qk_norm` is not read: diffusers applies RMS norm across heads to q and k whatever it says.
    `image_dim` (CLIP width) and `added_kv_proj_dim` go together (Wan 2.1 I2V / FLF2V);
    `pos_embed_seq_len` (FLF2V: both frames' tokens) adds a learned position embedding to them.
    """

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> WanTransformerConfig:
        """Reads a diffusers config.json dict; unknown keys are ignored, bad values raise."""
        kwargs = config_fields(cls, d, tuples=("patch_size",))
        # diffusers: `out_channels = out_channels or in_channels`.
        if not kwargs.get("out_channels"):
            kwargs["out_channels"] = kwargs.get("in_channels", cls.in_channels)
        return cls(**kwargs)

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3 or any(int(p) < 1 for p in self.patch_size):
            raise ValueError(f"patch_size must be 3 positive ints, got {self.patch_size}")
        for f in dataclasses.fields(self):
            # Every plain-int field is a size or a count.
            if f.type == "int" and int(getattr(self, f.name)) < 1:
                raise ValueError(f"{f.name} must be positive, got {getattr(self, f.name)}")
        if self.attention_head_dim % 2:
            raise ValueError(
                f"attention_head_dim must be even for RoPE, got {self.attention_head_dim}"
            )
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            raise ValueError(
                "image_dim and added_kv_proj_dim must be set together (Wan 2.1 I2V), got "
                f"image_dim={self.image_dim}, added_kv_proj_dim={self.added_kv_proj_dim}"
            )
        if self.added_kv_proj_dim is not None and self.added_kv_proj_dim != self.inner_dim:
            # The image keys/values project embedded image tokens, which are inner_dim wide.
            raise ValueError(
                f"added_kv_proj_dim ({self.added_kv_proj_dim}) must equal "
                f"num_attention_heads * attention_head_dim ({self.inner_dim})"
            )
        if self.pos_embed_seq_len is not None and self.image_dim is None:
            raise ValueError("pos_embed_seq_len needs image_dim (FLF2V image tokens)")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


def rope_tables(head_dim: int, grid: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (tokens, head_dim / 2) of Wan's 3D RoPE for a (frames, height, width) grid.

    The head's channel pairs are split between the frame, row and column positions
    (diffusers' `WanRotaryPosEmbed`).
    """
    h_dim = w_dim = 2 * (head_dim // 6)
    t_dim = head_dim - h_dim - w_dim
    positions = np.stack(np.meshgrid(*(np.arange(n) for n in grid), indexing="ij"), -1)
    return dit_rope_tables(positions.reshape(-1, 3), (t_dim, h_dim, w_dim), ROPE_THETA)


class PatchEmbedding(nnx.Module):
    """Conv3d with kernel = stride = patch_size, as patchify + one matmul (fast on XLA:CPU).

    The kernel keeps the conv3d THWIO layout (pt, ph, pw, C_in, dim), so the converter's
    conv3d transform fills it; patches are flattened in the same (pt, ph, pw, C) order.
    """

    def __init__(
        self,
        patch_size: tuple[int, int, int],
        in_channels: int,
        dim: int,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ):
        self.patch_size = patch_size
        self.dtype = dtype
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (*patch_size, in_channels, dim), param_dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, F, H, W, C) -> (B, tokens, dim), tokens ordered (frame, row, column)."""
        b, f, h, w, c = x.shape
        pt, ph, pw = self.patch_size
        x = x.reshape(b, f // pt, pt, h // ph, ph, w // pw, pw, c)
        x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, pt * ph * pw * c)
        kernel = self.kernel[...].reshape(-1, self.kernel.shape[-1])
        return x.astype(self.dtype) @ kernel.astype(self.dtype) + self.bias[...].astype(self.dtype)


class WanImageEmbedding(nnx.Module):
    """CLIP image tokens -> model width: [+ pos_embed] -> LayerNorm -> FFN (exact gelu) -> LN."""

    def __init__(
        self,
        image_dim: int,
        dim: int,
        pos_embed_seq_len: int | None,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        # FP32LayerNorm: float32 statistics and affine, cast back by the caller.
        norm_kw = dict(rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype)
        self.norm1 = layer_norm(image_dim, IMAGE_NORM_EPS, **norm_kw)
        self.ff = FeedForward(image_dim, image_dim, dim, approximate=False, **kw)
        self.norm2 = layer_norm(dim, IMAGE_NORM_EPS, **norm_kw)
        self.pos_embed = (
            nnx.Param(jnp.zeros((1, pos_embed_seq_len, image_dim), param_dtype))
            if pos_embed_seq_len is not None
            else None
        )

    def __call__(self, image: jax.Array) -> jax.Array:
        if self.pos_embed is not None:
            # FLF2V: diffusers folds (2B, N, D) first/last-frame tokens into (B, 2N, D).
            image = image.reshape(-1, *self.pos_embed.shape[1:]) + self.pos_embed[...]
        x = self.norm1(image).astype(image.dtype)
        x = self.ff(x)
        return self.norm2(x).astype(x.dtype)


class WanTimeTextImageEmbedding(nnx.Module):
    """Timestep -> (temb, 6-way modulation); text and image tokens -> model width."""

    def __init__(self, c: WanTransformerConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        dim = c.inner_dim
        self.freq_dim = c.freq_dim
        self.dtype = dtype
        # diffusers keeps time_embedder in float32 (`_keep_in_fp32_modules`).
        self.time_embedder = TimestepEmbedding(
            c.freq_dim, dim, rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype
        )
        self.time_proj = nnx.Linear(dim, 6 * dim, **kw)
        self.text_embedder = TextProjection(c.text_dim, dim, **kw)
        self.image_embedder = (
            WanImageEmbedding(c.image_dim, dim, c.pos_embed_seq_len, **kw)
            if c.image_dim is not None
            else None
        )

    def time(self, timestep: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, T) timesteps (T = 1 or tokens) -> temb (B, T, dim), modulation (B, T, 6, dim)."""
        b, t = timestep.shape
        freqs = timestep_embedding(
            timestep.reshape(-1), self.freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0
        )
        temb = self.time_embedder(freqs.reshape(b, t, -1)).astype(self.dtype)
        modulation = self.time_proj(jax.nn.silu(temb))
        return temb, modulation.reshape(b, t, 6, -1)


class WanAttention(nnx.Module):
    """Multi-head attention with q/k RMS norm across heads; optional image keys/values."""

    def __init__(
        self,
        dim: int,
        heads: int,
        eps: float,
        *,
        image_kv: bool,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        norm_kw = dict(epsilon=eps, rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype)
        self.heads = heads
        self.to_q = nnx.Linear(dim, dim, **kw)
        self.to_k = nnx.Linear(dim, dim, **kw)
        self.to_v = nnx.Linear(dim, dim, **kw)
        self.to_out = nnx.Linear(dim, dim, **kw)
        self.norm_q = nnx.RMSNorm(dim, **norm_kw)
        self.norm_k = nnx.RMSNorm(dim, **norm_kw)
        if image_kv:
            self.add_k_proj = nnx.Linear(dim, dim, **kw)
            self.add_v_proj = nnx.Linear(dim, dim, **kw)
            self.norm_added_k = nnx.RMSNorm(dim, **norm_kw)
        else:
            self.add_k_proj = self.add_v_proj = self.norm_added_k = None

    def _split_heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:2], self.heads, -1)

    def _keys(self, norm: nnx.RMSNorm, proj: nnx.Linear, x: jax.Array) -> jax.Array:
        k = proj(x)
        return self._split_heads(norm(k).astype(k.dtype))

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        image: jax.Array | None = None,
        rope: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array:
        """Self-attention (with `rope`) when `context` is None, else cross-attention on it."""
        context = x if context is None else context
        q = self._keys(self.norm_q, self.to_q, x)
        k = self._keys(self.norm_k, self.to_k, context)
        v = self._split_heads(self.to_v(context))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = dot_product_attention(q, k, v)
        if image is not None:
            # Wan 2.1 I2V: the image tokens get their own softmax, summed with the text one.
            k_img = self._keys(self.norm_added_k, self.add_k_proj, image)
            v_img = self._split_heads(self.add_v_proj(image))
            out = out + dot_product_attention(q, k_img, v_img)
        return self.to_out(out.reshape(*out.shape[:2], -1))


class WanTransformerBlock(nnx.Module):
    """Modulated self-attention (RoPE), cross-attention on text [+ image], modulated FFN."""

    def __init__(self, c: WanTransformerConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        dim, heads = c.inner_dim, c.num_attention_heads
        self.eps = c.eps
        self.attn1 = WanAttention(dim, heads, c.eps, image_kv=False, **kw)
        self.attn2 = WanAttention(dim, heads, c.eps, image_kv=c.image_dim is not None, **kw)
        self.norm2 = (
            layer_norm(dim, c.eps, rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype)
            if c.cross_attn_norm
            else None
        )
        self.ffn = FeedForward(dim, c.ffn_dim, dim, approximate=True, **kw)
        table = jax.random.normal(rngs.params(), (1, 6, dim), param_dtype) / dim**0.5
        self.scale_shift_table = nnx.Param(table)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array,
        image: jax.Array | None,
        modulation: jax.Array,
        rope: tuple[jax.Array, jax.Array],
    ) -> jax.Array:
        """`modulation` (B, 1 or tokens, 6, dim): shift/scale/gate of attention, then of FFN."""
        f32, dtype = jnp.float32, x.dtype
        e = self.scale_shift_table[...].astype(f32) + modulation.astype(f32)
        shift, scale, gate, c_shift, c_scale, c_gate = (e[:, :, i] for i in range(6))

        h = (fp32_layer_norm(x, self.eps) * (1 + scale) + shift).astype(dtype)
        x = (x.astype(f32) + self.attn1(h, rope=rope) * gate).astype(dtype)

        h = x if self.norm2 is None else self.norm2(x).astype(dtype)
        x = x + self.attn2(h, context, image)

        h = (fp32_layer_norm(x, self.eps) * (1 + c_scale) + c_shift).astype(dtype)
        return (x.astype(f32) + self.ffn(h).astype(f32) * c_gate).astype(dtype)


class WanTransformer3DModel(nnx.Module):
    """Wan video denoiser on channels-last latents: (B, F, H, W, C_in) -> (B, F, H, W, C_out)."""

    def __init__(
        self,
        config: WanTransformerConfig,
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
        self.patch_embedding = PatchEmbedding(c.patch_size, c.in_channels, dim, **kw)
        self.condition_embedder = WanTimeTextImageEmbedding(c, **kw)
        self.blocks = nnx.List([WanTransformerBlock(c, **kw) for _ in range(c.num_layers)])
        self.proj_out = nnx.Linear(dim, c.out_channels * math.prod(c.patch_size), **kw)
        table = jax.random.normal(rngs.params(), (1, 2, dim), param_dtype) / dim**0.5
        self.scale_shift_table = nnx.Param(table)

    def __call__(
        self,
        x: jax.Array,
        timestep: jax.Array,
        context: jax.Array,
        image_context: jax.Array | None = None,
    ) -> jax.Array:
        """Predicts the flow velocity.

        `timestep` is (B,) in [0, 1000], or (B, tokens) for per-token timesteps (Wan 2.2 TI2V);
        `context` (B, L, text_dim) is the UMT5 text; `image_context` (B, N, image_dim) the CLIP
        image tokens, required exactly when the config has `image_dim`. With
        `pos_embed_seq_len` (FLF2V) it may also come in diffusers' (2B, N/2, image_dim) layout.
        """
        grid = self._grid(x.shape)
        batch, tokens = x.shape[0], math.prod(grid)
        t = jnp.asarray(timestep, jnp.float32)
        if t.shape not in ((batch,), (batch, tokens)):
            raise ValueError(
                f"timestep must have shape ({batch},) or ({batch}, {tokens}), got {t.shape}"
            )
        self._check_image_context(image_context)
        cos, sin = rope_tables(self.config.attention_head_dim, grid)
        rope = (jnp.asarray(cos), jnp.asarray(sin))

        # Under a mesh the token sequence is split over `context` (sequence parallelism).
        h = constrain(self.patch_embedding(x), "batch", "seq", None)
        temb, modulation = self.condition_embedder.time(t.reshape(batch, -1))
        context = self.condition_embedder.text_embedder(context.astype(self.dtype))
        image = self._image_tokens(image_context, batch)
        with token_stream():  # self-attention over the split sequence: Ulysses
            for block in self.blocks:
                h = constrain(block(h, context, image, modulation, rope), "batch", "seq", None)

        e = self.scale_shift_table[...].astype(jnp.float32) + temb[:, :, None].astype(jnp.float32)
        shift, scale = e[:, :, 0], e[:, :, 1]
        h = (fp32_layer_norm(h, self.config.eps) * (1 + scale) + shift).astype(self.dtype)
        return self._unpatchify(self.proj_out(h), grid)

    def _grid(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The (frames, rows, columns) token grid of a (B, F, H, W, C_in) latent, checked."""
        c = self.config
        if len(shape) != 5 or shape[-1] != c.in_channels:
            raise ValueError(f"expected latents (B, F, H, W, {c.in_channels}), got {shape}")
        if any(n % p for n, p in zip(shape[1:4], c.patch_size, strict=True)):
            raise ValueError(f"latent F, H, W {shape[1:4]} must be multiples of {c.patch_size}")
        grid = tuple(n // p for n, p in zip(shape[1:4], c.patch_size, strict=True))
        if max(grid) > c.rope_max_seq_len:
            raise ValueError(f"token grid {grid} exceeds rope_max_seq_len {c.rope_max_seq_len}")
        return grid

    def _check_image_context(self, image_context: jax.Array | None) -> None:
        has_embedder = self.condition_embedder.image_embedder is not None
        if image_context is not None and not has_embedder:
            raise ValueError("image_context given but this transformer has no image_dim")
        if image_context is None and has_embedder:
            raise ValueError("this transformer (Wan 2.1 I2V / FLF2V) needs image_context")

    def _image_tokens(self, image_context: jax.Array | None, batch: int) -> jax.Array | None:
        if image_context is None:
            return None
        image = self.condition_embedder.image_embedder(image_context.astype(self.dtype))
        if image.shape[0] != batch:
            raise ValueError(
                f"image_context {image_context.shape} gives {image.shape[0]} image token rows "
                f"for a batch of {batch}"
            )
        return image

    def _unpatchify(self, x: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
        """(B, tokens, pt * ph * pw * C_out) -> (B, F, H, W, C_out)."""
        pt, ph, pw = self.config.patch_size
        f, h, w = grid
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, -1)
        x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return x.reshape(x.shape[0], f * pt, h * ph, w * pw, -1)


# Flax paths mirror the diffusers names except the ModuleLists padded with Dropout
# (`to_out.0`, `ffn.net.{0.proj,2}`) and `.weight` -> `.kernel` / `.scale`. First match wins.
_FFN = r"(.*\.(?:ffn|ff))\.net\."
WAN_TRANSFORMER_RULES: tuple[Rule, ...] = (
    Rule(r"patch_embedding\.weight", "patch_embedding.kernel", "conv3d"),
    Rule(r"(.*)\.to_out\.0\.weight", r"\1.to_out.kernel", "linear"),
    Rule(r"(.*)\.to_out\.0\.bias", r"\1.to_out.bias"),
    Rule(_FFN + r"0\.proj\.weight", r"\1.proj.kernel", "linear"),
    Rule(_FFN + r"0\.proj\.bias", r"\1.proj.bias"),
    Rule(_FFN + r"2\.weight", r"\1.out.kernel", "linear"),
    Rule(_FFN + r"2\.bias", r"\1.out.bias"),
    Rule(r"(.*\.norm(?:\d|_q|_k|_added_k))\.weight", r"\1.scale"),
    Rule(
        r"(.*\.(?:to_[qkv]|add_[kv]_proj|linear_\d|time_proj)|proj_out)\.weight",
        r"\1.kernel",
        "linear",
    ),
    Rule(r"(.*)\.bias", r"\1.bias"),
    Rule(r"((?:.*\.)?scale_shift_table|.*\.pos_embed)", r"\1"),
)

# Some Wan I2V checkpoints carry an unused `norm_added_q` (diffusers ignores it on load too).
WAN_TRANSFORMER_IGNORE: tuple[str, ...] = (r"blocks\.\d+\.attn2\.norm_added_q\.(?:weight|bias)",)

WAN_TRANSFORMER_SPEC = ComponentSpec(
    config_from_hf=WanTransformerConfig.from_hf,
    build=WanTransformer3DModel,
    rules=WAN_TRANSFORMER_RULES,
    ignore=WAN_TRANSFORMER_IGNORE,
)
