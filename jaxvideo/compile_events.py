"""XLA compilations in this process, counted as JAX reports them (`jax.monitoring`).

`install()` registers the listeners, once per process; from then on every backend compilation
(whichever engine or thread asked for it) adds to the counts that `snapshot()` returns, which
the web layer's /metrics exports. A compilation that the persistent compilation cache
(`server.compilation_cache_dir`) answers is still one (JAX times the compile-or-load call);
`cache_hits` says how many were such loads. Only counts live here: no web code.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

# The events of jax/_src (0.10): dispatch.BACKEND_COMPILE_EVENT times each compile-or-load of
# an XLA program; compiler.py records a persistent-cache hit.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

# Upper bounds (seconds) of the compile-time histogram: tiny CPU programs to large models.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class CompileStats:
    """The counts since `install()`: compilations, their seconds in all, and per bucket."""

    compilations: int
    seconds: float
    # (upper bound, compilations that took at most that long), the last bound +inf.
    buckets: tuple[tuple[float, int], ...]
    cache_hits: int


_lock = threading.Lock()
_installed = False
_per_bucket = [0] * (len(BUCKETS) + 1)  # the last one: longer than every bound
_seconds = 0.0
_cache_hits = 0


def install() -> None:
    """Registers the listeners with JAX (imports it); later calls do nothing."""
    global _installed
    with _lock:
        if _installed:
            return
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _installed = True


def installed() -> bool:
    return _installed


def record_compile(seconds: float) -> None:
    """Counts one compilation of `seconds` (what the listener does)."""
    global _seconds
    index = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
    with _lock:
        _per_bucket[index] += 1
        _seconds += seconds


def snapshot() -> CompileStats:
    with _lock:
        per_bucket, seconds, hits = list(_per_bucket), _seconds, _cache_hits
    cumulative, buckets = 0, []
    for bound, count in zip((*BUCKETS, math.inf), per_bucket, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return CompileStats(cumulative, seconds, tuple(buckets), hits)


def _on_duration(event: str, duration: float, **_: object) -> None:
    if event == BACKEND_COMPILE_EVENT:
        record_compile(float(duration))


def _on_event(event: str, **_: object) -> None:
    global _cache_hits
    if event == CACHE_HIT_EVENT:
        with _lock:
            _cache_hits += 1
