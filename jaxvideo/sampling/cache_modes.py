"""Step-cache requests: sd.cpp's `cache_mode`, `cache_option`, `scm_mask` and
`scm_policy_dynamic` (plus the TeaCache mode behind FastVideo's `enable_teacache`) parsed and
checked into a `StepCache`. Free of JAX: the web layer parses with it; `step_cache` runs it.

`cache_option` is sd.cpp's "key=value,..." with its defaults (docs/caching.md); unlike sd.cpp,
a key the mode does not use, a value out of range or a malformed mask is refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from jaxvideo.errors import InvalidRequest

UNET_MODES = ("ucache", "spectrum")
DIT_MODES = ("easycache", "dbcache", "taylorseer", "cache-dit", "spectrum")
TEACACHE = "teacache"  # FastVideo's enable_teacache (Wan); not an sd.cpp cache_mode
MODES = (*dict.fromkeys((*UNET_MODES, *DIT_MODES)), TEACACHE)


@dataclass(frozen=True)
class Option:
    default: float
    low: float
    high: float | None = None
    integer: bool = False


_WINDOW = {"start": Option(0.15, 0.0, 1.0), "end": Option(0.95, 0.0, 1.0)}
_DBCACHE = {
    "Fn": Option(8, 0, None, True),
    "Bn": Option(0, 0, None, True),
    "threshold": Option(0.08, 0.0),
    "warmup": Option(8, 0, None, True),
}
# Per mode, its cache_option keys with sd.cpp's defaults (docs/caching.md).
OPTIONS: Mapping[str, Mapping[str, Option]] = {
    "ucache": {
        "threshold": Option(1.0, 0.0),
        **_WINDOW,
        "decay": Option(1.0, 0.0, 1.0),
        "relative": Option(1, 0, 1, True),
        "reset": Option(1, 0, 1, True),
    },
    "easycache": {"threshold": Option(0.2, 0.0), **_WINDOW},
    "dbcache": _DBCACHE,
    "taylorseer": {
        "warmup": Option(2, 0, None, True),
        "interval": Option(1, 1, None, True),  # predicted calls between computed ones
        "order": Option(1, 1, 3, True),  # Taylor terms beyond the value (derivatives)
    },
    "cache-dit": {**_DBCACHE, "order": Option(1, 1, 3, True)},
    "spectrum": {
        "w": Option(0.40, 0.0, 1.0),
        "m": Option(3, 1, 8, True),
        "lam": Option(1.0, 0.0),
        "window": Option(2, 1, None, True),
        "flex": Option(0.50, 0.0),
        "warmup": Option(4, 0, None, True),
        "stop": Option(0.9, 0.0, 1.0),
    },
    TEACACHE: {
        "threshold": Option(0.15, 0.0),
        "start": Option(0.1, 0.0, 1.0),
        "end": Option(0.95, 0.0, 1.0),
    },
}
MASKED_MODES = ("dbcache", "taylorseer", "cache-dit")  # the modes scm_mask steers


@dataclass(frozen=True)
class StepCache:
    """A request's step cache: the mode, every option (defaults filled in), and sd.cpp's
    steps-computation mask (1 = always compute, 0 = may be cached) with its policy (dynamic:
    a 0 step is still checked against the threshold; static: it is cached outright)."""

    mode: str
    options: tuple[tuple[str, float], ...]
    scm_mask: tuple[int, ...] = ()
    scm_dynamic: bool = True

    def __getitem__(self, name: str) -> float:
        return dict(self.options)[name]


def parse(
    mode: str, option: str = "", scm_mask: str = "", scm_policy_dynamic: bool = True
) -> StepCache | None:
    """sd.cpp's four fields -> a StepCache (None for "" or "disabled"); InvalidRequest naming
    the field for an unknown mode, option key or value, or a malformed mask."""
    if mode in ("", "disabled"):
        if option.strip() or scm_mask.strip():
            field_name = "cache_option" if option.strip() else "scm_mask"
            raise InvalidRequest(f"{field_name} needs a cache_mode", field_name)
        return None
    if mode not in OPTIONS:
        known = ", ".join(("disabled", *MODES))
        raise InvalidRequest(f"unknown cache_mode {mode!r}; one of {known}", "cache_mode")
    spec = OPTIONS[mode]
    values = {key: opt.default for key, opt in spec.items()}
    for token in filter(None, (t.strip() for t in option.split(","))):
        key, sep, text = (part.strip() for part in token.partition("="))
        key = {"fn": "Fn", "bn": "Bn"}.get(key, key)
        if not sep:
            raise InvalidRequest(f"cache option {token!r} is not key=value", "cache_option")
        if key not in spec:
            raise InvalidRequest(
                f"unknown {mode} option {key!r}; one of {', '.join(spec)}", "cache_option"
            )
        values[key] = _option_value(mode, key, text, spec[key])
    for low, high in (("start", "end"),):
        if low in values and high in values and values[low] >= values[high]:
            raise InvalidRequest(f"{mode}: start must be below end", "cache_option")
    mask = _mask(scm_mask)
    if mask and mode not in MASKED_MODES:
        raise InvalidRequest(f"scm_mask applies to {', '.join(MASKED_MODES)}", "scm_mask")
    return StepCache(mode, tuple(values.items()), mask, bool(scm_policy_dynamic))


def defaults(mode: str) -> dict[str, float]:
    """The cache_option keys of `mode` with their defaults."""
    return {key: opt.default for key, opt in OPTIONS[mode].items()}


def _option_value(mode: str, key: str, text: str, opt: Option) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    bad = not math.isfinite(value) or (opt.integer and value != int(value))
    if bad or value < opt.low or (opt.high is not None and value > opt.high):
        kind = "an integer" if opt.integer else "a number"
        bounds = f">= {opt.low:g}" if opt.high is None else f"within [{opt.low:g}, {opt.high:g}]"
        raise InvalidRequest(
            f"{mode} option {key} must be {kind} {bounds}, got {text!r}", "cache_option"
        )
    return int(value) if opt.integer else value


def _mask(text: str) -> tuple[int, ...]:
    tokens = [t.strip() for t in text.split(",")] if text.strip() else []
    if any(t not in ("0", "1") for t in tokens):
        raise InvalidRequest("scm_mask must be a comma-separated list of 0 and 1", "scm_mask")
    return tuple(int(t) for t in tokens)


def check(mode: str, supported: tuple[str, ...], needs_uncond: bool) -> None:
    """A request's cache against what its model and sampler can do (InvalidRequest)."""
    if mode not in supported:
        offered = ", ".join(supported) if supported else "none"
        raise InvalidRequest(
            f"cache_mode {mode!r} does not apply to this model (its modes: {offered})",
            "step_cache",
        )
    if needs_uncond:
        raise InvalidRequest(
            "step caching does not work with the CFG++ samplers (they need the "
            "unconditional prediction of every step)",
            "step_cache",
        )
