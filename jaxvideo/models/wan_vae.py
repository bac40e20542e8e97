"""diffusers `AutoencoderKLWan` (the Wan 2.1 / 2.2 video VAE) in Flax NNX, channels-last.

Videos are (B, F, H, W, C) in [-1, 1]; latents are (B, T, h, w, z_dim) with F = 1 + 4 (T - 1).
Like diffusers, the encoder runs on the first frame, then on 4-frame chunks, and the decoder on
one latent frame at a time, each causal conv carrying its last `CACHE_T` input frames from chunk
to chunk. Here that feature cache is a tuple of fixed-shape arrays passed in and returned, so
one first-chunk and one later-chunk function each compile once whatever the video length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvideo.convert.core import Rule
from jaxvideo.models.attention import dot_product_attention
from jaxvideo.models.layers import Conv2d, conv2d, upsample_nearest
from jaxvideo.models.registry import ComponentSpec
from jaxvideo.models.vae import LOGVAR_MAX, LOGVAR_MIN

Dtype = Any
Cache = tuple[jax.Array, ...]

CACHE_T = 2  # frames a 3-tap causal conv needs from the previous chunk
TEMPORAL_FACTOR = 4  # two temporal halvings: 4 frames per latent frame after the first
NORM_EPS = 1e-12  # F.normalize's clamp on the channel norm

# diffusers' defaults: the Wan 2.1 VAE's per-channel latent statistics.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class WanVAEConfig:
    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()  # must be empty (the mid blocks always have attention)
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    # Applied by the pipeline, not the network: latents = (mean - latents_mean) / latents_std.
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    is_residual: bool = False  # Wan 2.2: residual down/up blocks with AvgDown3D/DupUp3D
    in_channels: int = 3  # after patchify: 3 * patch_size**2
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int = TEMPORAL_FACTOR
    scale_factor_spatial: int = 8

    def __post_init__(self) -> None:
        levels = len(self.dim_mult)
        if levels < 1 or min(self.dim_mult) < 1 or min(self.base_dim, self.z_dim) < 1:
            raise ValueError(
                f"Wan VAE needs positive base_dim, z_dim and dim_mult, got {self.base_dim}, "
                f"{self.z_dim}, {list(self.dim_mult)}"
            )
        if len(self.temperal_downsample) != levels - 1:
            raise ValueError(
                f"temperal_downsample has {len(self.temperal_downsample)} entries; "
                f"dim_mult {list(self.dim_mult)} needs {levels - 1}"
            )
        if sum(self.temperal_downsample) != 2 or self.scale_factor_temporal != TEMPORAL_FACTOR:
            raise ValueError(
                "the Wan VAE's 4-frame chunking needs exactly two temporal downsamples "
                f"(scale_factor_temporal 4), got temperal_downsample "
                f"{list(self.temperal_downsample)}, scale_factor_temporal "
                f"{self.scale_factor_temporal}"
            )
        p = self.patch
        if self.in_channels % (p * p) or self.out_channels % (p * p):
            raise ValueError(
                f"in_channels {self.in_channels} / out_channels {self.out_channels} must be "
                f"multiples of patch_size**2 = {p * p}"
            )
        if self.scale_factor_spatial != self.spatial_factor:
            raise ValueError(
                f"scale_factor_spatial {self.scale_factor_spatial} does not match the "
                f"architecture's {self.spatial_factor} ({levels - 1} downsamples, patch {p})"
            )
        if self.attn_scales:
            # diffusers (and the original Wan code) build encoder attention blocks for them but
            # then call those with a feature cache they do not accept: no checkpoint uses them.
            raise ValueError(f"attn_scales {list(self.attn_scales)} unsupported; only []")
        if not len(self.latents_mean) == len(self.latents_std) == self.z_dim:
            raise ValueError(
                f"latents_mean ({len(self.latents_mean)}) and latents_std "
                f"({len(self.latents_std)}) need z_dim = {self.z_dim} entries"
            )

    @property
    def patch(self) -> int:
        return self.patch_size or 1

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1) * self.patch

    @property
    def decoder_dim(self) -> int:
        return self.decoder_base_dim or self.base_dim

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> WanVAEConfig:
        """Reads a diffusers AutoencoderKLWan config.json dict; unknown keys are ignored."""
        base = cls()
        dec = d.get("decoder_base_dim")
        patch = d.get("patch_size")
        return cls(
            base_dim=int(d.get("base_dim", base.base_dim)),
            decoder_base_dim=None if dec is None else int(dec),
            z_dim=int(d.get("z_dim", base.z_dim)),
            dim_mult=tuple(int(m) for m in d.get("dim_mult", base.dim_mult)),
            num_res_blocks=int(d.get("num_res_blocks", base.num_res_blocks)),
            attn_scales=tuple(float(s) for s in d.get("attn_scales", base.attn_scales)),
            temperal_downsample=tuple(
                bool(t) for t in d.get("temperal_downsample", base.temperal_downsample)
            ),
            latents_mean=tuple(float(v) for v in d.get("latents_mean", base.latents_mean)),
            latents_std=tuple(float(v) for v in d.get("latents_std", base.latents_std)),
            is_residual=bool(d.get("is_residual", base.is_residual)),
            in_channels=int(d.get("in_channels", base.in_channels)),
            out_channels=int(d.get("out_channels", base.out_channels)),
            patch_size=None if patch is None else int(patch),
            scale_factor_temporal=int(d.get("scale_factor_temporal") or TEMPORAL_FACTOR),
            scale_factor_spatial=int(d.get("scale_factor_spatial") or base.scale_factor_spatial),
        )


class FeatureCache:
    """diffusers' `feat_cache` / `feat_idx` made functional: slots read, rewritten in call order.

    Built from `None`, every slot reads as zeros. That equals diffusers' empty cache: a causal
    conv without one pads its front with `CACHE_T` zero frames, exactly what a zero cache holds.
    """

    def __init__(self, slots: Sequence[jax.Array] | None) -> None:
        self._old = None if slots is None else tuple(slots)
        self._new: list[jax.Array] = []

    def read(self, like: jax.Array, frames: int) -> jax.Array:
        """The next slot, which must hold `frames` frames shaped like `like`'s."""
        shape = (like.shape[0], frames, *like.shape[2:])
        if self._old is None:
            return jnp.zeros(shape, like.dtype)
        i = len(self._new)
        if i >= len(self._old) or self._old[i].shape != shape:
            got = self._old[i].shape if i < len(self._old) else "nothing"
            raise ValueError(f"feature cache slot {i}: expected shape {shape}, got {got}")
        return self._old[i]

    def write(self, frames: jax.Array) -> None:
        self._new.append(frames)

    def slots(self) -> Cache:
        if self._old is not None and len(self._new) != len(self._old):
            raise ValueError(f"feature cache has {len(self._old)} slots, used {len(self._new)}")
        return tuple(self._new)


def _param(rngs: nnx.Rngs, init: Any, shape: tuple[int, ...], dtype: Dtype) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, dtype))


class RMSNorm(nnx.Module):
    """WanRMS_norm: x / ||x||_channels * sqrt(C) * gamma (no bias in the VAE)."""

    def __init__(
        self, dim: int, *, images: bool, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype
    ) -> None:
        # gamma keeps torch's channel-first broadcast shape, (C, 1, 1[, 1]), so the converter
        # copies it unchanged; it is flattened where applied to channels-last input.
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.gamma = _param(rngs, nnx.initializers.ones, shape, param_dtype)
        self.scale = dim**0.5
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
        x = (x32 / jnp.maximum(norm, NORM_EPS)).astype(self.dtype)
        return x * (self.scale * self.gamma[...].reshape(-1).astype(self.dtype))


class CausalConv3d(nnx.Module):
    """WanCausalConv3d on NDHWC input that already carries its front (causal) time padding.

    Spatial padding is torch's symmetric (k - 1) // 2. The conv runs as one 2D conv per time
    tap, summed: on XLA:CPU that is several times faster than a 3D conv.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int, int],
        *,
        time_stride: int = 1,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ) -> None:
        init = nnx.initializers.lecun_normal()
        self.kernel = _param(rngs, init, (*kernel, cin, cout), param_dtype)
        self.bias = _param(rngs, nnx.initializers.zeros, (cout,), param_dtype)
        self.time_stride = time_stride
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        kt, kh = self.kernel.shape[:2]
        x = x.astype(self.dtype)
        k = self.kernel[...].astype(self.dtype)
        s = self.time_stride
        span = s * ((x.shape[1] - kt) // s) + 1
        y = sum(_conv2d_frames(x[:, i : i + span : s], k[i], (kh - 1) // 2) for i in range(kt))
        return y + self.bias[...].astype(self.dtype)

    def causal(self, x: jax.Array, cache: FeatureCache) -> jax.Array:
        """Prepends the cached last frames of the previous chunk, caching this chunk's."""
        x = jnp.concatenate([cache.read(x, CACHE_T), x], axis=1)
        cache.write(x[:, -CACHE_T:])
        return self(x)


def _conv2d_frames(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """An HWIO conv applied to every frame of (B, T, H, W, C); 1x1 kernels as a matmul."""
    if kernel.shape[:2] == (1, 1):
        return x @ kernel[0, 0]
    b, t = x.shape[:2]
    y = jax.lax.conv_general_dilated(
        x.reshape(b * t, *x.shape[2:]),
        kernel,
        (1, 1),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y.reshape(b, t, *y.shape[1:])


def _on_frames(fn: Any, x: jax.Array) -> jax.Array:
    """Applies an NHWC function to each frame of (B, T, H, W, C)."""
    b, t = x.shape[:2]
    y = fn(x.reshape(b * t, *x.shape[2:]))
    return y.reshape(b, t, *y.shape[1:])


class ResidualBlock(nnx.Module):
    """WanResidualBlock: (RMS norm, SiLU, causal conv3x3x3) twice, plus a 1x1x1 shortcut."""

    def __init__(
        self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype
    ) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = RMSNorm(cin, images=False, **kw)
        self.conv1 = CausalConv3d(cin, cout, (3, 3, 3), **kw)
        self.norm2 = RMSNorm(cout, images=False, **kw)
        self.conv2 = CausalConv3d(cout, cout, (3, 3, 3), **kw)
        self.conv_shortcut = CausalConv3d(cin, cout, (1, 1, 1), **kw) if cin != cout else None

    def __call__(self, x: jax.Array, cache: FeatureCache, first: bool = False) -> jax.Array:
        # `first` is unused: the encoder's down path calls resnets and resamples alike.
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = self.conv1.causal(nnx.silu(self.norm1(x)), cache)
        x = self.conv2.causal(nnx.silu(self.norm2(x)), cache)
        return x + h


class AttentionBlock(nnx.Module):
    """WanAttentionBlock: single-head self-attention within each frame, residual."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm = RMSNorm(dim, images=True, **kw)
        self.to_qkv = nnx.Linear(dim, 3 * dim, **kw)
        self.proj = nnx.Linear(dim, dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        tokens = self.norm(x).reshape(b * t, h * w, 1, c)
        q, k, v = jnp.split(self.to_qkv(tokens), 3, axis=-1)
        out = self.proj(dot_product_attention(q, k, v))
        return x + out.reshape(x.shape)


class Resample(nnx.Module):
    """WanResample: 2x spatial up/down per frame, with a causal time conv in the *3d modes.

    upsample3d's time_conv doubles the frames, except on the first chunk, which diffusers marks
    by an empty ("None") cache slot and skips; its later "Rep" state (zero padding) equals the
    zero cache slot left untouched here by the first chunk. downsample3d halves the frames with
    a stride-2 time conv over the previous chunk's last frame plus this chunk's, and likewise
    passes the first chunk through.
    """

    def __init__(
        self,
        dim: int,
        mode: str,
        out_dim: int | None = None,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            self.resample = conv2d(dim, dim // 2 if out_dim is None else out_dim, 3, **kw)
        elif mode in ("downsample2d", "downsample3d"):
            # torch ZeroPad2d((0, 1, 0, 1)) then an unpadded stride-2 conv.
            self.resample = Conv2d(dim, dim, 3, stride=2, padding=0, **kw)
        else:
            raise ValueError(f"unknown Wan resample mode {mode!r}")
        time_conv = None
        if mode == "upsample3d":
            time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), **kw)
        elif mode == "downsample3d":
            time_conv = CausalConv3d(dim, dim, (3, 1, 1), time_stride=2, **kw)
        self.time_conv = time_conv

    def __call__(self, x: jax.Array, cache: FeatureCache, first: bool) -> jax.Array:
        if self.mode == "upsample3d":
            x = self._double_frames(x, cache, first)
        if self.mode.startswith("up"):
            x = _on_frames(lambda f: self.resample(upsample_nearest(f)), x)
        else:
            pad = ((0, 0), (0, 1), (0, 1), (0, 0))
            x = _on_frames(lambda f: self.resample(jnp.pad(f, pad)), x)
        if self.mode == "downsample3d":
            x = self._halve_frames(x, cache, first)
        return x

    def _double_frames(self, x: jax.Array, cache: FeatureCache, first: bool) -> jax.Array:
        if first:
            cache.write(cache.read(x, CACHE_T))
            return x
        y = self.time_conv.causal(x, cache)
        b, t, h, w, c2 = y.shape
        # Channel halves [:C] and [C:] become frames 2t and 2t + 1.
        y = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5)
        return y.reshape(b, 2 * t, h, w, c2 // 2)

    def _halve_frames(self, x: jax.Array, cache: FeatureCache, first: bool) -> jax.Array:
        prev = cache.read(x, 1)
        cache.write(x[:, -1:])
        if first:
            return x
        return self.time_conv(jnp.concatenate([prev, x], axis=1))


def avg_down_3d(x: jax.Array, out_dim: int, factor_t: int, factor_s: int) -> jax.Array:
    """AvgDown3D (Wan 2.2 shortcut): space/time to channels, then mean over channel groups."""
    pad_t = (factor_t - x.shape[1] % factor_t) % factor_t
    x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
    b, t, h, w, c = x.shape
    x = x.reshape(b, t // factor_t, factor_t, h // factor_s, factor_s, w // factor_s, factor_s, c)
    # torch's channel order: (c, it, ih, iw) with c slowest.
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)
    x = x.reshape(b, t // factor_t, h // factor_s, w // factor_s, out_dim, -1)
    return x.mean(axis=-1)


def dup_up_3d(x: jax.Array, out_dim: int, factor_t: int, factor_s: int, first: bool) -> jax.Array:
    """DupUp3D (Wan 2.2 shortcut): repeat channels, then channels to space/time."""
    b, t, h, w, c = x.shape
    x = jnp.repeat(x, out_dim * factor_t * factor_s * factor_s // c, axis=-1)
    x = x.reshape(b, t, h, w, out_dim, factor_t, factor_s, factor_s)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)
    x = x.reshape(b, t * factor_t, h * factor_s, w * factor_s, out_dim)
    # The first chunk's upsampler adds no frames: keep the last of each group.
    return x[:, factor_t - 1 :] if first else x


class MidBlock(nnx.Module):
    """WanMidBlock: resnet, attention, resnet."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List([ResidualBlock(dim, dim, **kw) for _ in range(2)])
        self.attentions = nnx.List([AttentionBlock(dim, **kw)])

    def __call__(self, x: jax.Array, cache: FeatureCache) -> jax.Array:
        x = self.resnets[0](x, cache)
        x = self.attentions[0](x)
        return self.resnets[1](x, cache)


class ResidualDownBlock(nnx.Module):
    """WanResidualDownBlock (Wan 2.2): resnets and a downsampler, plus an AvgDown3D shortcut."""

    def __init__(
        self,
        cin: int,
        cout: int,
        num_res_blocks: int,
        temporal: bool,
        down: bool,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List(
            [ResidualBlock(cin if i == 0 else cout, cout, **kw) for i in range(num_res_blocks)]
        )
        mode = "downsample3d" if temporal else "downsample2d"
        self.downsampler = Resample(cout, mode, **kw) if down else None
        self.out_dim = cout
        self.factor_t = 2 if temporal else 1
        self.factor_s = 2 if down else 1

    def __call__(self, x: jax.Array, cache: FeatureCache, first: bool) -> jax.Array:
        shortcut = avg_down_3d(x, self.out_dim, self.factor_t, self.factor_s)
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.downsampler is not None:
            x = self.downsampler(x, cache, first)
        return x + shortcut


class UpBlock(nnx.Module):
    """WanUpBlock (Wan 2.1): resnets, then an optional upsampler (in a list, as in torch)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        num_res_blocks: int,
        mode: str | None,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List(
            [ResidualBlock(cin if i == 0 else cout, cout, **kw) for i in range(num_res_blocks + 1)]
        )
        self.upsamplers = nnx.List([Resample(cout, mode, **kw)] if mode else [])

    def __call__(self, x: jax.Array, cache: FeatureCache, first: bool) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x, cache)
        for up in self.upsamplers:
            x = up(x, cache, first)
        return x


class ResidualUpBlock(nnx.Module):
    """WanResidualUpBlock (Wan 2.2): resnets and an upsampler, plus a DupUp3D shortcut."""

    def __init__(
        self,
        cin: int,
        cout: int,
        num_res_blocks: int,
        temporal: bool,
        up: bool,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype,
        param_dtype: Dtype,
    ) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List(
            [ResidualBlock(cin if i == 0 else cout, cout, **kw) for i in range(num_res_blocks + 1)]
        )
        mode = "upsample3d" if temporal else "upsample2d"
        self.upsampler = Resample(cout, mode, out_dim=cout, **kw) if up else None
        self.out_dim = cout
        self.factor_t = 2 if temporal else 1

    def __call__(self, x: jax.Array, cache: FeatureCache, first: bool) -> jax.Array:
        shortcut = None
        if self.upsampler is not None:
            shortcut = dup_up_3d(x, self.out_dim, self.factor_t, 2, first)
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.upsampler is not None:
            x = self.upsampler(x, cache, first) + shortcut
        return x


class Encoder3d(nnx.Module):
    def __init__(
        self, cfg: WanVAEConfig, *, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype
    ) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], (3, 3, 3), **kw)
        blocks: list[nnx.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            temporal = i != last and cfg.temperal_downsample[i]
            if cfg.is_residual:
                blocks.append(
                    ResidualDownBlock(cin, cout, cfg.num_res_blocks, temporal, i != last, **kw)
                )
                continue
            for j in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cin if j == 0 else cout, cout, **kw))
            if i != last:
                blocks.append(Resample(cout, "downsample3d" if temporal else "downsample2d", **kw))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], **kw)
        self.norm_out = RMSNorm(dims[-1], images=False, **kw)
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, (3, 3, 3), **kw)

    def __call__(self, x: jax.Array, cache: FeatureCache, first: bool) -> jax.Array:
        x = self.conv_in.causal(x, cache)
        for block in self.down_blocks:
            x = block(x, cache, first)
        x = self.mid_block(x, cache)
        return self.conv_out.causal(nnx.silu(self.norm_out(x)), cache)


class Decoder3d(nnx.Module):
    def __init__(
        self, cfg: WanVAEConfig, *, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype
    ) -> None:
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        mult = cfg.dim_mult
        dims = [cfg.decoder_dim * m for m in (mult[-1], *reversed(mult))]
        temporal_up = tuple(reversed(cfg.temperal_downsample))
        last = len(mult) - 1
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3), **kw)
        self.mid_block = MidBlock(dims[0], **kw)
        blocks: list[nnx.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            up, temporal = i != last, i != last and temporal_up[i]
            if cfg.is_residual:
                blocks.append(ResidualUpBlock(cin, cout, cfg.num_res_blocks, temporal, up, **kw))
                continue
            # Wan 2.1's upsamplers halve the channels, so later blocks take dims // 2.
            mode = ("upsample3d" if temporal else "upsample2d") if up else None
            blocks.append(UpBlock(cin // 2 if i else cin, cout, cfg.num_res_blocks, mode, **kw))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1], images=False, **kw)
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, (3, 3, 3), **kw)

    def __call__(self, x: jax.Array, cache: FeatureCache, first: bool) -> jax.Array:
        x = self.conv_in.causal(x, cache)
        x = self.mid_block(x, cache)
        for block in self.up_blocks:
            x = block(x, cache, first)
        return self.conv_out.causal(nnx.silu(self.norm_out(x)), cache)


def patchify(x: jax.Array, p: int) -> jax.Array:
    """diffusers `patchify` on (B, F, H, W, C): p x p pixels to channels, ordered (c, pw, ph)."""
    if p == 1:
        return x
    b, f, h, w, c = x.shape
    x = x.reshape(b, f, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, f, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    """Inverse of `patchify`."""
    if p == 1:
        return x
    b, f, h, w, cpp = x.shape
    x = x.reshape(b, f, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, f, h * p, w * p, cpp // (p * p))


class AutoencoderKLWan(nnx.Module):
    """The Wan video VAE. Videos (B, F, H, W, C) in [-1, 1] <-> latents (B, T, h, w, z_dim).

    Latents are unnormalised: the pipeline applies `latents_mean` / `latents_std`.
    """

    def __init__(
        self,
        config: WanVAEConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ) -> None:
        self.config = config
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        z = config.z_dim
        self.encoder = Encoder3d(config, **kw)
        self.quant_conv = CausalConv3d(2 * z, 2 * z, (1, 1, 1), **kw)
        self.post_quant_conv = CausalConv3d(z, z, (1, 1, 1), **kw)
        self.decoder = Decoder3d(config, **kw)

    # --- encode ------------------------------------------------------------------------------

    def encode(self, x: jax.Array, unroll: bool = False) -> tuple[jax.Array, jax.Array]:
        """(B, F, H, W, C) with F = 4n + 1 -> posterior (mean, logvar), (B, 1 + n, h, w, z).

        The first frame is encoded alone, then 4-frame chunks in a scan, as in diffusers.
        `unroll` unrolls the scan: what training differentiates, as XLA:CPU runs a scan's
        backward pass tens of times slower than the same steps unrolled.
        """
        b, f = x.shape[:2]
        if (f - 1) % TEMPORAL_FACTOR:
            raise ValueError(f"Wan VAE encodes 4n + 1 frames, got {f}")
        x = patchify(x.astype(self.dtype), self.config.patch)
        h, cache = self._encode_chunk(x[:, :1], None, first=True)
        n = (f - 1) // TEMPORAL_FACTOR
        if n:
            chunks = x[:, 1:].reshape(b, n, TEMPORAL_FACTOR, *x.shape[2:]).swapaxes(0, 1)

            def step(cache: Cache, chunk: jax.Array) -> tuple[Cache, jax.Array]:
                out, cache = self._encode_chunk(chunk, cache, first=False)
                return cache, out[:, 0]

            _, rest = jax.lax.scan(step, cache, chunks, unroll=unroll)
            h = jnp.concatenate([h, rest.swapaxes(0, 1)], axis=1)
        mean, logvar = jnp.split(self.quant_conv(h), 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def _encode_chunk(
        self, x: jax.Array, slots: Cache | None, *, first: bool
    ) -> tuple[jax.Array, Cache]:
        cache = FeatureCache(slots)
        out = self.encoder(x, cache, first)
        return out, cache.slots()

    # --- decode ------------------------------------------------------------------------------

    def decode(self, z: jax.Array, unroll: bool = False, clip: bool = True) -> jax.Array:
        """(B, T, h, w, z_dim) -> (B, 1 + 4 (T - 1), H, W, C) in [-1, 1].

        `decode_first` on the first latent frame, then `decode_next` on each later one in a scan
        (`unroll`: as `encode`). `clip=False` (training) leaves the range open: a clipped pixel
        on the wrong side of it gets no gradient and never comes back.
        """
        b, t = z.shape[:2]
        cache = self.init_decode_cache(b, *z.shape[2:4])
        frames, cache = self.decode_first(z[:, :1], cache, clip)
        if t == 1:
            return frames

        def step(cache: Cache, zt: jax.Array) -> tuple[Cache, jax.Array]:
            out, cache = self.decode_next(zt[:, None], cache, clip)
            return cache, out

        _, rest = jax.lax.scan(step, cache, z[:, 1:].swapaxes(0, 1), unroll=unroll)
        rest = rest.swapaxes(0, 1).reshape(b, -1, *rest.shape[3:])
        return jnp.concatenate([frames, rest], axis=1)

    def init_decode_cache(self, batch: int, h: int, w: int) -> Cache:
        """The decoder's empty feature cache for (batch, T, h, w, z_dim) latents: zero arrays.

        Every slot has a fixed shape, the same before and after each chunk.
        """
        z = jax.ShapeDtypeStruct((batch, 1, h, w, self.config.z_dim), self.dtype)
        shapes = jax.eval_shape(lambda zt: self._decode_chunk(zt, None, first=True)[1], z)
        return tuple(jnp.zeros(s.shape, s.dtype) for s in shapes)

    def decode_first(
        self, z0: jax.Array, cache: Cache, clip: bool = True
    ) -> tuple[jax.Array, Cache]:
        """The first latent frame (B, 1, h, w, z) -> (B, 1, H, W, C) frames and the new cache.

        `cache` must come from `init_decode_cache`.
        """
        return self._decode_chunk(z0, cache, first=True, clip=clip)

    def decode_next(
        self, zt: jax.Array, cache: Cache, clip: bool = True
    ) -> tuple[jax.Array, Cache]:
        """A later latent frame (B, 1, h, w, z) -> (B, 4, H, W, C) frames and the new cache."""
        return self._decode_chunk(zt, cache, first=False, clip=clip)

    def _decode_chunk(
        self, z: jax.Array, slots: Cache | None, *, first: bool, clip: bool = True
    ) -> tuple[jax.Array, Cache]:
        if z.shape[1] != 1:
            raise ValueError(f"the Wan VAE decodes one latent frame per chunk, got {z.shape[1]}")
        cache = FeatureCache(slots)
        x = self.decoder(self.post_quant_conv(z.astype(self.dtype)), cache, first)
        x = unpatchify(x, self.config.patch)
        return (jnp.clip(x, -1.0, 1.0) if clip else x), cache.slots()


def _build(
    config: WanVAEConfig,
    *,
    rngs: nnx.Rngs,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> AutoencoderKLWan:
    return AutoencoderKLWan(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


def _rules() -> list[Rule]:
    convs = r"conv_in|conv_out|conv1|conv2|conv_shortcut|time_conv"
    causal = rf"(quant_conv|post_quant_conv|.+\.(?:{convs}))"
    return [
        # The attention projections are 1x1 Conv2d in torch, Linear here.
        Rule(r"(.+)\.(to_qkv|proj)\.weight", r"\1.\2.kernel", "linear_or_1x1"),
        Rule(r"(.+)\.(to_qkv|proj)\.bias", r"\1.\2.bias"),
        # nn.Sequential(upsample-or-pad, Conv2d): the conv is entry 1.
        Rule(r"(.+)\.resample\.1\.weight", r"\1.resample.kernel", "conv2d"),
        Rule(r"(.+)\.resample\.1\.bias", r"\1.resample.bias"),
        Rule(r"(.+\.(?:norm1|norm2|norm|norm_out))\.gamma", r"\1.gamma"),
        Rule(rf"{causal}\.weight", r"\1.kernel", "conv3d"),
        Rule(rf"{causal}\.bias", r"\1.bias"),
    ]


WAN_VAE_RULES: tuple[Rule, ...] = tuple(_rules())

WAN_VAE_SPEC = ComponentSpec(config_from_hf=WanVAEConfig.from_hf, build=_build, rules=WAN_VAE_RULES)
