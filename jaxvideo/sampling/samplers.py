"""k-diffusion style samplers: each walks the sigmas calling a denoiser `model(x, sigma)`.

A sampler is a plain Python loop over steps so the caller can report progress and stop between
steps; the denoiser it calls is the jit-compiled network. Noise for ancestral steps comes from a
per-sample key (one per image, from that image's seed) folded with the step index, so an image
is the same whether it was generated alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]
StepCallback = Callable[[int, int], None]


def step_noise(keys: jax.Array, step: int, shape: tuple[int, ...], dtype) -> jax.Array:
    """Standard normal noise of `shape` (batch first), one stream per sample key."""
    per_sample = shape[1:]
    draw = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), per_sample, dtype))
    return draw(keys)


@jax.jit
def _euler_update(x, denoised, sigma, sigma_next):
    d = (x - denoised) / sigma
    return x + d * (sigma_next - sigma)


@jax.jit
def _ancestral_update(x, denoised, sigma, sigma_next, noise, eta):
    # Split the step into a deterministic move to sigma_down and fresh noise of size sigma_up.
    sigma_up = jnp.minimum(
        sigma_next, eta * jnp.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    )
    sigma_down = jnp.sqrt(sigma_next**2 - sigma_up**2)
    d = (x - denoised) / sigma
    x = x + d * (sigma_down - sigma)
    return x + noise * sigma_up


def sample_euler(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float | None = None,
) -> jax.Array:
    """Euler's method on the probability-flow ODE (deterministic)."""
    n = len(sigmas) - 1
    for i in range(n):
        denoised = model(x, sigmas[i])
        x = _euler_update(x, denoised, sigmas[i], sigmas[i + 1])
        if callback is not None:
            callback(i + 1, n)
    return x


def sample_euler_ancestral(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float | None = None,
) -> jax.Array:
    """Ancestral Euler: each step overshoots to sigma_down, then adds noise back up."""
    eta = 1.0 if eta is None else float(eta)
    n = len(sigmas) - 1
    for i in range(n):
        denoised = model(x, sigmas[i])
        noise = step_noise(keys, i, x.shape, x.dtype)
        x = _ancestral_update(x, denoised, sigmas[i], sigmas[i + 1], noise, eta)
        if callback is not None:
            callback(i + 1, n)
    return x


SAMPLER_FNS = {
    "euler": sample_euler,
    "euler_a": sample_euler_ancestral,
}
