"""Family pipelines: turn a GenerationRequest into decoded frames."""

from jaxvideo.pipelines.sd import FAMILY_DEFAULTS, StableDiffusionPipeline

PIPELINES = {family: StableDiffusionPipeline for family in FAMILY_DEFAULTS}

__all__ = ["FAMILY_DEFAULTS", "PIPELINES", "StableDiffusionPipeline"]
