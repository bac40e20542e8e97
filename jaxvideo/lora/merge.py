"""Merging LoRAs into Flax parameter states, and a small cache of merged states.

Merging produces new `nnx.State`s whose modified kernels are `base + sum(delta)` and whose
other leaves share the base arrays (jax arrays are immutable, so sharing costs no memory and
the base model stays cached untouched). Deltas are computed in float32 in PyTorch layout,
turned into Flax layout by the same transform the conversion rule applies to the weight, then
added once per parameter and cast to the parameter's dtype.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvideo.convert.core import TRANSFORMS, Rule
from jaxvideo.lora.formats import T5_ENCODER, parse_lora
from jaxvideo.lora.spec import LoraError, LoraPair, LoraSpec
from jaxvideo.lora.targets import ModuleTable, Target, module_table

# Transforms of plain weight tensors; anything else (a fused or re-packed parameter) has no
# single PyTorch weight a LoRA delta could be laid onto.
_MERGEABLE = ("linear", "linear_or_1x1", "conv2d", "conv3d")
DENOISERS = ("unet", "transformer")
# Components a file names by kind, and the model components that may be it, in order: the T5
# is Flux's `text_encoder_2` and SD3's `text_encoder_3` (SD3's `text_encoder_2` is a CLIP).
COMPONENT_CHOICES = {T5_ENCODER: ("text_encoder_3", "text_encoder_2")}


def default_rules() -> dict[str, Sequence[Rule]]:
    """The conversion rules of each SD component a LoRA may modify."""
    from jaxvideo.models.clip import CLIP_TEXT_PROJ_RULES
    from jaxvideo.models.unet import UNET_RULES

    # The projection variant's table is a superset; only rules whose Flax path exists match.
    return {
        "unet": UNET_RULES,
        "text_encoder": CLIP_TEXT_PROJ_RULES,
        "text_encoder_2": CLIP_TEXT_PROJ_RULES,
    }


def _path(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def _kernels(state: nnx.State) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(
        sorted(
            (_path(p), tuple(v.shape))
            for p, v in nnx.to_flat_state(state)
            if isinstance(v, nnx.Param) and p[-1] == "kernel"
        )
    )


def _lookup(pair: LoraPair, table: ModuleTable) -> Target | None:
    if pair.kohya:
        return table.underscore.get(pair.module)
    return table.dotted.get(pair.module)


def torch_delta(pair: LoraPair) -> np.ndarray:
    """up @ down in PyTorch layout: (out, in) or, for conv LoRAs, (out, in, *kernel)."""
    down, up = pair.down, pair.up
    if down.ndim == 2:
        return up @ down
    if any(d != 1 for d in up.shape[2:]):
        raise LoraError(f"{pair.key}: up weight {up.shape} is not a 1x1 convolution")
    # A kxk down conv followed by a 1x1 up conv is one kxk conv with these weights.
    return np.tensordot(up.reshape(up.shape[0], up.shape[1]), down, axes=1)


def flax_delta(pair: LoraPair, target: Target, factor: float) -> np.ndarray:
    """`factor * up @ down` in the Flax layout of `target` (Linear (in, out), conv HWIO)."""
    if target.transform not in _MERGEABLE:
        raise LoraError(
            f"{pair.key}: targets {target.flax_path}, a fused or re-packed parameter "
            f"(conversion transform {target.transform!r}) that LoRA merging does not support"
        )
    delta = torch_delta(pair) * np.float32(factor)
    if target.transform in ("conv2d", "conv3d") and delta.ndim == 2:
        # A Linear-shaped LoRA on a 1x1 conv (kohya writes both spellings).
        delta = delta.reshape(delta.shape + (1,) * (len(target.shape) - 2))
    elif target.transform == "linear" and delta.ndim > 2 and all(d == 1 for d in delta.shape[2:]):
        delta = delta.reshape(delta.shape[:2])
    out = TRANSFORMS[target.transform](delta)
    if tuple(out.shape) != tuple(target.shape):
        raise LoraError(
            f"{pair.key}: LoRA gives a {tuple(out.shape)} update for {target.flax_path}, which "
            f"is {tuple(target.shape)} in this model (a LoRA for another model size?)"
        )
    return out.astype(np.float32)


def _chosen(pairs: list[LoraPair], tables: Mapping[str, ModuleTable]) -> dict[str, str]:
    """The model component each kind-named component of a file is: the first candidate the
    model has that owns every such module (else the first it has, to name what is missing)."""
    out: dict[str, str] = {}
    for kind, candidates in COMPONENT_CHOICES.items():
        own = [p for p in pairs if p.component == kind]
        present = [c for c in candidates if c in tables]
        if own and present:
            owners = (c for c in present if all(_lookup(p, tables[c]) is not None for p in own))
            out[kind] = next(owners, present[0])
    return out


def _resolve_file(
    spec: LoraSpec,
    pairs: list[LoraPair],
    tables: Mapping[str, ModuleTable],
    high_noise_component: str | None,
) -> list[tuple[str, LoraPair, Target]]:
    """(component, pair, target) for every pair of one file, or a LoraError naming keys."""

    def component_of(name: str) -> str:
        if spec.is_high_noise and name in DENOISERS:
            if high_noise_component is None:
                raise LoraError(f"{spec.path.name}: a high-noise LoRA needs a two-expert model")
            return high_noise_component
        return name

    resolved: list[tuple[str, LoraPair, Target]] = []
    missing: list[str] = []
    absent: set[str] = set()
    unprefixed = [p for p in pairs if p.component is None]
    guess: str | None = None
    if unprefixed:
        # PEFT adapters saved for a single model carry no component prefix: use the component
        # that owns every one of their modules (denoiser first: that is what most LoRAs train).
        order = sorted(tables, key=lambda c: (c not in DENOISERS, c))
        for name in order:
            if all(_lookup(p, tables[name]) is not None for p in unprefixed):
                guess = name
                break
    chosen = _chosen(pairs, tables)
    for pair in pairs:
        name = chosen.get(pair.component or "", pair.component) or guess
        if name is None:
            missing.append(pair.key)
            continue
        name = component_of(name)
        if name not in tables:
            absent.add(name)
            continue
        target = _lookup(pair, tables[name])
        if target is None:
            ambiguous = pair.kohya and pair.module in tables[name].underscore
            missing.append(pair.key + (" (ambiguous module name)" if ambiguous else ""))
        else:
            resolved.append((name, pair, target))
    if absent:
        raise LoraError(
            f"{spec.path.name}: targets {', '.join(sorted(absent))}, which this model does not "
            f"have (it has {', '.join(sorted(tables))})"
        )
    # A fused original module is several pairs with one key: name it once.
    missing = list(dict.fromkeys(missing))
    if missing:
        head = ", ".join(sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
        if not resolved:
            raise LoraError(f"{spec.path.name}: matches no module of this model; keys: {head}")
        raise LoraError(
            f"{spec.path.name}: {len(missing)} LoRA module(s) match nothing in this model: {head}"
        )
    return resolved


def merge_loras(
    state_by_component: dict[str, nnx.State],
    loras: list[LoraSpec],
    *,
    rules: Mapping[str, Sequence[Rule]] | None = None,
    high_noise_component: str | None = None,
) -> dict[str, nnx.State]:
    """New states with every LoRA of `loras` merged in; the given states are not modified.

    `state_by_component` maps component names (`unet`, `text_encoder`, ...) to their full
    `nnx.State`s. Components no LoRA touches come back as the same object. `rules` overrides
    the PyTorch->Flax rule table per component (default: `default_rules()`);
    `high_noise_component` names where `is_high_noise` LoRAs' denoiser weights go.
    """
    rules = dict(rules) if rules is not None else default_rules()
    tables = {
        name: module_table(tuple(rules[name]), _kernels(state))
        for name, state in state_by_component.items()
        if name in rules
    }
    deltas: dict[str, dict[str, np.ndarray]] = {}
    for spec in loras:
        resolved = _resolve_file(spec, parse_lora(spec.path), tables, high_noise_component)
        if spec.multiplier == 0:
            continue  # validated above, contributes nothing
        for name, pair, target in resolved:
            delta = flax_delta(pair, target, spec.multiplier * pair.scale)
            into = deltas.setdefault(name, {})
            if target.flax_path in into:
                into[target.flax_path] += delta
            else:
                into[target.flax_path] = delta
    out = dict(state_by_component)
    for name, by_path in deltas.items():
        out[name] = _apply(state_by_component[name], by_path)
    return out


def _apply(state: nnx.State, deltas: Mapping[str, np.ndarray]) -> nnx.State:
    flat = []
    for path, var in nnx.to_flat_state(state):
        value = var.get_value()
        delta = deltas.get(_path(path))
        if delta is not None:
            value = _added(value, delta)
        # Fresh Variables everywhere, so nothing done to the merged model reaches the base.
        flat.append((path, var.replace(value)))
    return nnx.from_flat_state(flat)


def _added(value: jax.Array, delta: np.ndarray) -> jax.Array:
    """`value + delta` in float32, cast back; placed as `value` was.

    The sum is done by numpy: eager jnp ops would compile one tiny program per kernel shape.
    The result must match the base's placement exactly, down to whether it is committed to a
    device: jit keys its cache on that, and a mismatch recompiles the whole network.
    """
    summed = (np.asarray(value, dtype=np.float32) + delta).astype(value.dtype)
    if getattr(value, "committed", False):
        return jax.device_put(summed, value.sharding)
    return jnp.asarray(summed)


MergeFn = Callable[[dict[str, nnx.State], list[LoraSpec]], dict[str, nnx.State]]


class LoraCache:
    """Merged states for the last few LoRA sets, so repeating a set costs no recomputation.

    Keyed by the base states (identity) and the multiset of (resolved path, mtime, size,
    multiplier, is_high_noise): editing a LoRA file on disk changes its key. Each entry holds
    only the modified kernels beyond the base. Thread-safe; independent of any web framework.
    """

    def __init__(self, max_entries: int = 4, merge_fn: MergeFn | None = None):
        self.max_entries = max_entries
        self._merge = merge_fn or merge_loras
        self._entries: OrderedDict[tuple, tuple[list[nnx.State], dict[str, nnx.State]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(base_states: Mapping[str, nnx.State], loras: Sequence[LoraSpec]) -> tuple:
        files = []
        for spec in loras:
            try:
                stat = spec.path.stat()
            except OSError as e:
                raise LoraError(f"LoRA file {spec.path.name} cannot be read ({e})") from e
            files.append(
                (
                    str(spec.path.resolve()),
                    stat.st_mtime_ns,
                    stat.st_size,
                    float(spec.multiplier),
                    bool(spec.is_high_noise),
                )
            )
        bases = tuple(sorted((name, id(state)) for name, state in base_states.items()))
        return bases, tuple(sorted(files))

    def get_or_merge(
        self, base_states: dict[str, nnx.State], loras: Sequence[LoraSpec]
    ) -> dict[str, nnx.State]:
        """The merged states for `loras` (the base states themselves when there are none)."""
        if not loras:
            return base_states
        key = self.key(base_states, loras)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            self.misses += 1
            # Under the lock: two requests for one new set must not both pay for the merge.
            merged = self._merge(base_states, list(loras))
            # The base states are kept referenced so their ids in the key stay unique.
            self._entries[key] = (list(base_states.values()), merged)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return merged

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
