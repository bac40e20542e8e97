"""Samplers and noise schedules, by the names stable-diffusion.cpp and A1111 clients use."""

from jaxvideo.sampling.samplers import (
    SAMPLER_DEFAULT_ETA,
    SAMPLER_DEFAULT_SCHEDULE,
    SAMPLER_FNS,
    SAMPLER_NEEDS_UNCOND,
    step_noise,
)
from jaxvideo.sampling.schedules import (
    SCHEDULE_FNS,
    SCHEDULER_ALIASES,
    ShiftedTimestep,
    TrainingSchedule,
    custom_sigmas,
    make_sigmas,
    shifted_timestep,
)

SAMPLERS: tuple[str, ...] = tuple(SAMPLER_FNS)
SCHEDULERS: tuple[str, ...] = tuple(SCHEDULE_FNS)

__all__ = [
    "SAMPLERS",
    "SAMPLER_DEFAULT_ETA",
    "SAMPLER_DEFAULT_SCHEDULE",
    "SAMPLER_FNS",
    "SAMPLER_NEEDS_UNCOND",
    "SCHEDULERS",
    "SCHEDULER_ALIASES",
    "SCHEDULE_FNS",
    "ShiftedTimestep",
    "TrainingSchedule",
    "custom_sigmas",
    "make_sigmas",
    "shifted_timestep",
    "step_noise",
]
