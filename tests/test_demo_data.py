"""The synthetic demo data (`jaxvideo.demo_data`) and the adherence checker that reads it back
(`jaxvideo.adherence`): determinism, caption grammar, geometry, and the checker's accuracy on
rendered ground truth, clean and degraded the way a small diffusion model's output is."""

import ast
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from jaxvideo import demo_data
from jaxvideo.adherence import (
    adherence,
    attribute_adherence,
    check,
    describe_image,
    describe_video,
    largest_component,
)
from jaxvideo.demo_data import (
    COLORS,
    DIRECTIONS,
    PALETTE,
    SHAPES,
    Clip,
    Scene,
    clip_batches,
    eval_prompts,
    image_batches,
    parse_prompt,
    random_clip,
    random_scene,
    render,
    render_clip,
)


def one_of(names: tuple[str, ...]) -> str:
    """A regex group matching any of `names`."""
    return "(" + "|".join(names) + ")"


COLOR, SHAPE, DIRECTION = one_of(COLORS), one_of(SHAPES), one_of(DIRECTIONS)
IMAGE_CAPTION = re.compile(f"a {COLOR} {SHAPE} on a {COLOR} background")
CLIP_CAPTION = re.compile(f"a {COLOR} {SHAPE} moving {DIRECTION} on a {COLOR} background")


def scenes(count: int, seed: int = 0) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [random_scene(rng) for _ in range(count)]


def clips(count: int, seed: int = 0) -> list[Clip]:
    rng = np.random.default_rng(seed)
    return [random_clip(rng) for _ in range(count)]


def degraded(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slight blur and additive Gaussian noise (sigma 12): what a small model's output is like."""
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.0)), np.float32)
    return np.clip(np.rint(blurred + rng.normal(0, 12, image.shape)), 0, 255).astype(np.uint8)


def border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


# --- the data ---------------------------------------------------------------------------------


def test_palette_colours_are_far_apart():
    assert set(PALETTE) == {"red", "green", "blue", "yellow", "white", "black", "orange", "purple"}
    closest = min(
        np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(PALETTE.values(), 2)
    )
    assert closest >= 80


def test_same_seed_same_stream_and_different_seeds_differ():
    def take(stream, n=3):
        return [next(stream) for _ in range(n)]

    first, again = take(image_batches(7, 4, 32, 32)), take(image_batches(7, 4, 32, 32))
    other = take(image_batches(8, 4, 32, 32))
    for (a, ca), (b, cb) in zip(first, again, strict=True):
        assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
        assert ca == cb
    assert any(not np.array_equal(a, b) for (a, _), (b, _) in zip(first, other, strict=True))

    videos, captions = next(clip_batches(3, 2, 9, 24, 16))
    again_videos, again_captions = next(clip_batches(3, 2, 9, 24, 16))
    assert videos.shape == (2, 9, 16, 24, 3) and videos.dtype == np.uint8
    np.testing.assert_array_equal(videos, again_videos)
    assert captions == again_captions
    assert not np.array_equal(videos, next(clip_batches(4, 2, 9, 24, 16))[0])


def test_captions_follow_the_grammar_and_cover_every_attribute():
    some_scenes, some_clips = scenes(300), clips(300)
    for scene in some_scenes:
        assert IMAGE_CAPTION.fullmatch(scene.caption), scene.caption
        assert scene.color != scene.background
    for clip in some_clips:
        assert CLIP_CAPTION.fullmatch(clip.caption), clip.caption
        assert clip.scene.color != clip.scene.background
    assert {s.color for s in some_scenes} == set(COLORS)
    assert {s.background for s in some_scenes} == set(COLORS)
    assert {s.shape for s in some_scenes} == set(SHAPES)
    assert {c.direction for c in some_clips} == set(DIRECTIONS)
    assert {c.scene.shape for c in some_clips} == set(SHAPES)
    assert {c.scene.color for c in some_clips} == set(COLORS)


def test_sizes_and_travel_are_in_range():
    for scene in scenes(300):
        assert 0.4 <= scene.size <= 0.7
    for clip in clips(300):
        first, last = clip.scene_at(0.0), clip.scene_at(1.0)
        moved = abs(last.cx - first.cx) + abs(last.cy - first.cy)
        assert 0.25 <= moved <= 0.4 + 1e-9


@pytest.mark.parametrize(("width", "height"), [(64, 64), (96, 64), (48, 80)])
def test_the_shape_stays_inside_the_frame_on_every_frame(width, height):
    for clip in clips(60, seed=width + height):
        video = render_clip(clip, 9, width, height)
        background = PALETTE[clip.scene.background]
        for t, frame in zip(np.linspace(0, 1, 9), video, strict=True):
            scene = clip.scene_at(float(t))
            half = scene.size * min(width, height) / 2
            x, y = scene.cx * width, scene.cy * height
            assert half <= x <= width - half and half <= y <= height - half
            # Nothing of the shape, not even an anti-aliased edge, reaches the frame's border.
            assert (border(frame) == background).all()
            assert (frame != background).any()


def test_render_draws_flat_colours_with_antialiased_edges():
    scene = Scene("circle", "red", "blue", 0.5, 0.5, 0.5)
    image = render(scene, 64, 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert tuple(image[32, 32]) == PALETTE["red"] and tuple(image[0, 0]) == PALETTE["blue"]
    pure = {PALETTE["red"], PALETTE["blue"]}
    mixed = {tuple(p) for p in image.reshape(-1, 3)} - pure
    assert mixed  # edge pixels blend the two colours
    area = np.mean(np.all(image == PALETTE["red"], axis=-1))
    assert area == pytest.approx(np.pi / 4 * 0.25, rel=0.1)


def test_a_shape_the_colour_of_its_background_is_no_scene():
    with pytest.raises(ValueError, match="both red"):
        Scene("square", "red", "red", 0.5, 0.5, 0.4)
    with pytest.raises(ValueError, match="unknown shape"):
        Scene("hexagon", "red", "blue", 0.5, 0.5, 0.4)


def test_parse_prompt_round_trips_every_caption():
    for caption in [s.caption for s in scenes(100)] + [c.caption for c in clips(100)]:
        spec = parse_prompt(caption)
        assert spec is not None and spec.caption == caption
    spec = parse_prompt("  A Red   CIRCLE moving UP\ton a blue BACKGROUND ")
    assert (spec.color, spec.shape, spec.background, spec.direction) == (
        "red",
        "circle",
        "blue",
        "up",
    )
    assert parse_prompt("a red circle on a blue background").direction is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a red circle",
        "a red circle on a red background",
        "a pink circle on a blue background",
        "a red hexagon on a blue background",
        "a red circle on a blue background.",
        "the red circle on a blue background",
        "a red circle moving sideways on a blue background",
        "a red circle on a blue background, masterpiece",
    ],
)
def test_parse_prompt_rejects_other_text(text):
    assert parse_prompt(text) is None


@pytest.mark.parametrize("kind", ["image", "video"])
def test_eval_prompts_are_fixed_and_cover_everything(kind):
    pairs = eval_prompts(kind, 24, seed=0)
    assert pairs == eval_prompts(kind, 24, seed=0) and pairs != eval_prompts(kind, 24, seed=1)
    assert len(pairs) == 24 and all(isinstance(seed, int) for _, seed in pairs)
    specs = [parse_prompt(prompt) for prompt, _ in pairs]
    assert all(specs)
    assert {s.color for s in specs} == set(COLORS) and {s.shape for s in specs} == set(SHAPES)
    directions = {s.direction for s in specs}
    assert directions == (set(DIRECTIONS) if kind == "video" else {None})
    with pytest.raises(ValueError):
        eval_prompts(kind, 7)


# --- the checker ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [128, 64])
def test_the_checker_reads_every_rendered_scene(size):
    verdicts = [check(s.caption, render(s, size, size)) for s in scenes(300, seed=size)]
    assert [str(v) for v in verdicts if not v.passed] == []
    assert adherence(verdicts) == 1.0


@pytest.mark.parametrize("frames", [9, 17])
def test_the_checker_reads_every_rendered_clip(frames):
    verdicts = [check(c.caption, render_clip(c, frames, 64, 64)) for c in clips(50, seed=frames)]
    assert [str(v) for v in verdicts if not v.passed] == []


@pytest.mark.parametrize("size", [128, 64])
def test_the_checker_tolerates_noise_and_blur(size):
    rng = np.random.default_rng(size)
    verdicts = [
        check(s.caption, degraded(render(s, size, size), rng)) for s in scenes(300, seed=size + 1)
    ]
    assert adherence(verdicts) >= 0.97, [str(v) for v in verdicts if not v.passed]


@pytest.mark.parametrize("frames", [9, 17])
def test_the_checker_tolerates_noise_and_blur_in_clips(frames):
    rng = np.random.default_rng(frames)
    verdicts = []
    for clip in clips(50, seed=frames + 1):
        video = render_clip(clip, frames, 64, 64)
        verdicts.append(check(clip.caption, np.stack([degraded(f, rng) for f in video])))
    assert adherence(verdicts) >= 0.97, [str(v) for v in verdicts if not v.passed]


def _edge_tinted(video: np.ndarray, depth: int) -> np.ndarray:
    """`video` with a grey ring `depth` pixels deep around every frame."""
    tinted = video.copy()
    tinted[:, :depth] = tinted[:, -depth:] = (70, 80, 80)
    tinted[:, :, :depth] = tinted[:, :, -depth:] = (70, 80, 80)
    return tinted


def test_the_checker_ignores_a_tinted_frame_edge():
    # What a VAE's zero padding does to a black background: its outermost ring turns grey.
    clip = Clip(Scene("circle", "orange", "black", 0.6, 0.5, 0.5), "left", 0.3)
    video = render_clip(clip, 9, 64, 64)
    assert check(clip.caption, _edge_tinted(video, 1)).passed
    # A tint two pixels deep is what the frame shows: a background that is not black.
    assert "background" in check(clip.caption, _edge_tinted(video, 2)).mismatches


def test_a_mismatched_prompt_fails_naming_the_attribute():
    image = render(Scene("triangle", "orange", "yellow", 0.4, 0.6, 0.45), 64, 64)
    assert check("a orange triangle on a yellow background", image).passed
    for prompt, wrong in [
        ("a red triangle on a yellow background", "color"),
        ("a orange circle on a yellow background", "shape"),
        ("a orange triangle on a white background", "background"),
    ]:
        verdict = check(prompt, image)
        assert not verdict.passed and verdict.mismatches == (wrong,)
        assert wrong in str(verdict)

    clip = Clip(Scene("square", "black", "white", 0.7, 0.5, 0.3), "left", 0.35)
    video = render_clip(clip, 9, 64, 64)
    assert check(clip.caption, video).passed
    verdict = check("a black square moving right on a white background", video)
    assert verdict.mismatches == ("direction",)
    assert check("a black square moving right on a white background", video[::-1]).passed
    # An image shows no motion at all.
    assert check(clip.caption, video[0]).mismatches == ("direction",)
    assert describe_video(np.stack([video[0]] * 9)).direction is None


def test_attribute_adherence_scores_only_the_attributes_named():
    image = render(Scene("triangle", "orange", "yellow", 0.4, 0.6, 0.45), 64, 64)
    verdicts = [
        check(prompt, image)
        for prompt in (
            "a orange triangle on a yellow background",  # right
            "a orange circle on a yellow background",  # shape wrong
            "a red circle on a yellow background",  # colour and shape wrong
            "a orange circle on a white background",  # shape and background wrong
        )
    ]
    assert adherence(verdicts) == 0.25
    assert attribute_adherence(verdicts, ["color", "background"]) == 0.5
    assert attribute_adherence(verdicts, ["color"]) == 0.75
    assert attribute_adherence(verdicts, ["shape"]) == 0.25
    assert attribute_adherence(verdicts, []) == 1.0
    with pytest.raises(ValueError):
        attribute_adherence([], ["color"])


def test_noise_and_empty_pictures_show_no_shape():
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(10)]
    pictures += [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(5)]
    for name in COLORS:  # noise around a palette colour, and that colour alone
        noisy = np.asarray(PALETTE[name]) + rng.normal(0, 60, (64, 64, 3))
        pictures.append(np.clip(noisy, 0, 255).astype(np.uint8))
        pictures.append(np.full((64, 64, 3), PALETTE[name], np.uint8))
    for picture in pictures:
        found = describe_image(picture)
        assert found.shape is None and found.color is None, found
        assert not check("a red circle on a blue background", picture).passed
    noise_clip = rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    assert not check("a red circle moving up on a blue background", noise_clip).passed


def test_check_wants_a_demo_caption_and_adherence_wants_verdicts():
    with pytest.raises(ValueError, match="not a demo caption"):
        check("a photo of a cat", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError):
        adherence([])


def test_largest_component_keeps_the_biggest_blob():
    mask = np.zeros((12, 12), bool)
    mask[1:4, 1:4] = True  # 9 pixels
    mask[6:11, 5:11] = True  # 30 pixels
    mask[8, 4] = True  # joined to the big blob
    mask[0, 11] = True  # alone
    expected = np.zeros_like(mask)
    expected[6:11, 5:11] = True
    expected[8, 4] = True
    np.testing.assert_array_equal(largest_component(mask), expected)
    assert not largest_component(np.zeros((4, 4), bool)).any()


def test_demo_data_and_the_checker_need_no_jax():
    """Training input pipelines and the web tests import these without JAX, Flask or torch."""
    from jaxvideo import adherence as adherence_module

    allowed = {"__future__", "collections", "dataclasses", "re", "typing", "numpy", "PIL"}
    for module in (demo_data, adherence_module):
        tree = ast.parse(Path(module.__file__).read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        outside = {n for n in names if n.split(".")[0] not in allowed}
        assert outside <= {"jaxvideo.demo_data"}, (module.__name__, outside)
