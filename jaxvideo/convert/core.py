"""Declarative PyTorch -> Flax key mapping: rules, tensor transforms and shape checks.

A converter for a network is a list of `Rule`s: a regex over the PyTorch key, the dotted Flax
parameter path it becomes (with regex back-references) and the transform its tensor needs.
`convert_tensors` applies the table, then checks the result against the abstract Flax model so
a wrong checkpoint fails naming the offending key before anything is materialised.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


class ConversionError(ValueError):
    """A checkpoint does not fit the Flax model it is converted into."""


def _linear(t: np.ndarray) -> np.ndarray:
    # torch Linear stores (out, in); Flax kernels are (in, out).
    return t.T


def _conv2d(t: np.ndarray) -> np.ndarray:
    # OIHW -> HWIO
    return t.transpose(2, 3, 1, 0)


def _conv3d(t: np.ndarray) -> np.ndarray:
    # OITHW -> THWIO
    return t.transpose(2, 3, 4, 1, 0)


def _linear_or_1x1(t: np.ndarray) -> np.ndarray:
    # Some checkpoints store projections as 1x1 convs (O, I, 1, 1) where the Flax side is a
    # Linear; squeeze them to (O, I) first.
    if t.ndim == 4:
        t = t[:, :, 0, 0]
    return t.T


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda t: t,
    "linear": _linear,
    "linear_or_1x1": _linear_or_1x1,
    "conv2d": _conv2d,
    "conv3d": _conv3d,
}


@dataclass(frozen=True)
class Rule:
    """`pattern` must match a whole PyTorch key; `target` may use \\1-style groups."""

    pattern: str
    target: str
    transform: str = "none"

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.transform!r} in rule {self.pattern!r}")


def _compile(rules: Sequence[Rule]) -> list[tuple[re.Pattern[str], Rule]]:
    return [(re.compile(r.pattern), r) for r in rules]


def map_key(key: str, compiled: Sequence[tuple[re.Pattern[str], Rule]]) -> tuple[str, str] | None:
    """Returns (flax_path, transform) for the first rule that matches `key` whole."""
    for regex, rule in compiled:
        m = regex.fullmatch(key)
        if m is not None:
            return m.expand(rule.target), rule.transform
    return None


def convert_tensors(
    tensors: Mapping[str, np.ndarray] | Callable[[str], np.ndarray],
    keys: Iterable[str],
    rules: Sequence[Rule],
    expected: Mapping[str, tuple[int, ...]],
    *,
    ignore: Sequence[str] = (),
    what: str = "checkpoint",
    on_tensor: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """Converts PyTorch `tensors` (or a loader by key) into a flat {flax_path: array} dict.

    `expected` is the flat {flax_path: shape} of the abstract Flax model. Every key must map
    to exactly one expected path with the right shape, and every expected path must be filled;
    otherwise a `ConversionError` names the keys at fault. Keys matching an `ignore` regex
    (buffers such as `position_ids`) are skipped.
    """
    compiled = _compile(rules)
    ignored = [re.compile(p) for p in ignore]
    load = tensors if callable(tensors) else tensors.__getitem__
    out: dict[str, np.ndarray] = {}
    source_of: dict[str, str] = {}
    unexpected: list[str] = []
    for key in keys:
        if any(p.fullmatch(key) for p in ignored):
            continue
        mapped = map_key(key, compiled)
        if mapped is None or mapped[0] not in expected:
            unexpected.append(key if mapped is None else f"{key} (-> {mapped[0]})")
            continue
        path, transform = mapped
        if path in out:
            raise ConversionError(
                f"{what}: keys {source_of[path]!r} and {key!r} both map to {path!r}"
            )
        value = TRANSFORMS[transform](np.asarray(load(key)))
        if tuple(value.shape) != tuple(expected[path]):
            raise ConversionError(
                f"{what}: shape mismatch for {key!r} -> {path!r}: checkpoint gives "
                f"{tuple(value.shape)} after {transform!r}, model expects {tuple(expected[path])}"
            )
        out[path] = value
        source_of[path] = key
        if on_tensor is not None:
            on_tensor(key)
    if unexpected:
        raise ConversionError(
            f"{what}: {len(unexpected)} unexpected key(s) not in the model: "
            + ", ".join(unexpected[:10])
            + (" ..." if len(unexpected) > 10 else "")
        )
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ConversionError(
            f"{what}: {len(missing)} model parameter(s) missing from the checkpoint: "
            + ", ".join(missing[:10])
            + (" ..." if len(missing) > 10 else "")
        )
    return out
