"""jaxvideo: image and video diffusion models in Flax NNX, served over HTTP.

`load_component(model_dir, name)` loads one converted network (`text_encoder`, `unet`, `vae`)
from a jaxvideo model folder; see the README for the call conventions.
"""

from __future__ import annotations

from typing import Any

from jaxvideo.xla_cpu import apply_cpu_flags

# Before any JAX computation: XLA reads its flags when the CPU backend starts.
apply_cpu_flags()

__version__ = "0.1.0"

__all__ = ["__version__", "load_component"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import jaxvideo.config` (the web layer) does not pull in JAX.
    if name == "load_component":
        from jaxvideo.weights import load_component

        return load_component
    raise AttributeError(f"module 'jaxvideo' has no attribute {name!r}")
