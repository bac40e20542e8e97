"""The sigma sequence a request runs: a named schedule (plus the final 0), or the client's own.

k-diffusion models (SD) walk their training sigmas, x = x0 + sigma * noise; rectified-flow models
(Wan) walk flow sigmas in (0, 1] warped by a shift. Schedules are looked up in the registry by
name; host-side numpy, returned as float32 for the samplers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxvideo.sampling.registry import (
    DEFAULT_NAMES,
    SCHEDULE_SPECS,
    native_schedule,
    schedule_function,
    schedule_names,
)
from jaxvideo.sampling.schedules import TrainingSchedule


def make_sigmas(
    schedule: TrainingSchedule, scheduler: str, steps: int, **options: Any
) -> np.ndarray:
    """`steps` descending sigmas followed by a final 0 (length steps + 1), as float32.

    `options` go to the schedule function, e.g. table="SDXL" for "ays".
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    fn = schedule_function(native_schedule(scheduler), flow=False)
    sigmas = np.asarray(fn(schedule, steps, **options), dtype=np.float64)
    return np.concatenate([sigmas, [0.0]]).astype(np.float32)


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
    key = native_schedule(scheduler)
    spec = SCHEDULE_SPECS.get("discrete" if key in DEFAULT_NAMES else key)
    if spec is None or spec.flow is None:
        raise ValueError(
            f"unknown flow scheduler {scheduler!r}; known: {', '.join(schedule_names(flow=True))}"
        )
    fn = schedule_function(spec.name, flow=True)
    sigmas = np.asarray(fn(steps, float(shift)), dtype=np.float64)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    if np.any(np.diff(sigmas) >= 0):
        raise ValueError(f"the {spec.flow} flow schedule repeats sigmas at {steps} steps")
    return sigmas


def custom_sigmas(values: Any) -> np.ndarray:
    """Client-given sigmas checked for a sampler: finite, >= 0, strictly descending, ending in 0.

    A final 0 is appended when the last value is not 0; raises ValueError otherwise.
    """
    try:
        sigmas = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError("custom sigmas must be a list of numbers") from e
    if sigmas.size == 0:
        raise ValueError("custom sigmas must not be empty")
    if not np.all(np.isfinite(sigmas)):
        raise ValueError("custom sigmas must be finite")
    if np.any(sigmas < 0):
        raise ValueError("custom sigmas must not be negative")
    if sigmas[-1] != 0:
        sigmas = np.append(sigmas, 0.0)
    if sigmas.size < 2:
        raise ValueError("custom sigmas need at least one positive value")
    sigmas = sigmas.astype(np.float32)  # checked as the samplers will see them
    if np.any(np.diff(sigmas) >= 0):
        raise ValueError("custom sigmas must be strictly descending")
    return sigmas
