"""Sampler and schedule names as clients spell them -> jaxvideo's native names.

Native names are stable-diffusion.cpp's (`euler_a`, `dpm++2m`, `karras`). AUTOMATIC1111 clients
send display names ("Euler a", "DPM++ 2M Karras": a sampler with its schedule in the suffix),
older ones k-diffusion ids ("k_dpmpp_2m"), ComfyUI users its ids ("dpmpp_2m"). All of them come
from the sampler registry (`jaxvideo.sampling.registry`) and are matched case-insensitively
here, for the sdapi surface and the OpenAI `sampler`/`scheduler` extensions. The native sdcpp
surface takes native names only (`native_sampler`, `native_scheduler`).
"""

from __future__ import annotations

from jaxvideo.sampling import DEFAULT_NAMES, SAMPLER_SPECS, SCHEDULE_ALIASES, SCHEDULE_SPECS
from jaxvideo.sampling.registry import UNSUPPORTED_SCHEDULES, native_schedule
from webapp.core.capabilities import Capabilities
from webapp.core.errors import invalid

_SAMPLER_KEYS = {
    **{spec.display.lower(): name for name, spec in SAMPLER_SPECS.items()},
    **{alias: name for name, spec in SAMPLER_SPECS.items() for alias in spec.aliases},
    **{name: name for name in SAMPLER_SPECS},
}
_SCHEDULE_KEYS = {
    **{spec.label.lower(): name for name, spec in SCHEDULE_SPECS.items()},
    **{name.replace("_", " "): name for name in SCHEDULE_SPECS},
    **{name: name for name in SCHEDULE_SPECS},
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
    spec = SAMPLER_SPECS.get(sampler)
    return spec.display if spec else sampler


def scheduler_label(scheduler: str) -> str:
    spec = SCHEDULE_SPECS.get(scheduler)
    return spec.label if spec else scheduler


def sampler_aliases(sampler: str) -> list[str]:
    """The native name first, then the k-diffusion and ComfyUI ids of the same sampler."""
    return [sampler, *sorted(SAMPLER_SPECS[sampler].aliases)]


def scheduler_aliases(scheduler: str) -> list[str]:
    """Other names `parse_scheduler` accepts for a native schedule (A1111 ids, sd.cpp's)."""
    spec = SCHEDULE_SPECS[scheduler]
    return sorted((*spec.aliases, *spec.native_aliases))


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


def native_sampler(name: str | None, caps: Capabilities, param: str) -> str | None:
    """A native sampler name, or None for the family default; unknown names answer 400.

    The native surface is strict: A1111 display names belong to sdapi and OpenAI."""
    if name is None or name.strip().lower() in DEFAULT_NAMES:
        return None
    key = name.strip().lower()
    if key not in caps.samplers:
        raise invalid(param, f"unknown sampler {name!r}, must be one of {_listing(caps.samplers)}")
    return key


def native_scheduler(name: str | None, caps: Capabilities, param: str) -> str | None:
    """A native scheduler name (or sd.cpp's `normal`), or None for the family default;
    unknown names answer 400."""
    if name is None or name.strip().lower() in DEFAULT_NAMES:
        return None
    key = native_schedule(name)
    if key not in caps.schedulers:
        raise invalid(
            param, f"unknown scheduler {name!r}, must be one of {_listing(caps.schedulers)}"
        )
    return key


def _listing(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(names) + "]"
