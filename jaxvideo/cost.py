"""What one network call costs, counted from its traced program without running it.

A network (abstract: shapes only, no weights needed) is traced at a request's shapes with
`jax.make_jaxpr`, attention as one opaque `fused_attention` call (`attention.counting`), and the
program is walked once:

- **FLOPs**: 2 per multiply-add of every matrix product and convolution (`dot_general`,
  `conv_general_dilated`), the attention formula's two products included, scans counted once
  per iteration. Elementwise work is left out (it is bandwidth, not FLOPs), so the figure is
  the "model FLOPs" that MFU is quoted in; XLA's own cost analysis of the same program agrees
  within a few percent (tests/test_cost.py).
- **Activation memory**: the peak, over the program in order, of the bytes of the values alive
  at once (a value dies after its last use), weights excluded. Attention holds no score matrix,
  as with every memory-efficient kernel this project runs. XLA fuses elementwise chains, so
  its own peak is lower; the estimate errs on the side of refusing.

Which calls a request makes, and with what shapes, is each pipeline's `network_calls`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvideo.models import attention
from jaxvideo.models.registry import class_name_of, spec_for
from jaxvideo.weights import abstract_model, resolve_dtype

FUSED_ATTENTION = "fused_attention"


@dataclass(frozen=True)
class Cost:
    flops: float  # one call, all devices together
    activation_bytes: int  # peak bytes of live values in one call, on one device


@dataclass(frozen=True)
class Shape:
    """The request dimensions that set a call's cost: images per run (`batch`, before CFG
    doubles it), pixels, video frames, and whether guidance runs a second (unconditional) pass."""

    width: int
    height: int
    frames: int = 1
    batch: int = 1
    cfg: bool = True

    @property
    def copies(self) -> int:
        """Rows of one denoiser call: the images, twice under classifier-free guidance."""
        return self.batch * (2 if self.cfg else 1)


@dataclass(frozen=True)
class NetworkCall:
    """One call a request makes to one of the model's networks, with the shapes it passes.

    `role` is "denoiser" (once per model evaluation; `per_step` of them per sampler step)
    or "decoder" (the VAE, `count` times per request; Wan decodes one latent frame a call).
    `split` lists (logical axis, length) of the dimensions its activations are divided over
    on the devices (jaxvideo.sharding's rules; a length that does not divide stays whole,
    None: padded to divide, as Ulysses does).
    """

    component: str
    role: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    method: str | Callable[..., Any] = "__call__"  # a name, or f(module, *args, **kwargs)
    count: int = 1
    split: tuple[tuple[str, int | None], ...] = ()


def spec(shape: Sequence[int], dtype: Any = jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(int(n) for n in shape), dtype)


def abstract_component(config: Mapping[str, Any], dtype: Any) -> nnx.Module:
    """The network a component's reference config describes, shapes only."""
    component = spec_for(class_name_of(config))
    return abstract_model(component, component.config_from_hf(dict(config)), resolve_dtype(dtype))


def call_cost(module: nnx.Module, call: NetworkCall) -> Cost:
    """FLOPs and peak activation bytes of `call` on `module` (real or abstract)."""
    run, weights = _program(module, call)
    with attention.counting():
        closed = jax.make_jaxpr(run)(weights, call.args, dict(call.kwargs))
    skip = set(closed.jaxpr.invars[: len(jax.tree.leaves(weights))])
    return Cost(flops=float(_flops(closed.jaxpr)), activation_bytes=_peak(closed.jaxpr, skip))


def xla_flops(module: nnx.Module, call: NetworkCall) -> float:
    """XLA's own FLOP count of the same program (lowered, not compiled): the cross-check."""
    run, weights = _program(module, call)
    with attention.counting():
        lowered = jax.jit(run).lower(weights, call.args, dict(call.kwargs))
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"])


def _program(module: nnx.Module, call: NetworkCall):
    """`run(weights, args, kwargs)` of `call` on `module`, and the module's weights as
    shapes (the arguments are traced as inputs, keyword ones too: SDXL's `added_cond`)."""
    graphdef, state = nnx.split(module)
    weights = jax.tree.map(lambda x: spec(x.shape, x.dtype), state)

    def run(weights, args, kwargs):
        return invoke(nnx.merge(graphdef, weights), call, args, kwargs)

    return run, weights


def invoke(module: nnx.Module, call: NetworkCall, args, kwargs):
    """Runs `call` on `module` with these arguments (arrays, or shapes under tracing)."""
    if callable(call.method):
        return call.method(module, *args, **kwargs)
    return getattr(module, call.method)(*args, **kwargs)


# --- walking the program -------------------------------------------------------------------------


def _nbytes(var: Any) -> int:
    aval = getattr(var, "aval", None)
    if aval is None or not hasattr(aval, "shape") or isinstance(var, jcore.Literal):
        return 0
    return math.prod(aval.shape) * np.dtype(aval.dtype).itemsize


def _subjaxprs(eqn) -> list[tuple[Any, int]]:
    """(inner jaxpr, times it runs) of a call-like equation; branches of a cond each once."""
    found = []
    repeat = int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            inner = getattr(item, "jaxpr", item)
            if isinstance(inner, jcore.Jaxpr):
                found.append((inner, repeat))
    return found


def _flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec
            per_output = rhs[rhs_spec[1]] * math.prod(rhs[d] for d in rhs_spec[2:])
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
        elif name == "cond":
            total += max((_flops(b.jaxpr) for b in eqn.params["branches"]), default=0.0)
        else:
            total += sum(_flops(inner) * times for inner, times in _subjaxprs(eqn))
    return total


def _transient(eqn) -> int:
    """Memory an equation needs beyond its inputs and outputs (a call's own intermediates)."""
    if eqn.primitive.name in ("jit", "pjit") and eqn.params.get("name") == FUSED_ATTENTION:
        return 0  # a flash kernel: blocks in on-chip memory, no score matrix
    inner = _subjaxprs(eqn)
    if not inner:
        return 0
    own = sum(_nbytes(v) for v in eqn.invars) + sum(_nbytes(v) for v in eqn.outvars)
    return max(0, max(_peak(j, set()) for j, _ in inner) - own)


def _peak(jaxpr, skip: set) -> int:
    """Peak bytes of live values over `jaxpr` in order; `skip` (the weights) never counts."""
    last_use: dict[Any, int] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if not isinstance(v, jcore.Literal):
                last_use[v] = i
    end = len(jaxpr.eqns)
    for v in jaxpr.outvars:
        if not isinstance(v, jcore.Literal):
            last_use[v] = end
    live = sum(_nbytes(v) for v in (*jaxpr.invars, *jaxpr.constvars) if v not in skip)
    peak = live
    for i, eqn in enumerate(jaxpr.eqns):
        out = sum(_nbytes(v) for v in eqn.outvars)
        peak = max(peak, live + out + _transient(eqn))
        live += out
        dying = {v for v in eqn.invars if not isinstance(v, jcore.Literal)}
        dying = {v for v in dying if last_use.get(v) == i and v not in skip}
        dying |= {v for v in eqn.outvars if v not in last_use}
        live -= sum(_nbytes(v) for v in dying)
    return peak


# --- per-device figures ------------------------------------------------------------------------


def split_factor(call: NetworkCall, mesh: Mapping[str, int]) -> int:
    """How many ways the mesh divides `call`'s activations (by jaxvideo.sharding's rules)."""
    from jaxvideo.sharding import LOGICAL_AXIS_RULES

    factor = 1
    for logical, length in call.split:
        ways = math.prod(int(mesh.get(axis, 1)) for axis in LOGICAL_AXIS_RULES[logical])
        if length is None or length % ways == 0:
            factor *= ways
    return factor
