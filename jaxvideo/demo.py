"""Tiny random-weight demo models, built locally in the converted-model folder format.

`gunicorn webapp:app` with no configuration serves these so every endpoint works on a fresh
machine with no downloads. Their weights are random: the pictures they make are noise. The
folders are exactly what `jaxvideo convert` writes for real checkpoints, so the demo exercises
the same loading code as a real deployment. Each family row names its demo builders
(`FamilySpec.demos`; demo_sd.py, demo_wan.py); this module has what they share.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from jaxvideo.config import DEMO_PREFIX
from jaxvideo.families import demo_builder
from jaxvideo.lazy import load
from jaxvideo.models.registry import class_name_of, spec_for
from jaxvideo.weights import abstract_model, param_shapes, save_component

READY_MARKER = ".complete"


def random_params(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Scaled-normal weights, unit norm scales, zero biases: numbers, not a trained model.

    Drawn with numpy rather than the modules' initialisers, which run op by op and take
    minutes on a CPU even for a toy network.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for path, shape in shapes.items():
        leaf = path.rsplit(".", 1)[-1]
        if leaf == "scale":
            params[path] = np.ones(shape, np.float32)
        elif leaf == "bias":
            params[path] = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            std = 0.02 if leaf == "embedding" else fan_in**-0.5
            params[path] = (rng.standard_normal(shape) * std).astype(np.float32)
    return params


def save_random_component(out_dir: Path, hf_config: dict[str, Any], seed: int) -> None:
    spec = spec_for(class_name_of(hf_config))
    shapes = param_shapes(abstract_model(spec, spec.config_from_hf(hf_config)))
    save_component(out_dir, hf_config, random_params(shapes, seed))


def cache_dir() -> Path:
    return Path(os.environ.get("JAXVIDEO_CACHE_DIR", Path.home() / ".cache" / "jaxvideo"))


def _current(name: str, builder: str, target: Path) -> bool:
    """A cached copy of a shipped (trained) demo is stale once the package ships another."""
    if not builder.startswith("jaxvideo.demo_models:"):
        return True  # built from a seed: the same on every run
    from jaxvideo.demo_models import is_current

    return is_current(name, target)


def resolve_demo(path: str) -> Path:
    """Path of the demo model named by `demo:<name>`, building it on first use.

    Built in a temporary folder then renamed, so a crash or a concurrent start never leaves a
    half-written model behind.
    """
    name = path[len(DEMO_PREFIX) :]
    _, builder = demo_builder(name)
    target = cache_dir() / "demo" / name
    if (target / READY_MARKER).is_file() and _current(name, builder, target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        load(builder)(tmp)
        (tmp / READY_MARKER).write_text("ok\n")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not (target / READY_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
