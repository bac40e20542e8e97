"""The sampler registry seen as the tables the sampling tests index: names, functions (eta
defaults filled in by the registry) and per-sampler defaults, for k-diffusion and flow models."""

from jaxvideo.families import WAN21
from jaxvideo.sampling import SAMPLER_SPECS as SPECS
from jaxvideo.sampling import sampler_function, sampler_names, schedule_names

SAMPLERS = sampler_names(flow=False)
SCHEDULERS = schedule_names(flow=False)
SAMPLER_FNS = {name: sampler_function(name, flow=False) for name in SAMPLERS}
SAMPLER_DEFAULT_ETA = {s.name: s.default_eta for s in SPECS.values() if s.default_eta is not None}
SAMPLER_DEFAULT_SCHEDULE = {
    s.name: s.default_schedule for s in SPECS.values() if s.default_schedule
}
SAMPLER_NEEDS_UNCOND = frozenset(s.name for s in SPECS.values() if s.needs_uncond)

FLOW_SAMPLERS = sampler_names(flow=True)
FLOW_SCHEDULES = schedule_names(flow=True)
FLOW_SAMPLER_FNS = {name: sampler_function(name, flow=True) for name in FLOW_SAMPLERS}
FLOW_SAMPLER_DEFAULT = WAN21.defaults["sampler"]
FLOW_SAMPLER_DEFAULT_ETA = {
    name: eta for name, eta in SAMPLER_DEFAULT_ETA.items() if name in FLOW_SAMPLERS
}
