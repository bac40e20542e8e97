"""diffusers `UNet2DConditionModel` (SD 1.x/2.x, SDXL text_time) in Flax NNX, and its key map."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvideo.convert.core import Rule
from jaxvideo.models.layers import (
    Dtype,
    TimestepEmbedding,
    conv2d,
    group_norm,
    timestep_embedding,
)
from jaxvideo.models.registry import ComponentSpec
from jaxvideo.models.unet_blocks import DownBlock, MidBlock, UpBlock

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)

# diffusers options this network does not implement, with the values it accepts.
_FIXED_OPTIONS: dict[str, tuple[Any, ...]] = {
    "act_fn": ("silu", "swish"),
    "time_embedding_type": ("positional",),
    "resnet_time_scale_shift": ("default",),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "addition_embed_type": (None, "text_time"),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "time_cond_proj_dim": (None,),
    "timestep_post_act": (None,),
    "time_embedding_act_fn": (None,),
    "dual_cross_attention": (False,),
    "attention_type": ("default",),
}


def _tuplify(value: Any) -> Any:
    """JSON lists -> (nested) tuples so the frozen config stays hashable."""
    if isinstance(value, list | tuple):
        return tuple(_tuplify(v) for v in value)
    return value


@dataclass(frozen=True)
class UNetConfig:
    """The fields of a diffusers UNet2DConditionModel `config.json` this network uses.

    `attention_head_dim` holds the number of heads for SD 1/2/XL configs (a diffusers naming
    quirk); `num_attention_heads`, when set, takes precedence. `use_linear_projection` only
    changes the checkpoint layout (1x1 conv vs Linear), which the key map absorbs.
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    layers_per_block: int | tuple[int, ...] = 2
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    cross_attention_dim: int | tuple[int, ...] = 1280
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    transformer_layers_per_block: int | tuple[Any, ...] = 1
    reverse_transformer_layers_per_block: tuple[Any, ...] | None = None
    upcast_attention: bool = False  # fp32 softmax is always used, so nothing to upcast
    center_input_sample: bool = False
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    time_embedding_dim: int | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> UNetConfig:
        """Reads a diffusers config.json dict; unknown keys are ignored, unsupported ones raise."""
        for key, allowed in _FIXED_OPTIONS.items():
            if key in d and d[key] not in allowed:
                raise ValueError(
                    f"UNet2DConditionModel option {key}={d[key]!r} is not supported "
                    f"(supported: {', '.join(map(repr, allowed))})"
                )
        oca = d.get("only_cross_attention", False)
        if any(oca) if isinstance(oca, list | tuple) else oca:
            raise ValueError("UNet2DConditionModel option only_cross_attention is not supported")
        if d.get("norm_num_groups", 32) is None:
            raise ValueError("UNet2DConditionModel without output GroupNorm is not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: _tuplify(v) for k, v in d.items() if k in names})
        config.validate()
        return config

    def validate(self) -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError("down/up_block_types and block_out_channels differ in length")
        for kind, allowed in (
            (self.down_block_types, DOWN_BLOCKS),
            (self.up_block_types, UP_BLOCKS),
            ((self.mid_block_type,), MID_BLOCKS),
        ):
            for t in kind:
                if t not in allowed:
                    raise ValueError(f"unsupported UNet block type {t!r}; supported: {allowed}")
        if self.addition_embed_type == "text_time" and None in (
            self.addition_time_embed_dim,
            self.projection_class_embeddings_input_dim,
        ):
            raise ValueError(
                "addition_embed_type='text_time' needs addition_time_embed_dim and "
                "projection_class_embeddings_input_dim"
            )

    def per_block(self, value: Any) -> tuple[Any, ...]:
        """Broadcasts an int-or-list option to one entry per down block."""
        n = len(self.block_out_channels)
        if isinstance(value, tuple):
            if len(value) != n:
                raise ValueError(f"expected {n} per-block values, got {value}")
            return value
        return (value,) * n

    @property
    def heads(self) -> tuple[int, ...]:
        return self.per_block(self.num_attention_heads or self.attention_head_dim)

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or self.block_out_channels[0] * 4


class UNet2DConditionModel(nnx.Module):
    """Noise predictor: (B, H, W, C) latents, (B,) float timesteps, (B, L, D) text -> NHWC."""

    def __init__(
        self,
        config: UNetConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        config.validate()
        c = config
        self.config = c
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        boc = c.block_out_channels
        n = len(boc)
        temb = c.time_embed_dim
        heads, cross = c.heads, c.per_block(c.cross_attention_dim)
        layers = c.per_block(c.layers_per_block)
        depths = c.per_block(c.transformer_layers_per_block)
        blocks = dict(groups=c.norm_num_groups, eps=c.norm_eps)

        self.conv_in = conv2d(c.in_channels, boc[0], c.conv_in_kernel, **kw)
        self.time_embedding = TimestepEmbedding(boc[0], temb, **kw)
        self.add_embedding = (
            TimestepEmbedding(c.projection_class_embeddings_input_dim, temb, **kw)
            if c.addition_embed_type == "text_time"
            else None
        )

        down = []
        for i, kind in enumerate(c.down_block_types):
            attn = kind == "CrossAttnDownBlock2D"
            down.append(
                DownBlock(
                    boc[max(i - 1, 0)],
                    boc[i],
                    temb,
                    num_layers=layers[i],
                    add_downsample=i < n - 1,
                    downsample_padding=c.downsample_padding,
                    heads=heads[i] if attn else None,
                    cross_attention_dim=cross[i],
                    transformer_layers=depths[i],
                    **blocks,
                    **kw,
                )
            )
        self.down_blocks = nnx.List(down)

        self.mid_block = (
            MidBlock(
                boc[-1],
                temb,
                heads=heads[-1],
                cross_attention_dim=cross[-1],
                output_scale_factor=c.mid_block_scale_factor,
                transformer_layers=depths[-1],
                **blocks,
                **kw,
            )
            if c.mid_block_type is not None
            else None
        )

        rev = list(reversed(boc))
        up_depths = c.reverse_transformer_layers_per_block or tuple(reversed(depths))
        up = []
        for i, kind in enumerate(c.up_block_types):
            attn = kind == "CrossAttnUpBlock2D"
            up.append(
                UpBlock(
                    rev[min(i + 1, n - 1)],
                    rev[max(i - 1, 0)],
                    rev[i],
                    temb,
                    num_layers=layers[n - 1 - i] + 1,
                    add_upsample=i < n - 1,
                    heads=heads[n - 1 - i] if attn else None,
                    cross_attention_dim=cross[n - 1 - i],
                    transformer_layers=up_depths[i],
                    **blocks,
                    **kw,
                )
            )
        self.up_blocks = nnx.List(up)

        self.conv_norm_out = group_norm(boc[0], c.norm_num_groups, c.norm_eps, **kw)
        self.conv_out = conv2d(boc[0], c.out_channels, c.conv_out_kernel, **kw)

    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array | float,
        encoder_hidden_states: jax.Array,
        *,
        added_cond: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array:
        """`added_cond=(text_embeds (B, D), time_ids (B, 6))` is required for SDXL text_time."""
        c = self.config
        batch = sample.shape[0]
        x = sample.astype(self.dtype)
        context = encoder_hidden_states.astype(self.dtype)
        if c.center_input_sample:
            x = 2 * x - 1.0

        # Samplers pass one (possibly fractional) timestep for the whole batch or one per row.
        t = jnp.broadcast_to(jnp.reshape(jnp.asarray(timesteps, jnp.float32), (-1,)), (batch,))
        t_emb = timestep_embedding(
            t,
            c.block_out_channels[0],
            flip_sin_to_cos=c.flip_sin_to_cos,
            downscale_freq_shift=c.freq_shift,
        )
        emb = self.time_embedding(t_emb.astype(self.dtype))
        if self.add_embedding is not None:
            emb = emb + self._text_time_embedding(added_cond)
        elif added_cond is not None:
            raise ValueError("added_cond given but this UNet has no addition embedding")

        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, res = block(x, emb, context)
            skips.extend(res)

        if self.mid_block is not None:
            x = self.mid_block(x, emb, context)

        for block in self.up_blocks:
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            # Upsample to the next skip's size: equals 2x unless H or W was odd on the way down.
            size = tuple(skips[-1].shape[1:3]) if len(block.upsamplers) else None
            x = block(x, res, emb, context, size)

        x = jax.nn.silu(self.conv_norm_out(x))
        return self.conv_out(x)

    def _text_time_embedding(self, added_cond: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        """SDXL: sinusoid-embed the 6 size/crop ids, concat with pooled text, project."""
        if added_cond is None:
            raise ValueError("this UNet (addition_embed_type='text_time') needs added_cond")
        c = self.config
        text_embeds, time_ids = added_cond
        ids = timestep_embedding(
            jnp.reshape(time_ids, (-1,)),
            c.addition_time_embed_dim,
            flip_sin_to_cos=c.flip_sin_to_cos,
            downscale_freq_shift=c.freq_shift,
        )
        ids = ids.reshape(text_embeds.shape[0], -1)
        add = jnp.concatenate([text_embeds.astype(jnp.float32), ids], axis=-1)
        return self.add_embedding(add.astype(self.dtype))


def build_unet(
    config: UNetConfig,
    *,
    rngs: nnx.Rngs,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> UNet2DConditionModel:
    return UNet2DConditionModel(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


# Flax paths mirror the PyTorch names except torch's `to_out.0` and `ff.net.{0.proj,2}`
# (ModuleLists padded with Dropout) and `.weight` -> `.kernel` / `.scale`. First match wins.
UNET_RULES: tuple[Rule, ...] = (
    # SD1 stores proj_in/out as 1x1 convs, SD2/XL as Linear: both become a Linear here.
    Rule(r"(.*\.proj_(?:in|out))\.weight", r"\1.kernel", "linear_or_1x1"),
    Rule(r"(.*)\.to_out\.0\.weight", r"\1.to_out.kernel", "linear"),
    Rule(r"(.*)\.to_out\.0\.bias", r"\1.to_out.bias"),
    Rule(r"(.*)\.ff\.net\.0\.proj\.weight", r"\1.ff.proj.kernel", "linear"),
    Rule(r"(.*)\.ff\.net\.0\.proj\.bias", r"\1.ff.proj.bias"),
    Rule(r"(.*)\.ff\.net\.2\.weight", r"\1.ff.out.kernel", "linear"),
    Rule(r"(.*)\.ff\.net\.2\.bias", r"\1.ff.out.bias"),
    # Norms before convs: `conv_norm_out` is a GroupNorm despite its prefix.
    Rule(r"((?:.*\.)?(?:norm\d?|conv_norm_out))\.weight", r"\1.scale"),
    Rule(r"((?:.*\.)?conv\w*)\.weight", r"\1.kernel", "conv2d"),
    Rule(r"((?:.*\.)?(?:to_[qkv]|time_emb_proj|linear_\d))\.weight", r"\1.kernel", "linear"),
    Rule(r"(.*)\.bias", r"\1.bias"),
)

UNET_SPEC = ComponentSpec(
    config_from_hf=UNetConfig.from_hf,
    build=build_unet,
    rules=UNET_RULES,
)
