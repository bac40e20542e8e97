"""diffusers UNet building blocks in Flax NNX, channels-last: resnets, transformers, up/down."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvideo.models.attention import dot_product_attention
from jaxvideo.models.layers import Dtype, conv2d, group_norm, layer_norm, upsample_nearest


class ResnetBlock2D(nnx.Module):
    """diffusers `ResnetBlock2D` ("default" time norm); `temb_channels=None`: no time input."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_channels: int | None = None,
        groups: int = 32,
        groups_out: int | None = None,
        eps: float = 1e-6,
        output_scale_factor: float = 1.0,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        out_channels = out_channels or in_channels
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.output_scale_factor = output_scale_factor
        self.norm1 = group_norm(in_channels, groups, eps, **kw)
        self.conv1 = conv2d(in_channels, out_channels, 3, **kw)
        self.time_emb_proj = (
            nnx.Linear(temb_channels, out_channels, **kw) if temb_channels is not None else None
        )
        self.norm2 = group_norm(out_channels, groups_out or groups, eps, **kw)
        self.conv2 = conv2d(out_channels, out_channels, 3, **kw)
        self.conv_shortcut = (
            conv2d(in_channels, out_channels, 1, **kw) if in_channels != out_channels else None
        )

    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nnx.Module):
    """Stride-2 3x3 conv; torch's `padding=0` variant pads only bottom/right by one."""

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        *,
        padding: int = 1,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        self.padding = padding
        self.conv = conv2d(
            channels,
            out_channels or channels,
            3,
            stride=2,
            padding=padding,
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.conv(x)


class Upsample2D(nnx.Module):
    """Nearest-neighbour upsampling (2x, or to the skip's size) followed by a 3x3 conv."""

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        self.conv = conv2d(
            channels, out_channels or channels, 3, rngs=rngs, dtype=dtype, param_dtype=param_dtype
        )

    def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
        return self.conv(upsample_nearest(x, size))


class Attention(nnx.Module):
    """diffusers `Attention` as used by SD transformers: bias-free q/k/v, biased output."""

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None = None,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        inner = heads * dim_head
        kv_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nnx.Linear(query_dim, inner, use_bias=False, **kw)
        self.to_k = nnx.Linear(kv_dim, inner, use_bias=False, **kw)
        self.to_v = nnx.Linear(kv_dim, inner, use_bias=False, **kw)
        self.to_out = nnx.Linear(inner, query_dim, **kw)

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        context = x if context is None else context
        b, n, _ = x.shape
        # (B, L, H*D) -> (B, L, H, D) is a free reshape: the layout the attention kernel takes.
        q = self.to_q(x).reshape(b, n, self.heads, self.dim_head)
        k = self.to_k(context).reshape(b, context.shape[1], self.heads, self.dim_head)
        v = self.to_v(context).reshape(b, context.shape[1], self.heads, self.dim_head)
        out = dot_product_attention(q, k, v)
        return self.to_out(out.reshape(b, n, self.heads * self.dim_head))


class FeedForward(nnx.Module):
    """GEGLU feed-forward: proj (2x inner) -> value * gelu(gate) -> out (torch `ff.net.0/2`)."""

    def __init__(
        self,
        dim: int,
        mult: int = 4,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        inner = dim * mult
        self.proj = nnx.Linear(dim, inner * 2, **kw)
        self.out = nnx.Linear(inner, dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        value, gate = jnp.split(self.proj(x), 2, axis=-1)
        # torch F.gelu default is the exact erf form.
        return self.out(value * jax.nn.gelu(gate, approximate=False))


class BasicTransformerBlock(nnx.Module):
    """Pre-LayerNorm self-attention, cross-attention and GEGLU feed-forward, each residual."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = layer_norm(dim, 1e-5, **kw)
        self.attn1 = Attention(dim, heads, dim_head, **kw)
        self.norm2 = layer_norm(dim, 1e-5, **kw)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim, **kw)
        self.norm3 = layer_norm(dim, 1e-5, **kw)
        self.ff = FeedForward(dim, **kw)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nnx.Module):
    """GroupNorm -> proj_in -> transformer blocks -> proj_out, plus the input residual.

    proj_in/proj_out are Linear here whatever the checkpoint stores: SD1's 1x1 convs are the same
    map, and a matmul over (B, H*W, C) needs no layout change in channels-last.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        cross_attention_dim: int,
        *,
        num_layers: int = 1,
        norm_num_groups: int = 32,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        dim_head = channels // heads
        inner = heads * dim_head
        self.norm = group_norm(channels, norm_num_groups, 1e-6, **kw)
        self.proj_in = nnx.Linear(channels, inner, **kw)
        self.transformer_blocks = nnx.List(
            [
                BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim, **kw)
                for _ in range(num_layers)
            ]
        )
        self.proj_out = nnx.Linear(inner, channels, **kw)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        hs = self.proj_in(self.norm(x).reshape(b, h * w, c))
        for block in self.transformer_blocks:
            hs = block(hs, context)
        return self.proj_out(hs).reshape(b, h, w, c) + x


def _per_layer(value: int | Sequence[int], num_layers: int) -> list[int]:
    """transformer_layers_per_block entries are an int or one int per resnet layer."""
    if isinstance(value, int):
        return [value] * num_layers
    if len(value) != num_layers:
        raise ValueError(f"expected {num_layers} transformer depths, got {list(value)}")
    return list(value)


class DownBlock(nnx.Module):
    """diffusers `DownBlock2D` (`heads=None`) or `CrossAttnDownBlock2D`: resnets[, attentions]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        num_layers: int,
        add_downsample: bool,
        groups: int,
        eps: float,
        downsample_padding: int = 1,
        heads: int | None = None,
        cross_attention_dim: int | None = None,
        transformer_layers: int | Sequence[int] = 1,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List(
            [
                ResnetBlock2D(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    temb_channels=temb_channels,
                    groups=groups,
                    eps=eps,
                    **kw,
                )
                for i in range(num_layers)
            ]
        )
        depths = _per_layer(transformer_layers, num_layers)
        self.attentions = nnx.List(
            []
            if heads is None
            else [
                Transformer2DModel(
                    out_channels,
                    heads,
                    cross_attention_dim,
                    num_layers=depths[i],
                    norm_num_groups=groups,
                    **kw,
                )
                for i in range(num_layers)
            ]
        )
        self.downsamplers = nnx.List(
            [Downsample2D(out_channels, padding=downsample_padding, **kw)] if add_downsample else []
        )

    def __call__(
        self, x: jax.Array, temb: jax.Array, context: jax.Array
    ) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if len(self.attentions):
                x = self.attentions[i](x, context)
            skips.append(x)
        for down in self.downsamplers:
            x = down(x)
            skips.append(x)
        return x, skips


class UpBlock(nnx.Module):
    """diffusers `UpBlock2D` (`heads=None`) or `CrossAttnUpBlock2D`: concat skip, resnet[, attn]."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        num_layers: int,
        add_upsample: bool,
        groups: int,
        eps: float,
        heads: int | None = None,
        cross_attention_dim: int | None = None,
        transformer_layers: int | Sequence[int] = 1,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channels if i == 0 else out_channels
            resnets.append(
                ResnetBlock2D(
                    resnet_in + skip_channels,
                    out_channels,
                    temb_channels=temb_channels,
                    groups=groups,
                    eps=eps,
                    **kw,
                )
            )
        self.resnets = nnx.List(resnets)
        depths = _per_layer(transformer_layers, num_layers)
        self.attentions = nnx.List(
            []
            if heads is None
            else [
                Transformer2DModel(
                    out_channels,
                    heads,
                    cross_attention_dim,
                    num_layers=depths[i],
                    norm_num_groups=groups,
                    **kw,
                )
                for i in range(num_layers)
            ]
        )
        self.upsamplers = nnx.List([Upsample2D(out_channels, **kw)] if add_upsample else [])

    def __call__(
        self,
        x: jax.Array,
        skips: Sequence[jax.Array],
        temb: jax.Array,
        context: jax.Array,
        upsample_size: tuple[int, int] | None = None,
    ) -> jax.Array:
        skips = list(skips)
        for i, resnet in enumerate(self.resnets):
            x = resnet(jnp.concatenate([x, skips.pop()], axis=-1), temb)
            if len(self.attentions):
                x = self.attentions[i](x, context)
        for up in self.upsamplers:
            x = up(x, upsample_size)
        return x


class MidBlock(nnx.Module):
    """diffusers `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) per layer."""

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        *,
        heads: int,
        cross_attention_dim: int,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
        num_layers: int = 1,
        transformer_layers: int | Sequence[int] = 1,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List(
            [
                ResnetBlock2D(
                    channels,
                    channels,
                    temb_channels=temb_channels,
                    groups=groups,
                    eps=eps,
                    output_scale_factor=output_scale_factor,
                    **kw,
                )
                for _ in range(num_layers + 1)
            ]
        )
        depths = _per_layer(transformer_layers, num_layers)
        self.attentions = nnx.List(
            [
                Transformer2DModel(
                    channels,
                    heads,
                    cross_attention_dim,
                    num_layers=depths[i],
                    norm_num_groups=groups,
                    **kw,
                )
                for i in range(num_layers)
            ]
        )

    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
        x = self.resnets[0](x, temb)
        for i, attn in enumerate(self.attentions):
            x = self.resnets[i + 1](attn(x, context), temb)
        return x
