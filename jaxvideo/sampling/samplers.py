"""Euler-type samplers (euler, euler_a, ddim_trailing, the CFG++ pair), and the sampler contract.

A sampler is a plain Python loop over steps so the caller can report progress and stop between
steps; the denoiser it calls is the jit-compiled network. Every sampler has the signature

    sampler(model, x, sigmas, keys, callback=None, eta=0.0) -> x

- `model(x, sigma) -> denoised`: the x0 prediction for x = x0 + sigma * noise (k-diffusion's
  convention); sigma is a Python/numpy float, possibly one not in `sigmas` (intermediate
  evaluations of heun, dpm2, dpm++2s_a, res_2s).
- CFG++ samplers (`needs_uncond` in the registry) also need the unconditional prediction:
  they call `model(x, sigma, return_uncond=True)`, which must return `(denoised,
  denoised_uncond)`, where `denoised` is the guided prediction and `denoised_uncond` the
  negative-prompt one (both in the same x0 space). Other samplers never pass return_uncond.
  CFG++ expects small guidance scales (about 0.5 to 2); at scale 1 it is plain Euler / Euler a.
- `x` starts at `noise * sigmas[0]`; `sigmas` descend to a final 0 (`jaxvideo.sampling.sigmas`).
- `keys` holds one PRNG key per image; the noise a stochastic sampler injects at step i is
  `step_noise(keys, i, ...)` (dpm++2m_sde_bt: a Brownian path from the same keys), so an image is
  the same whether it was generated alone or in a batch.
- `callback(step, total)` runs once after each step (1-based, total = len(sigmas) - 1), however
  many model evaluations the step took.
- `eta` is the noise scale, already resolved: `registry.sampler_function` passes the
  sampler's `default_eta` when the request sends none (the functions' own default, 0, is no
  noise). Deterministic samplers ignore it.

Which samplers exist, by which names, with which defaults: `jaxvideo.sampling.registry`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxvideo.sampling.sampler_base import (
    Denoiser,
    StepCallback,
    ancestral_step,
    lincomb,
    model_with_uncond,
    report,
    step_noise,
    to_d,
)


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
    eta: float = 0.0,
) -> jax.Array:
    """Euler's method on the probability-flow ODE (deterministic)."""
    n = len(sigmas) - 1
    for i in range(n):
        denoised = model(x, sigmas[i])
        x = _euler_update(x, denoised, sigmas[i], sigmas[i + 1])
        report(callback, i + 1, n)
    return x


def _sample_ancestral(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None,
    eta: float,
) -> jax.Array:
    n = len(sigmas) - 1
    for i in range(n):
        denoised = model(x, sigmas[i])
        if eta > 0 and sigmas[i + 1] > 0:
            noise = step_noise(keys, i, x.shape, x.dtype)
            x = _ancestral_update(x, denoised, sigmas[i], sigmas[i + 1], noise, eta)
        else:
            x = _euler_update(x, denoised, sigmas[i], sigmas[i + 1])
        report(callback, i + 1, n)
    return x


def sample_euler_ancestral(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """Ancestral Euler: each step overshoots to sigma_down, then adds noise back up."""
    return _sample_ancestral(model, x, sigmas, keys, callback, eta)


def sample_ddim_trailing(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """DDIM (Song et al. 2020) on the given sigmas; with the "simple" schedule its timesteps
    are the "trailing" spacing of Lin et al. 2023.

    In k-diffusion's parameterisation DDIM with eta is exactly ancestral Euler with the same
    eta (its variance is sigma_up**2, its direction term sigma_down), which is also how
    stable-diffusion.cpp runs it. Its registry default eta is 0: deterministic DDIM.
    """
    return _sample_ancestral(model, x, sigmas, keys, callback, eta)


def _sample_euler_cfg_pp(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None,
    eta: float,
) -> jax.Array:
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised, denoised_uncond = model_with_uncond(model, x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        # CFG++ (Chung et al. 2024): renoise along the unconditional direction, not the guided.
        d_uncond = to_d(x, denoised_uncond, sigma)
        terms = [(denoised, 1.0), (d_uncond, sigma_down)]
        if sigma_up > 0:
            terms.append((step_noise(keys, i, x.shape, x.dtype), sigma_up))
        x = lincomb(*terms)
        report(callback, i + 1, n)
    return x


def sample_euler_cfg_pp(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """Euler CFG++: x_next = denoised + sigma_next * (x - denoised_uncond) / sigma."""
    return _sample_euler_cfg_pp(model, x, sigmas, keys, callback, 0.0)


def sample_euler_ancestral_cfg_pp(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """Ancestral Euler CFG++: the CFG++ move to sigma_down, then noise of sigma_up."""
    return _sample_euler_cfg_pp(model, x, sigmas, keys, callback, eta)
