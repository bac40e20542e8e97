"""Sampling for rectified-flow models (Wan): sigma schedules with flow_shift, and the samplers.

Flow models interpolate x = (1 - sigma) * x0 + sigma * noise, sigma in [0, 1], and predict the
velocity v = noise - x0 at timestep t = sigma * 1000. The samplers keep the k-diffusion contract
of samplers.py with the denoiser `model(x, sigma) = x - sigma * v(x, sigma)`: since
dx/dsigma = (x - x0) / sigma holds for the flow interpolation too, every deterministic solver of
that ODE is a flow solver as it is. Samplers that inject noise assume x = x0 + sigma * noise and
are not, so only the deterministic ones are offered, plus an ancestral Euler built for flow.

Schedules: the shift s warps flow time u in [0, 1] to sigma = s*u / (1 + (s - 1)*u), spending
more steps at high noise (Wan uses s = 3..5 for 480p..720p video, 1 is no warp).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import numpy as np

from jaxvideo.sampling.sampler_base import (
    Denoiser,
    SamplerFn,
    StepCallback,
    lincomb,
    report,
    resolve_eta,
    step_noise,
)
from jaxvideo.sampling.samplers import sample_ddim_trailing, sample_euler
from jaxvideo.sampling.samplers_exp import (
    sample_dpmpp_2m,
    sample_res_2s,
    sample_res_multistep,
)
from jaxvideo.sampling.samplers_ode import (
    sample_dpm2,
    sample_euler_ge,
    sample_heun,
    sample_ipndm,
    sample_ipndm_v,
    sample_lms,
)
from jaxvideo.sampling.samplers_unipc import sample_unipc
from jaxvideo.sampling.schedules import SCHEDULER_ALIASES, beta_ppf

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


def _discrete(steps: int, shift: float) -> np.ndarray:
    """diffusers' UniPC/FlowDPM flow sigmas, bit for bit: steps + 1 flow times evenly spaced
    from 1 to 1/1000 without the last, shifted; a start at 1 is nudged to 1 - 1e-6."""
    u = np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, steps + 1)[:-1]
    sigmas = time_shift(u, shift)
    if np.fabs(sigmas[0] - 1) < 1e-6:
        sigmas[0] -= 1e-6
    return sigmas


def _simple(steps: int, shift: float) -> np.ndarray:
    """Every (1000 / steps)-th training sigma from the top (ComfyUI's and sd.cpp's "simple"):
    flow times 1 - floor(i * 1000 / steps) / 1000, i.e. 1, 1 - 1/steps, ... when steps | 1000."""
    n = NUM_TRAIN_TIMESTEPS
    offsets = (np.arange(steps) * n) // steps
    return time_shift((n - offsets) / n, shift)


def _sigma_range(shift: float) -> tuple[float, float]:
    """(sigma_min, sigma_max) of the shifted training sigmas: those of t = 0 and t = 999."""
    return float(time_shift(1 / NUM_TRAIN_TIMESTEPS, shift)), 1.0


def _karras(steps: int, shift: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) spacing between the shifted sigma range, in flow sigma directly
    (ComfyUI; diffusers' FlowMatchEuler use_karras_sigmas at shift 1)."""
    sigma_min, sigma_max = _sigma_range(shift)
    ramp = np.linspace(0, 1, steps)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def _exponential(steps: int, shift: float) -> np.ndarray:
    """Evenly spaced in log sigma over the shifted sigma range (ComfyUI, diffusers at shift 1)."""
    sigma_min, sigma_max = _sigma_range(shift)
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps))


def _beta(steps: int, shift: float, a: float = 0.6, b: float = 0.6) -> np.ndarray:
    """Timesteps at the Beta(a, b) quantiles (Lee et al. 2024; ComfyUI, sd.cpp), fractional as
    schedules.beta keeps them, then shifted."""
    return _from_timestep_fraction(beta_ppf(1.0 - np.arange(steps) / steps, a, b), shift)


def _smoothstep(steps: int, shift: float) -> np.ndarray:
    """Timesteps along smoothstep(u) = 3u^2 - 2u^3 (sd.cpp, without its rounding), shifted."""
    u = 1.0 - np.arange(steps) / steps
    return _from_timestep_fraction(u * u * (3 - 2 * u), shift)


_SCHEDULE_FNS: dict[str, Callable[[int, float], np.ndarray]] = {
    "discrete": _discrete,
    "simple": _simple,
    "karras": _karras,
    "exponential": _exponential,
    "beta": _beta,
    "smoothstep": _smoothstep,
}
FLOW_SCHEDULES: tuple[str, ...] = tuple(_SCHEDULE_FNS)


def flow_sigmas(scheduler: str, steps: int, shift: float) -> np.ndarray:
    """`steps` descending flow sigmas in (0, 1] and a final 0 (steps + 1 values, float32).

    "discrete" (also what "default" and "normal" mean) is diffusers' UniPC flow schedule, the
    one Wan was released with. Raises ValueError for an unknown name, steps < 1, shift <= 0, or
    a schedule that repeats a sigma at this many steps ("simple" beyond 1000).
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if not shift > 0:
        raise ValueError(f"flow shift must be positive, got {shift}")
    name = SCHEDULER_ALIASES.get(scheduler, scheduler) or "discrete"
    if name not in _SCHEDULE_FNS:
        raise ValueError(
            f"unknown flow scheduler {scheduler!r}; known: {', '.join(FLOW_SCHEDULES)}"
        )
    sigmas = np.asarray(_SCHEDULE_FNS[name](steps, float(shift)), dtype=np.float64)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    if np.any(np.diff(sigmas) >= 0):
        raise ValueError(f"the {name} flow schedule repeats sigmas at {steps} steps")
    return sigmas


def sample_euler_ancestral_flow(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float | None = None,
) -> jax.Array:
    """Ancestral Euler for rectified flow (ComfyUI's sample_euler_ancestral_RF).

    Each step takes Euler to sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta),
    where x = (1 - sigma_down) x0 + sigma_down * noise, rescales the data part to
    1 - sigma_next and adds fresh noise so the total noise is sigma_next again. eta = 1
    (default) re-noises the most, 0 is plain Euler; sigma_down is kept in [0, sigma_next].
    """
    eta = resolve_eta(eta, 1.0)
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
        eta: float | None = None,
    ) -> jax.Array:
        return sampler(model, x, sigmas, keys, callback, 0.0)

    return run


# Samplers valid for flow models, by the names of SAMPLER_FNS. Left out: the SDE and ancestral
# samplers (variance-exploding noise), lcm/tcd (consistency models), the CFG++ pair (their
# re-noising along the unconditional prediction is CFG++ only for x = x0 + sigma * noise), and
# dpm++2mv2: flow schedules end evenly spaced in sigma, so their log-sigma steps stay uneven at
# any step count, where its averaged step size no longer keeps x = x0 fixed; it stops converging.
FLOW_SAMPLER_FNS: dict[str, SamplerFn] = {
    "unipc": sample_unipc,
    "euler": sample_euler,
    "euler_a": sample_euler_ancestral_flow,
    "heun": sample_heun,
    "dpm2": sample_dpm2,
    "dpm++2m": sample_dpmpp_2m,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "lms": sample_lms,
    "ddim_trailing": _deterministic(sample_ddim_trailing),
    "res_multistep": _deterministic(sample_res_multistep),
    "res_2s": _deterministic(sample_res_2s),
    "euler_ge": _deterministic(sample_euler_ge),
}
FLOW_SAMPLER_DEFAULT = "unipc"

# eta used when the request leaves it unset; every other flow sampler ignores eta.
FLOW_SAMPLER_DEFAULT_ETA: dict[str, float] = {"euler_a": 1.0}
