"""Noise schedules: the training betas of a model and the sigma sequence a sampler walks.

Everything here is small host-side numpy (float64, handed to JAX as float32). Sigmas follow the
k-diffusion convention: x_t = x_0 + sigma * noise, descending, with a final 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def discrete(schedule: TrainingSchedule, steps: int) -> np.ndarray:
    """Timesteps evenly spaced from the last training step to 0, sigmas interpolated linearly.

    Matches diffusers' EulerDiscreteScheduler with timestep_spacing="linspace".
    """
    t = np.linspace(0, schedule.num_train_timesteps - 1, steps, dtype=np.float32)[::-1]
    train = schedule.sigmas()
    return np.interp(t, np.arange(len(train)), train)


def karras(schedule: TrainingSchedule, steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) spacing between the model's smallest and largest sigma."""
    train = schedule.sigmas()
    sigma_min, sigma_max = float(train[0]), float(train[-1])
    ramp = np.linspace(0, 1, steps)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


SCHEDULE_FNS: dict[str, Callable[[TrainingSchedule, int], np.ndarray]] = {
    "discrete": discrete,
    "karras": karras,
}

# Alternative spellings clients send, resolved before lookup.
SCHEDULER_ALIASES = {"normal": "discrete", "default": None, "automatic": None}


def make_sigmas(schedule: TrainingSchedule, scheduler: str, steps: int) -> np.ndarray:
    """`steps` descending sigmas followed by a final 0 (length steps + 1), as float32."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    fn = SCHEDULE_FNS[scheduler]
    sigmas = np.asarray(fn(schedule, steps), dtype=np.float64)
    return np.concatenate([sigmas, [0.0]]).astype(np.float32)
