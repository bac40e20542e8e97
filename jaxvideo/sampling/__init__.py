"""Samplers and noise schedules, by the names stable-diffusion.cpp and A1111 clients use.

What exists, under which names and with which defaults is `registry` (JAX-free, like this
package's top level, so the web layer may import it); the sampler functions themselves (JAX)
are in the `samplers*` and `flow` modules and are reached through `registry.sampler_function`.
"""

from jaxvideo.sampling.registry import (
    DEFAULT_NAMES,
    SAMPLER_SPECS,
    SCHEDULE_ALIASES,
    SCHEDULE_SPECS,
    SamplerSpec,
    ScheduleSpec,
    resolve_sampler,
    resolve_schedule,
    sampler_function,
    sampler_names,
    schedule_names,
)
from jaxvideo.sampling.schedules import ShiftedTimestep, TrainingSchedule, shifted_timestep
from jaxvideo.sampling.sigmas import custom_sigmas, flow_sigmas, make_sigmas

__all__ = [
    "DEFAULT_NAMES",
    "SAMPLER_SPECS",
    "SCHEDULE_SPECS",
    "SCHEDULE_ALIASES",
    "SamplerSpec",
    "ScheduleSpec",
    "ShiftedTimestep",
    "TrainingSchedule",
    "custom_sigmas",
    "flow_sigmas",
    "make_sigmas",
    "resolve_sampler",
    "resolve_schedule",
    "sampler_function",
    "sampler_names",
    "schedule_names",
    "shifted_timestep",
]
