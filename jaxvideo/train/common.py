"""What the demo trainers share: their random start, pixels as the networks take them, a stage's
loss summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def pixels(images: np.ndarray) -> jax.Array:
    """uint8 [0, 255] (any shape) -> float32 [-1, 1], as the VAEs take pictures."""
    return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def summary(history) -> dict[str, Any]:
    """A stage's steps, mean loss over its first 20 and last 100 steps, and seconds."""
    return {
        "steps": len(history.losses),
        "first_loss": round(float(np.mean(history.losses[:20])), 5),
        "final_loss": round(history.mean(100), 5),
        "seconds": round(history.seconds, 1),
    }


def random_start(out: Path, configs: dict[str, dict[str, Any]], seed: int) -> None:
    """Each network of a demo at its random start, in the folder format (seed + its index)."""
    from jaxvideo.demo import save_random_component

    for i, (name, config) in enumerate(configs.items()):
        save_random_component(out / name, config, seed + i)
