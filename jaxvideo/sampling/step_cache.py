"""Step caching: skip denoiser calls whose result can be predicted from the calls before.

stable-diffusion.cpp's `cache_mode` contract (`cache_option` "key=value,...", `scm_mask`,
`scm_policy_dynamic`; its docs/caching.md) plus a TeaCache-style cache for Wan (FastVideo's
`enable_teacache`). Like sd.cpp's sampler, every mode works at the denoiser boundary: the
sampler calls `model(x, sigma) -> x0` once per step (twice for Heun-type steps), and a cache
either runs the network or answers from what earlier calls left.

What a skipped call predicts is the network's own quantity, the noise estimate
eps = (x - x0) / sigma (an epsilon model's output, a flow model's velocity), so the sampler
still moves by this step's sigma:

- ucache (UNets), easycache, dbcache, teacache (DiTs): reuse the last computed residual
  eps - c_in * x on this call's input (sd.cpp's condition cache), when an estimate of how much
  the output has changed stays under `threshold`. easycache and ucache estimate it from the
  measured input change times the output/input change ratio of the last computed steps;
  dbcache from the relative L1 change of the input since the last computed call; teacache
  accumulates the relative L1 change between consecutive calls (TeaCache's indicator, here on
  the denoiser input rather than the first block's modulated input).
- taylorseer: a fixed pattern (every `interval + 1`-th call computed after `warmup`, or
  `scm_mask`), the others extrapolated by a Taylor series of eps over the computed calls.
- cache-dit: dbcache's decision, with taylorseer's extrapolation filling the skipped calls.
- spectrum: x0 forecast from the computed ones by a ridge-fitted Chebyshev series blended with
  a Taylor step (sd.cpp's spectrum.hpp, same constants), on a growing window.

Decisions are taken on the host from a few scalars (jitted L1 reductions of on-device
arrays) between the jitted network calls, so no program depends on a decision and nothing
recompiles. On a multi-host slice every process computes the same scalars from the same
global arrays, so all take the same decisions. `collect()` gathers what each sampler run
skipped for the result's info.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvideo.sampling.cache_modes import TEACACHE, StepCache

# -- statistics and predictions on device ---------------------------------------------------


@jax.jit
def _l1(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


@jax.jit
def _relative_l1(prev: jax.Array, curr: jax.Array) -> jax.Array:
    prev = prev.astype(jnp.float32)
    return jnp.sum(jnp.abs(prev - curr)) / (jnp.sum(jnp.abs(prev)) + 1e-6)


@jax.jit
def _mean_abs(a: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(a.astype(jnp.float32)))


@jax.jit
def _eps(x: jax.Array, x0: jax.Array, sigma: jax.Array) -> jax.Array:
    return (x - x0) / sigma


@jax.jit
def _x0_from_eps(x: jax.Array, eps: jax.Array, sigma: jax.Array) -> jax.Array:
    return (x - sigma * eps).astype(x.dtype)


@jax.jit
def _lincomb(arrays: tuple[jax.Array, ...], coeffs: jax.Array) -> jax.Array:
    out = arrays[0] * coeffs[0]
    for i in range(1, len(arrays)):
        out = out + arrays[i] * coeffs[i]
    return out


def _scalar(value: jax.Array) -> float:
    """A reduction's result on the host. It is replicated, so on a multi-host slice each
    process reads its own copy and no collective is needed."""
    if getattr(value, "is_fully_addressable", True):
        return float(value)
    return float(np.asarray(value.addressable_shards[0].data))


# -- policies ----------------------------------------------------------------------------------


class _Policy:
    """One sampler run's cache state. `predict` answers a call (or None: compute it), and
    `computed` learns from a call that ran the network. x_in is the network's input scale
    (c_in * x), eps the noise estimate of the call."""

    def __init__(self, cache: StepCache, sigmas: np.ndarray):
        self.cache = cache
        self.steps = max(len(sigmas) - 1, 1)
        self.sigmas = np.asarray(sigmas, np.float64)
        self.calls = 0  # denoiser calls so far (computed or predicted)

    def step_of(self, sigma: float) -> int:
        """The schedule step a call at `sigma` belongs to (Heun's second call: the next)."""
        return int(np.sum(self.sigmas[:-1] > sigma * (1 + 1e-6)))

    def window(self, start: float, end: float) -> tuple[float, float]:
        """sd.cpp's active range: steps from start to end (fractions) -> (high, low) sigmas."""
        last = self.steps - 1
        high = self.sigmas[min(int(start * self.steps), last)]
        low = self.sigmas[min(int(end * self.steps), last)]
        return max(high, low), min(high, low)

    def masked(self, step: int) -> int | None:
        """The scm_mask entry of `step` (None: past the mask, or no mask)."""
        mask = self.cache.scm_mask
        return mask[step] if step < len(mask) else None

    def predict(self, x: jax.Array, x_in: jax.Array, sigma: float) -> jax.Array | None:
        raise NotImplementedError

    def computed(self, x_in: jax.Array, eps: jax.Array, x0: jax.Array, sigma: float) -> None:
        raise NotImplementedError


class _Residual(_Policy):
    """Reuses the last computed residual eps - x_in (sd.cpp's condition cache)."""

    def __init__(self, cache: StepCache, sigmas: np.ndarray):
        super().__init__(cache, sigmas)
        self.residual: jax.Array | None = None
        self.prev_in: jax.Array | None = None

    def reuse(self, x: jax.Array, x_in: jax.Array, sigma: float) -> jax.Array:
        eps = x_in + self.residual
        return _x0_from_eps(x, eps, jnp.float32(sigma))

    def remember(self, x_in: jax.Array, eps: jax.Array) -> None:
        self.residual = eps - x_in
        self.prev_in = x_in


class _EasyCache(_Residual):
    """easycache: skip while the accumulated estimate of the relative output change,
    (output/input change ratio) x (input change) / |output|, stays under `threshold`."""

    def __init__(self, cache: StepCache, sigmas: np.ndarray):
        super().__init__(cache, sigmas)
        self.high, self.low = self.window(cache["start"], cache["end"])
        self.prev_eps: jax.Array | None = None
        self.rate: float | None = None  # output change / input change, last computed pair
        self.out_norm = 0.0
        self.input_change: float | None = None
        self.accumulated = 0.0
        self.active = False

    def predict(self, x, x_in, sigma):
        self.active = self.low < sigma <= self.high
        self.input_change = None
        if not self.active or self.prev_in is None:
            return None
        self.input_change = _scalar(_l1(x_in, self.prev_in))
        if self.rate is None or self.out_norm <= 0 or self.input_change <= 0:
            return None
        if self.accept(self.rate * self.input_change):
            return self.reuse(x, x_in, sigma)
        return None

    def accept(self, change: float) -> bool:
        self.accumulated += change / self.out_norm
        if self.accumulated < self.cache["threshold"]:
            return True
        self.accumulated = 0.0
        return False

    def computed(self, x_in, eps, x0, sigma):
        if not self.active:
            return
        out_change = _scalar(_l1(eps, self.prev_eps)) if self.prev_eps is not None else 0.0
        self.learn(out_change)
        if self.input_change and out_change > 0:
            self.rate = out_change / self.input_change
        self.remember(x_in, eps)
        self.prev_eps = eps
        self.out_norm = _scalar(_mean_abs(eps))

    def learn(self, out_change: float) -> None:
        """Hook for ucache's extra bookkeeping."""


class _UCache(_EasyCache):
    """ucache: easycache's estimate, scaled by an output-change average, penalised per
    consecutive skip, with error decay/reset and a threshold that is stricter early (x0.5 in
    the first 20% of the computed steps) and looser late (x1.5 after 80%), as sd.cpp."""

    def __init__(self, cache: StepCache, sigmas: np.ndarray):
        super().__init__(cache, sigmas)
        self.change_ema: float | None = None
        self.consecutive = 0
        self.computed_steps = 0

    def accept(self, change: float) -> bool:
        relative = bool(self.cache["relative"])
        if relative:
            base = max(self.out_norm, 1e-6)
            dynamic = base if self.change_ema is None else max(self.change_ema * 1.6, 1e-6)
            change /= math.sqrt(base * dynamic)
        change *= 1.0 + 0.5 * self.consecutive
        self.accumulated = self.accumulated * self.cache["decay"] + change
        progress = min(max(self.computed_steps / self.steps, 0.0), 1.0)
        stage = 0.5 if progress < 0.2 else 1.5 if progress > 0.8 else 1.0
        threshold = self.cache["threshold"] * stage
        if not relative:
            threshold *= self.out_norm
        if self.accumulated < threshold:
            self.consecutive += 1
            return True
        if self.cache["reset"]:
            self.accumulated = 0.0
        return False

    def learn(self, out_change: float) -> None:
        self.computed_steps += 1
        self.consecutive = 0
        if out_change > 0:
            self.change_ema = (
                out_change if self.change_ema is None else 0.8 * self.change_ema + 0.2 * out_change
            )


class _Taylor:
    """TaylorSeer's finite-difference derivatives of eps over the computed calls, in calls."""

    def __init__(self, order: int):
        self.order = order
        self.terms: list[jax.Array] = []  # value, first difference, ... (per call)
        self.at = -1  # call index of the last computed eps

    def update(self, eps: jax.Array, call: int) -> None:
        gap = max(call - self.at, 1)
        terms = [eps]
        for k in range(min(self.order, len(self.terms))):
            terms.append((terms[k] - self.terms[k]) / gap)
        self.terms, self.at = terms, call

    def ready(self) -> bool:
        return len(self.terms) > 1

    def extrapolate(self, call: int) -> jax.Array:
        elapsed = call - self.at
        coeffs = [elapsed**k / math.factorial(k) for k in range(len(self.terms))]
        return _lincomb(tuple(self.terms), jnp.asarray(coeffs, jnp.float32))


class _TaylorSeer(_Policy):
    """taylorseer: after `warmup` calls, one computed call then `interval` extrapolated ones
    (or the scm_mask's pattern where it has one)."""

    def __init__(self, cache: StepCache, sigmas: np.ndarray):
        super().__init__(cache, sigmas)
        self.taylor = _Taylor(int(cache["order"]))

    def predict(self, x, x_in, sigma):
        call = self.calls
        wanted = self.masked(self.step_of(sigma))
        if wanted is None:
            wanted = int(
                call < self.cache["warmup"]
                or (call - self.cache["warmup"]) % (self.cache["interval"] + 1) == 0
            )
        if wanted == 1 or not self.taylor.ready() or sigma <= self.sigmas[-2]:
            return None  # the last step is always computed: it sets the final picture
        return _x0_from_eps(x, self.taylor.extrapolate(call), jnp.float32(sigma))

    def computed(self, x_in, eps, x0, sigma):
        self.taylor.update(eps, self.calls)


class _DBCache(_Residual):
    """dbcache: after `warmup` calls in the active window (15%-95% of the steps), skip while
    the input's relative L1 change since the last computed call is under `threshold` (scaled
    by Fn/Bn as sd.cpp does at the denoiser boundary); scm_mask 1 steps always compute, 0 steps
    are cached outright under the static policy. cache-dit extrapolates the skipped calls with
    TaylorSeer instead of reusing the residual."""

    def __init__(self, cache: StepCache, sigmas: np.ndarray, taylor: bool):
        super().__init__(cache, sigmas)
        self.high, self.low = self.window(0.15, 0.95)
        self.warmup = int(cache["warmup"])
        threshold = cache["threshold"]
        if cache["Fn"] > 0:
            threshold *= min(max(1.0 + 0.02 * (cache["Fn"] - 8), 0.5), 2.0)
        if cache["Bn"] > 0:
            threshold *= min(max(1.0 - 0.03 * cache["Bn"], 0.5), 1.0)
        self.threshold = threshold
        self.taylor = _Taylor(int(cache["order"])) if taylor else None
        self.active = False

    def predict(self, x, x_in, sigma):
        self.active = self.low < sigma <= self.high
        if not self.active:
            return None
        if self.warmup > 0:
            self.warmup -= 1
            return None
        mask = self.masked(self.step_of(sigma))
        if mask == 1 or self.prev_in is None:
            return None
        static = mask == 0 and not self.cache.scm_dynamic
        if not static and _scalar(_relative_l1(self.prev_in, x_in)) >= self.threshold:
            return None
        if self.taylor is not None and self.taylor.ready():
            return _x0_from_eps(x, self.taylor.extrapolate(self.calls), jnp.float32(sigma))
        return self.reuse(x, x_in, sigma)

    def computed(self, x_in, eps, x0, sigma):
        if self.taylor is not None:
            self.taylor.update(eps, self.calls)
        if self.active:
            self.remember(x_in, eps)


class _TeaCache(_Residual):
    """TeaCache-style: accumulate the relative L1 change of the input between consecutive
    calls; skip (reusing the residual) while the sum stays under `threshold`."""

    def __init__(self, cache: StepCache, sigmas: np.ndarray):
        super().__init__(cache, sigmas)
        self.high, self.low = self.window(cache["start"], cache["end"])
        self.last_in: jax.Array | None = None
        self.accumulated = 0.0

    def predict(self, x, x_in, sigma):
        previous, self.last_in = self.last_in, x_in
        if not (self.low < sigma <= self.high) or previous is None or self.residual is None:
            return None
        self.accumulated += _scalar(_relative_l1(previous, x_in))
        if self.accumulated < self.cache["threshold"]:
            return self.reuse(x, x_in, sigma)
        return None

    def computed(self, x_in, eps, x0, sigma):
        self.accumulated = 0.0
        self.remember(x_in, eps)


class _Spectrum(_Policy):
    """spectrum: x0 forecast by a ridge-fitted Chebyshev series (degree m) over the last K
    computed x0s, blended (w) with a Taylor step; computes one call per window, the window
    growing by `flex` per computed call after warmup (sd.cpp's spectrum.hpp)."""

    def __init__(self, cache: StepCache, sigmas: np.ndarray):
        super().__init__(cache, sigmas)
        self.history: list[jax.Array] = []
        self.taus: list[float] = []
        self.keep = max(int(cache["m"]) + 1, 6)
        self.window_size = float(cache["window"])
        self.since_computed = 0
        self.stop = int(cache["stop"] * self.steps)

    @staticmethod
    def tau(count: int) -> float:
        return count / 50.0 * 2.0 - 1.0  # sd.cpp's time coordinate (as for 50 steps)

    def predict(self, x, x_in, sigma):
        count = self.calls
        if count < self.cache["warmup"] or (self.stop > 0 and count >= self.stop):
            return None
        if len(self.history) < 2:
            return None
        window = max(1, math.floor(self.window_size))
        if (self.since_computed + 1) % window == 0:
            return None
        self.since_computed += 1
        return _lincomb(tuple(self.history), jnp.asarray(self.weights(count), jnp.float32))

    def weights(self, count: int) -> np.ndarray:
        """The coefficients of the stored x0s that make the forecast at `count`."""
        degree = int(self.cache["m"]) + 1

        def chebyshev(t: float) -> np.ndarray:
            row = [1.0, t][:degree]
            while len(row) < degree:
                row.append(2 * t * row[-1] - row[-2])
            return np.asarray(row)

        design = np.stack([chebyshev(t) for t in self.taus])  # (K, degree)
        gram = design.T @ design + self.cache["lam"] * np.eye(degree)
        # Least squares: with lam 0 and fewer stored steps than terms the system is singular.
        solved = np.linalg.lstsq(gram, chebyshev(self.tau(count)), rcond=None)[0]
        w = self.cache["w"]
        coeffs = w * (design @ solved)
        coeffs[-1] += (1 - w) * 1.5  # Taylor: last + (last - previous) / 2
        coeffs[-2] -= (1 - w) * 0.5
        return coeffs

    def computed(self, x_in, eps, x0, sigma):
        self.history = [*self.history, x0][-self.keep :]
        self.taus = [*self.taus, self.tau(self.calls)][-self.keep :]
        if self.calls >= self.cache["warmup"]:
            self.window_size += self.cache["flex"]
        self.since_computed = 0


_POLICIES: dict[str, Callable[[StepCache, np.ndarray], _Policy]] = {
    "ucache": _UCache,
    "easycache": _EasyCache,
    "dbcache": lambda cache, sigmas: _DBCache(cache, sigmas, taylor=False),
    "cache-dit": lambda cache, sigmas: _DBCache(cache, sigmas, taylor=True),
    "taylorseer": _TaylorSeer,
    "spectrum": _Spectrum,
    TEACACHE: _TeaCache,
}


# -- the wrapped denoiser ----------------------------------------------------------------------


@dataclass
class CacheStats:
    """What one sampler run's cache did: denoiser calls made and how many ran the network."""

    mode: str
    calls: int = 0
    computed: int = 0

    @property
    def skipped(self) -> int:
        return self.calls - self.computed


_RUNS: contextvars.ContextVar[list[CacheStats] | None] = contextvars.ContextVar(
    "step_cache_runs", default=None
)


@contextlib.contextmanager
def collect() -> Iterator[list[CacheStats]]:
    """The CacheStats of every sampler run started inside the block (in order)."""
    runs: list[CacheStats] = []
    token = _RUNS.set(runs)
    try:
        yield runs
    finally:
        _RUNS.reset(token)


def summary(runs: list[CacheStats]) -> dict[str, Any] | None:
    """A result's `step_cache` info: the mode and the calls over all its sampler runs."""
    if not runs:
        return None
    calls = sum(r.calls for r in runs)
    computed = sum(r.computed for r in runs)
    return {"mode": runs[0].mode, "denoiser_calls": calls, "computed": computed,
            "skipped": calls - computed}  # fmt: skip


@dataclass
class CachedDenoiser:
    """`model(x, sigma) -> x0` of a sampler, answering some calls from `cache`'s policy."""

    model: Callable[..., Any]
    cache: StepCache
    sigmas: np.ndarray
    flow: bool
    stats: CacheStats = field(init=False)

    def __post_init__(self) -> None:
        self.policy = _POLICIES[self.cache.mode](self.cache, np.asarray(self.sigmas))
        self.stats = CacheStats(self.cache.mode)
        runs = _RUNS.get()
        if runs is not None:
            runs.append(self.stats)

    def __call__(self, x: jax.Array, sigma: float, return_uncond: bool = False):
        if return_uncond:  # refused at validation (check); never cached
            return self.model(x, sigma, return_uncond=True)
        sigma = float(sigma)
        x_in = x if self.flow else x * jnp.float32(1.0 / math.sqrt(sigma * sigma + 1.0))
        self.stats.calls += 1
        x0 = self.policy.predict(x, x_in, sigma) if sigma > 0 else None
        if x0 is None:
            x0 = self.model(x, sigma)
            self.stats.computed += 1
            if sigma > 0:
                self.policy.computed(x_in, _eps(x, x0, jnp.float32(sigma)), x0, sigma)
        self.policy.calls += 1
        return x0


def wrap(model: Callable[..., Any], cache: StepCache | None, sigmas: Any, flow: bool):
    """`model` itself without a cache, else the CachedDenoiser around it."""
    if cache is None:
        return model
    return CachedDenoiser(model, cache, np.asarray(sigmas, np.float64), flow)
