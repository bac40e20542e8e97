"""The optax training loop the demo trainers share."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

log = logging.getLogger(__name__)

# loss(params, batch, key) -> scalar, where params is what `train` was given.
LossFn = Callable[[Any, Any, jax.Array], jax.Array]


@dataclass
class History:
    """Loss per step, and how long the steps took (the first one compiles)."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def mean(self, last: int) -> float:
        return float(np.mean(self.losses[-last:]))


def train(
    params: Any,
    loss: LossFn,
    batches: Iterator[Any],
    steps: int,
    learning_rate: float,
    seed: int,
    name: str = "",
    log_every: int = 100,
    ema: float | None = None,
) -> tuple[Any, History]:
    """`steps` Adam(W) steps of `loss` from `params` (a pytree: nnx States, tuples of them),
    a cosine-decayed rate after a short warm-up; returns the trained params and the curve.

    With `ema` (a decay such as 0.999) it returns the exponential moving average of the
    params instead of the last ones: a diffusion model's average samples cleaner pictures than
    any single late step (the decay warms up as (1 + n) / (10 + n), so early steps fade)."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, min(100, steps // 10 + 1), steps, learning_rate * 0.05
    )
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, 1e-4))
    opt_state = optimizer.init(params)
    average = params if ema is not None else None

    @jax.jit
    def step(params, opt_state, average, batch, key, n):
        value, grads = jax.value_and_grad(loss)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if average is not None:
            decay = jnp.minimum(ema, (1.0 + n) / (10.0 + n))
            average = optax.incremental_update(params, average, 1.0 - decay)
        return params, opt_state, average, value

    history = History()
    key = jax.random.key(seed)
    started = time.monotonic()
    for i in range(steps):
        key, sub = jax.random.split(key)
        params, opt_state, average, value = step(
            params, opt_state, average, next(batches), sub, jnp.float32(i)
        )
        history.losses.append(float(value))
        if log_every and (i + 1) % log_every == 0:
            log.info(
                "%s step %d/%d: loss %.4f (%.1f s)",
                name,
                i + 1,
                steps,
                history.mean(log_every),
                time.monotonic() - started,
            )
    history.seconds = time.monotonic() - started
    return (params if average is None else average), history


@dataclass
class Trainable:
    """A module split into its trainable parameters and the rest; `module(params)` rebuilds
    it inside a loss (where `params` are the traced ones)."""

    graphdef: Any
    params: nnx.State
    rest: nnx.State

    @classmethod
    def of(cls, module: nnx.Module) -> Trainable:
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        return cls(graphdef, params, rest)

    def module(self, params: nnx.State | None = None) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params if params is None else params, self.rest)


def flat_params(state: nnx.State) -> dict[str, np.ndarray]:
    """Parameters by the dotted paths `jaxvideo.weights.save_component` writes."""
    from jaxvideo.weights import flat_path

    return {
        flat_path(path): np.asarray(getattr(value, "value", value))
        for path, value in nnx.to_flat_state(state)
    }
