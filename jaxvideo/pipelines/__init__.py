"""Family pipelines: turn a GenerationRequest into decoded frames.

`base.py` is the contract every family implements; each family row (`jaxvideo.families`) names
its pipeline class, imported on first use, so serving SD never imports the video stack and
back. `jaxvideo.pipelines.StableDiffusionPipeline` (and every other family's class) resolves
through that table.
"""

from __future__ import annotations

from typing import Any

from jaxvideo.families import FAMILIES


def __getattr__(name: str) -> Any:
    for spec in FAMILIES.values():
        if spec.pipeline.rpartition(":")[2] == name:
            return spec.load_pipeline()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
