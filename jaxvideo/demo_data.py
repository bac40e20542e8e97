"""Synthetic training data for the demo models: one flat-coloured shape on a flat background.

A `Scene` is a circle, square or upright triangle in one of eight palette colours on a
background of another palette colour; a `Clip` moves a scene's shape in a straight line (left,
right, up or down). Both carry the caption a demo model learns from:

    a {color} {shape} on a {background} background
    a {color} {shape} moving {direction} on a {background} background

Geometry is stored as fractions of the frame, so one scene renders at any size: the centre
(cx of the width, cy of the height) and the size (square side, circle diameter, triangle base
and height) as a fraction of the smaller frame side. Positions keep the whole shape, and a small
margin, inside the frame; in a clip, on every frame.

Rendering samples each pixel 4x4 times and averages (anti-aliased edges), in numpy over the
shape's bounding box only. Everything random comes from a `numpy.random.Generator`, so a seed
fixes the whole stream. `parse_prompt` reads the two caption forms back; `eval_prompts` makes
the fixed evaluation sets the adherence checks (`jaxvideo.adherence`) run on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

# sRGB values chosen far apart: the closest pair (yellow, orange) is ~83 apart (`test_demo_data`
# checks the minimum), so a checker can name a colour despite noise and colour drift.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "orange": (245, 140, 20),
    "purple": (140, 50, 180),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# Every word a caption uses: a trained demo's tokenizer makes each of them one token.
VOCABULARY: tuple[str, ...] = ("a", "on", "background", "moving", *COLORS, *SHAPES, *DIRECTIONS)

# Shape sizes, as fractions of the smaller frame side, large enough that in the latents (8x
# smaller) a square's corners span several latent pixels, which is what tells it from a
# circle: a 64 px clip's 0.3-sized squares came back from the video VAE as circles (72% of
# clips round-tripped, 94% at 0.45-0.6). A clip's shape must also leave room to travel.
IMAGE_SIZE_RANGE = (0.4, 0.7)
SIZE_RANGE = (0.45, 0.6)
TRAVEL_RANGE = (0.25, 0.4)  # how far a clip's shape moves, as a fraction of the frame
MARGIN = 0.02  # kept free between the shape and the frame edge
SUPERSAMPLE = 4

# Unit motion per direction in image coordinates: y grows downward, so "up" is -y.
_MOTION = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def _check_name(kind: str, value: str, known: tuple[str, ...]) -> None:
    if value not in known:
        raise ValueError(f"unknown {kind} {value!r}; one of {', '.join(known)}")


@dataclass(frozen=True)
class Scene:
    """One shape on a background; cx, cy and size are fractions of the frame (see module)."""

    shape: str
    color: str
    background: str
    cx: float
    cy: float
    size: float

    def __post_init__(self) -> None:
        _check_name("shape", self.shape, SHAPES)
        _check_name("color", self.color, COLORS)
        _check_name("color", self.background, COLORS)
        if self.color == self.background:
            raise ValueError(f"shape and background are both {self.color}")
        if not 0.0 < self.size <= 1.0:
            raise ValueError(f"size must be in (0, 1], got {self.size}")

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} on a {self.background} background"


@dataclass(frozen=True)
class Clip:
    """A scene whose shape moves `travel` (fraction of the frame) towards `direction`; the
    scene's centre is the position on the first frame."""

    scene: Scene
    direction: str
    travel: float

    def __post_init__(self) -> None:
        _check_name("direction", self.direction, DIRECTIONS)

    @property
    def caption(self) -> str:
        s = self.scene
        return f"a {s.color} {s.shape} moving {self.direction} on a {s.background} background"

    def scene_at(self, t: float) -> Scene:
        """The scene at time t in [0, 1] (0 = first frame, 1 = last)."""
        dx, dy = _MOTION[self.direction]
        s = self.scene
        return replace(s, cx=s.cx + dx * self.travel * t, cy=s.cy + dy * self.travel * t)


def _pick(rng: np.random.Generator, names: tuple[str, ...]) -> str:
    return names[int(rng.integers(len(names)))]


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _colors(rng: np.random.Generator) -> tuple[str, str]:
    """(shape colour, background colour), always different."""
    color = _pick(rng, COLORS)
    background = _pick(rng, tuple(c for c in COLORS if c != color))
    return color, background


def random_scene(rng: np.random.Generator) -> Scene:
    shape = _pick(rng, SHAPES)
    color, background = _colors(rng)
    size = _uniform(rng, *IMAGE_SIZE_RANGE)
    low, high = MARGIN + size / 2, 1 - MARGIN - size / 2
    return Scene(shape, color, background, _uniform(rng, low, high), _uniform(rng, low, high), size)


def random_clip(rng: np.random.Generator) -> Clip:
    shape = _pick(rng, SHAPES)
    color, background = _colors(rng)
    direction = _pick(rng, DIRECTIONS)
    size = _uniform(rng, *SIZE_RANGE)
    low, high = MARGIN + size / 2, 1 - MARGIN - size / 2
    # The largest size and margin still leave 0.36 of the frame to travel.
    travel = _uniform(rng, TRAVEL_RANGE[0], min(TRAVEL_RANGE[1], high - low))
    # Along the motion axis the start leaves room for the whole travel; across it, anywhere.
    along = _uniform(rng, low, high - travel)
    across = _uniform(rng, low, high)
    dx, dy = _MOTION[direction]
    start = along if dx + dy > 0 else 1 - along
    cx, cy = (start, across) if dx else (across, start)
    return Clip(Scene(shape, color, background, cx, cy, size), direction, travel)


def _inside(shape: str, x: np.ndarray, y: np.ndarray, half: float) -> np.ndarray:
    """Which sample points (relative to the shape centre, in pixels) the shape covers."""
    if shape == "circle":
        return x * x + y * y <= half * half
    if shape == "square":
        return (np.abs(x) <= half) & (np.abs(y) <= half)
    # Upright triangle: apex at the top centre, base along the bottom of the size x size box;
    # its half-width grows from 0 at the apex to `half` at the base.
    return (y <= half) & (np.abs(x) <= (y + half) / 2)


def render(scene: Scene, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: flat colours with 4x4-supersampled (anti-aliased) edges."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = PALETTE[scene.background]
    half = scene.size * min(width, height) / 2
    cx, cy = scene.cx * width, scene.cy * height
    x0, x1 = max(0, int(np.floor(cx - half))), min(width, int(np.ceil(cx + half)))
    y0, y1 = max(0, int(np.floor(cy - half))), min(height, int(np.ceil(cy + half)))
    if x1 <= x0 or y1 <= y0:
        return image
    n = SUPERSAMPLE
    xs = x0 + (np.arange((x1 - x0) * n, dtype=np.float32) + 0.5) / n - cx
    ys = y0 + (np.arange((y1 - y0) * n, dtype=np.float32) + 0.5) / n - cy
    covered = _inside(scene.shape, xs[None, :], ys[:, None], half)
    coverage = covered.reshape(y1 - y0, n, x1 - x0, n).sum(axis=(1, 3), dtype=np.int32)
    coverage = coverage.astype(np.float32)[..., None] / (n * n)
    background = np.asarray(PALETTE[scene.background], np.float32)
    foreground = np.asarray(PALETTE[scene.color], np.float32)
    blended = background + coverage * (foreground - background)
    image[y0:y1, x0:x1] = np.rint(blended).astype(np.uint8)
    return image


def render_clip(clip: Clip, frames: int, width: int, height: int) -> np.ndarray:
    """(frames, height, width, 3) uint8; the shape moves at constant speed, first to last."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    times = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    return np.stack([render(clip.scene_at(float(t)), width, height) for t in times])


def image_batches(
    seed: int, batch: int, width: int, height: int
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Endless ((batch, H, W, 3) uint8, captions); the same seed gives the same stream."""
    rng = np.random.default_rng(seed)
    while True:
        scenes = [random_scene(rng) for _ in range(batch)]
        yield np.stack([render(s, width, height) for s in scenes]), [s.caption for s in scenes]


def clip_batches(
    seed: int, batch: int, frames: int, width: int, height: int
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Endless ((batch, T, H, W, 3) uint8, captions); the same seed gives the same stream."""
    rng = np.random.default_rng(seed)
    while True:
        clips = [random_clip(rng) for _ in range(batch)]
        pixels = np.stack([render_clip(c, frames, width, height) for c in clips])
        yield pixels, [c.caption for c in clips]


@dataclass(frozen=True)
class PromptSpec:
    """What a caption asks for; direction is None for an image caption."""

    color: str
    shape: str
    background: str
    direction: str | None = None

    @property
    def caption(self) -> str:
        motion = f" moving {self.direction}" if self.direction else ""
        return f"a {self.color} {self.shape}{motion} on a {self.background} background"


def _alternatives(names: tuple[str, ...]) -> str:
    return "(" + "|".join(names) + ")"


_CAPTION = re.compile(
    rf"a {_alternatives(COLORS)} {_alternatives(SHAPES)}(?: moving {_alternatives(DIRECTIONS)})?"
    rf" on a {_alternatives(COLORS)} background"
)


def parse_prompt(text: str) -> PromptSpec | None:
    """The spec of a caption in one of the two forms (any case and spacing), else None; a
    shape the colour of its background is not a caption either."""
    match = _CAPTION.fullmatch(" ".join(text.lower().split()))
    if match is None:
        return None
    color, shape, direction, background = match.groups()
    if color == background:
        return None
    return PromptSpec(color, shape, background, direction)


def _cycled(rng: np.random.Generator, names: tuple[str, ...], count: int) -> list[str]:
    """`count` names: shuffled rounds of all of them, so every name appears once count allows."""
    rounds = -(-count // len(names))
    picks = [names[i] for _ in range(rounds) for i in rng.permutation(len(names))]
    return picks[:count]


def eval_prompts(
    kind: Literal["image", "video"] = "image", count: int = 24, seed: int = 0
) -> list[tuple[str, int]]:
    """A fixed evaluation set: `count` (prompt, generation seed) pairs in which every colour,
    shape (and, for video, direction) is asked for; needs count >= len(COLORS)."""
    if kind not in ("image", "video"):
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    if count < len(COLORS):
        raise ValueError(f"count must be >= {len(COLORS)} to cover every colour, got {count}")
    rng = np.random.default_rng(seed)
    colors = _cycled(rng, COLORS, count)
    shapes = _cycled(rng, SHAPES, count)
    directions = _cycled(rng, DIRECTIONS, count) if kind == "video" else [None] * count
    pairs = []
    for color, shape, direction in zip(colors, shapes, directions, strict=True):
        background = _pick(rng, tuple(c for c in COLORS if c != color))
        spec = PromptSpec(color, shape, background, direction)
        pairs.append((spec.caption, int(rng.integers(2**31 - 1))))
    return pairs
