"""Family pipelines: turn a GenerationRequest into decoded frames.

Pipelines are imported on first use, so serving SD never imports the video stack and back.
"""

from __future__ import annotations

import importlib
from typing import Any

_PIPELINES = {
    "sd1": "jaxvideo.pipelines.sd:StableDiffusionPipeline",
    "sd2": "jaxvideo.pipelines.sd:StableDiffusionPipeline",
    "sdxl": "jaxvideo.pipelines.sd:StableDiffusionPipeline",
    "sdxl_refiner": "jaxvideo.pipelines.sd:StableDiffusionPipeline",
    "wan21": "jaxvideo.pipelines.wan:WanPipeline",
    "wan22": "jaxvideo.pipelines.wan:WanPipeline",
}
FAMILIES = tuple(_PIPELINES)
VIDEO_FAMILIES = ("wan21", "wan22")


def pipeline_class(family: str) -> Any:
    """The pipeline class serving `family`; KeyError for an unknown family."""
    module_name, attr = _PIPELINES[family].split(":")
    return getattr(importlib.import_module(module_name), attr)


__all__ = ["FAMILIES", "VIDEO_FAMILIES", "pipeline_class"]
