"""What every sampler shares: the denoiser contract, per-sample noise and small jitted updates.

Samplers follow k-diffusion's convention: x = x0 + sigma * noise, and the model is a denoiser
`model(x, sigma) -> denoised` (the x0 prediction). Scalar coefficients are computed on the host
in float64 from the sigmas; the array arithmetic runs in a few jitted functions so a step costs
one dispatch, not one per operation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# model(x, sigma) -> denoised; see samplers.py for the return_uncond form CFG++ samplers use.
Denoiser = Callable[..., Any]
StepCallback = Callable[[int, int], None]
SamplerFn = Callable[..., jax.Array]


@partial(jax.jit, static_argnames=("per_sample", "dtype"))
def _draw_noise(keys: jax.Array, step: jax.Array, per_sample: tuple[int, ...], dtype) -> jax.Array:
    def draw(key: jax.Array) -> jax.Array:
        return jax.random.normal(jax.random.fold_in(key, step), per_sample, dtype)

    return jax.vmap(draw)(keys)


def step_noise(keys: jax.Array, step: int, shape: tuple[int, ...], dtype) -> jax.Array:
    """Standard normal noise of `shape` (batch first), one stream per sample key."""
    # The step is traced, so one compiled draw serves every step of a run.
    return _draw_noise(keys, np.uint32(step), tuple(shape[1:]), jnp.dtype(dtype))


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up): a deterministic move to sigma_down, then fresh noise of sigma_up.

    sigma_down**2 + sigma_up**2 == sigma_next**2, so the marginal noise level is sigma_next.
    """
    sigma, sigma_next = float(sigma), float(sigma_next)
    if eta <= 0.0 or sigma_next <= 0.0:
        return sigma_next, 0.0
    term = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
    sigma_up = min(sigma_next, eta * math.sqrt(max(term, 0.0)))
    sigma_down = math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0))
    return sigma_down, sigma_up


@jax.jit
def _lincomb(arrays: tuple[jax.Array, ...], coeffs: jax.Array) -> jax.Array:
    out = arrays[0] * coeffs[0]
    for k, a in enumerate(arrays[1:], start=1):
        out = out + a * coeffs[k]
    return out


def lincomb(*terms: tuple[jax.Array, float]) -> jax.Array:
    """sum(c * a for a, c in terms), in one jitted call (recompiled only per number of terms)."""
    # The coefficients travel as one small host array: one transfer, not one per scalar.
    coeffs = np.array([c for _, c in terms], dtype=np.float32)
    return _lincomb(tuple(a for a, _ in terms), coeffs)


@jax.jit
def to_d(x: jax.Array, denoised: jax.Array, sigma: jax.Array) -> jax.Array:
    """The probability-flow ODE derivative dx/dsigma = (x - denoised) / sigma."""
    return (x - denoised) / sigma


def model_with_uncond(model: Denoiser, x: jax.Array, sigma: float) -> tuple[jax.Array, jax.Array]:
    """(denoised, denoised_uncond) from a model that honours return_uncond=True."""
    out = model(x, sigma, return_uncond=True)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("CFG++ samplers need model(x, sigma, return_uncond=True) -> (cond, uncond)")
    return out


def report(callback: StepCallback | None, step: int, total: int) -> None:
    if callback is not None:
        callback(step, total)
