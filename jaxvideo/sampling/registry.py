"""The sampler and schedule registry: one spec per sampler and per schedule, by sd.cpp's names.

Each spec says what runs it (a function for k-diffusion models such as SD, and one for
rectified-flow models such as Wan, where it is valid there), its defaults (eta, the schedule
"default" means with it), what it needs (the unconditional prediction) and the names other
clients use for it (A1111 display names, k-diffusion and ComfyUI ids). Free of JAX and numpy:
the web layer parses and lists names from here; functions are "module:attribute" strings
imported on first use (`sampler_function`, `schedule_function`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jaxvideo.lazy import load

# Names meaning "the model's own choice" (A1111's "Automatic"), for samplers and schedules.
DEFAULT_NAMES = frozenset(("", "default", "auto", "automatic"))

_KD = "jaxvideo.sampling.samplers"
_ODE = "jaxvideo.sampling.samplers_ode"
_EXP = "jaxvideo.sampling.samplers_exp"
_DISTILLED = "jaxvideo.sampling.samplers_distilled"
_FLOW = "jaxvideo.sampling.flow"
_SCHEDULES = "jaxvideo.sampling.schedules"
_TABLES = "jaxvideo.sampling.schedule_tables"
_FLOW_SCHEDULES = "jaxvideo.sampling.flow_schedules"


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler. `fn` runs it on k-diffusion models (x = x0 + sigma * noise), `flow_fn` on
    rectified-flow models; None where it is not valid. Either is called as
    `fn(model, x, sigmas, keys, callback, eta)` (see samplers.py)."""

    name: str  # stable-diffusion.cpp's spelling, what the native API takes
    display: str  # A1111's display name (or one in its style for sd.cpp-only samplers)
    fn: str | None
    flow_fn: str | None = None
    # eta when the request sends none; None: the sampler is deterministic and ignores eta.
    default_eta: float | None = None
    # The schedule "default" means with this sampler (lcm -> lcm); None: the model's default.
    default_schedule: str | None = None
    # CFG++: the sampler calls model(x, sigma, return_uncond=True).
    needs_uncond: bool = False
    aliases: tuple[str, ...] = ()  # k-diffusion ids (old A1111 clients) and ComfyUI ids


@dataclass(frozen=True)
class ScheduleSpec:
    """One sigma schedule: `fn(training_schedule, steps)` on k-diffusion models; on flow
    models the `flow_schedules` function named `flow` (its own name, the flow schedule it
    means there, or None: not valid). Flow models list only the schedules that are their own."""

    name: str
    label: str  # A1111's label
    fn: str
    flow: str | None = None
    aliases: tuple[str, ...] = ()  # A1111 ids and other spellings clients send
    native_aliases: tuple[str, ...] = ()  # sd.cpp's own other spellings (the native API's too)


def _sampler(name: str, display: str, fn: str | None, **kwargs: Any) -> SamplerSpec:
    return SamplerSpec(name, display, fn, **kwargs)


# In stable-diffusion.cpp's order; UniPC (flow models only) first, so a flow model lists its
# own default sampler first. Left out for flow (flow_fn None): the SDE and ancestral samplers
# (variance-exploding noise), lcm/tcd (consistency models), the CFG++ pair (re-noising along
# the unconditional prediction is CFG++ only for x = x0 + sigma * noise), and dpm++2mv2: flow
# schedules end evenly spaced in sigma, so their log-sigma steps stay uneven at any step count,
# where its averaged step size no longer keeps x = x0 fixed; it stops converging. ddim_trailing,
# res_multistep, res_2s and euler_ge run on flow models with their noise off.
_SAMPLERS = (
    _sampler("unipc", "UniPC", None, flow_fn="jaxvideo.sampling.samplers_unipc:sample_unipc"),
    _sampler("euler", "Euler", f"{_KD}:sample_euler", flow_fn=f"{_KD}:sample_euler",
             aliases=("k_euler",)),
    _sampler("euler_a", "Euler a", f"{_KD}:sample_euler_ancestral",
             flow_fn=f"{_FLOW}:sample_euler_ancestral_flow", default_eta=1.0,
             aliases=("k_euler_a", "k_euler_ancestral", "euler_ancestral")),
    _sampler("heun", "Heun", f"{_ODE}:sample_heun", flow_fn=f"{_ODE}:sample_heun",
             aliases=("k_heun",)),
    _sampler("dpm2", "DPM2", f"{_ODE}:sample_dpm2", flow_fn=f"{_ODE}:sample_dpm2",
             aliases=("k_dpm_2", "dpm_2")),
    _sampler("dpm++2s_a", "DPM++ 2S a", f"{_EXP}:sample_dpmpp_2s_ancestral", default_eta=1.0,
             aliases=("k_dpmpp_2s_a", "dpmpp_2s_ancestral")),
    _sampler("dpm++2m", "DPM++ 2M", f"{_EXP}:sample_dpmpp_2m", flow_fn=f"{_EXP}:sample_dpmpp_2m",
             aliases=("k_dpmpp_2m", "dpmpp_2m")),
    _sampler("dpm++2mv2", "DPM++ 2M v2", f"{_EXP}:sample_dpmpp_2m_v2"),
    _sampler("ipndm", "iPNDM", f"{_ODE}:sample_ipndm", flow_fn=f"{_ODE}:sample_ipndm"),
    _sampler("ipndm_v", "iPNDM_V", f"{_ODE}:sample_ipndm_v", flow_fn=f"{_ODE}:sample_ipndm_v"),
    _sampler("lcm", "LCM", f"{_DISTILLED}:sample_lcm", default_schedule="lcm",
             aliases=("k_lcm",)),
    _sampler("ddim_trailing", "DDIM", f"{_KD}:sample_ddim_trailing",
             flow_fn=f"{_FLOW}:sample_ddim_trailing_flow", default_eta=0.0,
             default_schedule="simple", aliases=("ddim",)),
    _sampler("tcd", "TCD", f"{_DISTILLED}:sample_tcd", default_eta=0.3, default_schedule="lcm"),
    _sampler("res_multistep", "Res Multistep", f"{_EXP}:sample_res_multistep",
             flow_fn=f"{_FLOW}:sample_res_multistep_flow", default_eta=0.0),
    _sampler("res_2s", "Res 2s", f"{_EXP}:sample_res_2s", flow_fn=f"{_FLOW}:sample_res_2s_flow",
             default_eta=0.0),
    _sampler("er_sde", "ER SDE", f"{_EXP}:sample_er_sde", default_eta=1.0),
    _sampler("euler_cfg_pp", "Euler CFG++", f"{_KD}:sample_euler_cfg_pp", needs_uncond=True),
    _sampler("euler_a_cfg_pp", "Euler a CFG++", f"{_KD}:sample_euler_ancestral_cfg_pp",
             default_eta=1.0, needs_uncond=True, aliases=("euler_ancestral_cfg_pp",)),
    _sampler("euler_ge", "Euler GE", f"{_ODE}:sample_euler_ge",
             flow_fn=f"{_FLOW}:sample_euler_ge_flow", default_eta=0.0),
    _sampler("dpm++2m_sde", "DPM++ 2M SDE", f"{_EXP}:sample_dpmpp_2m_sde", default_eta=1.0,
             aliases=("k_dpmpp_2m_sde", "dpmpp_2m_sde")),
    # stable-diffusion.cpp maps A1111's "DPM++ 2M SDE GPU" (Brownian-tree noise) here.
    _sampler("dpm++2m_sde_bt", "DPM++ 2M SDE GPU", f"{_EXP}:sample_dpmpp_2m_sde_bt",
             default_eta=1.0, aliases=("dpmpp_2m_sde_gpu",)),
    _sampler("lms", "LMS", f"{_ODE}:sample_lms", flow_fn=f"{_ODE}:sample_lms",
             aliases=("k_lms",)),
)  # fmt: skip

# A1111's "Uniform" is k-diffusion's evenly spaced timesteps: sd.cpp's `discrete`, which is
# also what sd.cpp's alias `normal` means (A1111's Normal differs only at t_min).
_SCHEDULES_ROWS = (
    ScheduleSpec("discrete", "Uniform", f"{_SCHEDULES}:discrete", "discrete", ("uniform",),
                 native_aliases=("normal",)),
    ScheduleSpec("karras", "Karras", f"{_SCHEDULES}:karras", "karras"),
    ScheduleSpec("exponential", "Exponential", f"{_SCHEDULES}:exponential", "exponential"),
    ScheduleSpec("ays", "Align Your Steps", f"{_TABLES}:ays", None, ("align_your_steps",)),
    ScheduleSpec("gits", "GITS", f"{_TABLES}:gits"),
    # Flow models have one uniform schedule: sgm_uniform means it there.
    ScheduleSpec("sgm_uniform", "SGM Uniform", f"{_SCHEDULES}:sgm_uniform", "discrete",
                 ("sgmuniform",)),
    ScheduleSpec("simple", "Simple", f"{_SCHEDULES}:simple", "simple"),
    ScheduleSpec("smoothstep", "Smoothstep", f"{_SCHEDULES}:smoothstep", "smoothstep"),
    ScheduleSpec("kl_optimal", "KL Optimal", f"{_SCHEDULES}:kl_optimal"),
    ScheduleSpec("lcm", "LCM", f"{_SCHEDULES}:lcm"),
    ScheduleSpec("bong_tangent", "Bong Tangent", f"{_TABLES}:bong_tangent"),
    ScheduleSpec("beta", "Beta", f"{_SCHEDULES}:beta", "beta"),
)  # fmt: skip

SAMPLER_SPECS: Mapping[str, SamplerSpec] = MappingProxyType({s.name: s for s in _SAMPLERS})
SCHEDULE_SPECS: Mapping[str, ScheduleSpec] = MappingProxyType({s.name: s for s in _SCHEDULES_ROWS})
# sd.cpp's own other spellings of its schedules (`normal`) -> native name.
NATIVE_SCHEDULE_ALIASES: Mapping[str, str] = MappingProxyType(
    {alias: s.name for s in _SCHEDULES_ROWS for alias in s.native_aliases}
)
# Every other spelling clients send (A1111 ids and sd.cpp's) -> native name.
SCHEDULE_ALIASES: Mapping[str, str] = MappingProxyType(
    {alias: s.name for s in _SCHEDULES_ROWS for alias in s.aliases} | NATIVE_SCHEDULE_ALIASES
)
# A1111 schedule labels no engine here implements: named as such instead of "unknown".
UNSUPPORTED_SCHEDULES = frozenset(("polyexponential", "ddim"))


def sampler_names(flow: bool) -> tuple[str, ...]:
    """The samplers valid for flow (Wan) or k-diffusion (SD) models, in registry order."""
    return tuple(s.name for s in _SAMPLERS if (s.flow_fn if flow else s.fn) is not None)


def schedule_names(flow: bool) -> tuple[str, ...]:
    """The schedules listed for flow or k-diffusion models, in registry order."""
    if flow:
        return tuple(s.name for s in _SCHEDULES_ROWS if s.flow == s.name)
    return tuple(s.name for s in _SCHEDULES_ROWS)


def native_schedule(name: str) -> str:
    """A schedule name with sd.cpp's own other spellings resolved (`normal` -> `discrete`)."""
    key = name.strip().lower()
    return NATIVE_SCHEDULE_ALIASES.get(key, key)


def resolve_sampler(name: str | None, flow: bool, default: str) -> str:
    """The sampler a request runs: `default` for a default name; ValueError when `name` is
    not valid for this kind of model."""
    sampler = default if name is None or name.strip().lower() in DEFAULT_NAMES else name
    if sampler not in sampler_names(flow):
        raise ValueError(
            f"sampler {name!r} is not available for {_kind(flow)} models; one of "
            f"{', '.join(sampler_names(flow))}"
        )
    return sampler


def resolve_schedule(name: str | None, sampler: str, flow: bool, default: str) -> str:
    """The schedule a request runs (for flow models, the flow schedule it means there).

    A default name means the model's `default`; on k-diffusion models a sampler with its own
    schedule goes first (lcm runs the lcm schedule, ddim_trailing the trailing one), since
    those are spacings of the training timesteps. ValueError for names not valid here."""
    key = native_schedule(name or "")
    if key in DEFAULT_NAMES:
        own = None if flow else SAMPLER_SPECS[sampler].default_schedule
        key = own or native_schedule(default)
        if key in DEFAULT_NAMES:
            key = "discrete"
    spec = SCHEDULE_SPECS.get(key)
    if spec is None or flow and spec.flow is None:
        raise ValueError(
            f"scheduler {name!r} is not available for {_kind(flow)} models; one of "
            f"{', '.join(schedule_names(flow))}"
        )
    return spec.flow if flow else key


def _kind(flow: bool) -> str:
    return "flow-matching" if flow else "k-diffusion"


@functools.cache
def sampler_function(name: str, flow: bool) -> Callable[..., Any]:
    """`run(model, x, sigmas, keys, callback=None, eta=None, cache=None)` for sampler `name`,
    where a missing eta is the sampler's default and `cache` a request's step cache
    (`step_cache.StepCache`) that may answer some of the model calls (KeyError/ValueError for
    unknown or invalid names)."""
    spec = SAMPLER_SPECS[name]
    target = spec.flow_fn if flow else spec.fn
    if target is None:
        raise ValueError(f"sampler {name!r} is not valid for {_kind(flow)} models")
    fn = load(target)

    @functools.wraps(fn)
    def run(model, x, sigmas, keys, callback=None, eta=None, cache=None):
        eta = spec.default_eta if eta is None else float(eta)
        if cache is not None:
            from jaxvideo.sampling.step_cache import CachedDenoiser

            model = CachedDenoiser(model, cache, sigmas, flow)
        return fn(model, x, sigmas, keys, callback, 0.0 if eta is None else eta)

    return run


def schedule_function(name: str, flow: bool) -> Callable[..., Any]:
    """The sigma function of schedule `name` on this kind of model (KeyError: unknown name)."""
    spec = SCHEDULE_SPECS[name]
    if not flow:
        return load(spec.fn)
    if spec.flow is None:
        raise ValueError(f"schedule {name!r} is not valid for {_kind(flow)} models")
    return load(f"{_FLOW_SCHEDULES}:{spec.flow}")
