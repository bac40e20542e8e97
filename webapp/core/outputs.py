"""How a finished job is encoded (not part of GenerationRequest: the pixels do not change):
image format and quality, video container and quality, and where else a video is written."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from jaxvideo.media import IMAGE_FORMATS
from webapp.core.errors import ApiError

OPENAI_VIDEO_FORMAT = "mp4"  # what /v1/videos/{id}/content serves
DEFAULT_VIDEO_QUALITY = 90


@dataclass(frozen=True)
class OutputOptions:
    """How finished images are encoded."""

    output_format: str = "png"
    quality: int = 100
    embed_metadata: bool = True


@dataclass(frozen=True)
class VideoOutput:
    """How a finished video is encoded and where else it goes."""

    output_format: str = OPENAI_VIDEO_FORMAT
    quality: int = DEFAULT_VIDEO_QUALITY
    output_path: str | None = None  # as the client sent it; resolved with the job id


def image_format(name: str) -> str:
    """A client's image format name (`jpg` too) -> one of IMAGE_FORMATS; 400 otherwise."""
    fmt = name.strip().lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in IMAGE_FORMATS:
        raise ApiError(
            400,
            f"invalid output_format, must be one of [{', '.join(IMAGE_FORMATS)}]",
            param="output_format",
            code="invalid_value",
        )
    return fmt


def apply_output(options: OutputOptions, updates: Mapping[str, Any]) -> OutputOptions:
    return replace(options, **updates) if updates else options
