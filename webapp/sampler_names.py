"""Sampler and schedule names as clients spell them -> jaxvideo's native names.

Native names are stable-diffusion.cpp's (`euler_a`, `dpm++2m`, `karras`). AUTOMATIC1111 clients
send display names ("Euler a", "DPM++ 2M Karras": a sampler with its schedule in the suffix),
older ones k-diffusion ids ("k_dpmpp_2m"), ComfyUI users its ids ("dpmpp_2m"). All of them are
matched case-insensitively here, for the sdapi surface and the OpenAI `sampler`/`scheduler`
extensions; the native sdcpp surface takes native names only (see `webapp.translate`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from webapp.errors import invalid

if TYPE_CHECKING:  # translate imports this module; the type is only needed for annotations
    from webapp.translate import Capabilities

# Names that mean "use the model family's choice" (A1111's "Automatic").
DEFAULT_NAMES = frozenset(("", "default", "auto", "automatic"))

# Native sampler -> A1111 display name. Where A1111 has no such sampler (sd.cpp's own ones)
# the name follows A1111's style, so lists and infotexts read alike.
DISPLAY_NAMES = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "dpm2": "DPM2",
    "dpm++2s_a": "DPM++ 2S a",
    "dpm++2m": "DPM++ 2M",
    "dpm++2mv2": "DPM++ 2M v2",
    "ipndm": "iPNDM",
    "ipndm_v": "iPNDM_V",
    "lcm": "LCM",
    "ddim_trailing": "DDIM",
    "tcd": "TCD",
    "res_multistep": "Res Multistep",
    "res_2s": "Res 2s",
    "er_sde": "ER SDE",
    "euler_cfg_pp": "Euler CFG++",
    "euler_a_cfg_pp": "Euler a CFG++",
    "euler_ge": "Euler GE",
    "dpm++2m_sde": "DPM++ 2M SDE",
    # stable-diffusion.cpp maps A1111's "DPM++ 2M SDE GPU" (Brownian-tree noise) here.
    "dpm++2m_sde_bt": "DPM++ 2M SDE GPU",
    "lms": "LMS",
    "unipc": "UniPC",  # flow-matching (Wan) models only
}
# k-diffusion ids (old A1111 clients) and ComfyUI ids -> native sampler.
SAMPLER_ALIASES = {
    "k_euler": "euler",
    "k_euler_a": "euler_a",
    "k_euler_ancestral": "euler_a",
    "euler_ancestral": "euler_a",
    "k_heun": "heun",
    "k_dpm_2": "dpm2",
    "dpm_2": "dpm2",
    "k_dpmpp_2s_a": "dpm++2s_a",
    "dpmpp_2s_ancestral": "dpm++2s_a",
    "k_dpmpp_2m": "dpm++2m",
    "dpmpp_2m": "dpm++2m",
    "k_dpmpp_2m_sde": "dpm++2m_sde",
    "dpmpp_2m_sde": "dpm++2m_sde",
    "dpmpp_2m_sde_gpu": "dpm++2m_sde_bt",
    "k_lms": "lms",
    "k_lcm": "lcm",
    "ddim": "ddim_trailing",
    "euler_ancestral_cfg_pp": "euler_a_cfg_pp",
}

# Native schedule -> A1111 label. A1111's "Uniform" is k-diffusion's evenly spaced timesteps,
# which is what stable-diffusion.cpp calls `discrete`.
SCHEDULER_LABELS = {
    "discrete": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "ays": "Align Your Steps",
    "gits": "GITS",
    "sgm_uniform": "SGM Uniform",
    "simple": "Simple",
    "smoothstep": "Smoothstep",
    "kl_optimal": "KL Optimal",
    "lcm": "LCM",
    "bong_tangent": "Bong Tangent",
    "beta": "Beta",
}
# Other spellings of native schedules: A1111 ids and labels, sd.cpp's `normal` alias.
SCHEDULE_ALIASES = {
    "uniform": "discrete",
    "normal": "discrete",  # sd.cpp: an alias of discrete (A1111's Normal differs only at t_min)
    "align_your_steps": "ays",
    "sgmuniform": "sgm_uniform",
}
# A1111 schedule labels no engine here implements: named as such instead of "unknown".
UNSUPPORTED_SCHEDULES = frozenset(("polyexponential", "ddim"))

_SAMPLER_KEYS = {
    **{native: native for native in DISPLAY_NAMES},
    **{display.lower(): native for native, display in DISPLAY_NAMES.items()},
    **SAMPLER_ALIASES,
}
_SCHEDULE_KEYS = {
    **{native: native for native in SCHEDULER_LABELS},
    **{label.lower(): native for native, label in SCHEDULER_LABELS.items()},
    **{native.replace("_", " "): native for native in SCHEDULER_LABELS},
    **SCHEDULE_ALIASES,
}
# " <schedule>" suffixes of A1111 sampler names, longest first ("sgm uniform" before "uniform").
_SUFFIXES = sorted(
    {key for key in (*_SCHEDULE_KEYS, *UNSUPPORTED_SCHEDULES) if "_" not in key},
    key=len,
    reverse=True,
)


def _key(name: str) -> str:
    return " ".join(name.strip().lower().split())


def display_name(sampler: str) -> str:
    return DISPLAY_NAMES.get(sampler, sampler)


def scheduler_label(scheduler: str) -> str:
    return SCHEDULER_LABELS.get(scheduler, scheduler)


def sampler_aliases(sampler: str) -> list[str]:
    """The native name first, then the k-diffusion and ComfyUI ids of the same sampler."""
    return [sampler, *sorted(a for a, native in SAMPLER_ALIASES.items() if native == sampler)]


def scheduler_aliases(scheduler: str) -> list[str]:
    """Other names `parse_scheduler` accepts for a native schedule (A1111 ids, sd.cpp's)."""
    return sorted(alias for alias, native in SCHEDULE_ALIASES.items() if native == scheduler)


def parse_sampler(
    name: str | None, caps: Capabilities, param: str = "sampler_name"
) -> tuple[str | None, str | None]:
    """A sampler name -> (native sampler, schedule implied by an A1111 suffix); Nones mean the
    family default. Names this server cannot run answer 400 listing the ones it can."""
    if name is None or _key(name) in DEFAULT_NAMES:
        return None, None
    key, schedule = _key(name), None
    if key not in _SAMPLER_KEYS:
        for suffix in _SUFFIXES:
            if key.endswith(" " + suffix):
                key, schedule = key[: -len(suffix) - 1], suffix
                break
    native = _SAMPLER_KEYS.get(key, key)
    if native not in caps.samplers:
        supported = ", ".join(f"{display_name(s)} ({s})" for s in caps.samplers)
        raise invalid(param, f"sampler {name!r} is not supported, must be one of [{supported}]")
    if schedule is None:
        return native, None
    scheduler = _SCHEDULE_KEYS.get(schedule, schedule)
    if scheduler not in caps.schedulers:
        raise invalid(
            param,
            f"schedule {schedule!r} in {name!r} is not supported, must be one of "
            f"[{', '.join(scheduler_label(s) for s in caps.schedulers)}]",
        )
    return native, scheduler


def parse_scheduler(name: str | None, caps: Capabilities, param: str = "scheduler") -> str | None:
    """A schedule name or A1111 label ("Automatic", "Karras", "SGM Uniform") -> native schedule,
    or None for the sampler's own choice; unknown names answer 400."""
    if name is None or _key(name) in DEFAULT_NAMES:
        return None
    key = _key(name)
    native = _SCHEDULE_KEYS.get(key) or _SCHEDULE_KEYS.get(key.replace(" ", "_"), key)
    if native not in caps.schedulers:
        labels = ", ".join(f"{scheduler_label(s)} ({s})" for s in caps.schedulers)
        raise invalid(param, f"unknown scheduler {name!r}, must be one of [Automatic, {labels}]")
    return native
