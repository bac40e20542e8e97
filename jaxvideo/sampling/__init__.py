"""Samplers and noise schedules, by the names stable-diffusion.cpp and A1111 clients use."""

from jaxvideo.sampling.samplers import SAMPLER_FNS, step_noise
from jaxvideo.sampling.schedules import (
    SCHEDULE_FNS,
    SCHEDULER_ALIASES,
    TrainingSchedule,
    make_sigmas,
)

SAMPLERS: tuple[str, ...] = tuple(SAMPLER_FNS)
SCHEDULERS: tuple[str, ...] = tuple(SCHEDULE_FNS)

__all__ = [
    "SAMPLERS",
    "SAMPLER_FNS",
    "SCHEDULERS",
    "SCHEDULER_ALIASES",
    "SCHEDULE_FNS",
    "TrainingSchedule",
    "make_sigmas",
    "step_noise",
]
