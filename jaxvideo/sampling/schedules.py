"""Noise schedules: the training betas of a model and the sigma sequence a sampler walks.

Everything here is small host-side numpy (float64, handed to JAX as float32). Sigmas follow the
k-diffusion convention: x_t = x_0 + sigma * noise, descending. A schedule function returns the
`steps` positive sigmas (`sigmas.make_sigmas` appends the final 0). Names follow
stable-diffusion.cpp (the registry lists them; schedule_tables.py holds the table-based ones);
timestep-based schedules evaluate the model's own training sigmas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TrainingSchedule:
    """The discrete schedule a model was trained with (from its scheduler_config.json)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"

    @classmethod
    def from_scheduler_config(cls, d: Mapping[str, Any]) -> TrainingSchedule:
        fields = {k: d[k] for k in cls.__dataclass_fields__ if d.get(k) is not None}
        return cls(**fields)

    def alphas_cumprod(self) -> np.ndarray:
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float64) ** 2
        elif self.beta_schedule == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
        else:
            raise ValueError(f"unsupported beta_schedule {self.beta_schedule!r}")
        return np.cumprod(1.0 - betas)

    def sigmas(self) -> np.ndarray:
        """Sigma of every training timestep, ascending with t."""
        # float32 first, as diffusers computes them, so schedules match it bit for bit.
        ac = self.alphas_cumprod().astype(np.float32)
        return ((1 - ac) / ac) ** 0.5

    def sigma_to_t(self, sigma: np.ndarray) -> np.ndarray:
        """Fractional timestep of each sigma by interpolating log-sigma (k-diffusion/diffusers)."""
        log_sigmas = np.log(self.sigmas()).astype(np.float64)
        sigma = np.asarray(sigma, dtype=np.float64)
        log_sigma = np.log(np.maximum(sigma, 1e-10))
        dists = log_sigma - log_sigmas[:, None]
        low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
        high = low + 1
        w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
        return ((1 - w) * low + w * high).reshape(sigma.shape)

    def t_to_sigma(self, t: np.ndarray | float) -> np.ndarray:
        """Sigma at a (fractional) timestep, interpolating log-sigma (k-diffusion, sd.cpp)."""
        log_sigmas = np.log(self.sigmas().astype(np.float64))
        t = np.clip(np.asarray(t, dtype=np.float64), 0, len(log_sigmas) - 1)
        low = np.floor(t).astype(np.int64)
        high = np.ceil(t).astype(np.int64)
        w = t - low
        return np.exp((1 - w) * log_sigmas[low] + w * log_sigmas[high])


def discrete(schedule: TrainingSchedule, steps: int) -> np.ndarray:
    """Timesteps evenly spaced from the last training step to 0, sigmas interpolated linearly.

    Matches diffusers' EulerDiscreteScheduler with timestep_spacing="linspace", except that one
    step starts at the last timestep (as stable-diffusion.cpp does), not at timestep 0.
    """
    last = schedule.num_train_timesteps - 1
    t = np.linspace(0, last, steps, dtype=np.float32)[::-1] if steps > 1 else np.float32([last])
    train = schedule.sigmas()
    return np.interp(t, np.arange(len(train)), train)


def karras(schedule: TrainingSchedule, steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) spacing between the model's smallest and largest sigma."""
    train = schedule.sigmas()
    sigma_min, sigma_max = float(train[0]), float(train[-1])
    ramp = np.linspace(0, 1, steps)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def exponential(schedule: TrainingSchedule, steps: int) -> np.ndarray:
    """Evenly spaced in log-sigma between the model's largest and smallest sigma."""
    train = schedule.sigmas()
    return np.exp(np.linspace(math.log(train[-1]), math.log(train[0]), steps))


def kl_optimal(schedule: TrainingSchedule, steps: int) -> np.ndarray:
    """Evenly spaced in arctan(sigma) (Sabour et al. 2024, "KL optimal")."""
    train = schedule.sigmas()
    return np.tan(np.linspace(math.atan(train[-1]), math.atan(train[0]), steps))


def sgm_uniform(schedule: TrainingSchedule, steps: int) -> np.ndarray:
    """steps + 1 timesteps evenly spaced from the last to 0, dropping the 0 (SGM's uniform)."""
    last = schedule.num_train_timesteps - 1
    return schedule.t_to_sigma(np.linspace(last, 0, steps + 1)[:steps])


def simple(schedule: TrainingSchedule, steps: int) -> np.ndarray:
    """Every (N / steps)-th training sigma from the top (ComfyUI's "simple").

    When steps divides N these are diffusers' "trailing" timesteps, the DDIM-trailing schedule.
    """
    n = schedule.num_train_timesteps
    return schedule.t_to_sigma(n - 1 - (np.arange(steps) * n) // steps)


def smoothstep(schedule: TrainingSchedule, steps: int) -> np.ndarray:
    """Timesteps along smoothstep(u) = 3u^2 - 2u^3, a cheap stand-in for the beta schedule.

    stable-diffusion.cpp rounds the timesteps, which repeats one at large step counts; these
    stay fractional, so the sigmas are strictly decreasing.
    """
    u = 1.0 - np.arange(steps) / steps
    return schedule.t_to_sigma(u * u * (3 - 2 * u) * (schedule.num_train_timesteps - 1))


LCM_ORIGINAL_STEPS = 50


def lcm(schedule: TrainingSchedule, steps: int) -> np.ndarray:
    """The LCM/TCD timesteps: `steps` of the 50 the distillation used, as diffusers picks them."""
    if steps > LCM_ORIGINAL_STEPS:
        raise ValueError(f"the lcm schedule has at most {LCM_ORIGINAL_STEPS} steps")
    k = schedule.num_train_timesteps // LCM_ORIGINAL_STEPS
    index = (np.arange(steps) * LCM_ORIGINAL_STEPS) // steps
    return schedule.t_to_sigma((LCM_ORIGINAL_STEPS - index) * k - 1)


def _beta_continued_fraction(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    # Lentz's method for the incomplete beta continued fraction (Numerical Recipes betacf).
    tiny = 1e-300

    def guard(v):
        return np.where(np.abs(v) < tiny, tiny, v)

    c = np.ones_like(x)
    d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 301):
        for coef in (
            m * (b - m) * x / ((a - 1 + 2 * m) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1 + 2 * m)),
        ):
            d = 1.0 / guard(1.0 + coef * d)
            c = guard(1.0 + coef / c)
            h = h * d * c
        if np.all(np.abs(d * c - 1.0) < 3e-14):
            break
    return h


def _betainc(a: float, b: float, x: np.ndarray) -> np.ndarray:
    """Regularized incomplete beta function I_x(a, b), elementwise for x in [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    inner = np.clip(x, 1e-300, 1 - 1e-16)
    # The fraction converges fast below the mean; above it use I_x(a, b) = 1 - I_{1-x}(b, a).
    flip = inner >= (a + 1) / (a + b + 2)
    aa, bb = np.where(flip, b, a), np.where(flip, a, b)
    xx = np.where(flip, 1 - inner, inner)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + aa * np.log(xx) + bb * np.log1p(-xx)
    )
    part = np.exp(log_front) * _beta_continued_fraction(aa, bb, xx) / aa
    value = np.where(flip, 1 - part, part)
    return np.where(x <= 0, 0.0, np.where(x >= 1, 1.0, value))


def beta_ppf(p: np.ndarray, a: float, b: float) -> np.ndarray:
    """Inverse CDF of Beta(a, b) by bisection (no scipy); accurate to about 1e-15."""
    p = np.asarray(p, dtype=np.float64)
    lo, hi = np.zeros_like(p), np.ones_like(p)
    for _ in range(55):
        mid = (lo + hi) / 2
        below = _betainc(a, b, mid) < p
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(p <= 0, 0.0, np.where(p >= 1, 1.0, (lo + hi) / 2))


def beta(schedule: TrainingSchedule, steps: int, a: float = 0.6, b: float = 0.6) -> np.ndarray:
    """Timesteps at the Beta(a, b) quantiles (Lee et al. 2024; ComfyUI, sd.cpp).

    Those two round the timesteps and drop repeats, returning fewer sigmas at large step
    counts; these stay fractional, so there are always `steps` strictly decreasing sigmas.
    """
    quantiles = beta_ppf(1.0 - np.arange(steps) / steps, a, b)
    return schedule.t_to_sigma(quantiles * (schedule.num_train_timesteps - 1))


@dataclass(frozen=True)
class ShiftedTimestep:
    """What an epsilon model is fed under stable-diffusion.cpp's shifted_timestep.

    The network sees the input x * c_in(sigma) as usual but the timestep `t`; its noise
    prediction is read at that timestep's sigma: denoised = c_skip * x + c_out * eps.
    """

    t: float
    c_skip: float
    c_out: float


def shifted_timestep(schedule: TrainingSchedule, sigma: float, shift: int) -> ShiftedTimestep:
    """sd.cpp's timestep shift for distilled SDXL checkpoints (e.g. NitroFusion); 0 < shift <= N.

    t' = round(t * shift / N), clamped to the training range; sigma' = sigma(t').
    """
    n = schedule.num_train_timesteps
    if not 0 < shift <= n:
        raise ValueError(f"shifted_timestep must be in 1..{n}")
    t = float(schedule.sigma_to_t(np.float64(sigma)))
    t_shift = min(max(math.floor(t * shift / n + 0.5), 0), n - 1)
    sigma_shift = float(schedule.t_to_sigma(t_shift))
    c_skip = math.sqrt(sigma_shift**2 + 1) / math.sqrt(float(sigma) ** 2 + 1)
    return ShiftedTimestep(t=float(t_shift), c_skip=c_skip, c_out=-sigma_shift)
