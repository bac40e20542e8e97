"""Small building blocks shared by the diffusion networks: convs, norms, time embeddings."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Dtype = Any


# Below this many output pixels a 3x3 conv runs as im2col + one matmul: XLA:CPU's conv is
# pathologically slow there (2x2x1280 -> 1280: ~1.3 s vs ~40 ms), e.g. the bottom of the UNet
# for small latents. Larger images keep XLA's conv, which is faster than im2col for them.
IM2COL_MAX_PIXELS = 16


class Conv2d(nnx.Conv):
    """NHWC conv with torch-style symmetric integer padding; 1x1 and tiny convs as matmuls."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        use_bias: bool = True,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        super().__init__(
            in_channels,
            out_channels,
            (kernel_size, kernel_size),
            strides=stride,
            padding=((padding, padding), (padding, padding)),
            use_bias=use_bias,
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
        )
        self.stride = stride
        self.pad = padding

    def __call__(self, x: jax.Array) -> jax.Array:  # type: ignore[override]
        k = self.kernel_size[0]
        b, h, w, _ = x.shape
        out_h, out_w = h + 2 * self.pad - k + 1, w + 2 * self.pad - k + 1
        if self.stride != 1 or (k > 1 and out_h * out_w > IM2COL_MAX_PIXELS):
            return super().__call__(x)
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        if self.pad:
            x = jnp.pad(x, ((0, 0), (self.pad, self.pad), (self.pad, self.pad), (0, 0)))
        if k > 1:
            # Patch channels ordered (kh, kw, C_in), matching the HWIO kernel flattened below.
            x = jnp.concatenate(
                [x[:, i : i + out_h, j : j + out_w, :] for i in range(k) for j in range(k)], -1
            )
        y = x @ self.kernel[...].reshape(-1, self.out_features).astype(dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int | None = None,
    use_bias: bool = True,
    rngs: nnx.Rngs,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> Conv2d:
    """A torch-like `Conv2d` (default padding: 'same' for odd kernels); kernel is HWIO."""
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=(kernel_size - 1) // 2 if padding is None else padding,
        use_bias=use_bias,
        rngs=rngs,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def group_norm(
    channels: int,
    groups: int,
    eps: float,
    *,
    rngs: nnx.Rngs,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> nnx.GroupNorm:
    """torch.nn.GroupNorm on channels-last input: statistics over (H, W, C/groups)."""
    # Two-pass variance like torch: E[x^2]-E[x]^2 loses precision when |mean| >> std.
    return nnx.GroupNorm(
        channels,
        num_groups=groups,
        epsilon=eps,
        use_fast_variance=False,
        rngs=rngs,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def layer_norm(
    features: int,
    eps: float = 1e-5,
    *,
    rngs: nnx.Rngs,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        features,
        epsilon=eps,
        use_fast_variance=False,
        rngs=rngs,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def timestep_frequencies(
    dim: int, downscale_freq_shift: float = 1.0, max_period: float = 10000.0
) -> np.ndarray:
    """The `half_dim` sinusoid frequencies of diffusers' `get_timestep_embedding` (float32)."""
    half = dim // 2
    # Same float32 op sequence as torch, so the constants agree to the ulp: at t ~ 1000 a
    # one-ulp frequency difference already moves sin/cos by ~1e-4.
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)
    exponent = exponent / np.float32(half - downscale_freq_shift)
    # exp in float64, rounded once: torch's float32 exp is correctly rounded, numpy's is not.
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def timestep_embedding(
    timesteps: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool,
    downscale_freq_shift: float,
    scale: float = 1.0,
) -> jax.Array:
    """diffusers `get_timestep_embedding` for (N,) float timesteps -> (N, dim) float32."""
    freqs = jnp.asarray(timestep_frequencies(dim, downscale_freq_shift))
    args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
    if scale != 1.0:
        args = scale * args
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """diffusers `TimestepEmbedding`: linear_1 -> SiLU -> linear_2."""

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        out_dim: int | None = None,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.linear_1 = nnx.Linear(in_channels, time_embed_dim, **kw)
        self.linear_2 = nnx.Linear(time_embed_dim, out_dim or time_embed_dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


def upsample_nearest(x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
    """torch `F.interpolate(mode="nearest")` on NHWC: 2x by default, else to `size`."""
    b, h, w, c = x.shape
    out_h, out_w = size if size is not None else (2 * h, 2 * w)
    if (out_h, out_w) == (2 * h, 2 * w):
        # Broadcast + reshape: a single copy, no gather.
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
        return x.reshape(b, 2 * h, 2 * w, c)
    return x[:, _nearest_index(h, out_h)][:, :, _nearest_index(w, out_w)]


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    # ATen's nearest_idx: floor(dst * (in / out)) in float32, clamped to the last source pixel.
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) // 2
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)
