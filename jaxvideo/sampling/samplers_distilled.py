"""Samplers for consistency-distilled models: LCM and TCD.

Both jump to the model's clean estimate each step and re-noise towards the next sigma; they are
meant for LCM/TCD checkpoints or LoRAs, on the "lcm" schedule (SAMPLER_DEFAULT_SCHEDULE).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from jaxvideo.sampling.sampler_base import (
    Denoiser,
    StepCallback,
    lincomb,
    report,
    step_noise,
    to_d,
)
from jaxvideo.sampling.schedules import TrainingSchedule


def sample_lcm(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """Latent Consistency Model sampling: denoise, then fresh noise at the next sigma."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma_next = float(sigmas[i + 1])
        x = model(x, float(sigmas[i]))
        if sigma_next > 0:
            x = lincomb((x, 1.0), (step_noise(keys, i, x.shape, x.dtype), sigma_next))
        report(callback, i + 1, n)
    return x


def sample_tcd(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
    *,
    schedule: TrainingSchedule | None = None,
) -> jax.Array:
    """Trajectory Consistency Distillation, strategic stochastic sampling (Zheng et al. 2024).

    eta is TCD's gamma (default 0.3, the paper's and diffusers'): each step goes
    deterministically to the earlier timestep s = floor((1 - gamma) * t_next), then adds noise
    back up to sigma_next. Works on any sigmas, as stable-diffusion.cpp does, looking t_next up
    as the training timestep nearest sigma_next; `schedule` supplies the training alphas
    (default: SD's scaled-linear betas, shared by SD 1.x, 2.x and XL).
    """
    schedule = schedule or TrainingSchedule()
    train_sigmas = schedule.sigmas().astype(np.float64)
    alphas_cumprod = schedule.alphas_cumprod()
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        d = to_d(x, denoised, sigma)
        t_next = int(np.argmin(np.abs(train_sigmas - sigma_next)))
        alpha_s = float(alphas_cumprod[int(math.floor((1 - eta) * t_next))])
        alpha_next = 1.0 / (sigma_next**2 + 1.0)
        if eta > 0 and sigma_next > 0:
            # Deterministic move to sigma_s, then noise up to sigma_next (TCD eq. 35).
            sigma_s = math.sqrt((1 - alpha_s) / alpha_s)
            noise = step_noise(keys, i, x.shape, x.dtype)
            noise_std = math.sqrt(max(1 / alpha_next - 1 / alpha_s, 0.0))
            x = lincomb((denoised, 1.0), (d, sigma_s), (noise, noise_std))
        else:
            # The sample at timestep s, expressed at sigma_next's scale as diffusers does; on
            # the last step (sigma_next = 0) it is the t = 0 sample, not the bare estimate.
            scale = math.sqrt(alpha_s / alpha_next)
            x = lincomb((denoised, scale), (d, scale * math.sqrt((1 - alpha_s) / alpha_s)))
        report(callback, i + 1, n)
    return x
