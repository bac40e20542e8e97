"""Schedules built from published sigma tables (AYS, GITS) and from sigma_min/max (bong_tangent).

The tables are those stable-diffusion.cpp and ComfyUI ship; other step counts are obtained by
log-linear interpolation, as both do, and the table's last (smallest) sigma is replaced by the
final 0 the samplers expect.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from jaxvideo.sampling.schedules import TrainingSchedule

# Align Your Steps (Sabour et al. 2024), the published 10-step noise levels (11 values), by the
# model the paper optimised them for.
AYS_NOISE_LEVELS: dict[str, tuple[float, ...]] = {
    "SD1.5": (
        14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
        0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582,
    ),
    "SDXL": (
        14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
        0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582,
    ),
    "SVD": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}  # fmt: skip

# GITS (Chen et al. 2024) optimised schedules for SD at coefficient 1.20 (stable-diffusion.cpp's
# choice): row k is the (k + 2)-step schedule between these end points, interior values only.
GITS_SIGMA_MAX, GITS_SIGMA_MIN = 14.61464119, 0.02916753
GITS_INTERIOR: tuple[list[float], ...] = (
    [0.803307],
    [1.56271636, 0.52423614],
    [2.36326075, 0.92192322, 0.36617002],
    [2.84484982, 1.24153244, 0.59516323, 0.25053367],
    [5.85520077, 2.05039096, 0.95350921, 0.45573691, 0.17026083],
    [5.85520077, 2.45070267, 1.24153244, 0.64427125, 0.29807833, 0.09824532],
    [5.85520077, 2.45070267, 1.36964464, 0.803307, 0.45573691, 0.25053367, 0.09824532],
    [
        5.85520077, 2.84484982, 1.61558151, 0.95350921, 0.59516323, 0.36617002, 0.19894916,
        0.09824532,
    ],
    [
        5.85520077, 2.84484982, 1.67050016, 1.08895338, 0.74807048, 0.50118381, 0.32104823,
        0.19894916, 0.09824532,
    ],
    [
        5.85520077, 2.95596409, 1.84880662, 1.24153244, 0.83188516, 0.59516323, 0.41087446,
        0.27464288, 0.17026083, 0.09824532,
    ],
    [
        5.85520077, 3.07277966, 1.98035145, 1.36964464, 0.95350921, 0.69515091, 0.50118381,
        0.36617002, 0.25053367, 0.17026083, 0.09824532,
    ],
    [
        6.77309084, 3.46139455, 2.36326075, 1.56271636, 1.08895338, 0.803307, 0.59516323,
        0.45573691, 0.34370604, 0.25053367, 0.17026083, 0.09824532,
    ],
    [
        6.77309084, 3.46139455, 2.45070267, 1.61558151, 1.162866, 0.86115354, 0.64427125,
        0.50118381, 0.38853383, 0.29807833, 0.22545385, 0.17026083, 0.09824532,
    ],
    [
        7.49001646, 4.65472794, 3.07277966, 2.12350607, 1.51179266, 1.08895338, 0.83188516,
        0.64427125, 0.50118381, 0.38853383, 0.29807833, 0.22545385, 0.17026083, 0.09824532,
    ],
    [
        7.49001646, 4.65472794, 3.07277966, 2.12350607, 1.51179266, 1.08895338, 0.83188516,
        0.64427125, 0.50118381, 0.41087446, 0.32104823, 0.25053367, 0.19894916, 0.13792117,
        0.09824532,
    ],
    [
        7.49001646, 4.65472794, 3.07277966, 2.12350607, 1.51179266, 1.08895338, 0.83188516,
        0.64427125, 0.50118381, 0.41087446, 0.34370604, 0.27464288, 0.22545385, 0.17026083,
        0.13792117, 0.09824532,
    ],
    [
        7.49001646, 4.65472794, 3.07277966, 2.19988537, 1.61558151, 1.20157266, 0.92192322,
        0.72133851, 0.57119018, 0.45573691, 0.36617002, 0.29807833, 0.25053367, 0.19894916,
        0.17026083, 0.13792117, 0.09824532,
    ],
    [
        7.49001646, 4.65472794, 3.07277966, 2.19988537, 1.61558151, 1.24153244, 0.95350921,
        0.74807048, 0.59516323, 0.4783645, 0.38853383, 0.32104823, 0.27464288, 0.22545385,
        0.19894916, 0.17026083, 0.13792117, 0.09824532,
    ],
    [
        7.49001646, 4.65472794, 3.07277966, 2.19988537, 1.61558151, 1.24153244, 0.95350921,
        0.74807048, 0.59516323, 0.50118381, 0.41087446, 0.34370604, 0.29807833, 0.25053367,
        0.22545385, 0.19894916, 0.17026083, 0.13792117, 0.09824532,
    ],
)  # fmt: skip


def log_linear_interp(sigmas: np.ndarray, length: int) -> np.ndarray:
    """Resample a descending sigma table to `length` points, linearly in log-sigma."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    log_ascending = np.log(sigmas[::-1])
    xs = np.linspace(0.0, 1.0, len(sigmas))
    return np.exp(np.interp(np.linspace(0.0, 1.0, length), xs, log_ascending))[::-1]


def _from_table(table: np.ndarray, steps: int) -> np.ndarray:
    if len(table) != steps + 1:
        table = log_linear_interp(table, steps + 1)
    return np.asarray(table[:steps], dtype=np.float64)  # the table's last entry becomes the 0


def ays(schedule: TrainingSchedule, steps: int, table: str = "SD1.5") -> np.ndarray:
    """Align Your Steps: the published 10-step table for a kind of model, interpolated to
    `steps`. `table` is "SD1.5" (SD 1.x/2.x), "SDXL" or "SVD" (a family's `ays_table`); the
    tables assume SD's training sigmas.
    """
    if table not in AYS_NOISE_LEVELS:
        raise ValueError(f"unknown AYS table {table!r}; one of {', '.join(AYS_NOISE_LEVELS)}")
    return _from_table(np.array(AYS_NOISE_LEVELS[table]), steps)


def gits(schedule: TrainingSchedule, steps: int) -> np.ndarray:
    """GITS: the optimised table for 2..20 steps, log-linearly interpolated beyond (and for 1)."""
    if 2 <= steps <= 20:
        table = np.array([GITS_SIGMA_MAX, *GITS_INTERIOR[steps - 2], GITS_SIGMA_MIN])
    else:
        table = np.array([GITS_SIGMA_MAX, *GITS_INTERIOR[-1], GITS_SIGMA_MIN])
    return _from_table(table, steps)


def _tangent_ramp(count: int, slope: float, pivot: float, start: float, end: float) -> list[float]:
    def v(x: float) -> float:
        return ((2 / math.pi) * math.atan(-slope * (x - pivot)) + 1) / 2

    smax, smin = v(0.0), v(count - 1.0)
    if count == 1 or abs(smax - smin) < 1e-8:
        return list(np.linspace(start, end, count))
    return [(v(x) - smin) / (smax - smin) * (start - end) + end for x in range(count)]


def bong_tangent(schedule: TrainingSchedule, steps: int) -> np.ndarray:
    """Two arctangent ramps, sigma_max -> midpoint -> sigma_min (RES4LYF, stable-diffusion.cpp)."""
    train = schedule.sigmas()
    sigma_min, sigma_max = float(train[0]), float(train[-1])
    if steps == 1:
        return np.array([sigma_max])
    middle = sigma_min + (sigma_max - sigma_min) / 2
    total = steps + 2
    midpoint = total * 3 // 5  # both ramps pivot at 60% of the way
    slope = 0.2 / (total / 40.0)
    first = _tangent_ramp(midpoint, slope, float(midpoint), sigma_max, middle)
    second = _tangent_ramp(total - midpoint, slope, 0.0, middle, sigma_min)
    # The first ramp's end is the second's start; the second's end (sigma_min) becomes the 0.
    return np.array(first[:-1] + second[:-1], dtype=np.float64)
