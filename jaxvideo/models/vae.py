"""diffusers `AutoencoderKL` (the SD 1.x/2.x/SDXL VAE) in Flax NNX, channels-last."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvideo.convert.core import Rule
from jaxvideo.models.attention import dot_product_attention
from jaxvideo.models.registry import ComponentSpec

# diffusers builds every VAE norm (resnets, mid attention, conv_norm_out) with eps=1e-6.
NORM_EPS = 1e-6
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # DiagonalGaussianDistribution's clamp

Dtype = Any


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    act_fn: str = "silu"
    # Applied by the pipeline, not the network: latents = (mean - shift) * scale.
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        for t in self.down_block_types:
            if t != "DownEncoderBlock2D":
                raise ValueError(f"unsupported VAE down block type {t!r}; only DownEncoderBlock2D")
        for t in self.up_block_types:
            if t != "UpDecoderBlock2D":
                raise ValueError(f"unsupported VAE up block type {t!r}; only UpDecoderBlock2D")
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"VAE config has {n} block_out_channels but {len(self.down_block_types)} down "
                f"and {len(self.up_block_types)} up block types"
            )
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"unsupported VAE act_fn {self.act_fn!r}; only silu")

    @property
    def downscale_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> VAEConfig:
        """Reads a diffusers AutoencoderKL config.json dict; unknown keys are ignored."""

        def opt_tuple(v: Any) -> tuple[float, ...] | None:
            return None if v is None else tuple(float(x) for x in v)

        base = cls()
        shift = d.get("shift_factor")
        return cls(
            in_channels=int(d.get("in_channels", base.in_channels)),
            out_channels=int(d.get("out_channels", base.out_channels)),
            down_block_types=tuple(d.get("down_block_types", base.down_block_types)),
            up_block_types=tuple(d.get("up_block_types", base.up_block_types)),
            block_out_channels=tuple(
                int(c) for c in d.get("block_out_channels", base.block_out_channels)
            ),
            layers_per_block=int(d.get("layers_per_block", base.layers_per_block)),
            latent_channels=int(d.get("latent_channels", base.latent_channels)),
            norm_num_groups=int(d.get("norm_num_groups", base.norm_num_groups)),
            act_fn=str(d.get("act_fn", base.act_fn)),
            scaling_factor=float(d.get("scaling_factor", base.scaling_factor)),
            shift_factor=None if shift is None else float(shift),
            latents_mean=opt_tuple(d.get("latents_mean")),
            latents_std=opt_tuple(d.get("latents_std")),
            use_quant_conv=bool(d.get("use_quant_conv", True)),
            use_post_quant_conv=bool(d.get("use_post_quant_conv", True)),
            mid_block_add_attention=bool(d.get("mid_block_add_attention", True)),
        )


def _conv(
    cin: int,
    cout: int,
    k: int,
    *,
    rngs: nnx.Rngs,
    dtype: Dtype,
    param_dtype: Dtype,
    stride: int = 1,
    padding: Sequence[tuple[int, int]] | None = None,
) -> nnx.Conv:
    # Explicit padding: torch's `padding=k//2` for odd kernels unless told otherwise.
    pad = padding if padding is not None else ((k // 2, k // 2), (k // 2, k // 2))
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        strides=(stride, stride),
        padding=tuple(pad),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def _norm(
    c: int, groups: int, *, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype
) -> nnx.GroupNorm:
    # Two-pass variance: the fast E[x^2]-E[x]^2 form loses precision on large VAE activations.
    return nnx.GroupNorm(
        c,
        num_groups=groups,
        epsilon=NORM_EPS,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class ResnetBlock2D(nnx.Module):
    """diffusers ResnetBlock2D without time embedding (temb_channels=None, pre-norm)."""

    def __init__(
        self, cin: int, cout: int, groups: int, *, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype
    ) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = _norm(cin, groups, **kw)
        self.conv1 = _conv(cin, cout, 3, **kw)
        self.norm2 = _norm(cout, groups, **kw)
        self.conv2 = _conv(cout, cout, 3, **kw)
        # diffusers adds a 1x1 shortcut exactly when the channel count changes.
        self.conv_shortcut = _conv(cin, cout, 1, **kw) if cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h  # output_scale_factor is 1 in the VAE


class AttentionBlock(nnx.Module):
    """The mid-block self-attention: GroupNorm, single head over all pixels, residual."""

    def __init__(
        self, c: int, groups: int, *, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype
    ) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.group_norm = _norm(c, groups, **kw)
        self.to_q = nnx.Linear(c, c, **kw)
        self.to_k = nnx.Linear(c, c, **kw)
        self.to_v = nnx.Linear(c, c, **kw)
        self.to_out = nnx.Linear(c, c, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        t = self.group_norm(x).reshape(b, h * w, 1, c)
        out = dot_product_attention(self.to_q(t), self.to_k(t), self.to_v(t))
        return x + self.to_out(out.reshape(b, h, w, c))


class Downsample2D(nnx.Module):
    """Stride-2 conv3x3 after diffusers' asymmetric zero pad (right and bottom by one)."""

    def __init__(self, c: int, *, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype) -> None:
        # torch F.pad(x, (0, 1, 0, 1)) then Conv2d(padding=0) == padding ((0, 1), (0, 1)).
        self.conv = _conv(
            c,
            c,
            3,
            stride=2,
            padding=((0, 1), (0, 1)),
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample2D(nnx.Module):
    """Nearest-neighbour 2x then conv3x3."""

    def __init__(self, c: int, *, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype) -> None:
        self.conv = _conv(c, c, 3, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)


class DownEncoderBlock2D(nnx.Module):
    def __init__(
        self,
        cin: int,
        cout: int,
        num_layers: int,
        groups: int,
        add_downsample: bool,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List(
            [ResnetBlock2D(cin if i == 0 else cout, cout, groups, **kw) for i in range(num_layers)]
        )
        # A list (like torch's `downsamplers`) so paths keep the `.0.` segment.
        self.downsamplers = nnx.List([Downsample2D(cout, **kw)] if add_downsample else [])

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        for down in self.downsamplers:
            x = down(x)
        return x


class UpDecoderBlock2D(nnx.Module):
    def __init__(
        self,
        cin: int,
        cout: int,
        num_layers: int,
        groups: int,
        add_upsample: bool,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List(
            [ResnetBlock2D(cin if i == 0 else cout, cout, groups, **kw) for i in range(num_layers)]
        )
        self.upsamplers = nnx.List([Upsample2D(cout, **kw)] if add_upsample else [])

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        for up in self.upsamplers:
            x = up(x)
        return x


class MidBlock2D(nnx.Module):
    """resnet, then (attention, resnet); attention is optional per config."""

    def __init__(
        self,
        c: int,
        groups: int,
        add_attention: bool,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.attentions = nnx.List([AttentionBlock(c, groups, **kw)] if add_attention else [])
        self.resnets = nnx.List([ResnetBlock2D(c, c, groups, **kw) for _ in range(2)])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Encoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        chans, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = _conv(cfg.in_channels, chans[0], 3, **kw)
        self.down_blocks = nnx.List(
            [
                DownEncoderBlock2D(
                    chans[max(i - 1, 0)],
                    chans[i],
                    cfg.layers_per_block,
                    g,
                    add_downsample=i < len(chans) - 1,
                    **kw,
                )
                for i in range(len(chans))
            ]
        )
        self.mid_block = MidBlock2D(chans[-1], g, cfg.mid_block_add_attention, **kw)
        self.conv_norm_out = _norm(chans[-1], g, **kw)
        # double_z: mean and logvar stacked on the channel axis.
        self.conv_out = _conv(chans[-1], 2 * cfg.latent_channels, 3, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(nnx.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        rev, g = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = _conv(cfg.latent_channels, rev[0], 3, **kw)
        self.mid_block = MidBlock2D(rev[0], g, cfg.mid_block_add_attention, **kw)
        # The decoder uses one more resnet per block than the encoder, as in diffusers.
        self.up_blocks = nnx.List(
            [
                UpDecoderBlock2D(
                    rev[max(i - 1, 0)],
                    rev[i],
                    cfg.layers_per_block + 1,
                    g,
                    add_upsample=i < len(rev) - 1,
                    **kw,
                )
                for i in range(len(rev))
            ]
        )
        self.conv_norm_out = _norm(rev[-1], g, **kw)
        self.conv_out = _conv(rev[-1], cfg.out_channels, 3, **kw)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(nnx.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    """The KL VAE. Images are (B, H, W, C) in [-1, 1]; latents are (B, H/f, W/f, latent)."""

    def __init__(
        self,
        config: VAEConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ) -> None:
        self.config = config
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        lc = config.latent_channels
        self.encoder = Encoder(config, **kw)
        self.decoder = Decoder(config, **kw)
        self.quant_conv = _conv(2 * lc, 2 * lc, 1, **kw) if config.use_quant_conv else None
        self.post_quant_conv = _conv(lc, lc, 1, **kw) if config.use_post_quant_conv else None

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns the latent distribution's (mean, logvar), logvar clamped as in diffusers."""
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: jax.Array) -> jax.Array:
        """Unscaled latents (the pipeline undoes scaling/shift first) -> image in ~[-1, 1]."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def _build(
    config: VAEConfig,
    *,
    rngs: nnx.Rngs,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> AutoencoderKL:
    return AutoencoderKL(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


def _rules() -> list[Rule]:
    rules: list[Rule] = []
    # Mid-block attention. Checkpoints saved before diffusers 0.14 name the projections
    # query/key/value/proj_attn, and some store them as 1x1 convs: `linear_or_1x1` takes both.
    for flax_name, torch_names in (
        ("to_q", r"to_q|query"),
        ("to_k", r"to_k|key"),
        ("to_v", r"to_v|value"),
        ("to_out", r"to_out\.0|proj_attn"),
    ):
        attn = rf"(.+\.attentions\.\d+)\.(?:{torch_names})"
        rules.append(Rule(rf"{attn}\.weight", rf"\1.{flax_name}.kernel", "linear_or_1x1"))
        rules.append(Rule(rf"{attn}\.bias", rf"\1.{flax_name}.bias"))
    norms = r"(.+\.(?:norm1|norm2|group_norm|conv_norm_out))"
    rules.append(Rule(rf"{norms}\.weight", r"\1.scale"))
    rules.append(Rule(rf"{norms}\.bias", r"\1.bias"))
    convs = r"(quant_conv|post_quant_conv|.+\.(?:conv_in|conv_out|conv1|conv2|conv_shortcut|conv))"
    rules.append(Rule(rf"{convs}\.weight", r"\1.kernel", "conv2d"))
    rules.append(Rule(rf"{convs}\.bias", r"\1.bias"))
    return rules


VAE_RULES: tuple[Rule, ...] = tuple(_rules())

VAE_SPEC = ComponentSpec(config_from_hf=VAEConfig.from_hf, build=_build, rules=VAE_RULES)
