"""Sigma schedules of rectified-flow models (Wan): x = (1 - sigma) * x0 + sigma * noise.

The shift s warps flow time u in [0, 1] to sigma = s*u / (1 + (s - 1)*u), spending more steps at
high noise (Wan uses s = 3..5 for 480p..720p video, 1 is no warp). Each function returns the
`steps` positive sigmas for a shift; `jaxvideo.sampling.sigmas.flow_sigmas` appends the final 0.
Names follow stable-diffusion.cpp (the registry lists them); host-side numpy, float64.
"""

from __future__ import annotations

import math

import numpy as np

from jaxvideo.sampling.schedules import beta_ppf

NUM_TRAIN_TIMESTEPS = 1000


def time_shift(u: np.ndarray | float, shift: float) -> np.ndarray | float:
    """Flow time u in [0, 1] to sigma: shift*u / (1 + (shift - 1)*u), as diffusers and Wan."""
    return shift * u / (1 + (shift - 1) * u)


def flow_timestep(sigma: float) -> float:
    """The timestep a flow network is fed at `sigma`: t = sigma * 1000, fractional.

    As ComfyUI and stable-diffusion.cpp feed it (heun and dpm2 need in-between sigmas);
    diffusers' Wan pipelines truncate their float64 sigma * 1000 to int64 instead, which a
    float32 sigma cannot always reproduce (0.667 * 1000 may fall either side of 667).
    """
    return float(sigma) * NUM_TRAIN_TIMESTEPS


def _from_timestep_fraction(q: np.ndarray, shift: float) -> np.ndarray:
    """Timestep-based schedules pick q in [0, 1] over the training timesteps 0..999, whose flow
    times are (t + 1) / 1000 (stable-diffusion.cpp, ComfyUI); those are then shifted."""
    n = NUM_TRAIN_TIMESTEPS
    return time_shift((1 + q * (n - 1)) / n, shift)


def discrete(steps: int, shift: float) -> np.ndarray:
    """diffusers' UniPC/FlowDPM flow sigmas, bit for bit: steps + 1 flow times evenly spaced
    from 1 to 1/1000 without the last, shifted; a start at 1 is nudged to 1 - 1e-6."""
    u = np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, steps + 1)[:-1]
    sigmas = time_shift(u, shift)
    if np.fabs(sigmas[0] - 1) < 1e-6:
        sigmas[0] -= 1e-6
    return sigmas


def simple(steps: int, shift: float) -> np.ndarray:
    """Every (1000 / steps)-th training sigma from the top (ComfyUI's and sd.cpp's "simple"):
    flow times 1 - floor(i * 1000 / steps) / 1000, i.e. 1, 1 - 1/steps, ... when steps | 1000."""
    n = NUM_TRAIN_TIMESTEPS
    offsets = (np.arange(steps) * n) // steps
    return time_shift((n - offsets) / n, shift)


def _sigma_range(shift: float) -> tuple[float, float]:
    """(sigma_min, sigma_max) of the shifted training sigmas: those of t = 0 and t = 999."""
    return float(time_shift(1 / NUM_TRAIN_TIMESTEPS, shift)), 1.0


def karras(steps: int, shift: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) spacing between the shifted sigma range, in flow sigma directly
    (ComfyUI; diffusers' FlowMatchEuler use_karras_sigmas at shift 1)."""
    sigma_min, sigma_max = _sigma_range(shift)
    ramp = np.linspace(0, 1, steps)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def exponential(steps: int, shift: float) -> np.ndarray:
    """Evenly spaced in log sigma over the shifted sigma range (ComfyUI, diffusers at shift 1)."""
    sigma_min, sigma_max = _sigma_range(shift)
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps))


def beta(steps: int, shift: float, a: float = 0.6, b: float = 0.6) -> np.ndarray:
    """Timesteps at the Beta(a, b) quantiles (Lee et al. 2024; ComfyUI, sd.cpp), fractional as
    schedules.beta keeps them, then shifted."""
    return _from_timestep_fraction(beta_ppf(1.0 - np.arange(steps) / steps, a, b), shift)


def smoothstep(steps: int, shift: float) -> np.ndarray:
    """Timesteps along smoothstep(u) = 3u^2 - 2u^3 (sd.cpp, without its rounding), shifted."""
    u = 1.0 - np.arange(steps) / steps
    return _from_timestep_fraction(u * u * (3 - 2 * u), shift)
