"""Prompt adherence for the demo models: what an image or clip of `jaxvideo.demo_data` shows.

`describe_image` names the background colour, the shape's colour and the shape; `describe_video`
adds the direction of motion; `check` compares them with what a caption asks for, and
`adherence` is the fraction of checks passed. Everything is deterministic numpy, a few
milliseconds per 128x128 image. Distances are Euclidean in sRGB (0-255 per channel).

How an image is read, and the thresholds (constants below):

0. The outermost EDGE (1) pixel ring of the frame is not read: a VAE decoder's zero padding
   tints it (the trained Wan demo's VAE turned a black background's edge grey, and its round
   trip passed 81% of 32 clips read with that ring, 100% without it).
1. Background: the median of the 1-pixel border ring (inside EDGE), named after the nearest
   palette colour.
2. Shape mask, in two passes over the image smoothed by a 3x3 box (noise sigma / 3):
   pixels farther than MASK_DISTANCE (40) from the background median give a first estimate of
   the shape's colour (median of that mask eroded by 2 pixels); then every pixel closer to that
   colour than to the background belongs to the shape (the midpoint, so edges stay in place
   whatever the contrast), and the largest 4-connected component is kept.
3. Shape colour: the median of the component eroded by up to 2 pixels (skipping anti-aliased
   and blurred edges), named after the nearest palette colour.
   A colour (background or shape) farther than COLOR_TOLERANCE (60) from every palette colour
   is not named (None); the palette's closest pair is ~83 apart, so 60 allows a good deal of
   drift without naming a colour the picture does not show.
4. Shape class from the component's bounding box, after a 3x3 opening (noise attaches one-
   and two-pixel spurs to edges, and one spur stretches the box by a row). Two cues:
   taper (mean row width of the bottom third minus that of the top third, over the box width)
   is 0.67 for the upright triangle and 0 for circle and square, and blur barely moves it;
   TRIANGLE_MIN_TAPER (0.33) is the midpoint. Fill ratio (mask / box area) is 1.0 for a
   square, pi/4 = 0.785 for a circle and 0.5 for the triangle; SQUARE_MIN_FILL (0.89) is the
   square/circle midpoint and CIRCLE_MIN_FILL (0.64) the circle/triangle one. Blur rounds the
   triangle's apex and raises its fill (up to ~0.70 measured at 64 px), so a tapered shape is a
   triangle up to TRIANGLE_MAX_FILL (0.75). Cues that disagree (untapered but fill below 0.64,
   e.g. a diamond; tapered but fuller than 0.75; tapered upside down) name no shape.
5. A shape is only named when the picture plainly holds one: the component covers
   SHAPE_FRACTION_RANGE (1%-60%) of the frame, holds at least MIN_COMPONENT_SHARE (75%) of all
   pixels classed as shape (one blob, not speckle), its box's aspect ratio is within
   ASPECT_RANGE (0.67-1.5), and its colour is at least MIN_CONTRAST (40) from the background.
   Without such a blob no shape colour is named either. Noise fails these (and usually has no
   palette background either).
6. Direction (video): least-squares slope of the shape's centroid over the frames where a
   shape was named (at least half of them, and two); the displacement over the clip must be at
   least MIN_TRAVEL (0.1 of the frame) along the dominant axis and the other axis at most
   MAX_CROSS_RATIO (0.5) of it. Image y grows downward, so "up" is decreasing y. A clip's
   background, colour and shape are those named on more than half of its frames.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from jaxvideo.demo_data import PALETTE, parse_prompt

MASK_DISTANCE = 40.0
COLOR_TOLERANCE = 60.0
MIN_CONTRAST = 40.0
TRIANGLE_MAX_FILL = 0.75
CIRCLE_MIN_FILL = 0.64
SQUARE_MIN_FILL = 0.89
TRIANGLE_MIN_TAPER = 0.33
ASPECT_RANGE = (0.67, 1.5)
SHAPE_FRACTION_RANGE = (0.01, 0.6)
MIN_COMPONENT_SHARE = 0.75
MIN_TRAVEL = 0.1
MAX_CROSS_RATIO = 0.5
EDGE = 1  # pixels not read at each side of the frame (see the module's point 0)
MIN_INTERIOR_PIXELS = 9  # fewer than this after erosion: erode less

_NAMES = tuple(PALETTE)
_RGB = np.asarray(list(PALETTE.values()), np.float32)


@dataclass(frozen=True)
class Description:
    """What a picture shows (None where it is not plain) and the measurements behind it.

    Geometry is in fractions of the frame; `centroid` is (x, y) and `motion` (dx, dy) over a
    clip. For a clip the numbers are medians over the frames that show a shape.
    """

    background: str | None
    color: str | None
    shape: str | None
    direction: str | None = None
    background_distance: float = float("inf")  # border median to the nearest palette colour
    color_distance: float = float("inf")  # shape median to the nearest palette colour
    contrast: float = 0.0  # shape median to border median
    fill_ratio: float = 0.0
    taper: float = 0.0
    aspect: float = 0.0
    shape_fraction: float = 0.0
    component_share: float = 0.0
    centroid: tuple[float, float] | None = None
    motion: tuple[float, float] | None = None
    shape_frames: int = 0


@dataclass(frozen=True)
class AttributeCheck:
    name: str
    expected: str
    found: str | None

    @property
    def ok(self) -> bool:
        return self.expected == self.found


@dataclass(frozen=True)
class Verdict:
    prompt: str
    checks: tuple[AttributeCheck, ...]
    description: Description

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def mismatches(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks if not c.ok)

    def __str__(self) -> str:
        if self.passed:
            return f"passed: {self.prompt!r}"
        wrong = ", ".join(
            f"{c.name} {c.expected} (found {c.found})" for c in self.checks if not c.ok
        )
        return f"failed: {self.prompt!r}: {wrong}"


def _nearest_color(rgb: np.ndarray) -> tuple[str | None, float]:
    distances = np.linalg.norm(_RGB - rgb, axis=1)
    best = int(np.argmin(distances))
    distance = float(distances[best])
    return (_NAMES[best] if distance <= COLOR_TOLERANCE else None), distance


def _border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def _box3(pixels: np.ndarray) -> np.ndarray:
    """3x3 mean (edges replicated): noise sigma / 3, edges blurred by one pixel."""
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = pixels.shape[:2]
    total = sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return total / 9.0


def _squared_distance(pixels: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    diff = pixels - rgb
    return np.einsum("hwc,hwc->hw", diff, diff)


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 erosion; outside the frame counts as not masked."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = mask.copy()
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 dilation."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = mask.copy()
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _opened(mask: np.ndarray) -> np.ndarray:
    """3x3 opening: drops one- and two-pixel spurs that noise attaches to an edge (each would
    stretch the bounding box), leaves a square as it is; an empty result keeps the mask."""
    opened = _dilate(_erode(mask))
    return opened if opened.any() else mask


def _interior(mask: np.ndarray) -> np.ndarray:
    """The mask eroded by up to 2 pixels, less where that would leave too little."""
    inner = mask
    for _ in range(2):
        eroded = _erode(inner)
        if eroded.sum() < MIN_INTERIOR_PIXELS:
            break
        inner = eroded
    return inner


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (all False if it is empty).

    Union-find in numpy: each pixel points to a root; every round hooks the larger root of each
    edge across two roots onto the smaller, then compresses paths until every pixel points at a
    root. Convex blobs need a handful of rounds.
    """
    h, w = mask.shape
    flat = mask.ravel()
    if not flat.any():
        return np.zeros_like(mask)
    right = (mask[:, :-1] & mask[:, 1:]).nonzero()
    down = (mask[:-1] & mask[1:]).nonzero()
    a = np.concatenate([right[0] * w + right[1], down[0] * w + down[1]])
    b = np.concatenate([a[: len(right[0])] + 1, a[len(right[0]) :] + w])
    parent = np.arange(h * w)
    while True:
        pa, pb = parent[a], parent[b]
        differ = pa != pb
        if not differ.any():
            break
        pa, pb = pa[differ], pb[differ]
        np.minimum.at(parent, np.maximum(pa, pb), np.minimum(pa, pb))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    roots = np.where(flat, parent, -1)
    counts = np.bincount(roots[flat])
    return (roots == int(np.argmax(counts))).reshape(h, w)


def _classify(fill: float, taper: float) -> str | None:
    """Shape name from fill ratio and taper, or None where they disagree."""
    if taper >= TRIANGLE_MIN_TAPER:
        return "triangle" if fill < TRIANGLE_MAX_FILL else None
    if taper <= -TRIANGLE_MIN_TAPER or fill < CIRCLE_MIN_FILL:
        return None
    return "square" if fill >= SQUARE_MIN_FILL else "circle"


def _geometry(component: np.ndarray) -> dict[str, float | tuple[float, float]]:
    h, w = component.shape
    rows, cols = component.any(axis=1).nonzero()[0], component.any(axis=0).nonzero()[0]
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box_h, box_w = y1 - y0, x1 - x0
    count = int(component.sum())
    widths = component[y0:y1].sum(axis=1)
    third = max(1, box_h // 3)
    ys, xs = component.nonzero()
    return {
        "fill_ratio": count / float(box_h * box_w),
        "taper": float(widths[-third:].mean() - widths[:third].mean()) / float(box_w),
        "aspect": float(box_w) / float(box_h),
        "shape_fraction": count / (h * w),
        "centroid": (float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h),
    }


def _pixels(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 3 + 2 * EDGE:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    return image[EDGE : image.shape[0] - EDGE, EDGE : image.shape[1] - EDGE].astype(np.float32)


def describe_image(image: np.ndarray) -> Description:
    """Background, shape colour and shape of an HxWx3 image (see the module for how)."""
    pixels = _pixels(image)
    background_rgb = np.median(_border(pixels), axis=0)
    background, background_distance = _nearest_color(background_rgb)
    plain = Description(background, None, None, background_distance=background_distance)
    smooth = _box3(pixels)
    to_background = _squared_distance(smooth, background_rgb)
    first_guess = _interior(to_background > MASK_DISTANCE**2)
    if first_guess.sum() < MIN_INTERIOR_PIXELS:
        return plain
    guess_rgb = np.median(pixels[first_guess], axis=0)
    shape_pixels = _squared_distance(smooth, guess_rgb) < to_background
    component = largest_component(shape_pixels)
    if not component.any():
        return plain
    shape_rgb = np.median(pixels[_interior(component)], axis=0)
    color, color_distance = _nearest_color(shape_rgb)
    contrast = float(np.linalg.norm(shape_rgb - background_rgb))
    geometry = _geometry(_opened(component))
    share = float(component.sum() / shape_pixels.sum())
    plain_shape = (
        SHAPE_FRACTION_RANGE[0] <= geometry["shape_fraction"] <= SHAPE_FRACTION_RANGE[1]
        and share >= MIN_COMPONENT_SHARE
        and ASPECT_RANGE[0] <= geometry["aspect"] <= ASPECT_RANGE[1]
        and contrast >= MIN_CONTRAST
    )
    shape = _classify(geometry["fill_ratio"], geometry["taper"]) if plain_shape else None
    if not plain_shape or color == background:  # no blob, or a shade of the background
        color = None
    return replace(
        plain,
        color=color,
        shape=shape,
        color_distance=color_distance,
        contrast=contrast,
        component_share=share,
        shape_frames=int(shape is not None),
        **geometry,
    )


def _majority(values: Sequence[str | None]) -> str | None:
    value, count = Counter(values).most_common(1)[0]
    return value if count * 2 > len(values) else None


def _direction(motion: tuple[float, float]) -> str | None:
    dx, dy = motion
    along, across = (abs(dx), abs(dy)) if abs(dx) >= abs(dy) else (abs(dy), abs(dx))
    if along < MIN_TRAVEL or across > MAX_CROSS_RATIO * along:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _motion(frames: Sequence[Description], count: int) -> tuple[float, float] | None:
    """Centroid displacement over the clip from a least-squares line through the frames that
    show a shape."""
    seen = [(i, d.centroid) for i, d in enumerate(frames) if d.shape is not None]
    if len(seen) < 2 or len(seen) * 2 < count:
        return None
    t = np.array([i for i, _ in seen], np.float64)
    xy = np.array([c for _, c in seen], np.float64)
    slope = np.polyfit(t, xy, 1)[0]
    return float(slope[0] * (count - 1)), float(slope[1] * (count - 1))


def describe_video(frames: np.ndarray) -> Description:
    """Background, shape colour, shape and direction of motion of (T, H, W, 3) frames."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"expected (T, H, W, 3) frames, got shape {frames.shape}")
    each = [describe_image(f) for f in frames]
    shown = [d for d in each if d.shape is not None] or each
    motion = _motion(each, len(each))

    def median(field: str) -> float:
        return float(np.median([getattr(d, field) for d in shown]))

    return Description(
        background=_majority([d.background for d in each]),
        color=_majority([d.color for d in each]),
        shape=_majority([d.shape for d in each]),
        direction=_direction(motion) if motion else None,
        background_distance=median("background_distance"),
        color_distance=median("color_distance"),
        contrast=median("contrast"),
        fill_ratio=median("fill_ratio"),
        taper=median("taper"),
        aspect=median("aspect"),
        shape_fraction=median("shape_fraction"),
        component_share=median("component_share"),
        centroid=shown[0].centroid,
        motion=motion,
        shape_frames=sum(d.shape is not None for d in each),
    )


def check(prompt: str, image_or_frames: np.ndarray) -> Verdict:
    """Whether an image (H, W, 3) or clip (T, H, W, 3) shows what a demo caption asks for.

    Raises ValueError for a prompt that is not a demo caption (`demo_data.parse_prompt`).
    """
    spec = parse_prompt(prompt)
    if spec is None:
        raise ValueError(f"not a demo caption: {prompt!r}")
    pixels = np.asarray(image_or_frames)
    described = describe_video(pixels) if pixels.ndim == 4 else describe_image(pixels)
    checks = [
        AttributeCheck("color", spec.color, described.color),
        AttributeCheck("shape", spec.shape, described.shape),
        AttributeCheck("background", spec.background, described.background),
    ]
    if spec.direction is not None:
        checks.append(AttributeCheck("direction", spec.direction, described.direction))
    return Verdict(prompt, tuple(checks), described)


def attribute_adherence(results: Iterable[Verdict], names: Iterable[str]) -> float:
    """Share of `results` whose checks of the attributes `names` (say "color", "background")
    all pass: what a model gets right when it does not yet follow whole prompts."""
    wanted = set(names)
    results = list(results)
    if not results:
        raise ValueError("no verdicts to score")
    return sum(not wanted & set(v.mismatches) for v in results) / len(results)


def adherence(results: Iterable[Verdict]) -> float:
    """The fraction of verdicts that passed."""
    verdicts = list(results)
    if not verdicts:
        raise ValueError("no verdicts to score")
    return sum(v.passed for v in verdicts) / len(verdicts)
