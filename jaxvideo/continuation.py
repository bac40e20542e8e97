"""ContinuationState: the opaque envelope a client round-trips to extend a previous video.

Shape (FastVideo's contract): `{"kind": "<family>.v<n>", "payload": {"schema_version": 1, ...}}`,
JSON only. Kinds are registered here with the schema versions they accept; anything else is an
`InvalidRequest` (400). No JAX and no Flask in here: both the web layer (which validates what
clients send) and the pipelines (which read and write payloads) use it.

`wan.v1` payload, schema_version 1:
    segment_index   int >= 0   how many segments came before the one that produced this state
    model           str        the served model that produced it (a continuation must use it)
    width, height   int        the segment's frame size (a continuation keeps it)
    fps             int        the segment's playback rate
    last_frame      str        base64 PNG of the segment's last frame, which becomes the first
                               frame of the next segment
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxvideo.errors import InvalidRequest

WAN_KIND = "wan.v1"

# kind -> {schema_version: required payload fields and their types}
KINDS: dict[str, dict[int, dict[str, type]]] = {
    WAN_KIND: {
        1: {
            "segment_index": int,
            "model": str,
            "width": int,
            "height": int,
            "fps": int,
            "last_frame": str,
        }
    },
}


@dataclass(frozen=True)
class ContinuationState:
    kind: str
    payload: Mapping[str, Any]

    @property
    def schema_version(self) -> int:
        return int(self.payload["schema_version"])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "payload": dict(self.payload)}


def parse_state(raw: Any) -> ContinuationState:
    """Validates a client's `{"kind", "payload"}` envelope against the registered kinds."""
    if not isinstance(raw, Mapping):
        raise InvalidRequest("state must be an object with 'kind' and 'payload'")
    unknown = set(raw) - {"kind", "payload"}
    if unknown:
        raise InvalidRequest(f"state: unknown field(s) {', '.join(sorted(unknown))}")
    kind, payload = raw.get("kind"), raw.get("payload")
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidRequest(
            f"state.kind: unknown continuation kind {kind!r}; supported: {', '.join(KINDS)}"
        )
    if not isinstance(payload, Mapping):
        raise InvalidRequest("state.payload must be an object")
    version = payload.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in KINDS[kind]:
        supported = ", ".join(str(v) for v in KINDS[kind])
        raise InvalidRequest(
            f"state.payload.schema_version {version!r} is not supported for {kind} "
            f"(supported: {supported})"
        )
    for name, kind_type in KINDS[kind][version].items():
        value = payload.get(name)
        if isinstance(value, bool) or not isinstance(value, kind_type):
            raise InvalidRequest(f"state.payload.{name}: expected {kind_type.__name__}")
    if payload["segment_index"] < 0 or payload["width"] < 1 or payload["height"] < 1:
        raise InvalidRequest("state.payload: segment_index, width and height out of range")
    return ContinuationState(kind, dict(payload))


def wan_state(
    segment_index: int, model: str, last_frame: np.ndarray, fps: int
) -> ContinuationState:
    """The state that continues a Wan segment whose last frame is `last_frame` (H, W, 3)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(last_frame, dtype=np.uint8)).save(buffer, format="PNG")
    height, width = last_frame.shape[:2]
    payload = {
        "schema_version": 1,
        "segment_index": segment_index,
        "model": model,
        "width": int(width),
        "height": int(height),
        "fps": int(fps),
        "last_frame": base64.b64encode(buffer.getvalue()).decode("ascii"),
    }
    return ContinuationState(WAN_KIND, payload)


def last_frame_of(state: ContinuationState) -> np.ndarray:
    """Decodes a wan.v1 state's last frame to (H, W, 3) uint8; a corrupt one is a 400."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = base64.b64decode(state.payload["last_frame"], validate=True)
        with Image.open(io.BytesIO(data)) as image:
            frame = np.asarray(image.convert("RGB"))
    except (ValueError, UnidentifiedImageError, OSError) as exc:
        raise InvalidRequest(f"state.payload.last_frame is not a base64 PNG: {exc}") from None
    if frame.shape[:2] != (state.payload["height"], state.payload["width"]):
        raise InvalidRequest("state.payload.last_frame does not match its width and height")
    return frame
