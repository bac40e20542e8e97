"""Samplers for rectified-flow models (Wan) that differ from their k-diffusion twins.

Flow models interpolate x = (1 - sigma) * x0 + sigma * noise, sigma in [0, 1], and predict the
velocity v = noise - x0 at timestep t = sigma * 1000. The samplers keep the k-diffusion contract
of samplers.py with the denoiser `model(x, sigma) = x - sigma * v(x, sigma)`: since
dx/dsigma = (x - x0) / sigma holds for the flow interpolation too, every deterministic solver of
that ODE is a flow solver as it is (the registry runs those unchanged). Samplers that inject
noise assume x = x0 + sigma * noise and are not: here are an ancestral Euler built for flow,
and the samplers whose noise is switched off on flow models.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from jaxvideo.sampling.sampler_base import (
    Denoiser,
    SamplerFn,
    StepCallback,
    lincomb,
    report,
    step_noise,
)
from jaxvideo.sampling.samplers import sample_ddim_trailing
from jaxvideo.sampling.samplers_exp import sample_res_2s, sample_res_multistep
from jaxvideo.sampling.samplers_ode import sample_euler_ge

__all__ = [
    "sample_ddim_trailing_flow",
    "sample_euler_ancestral_flow",
    "sample_euler_ge_flow",
    "sample_res_2s_flow",
    "sample_res_multistep_flow",
]


def sample_euler_ancestral_flow(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """Ancestral Euler for rectified flow (ComfyUI's sample_euler_ancestral_RF).

    Each step takes Euler to sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta),
    where x = (1 - sigma_down) x0 + sigma_down * noise, rescales the data part to
    1 - sigma_next and adds fresh noise so the total noise is sigma_next again. eta = 1 (the
    registry's default) re-noises the most, 0 is plain Euler; sigma_down stays in
    [0, sigma_next].
    """
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            sigma_down = min(
                max(sigma_next * (1 + (sigma_next / sigma - 1) * eta), 0.0), sigma_next
            )
            ratio = sigma_down / sigma
            if sigma_down < sigma_next:
                scale = (1 - sigma_next) / (1 - sigma_down)
                renoise = math.sqrt(max(sigma_next**2 - (sigma_down * scale) ** 2, 0.0))
                noise = step_noise(keys, i, x.shape, x.dtype)
                x = lincomb((x, ratio * scale), (denoised, (1 - ratio) * scale), (noise, renoise))
            else:
                x = lincomb((x, ratio), (denoised, 1 - ratio))
        report(callback, i + 1, n)
    return x


def _deterministic(sampler: SamplerFn) -> SamplerFn:
    """The sampler with eta pinned to 0: its ancestral noise assumes x = x0 + sigma * noise."""

    @functools.wraps(sampler)
    def run(
        model: Denoiser,
        x: jax.Array,
        sigmas: np.ndarray,
        keys: jax.Array,
        callback: StepCallback | None = None,
        eta: float = 0.0,
    ) -> jax.Array:
        return sampler(model, x, sigmas, keys, callback, 0.0)

    return run


sample_ddim_trailing_flow = _deterministic(sample_ddim_trailing)
sample_res_multistep_flow = _deterministic(sample_res_multistep)
sample_res_2s_flow = _deterministic(sample_res_2s)
sample_euler_ge_flow = _deterministic(sample_euler_ge)
