"""Hires fix: a first pass at the request's size, upscaled and refined at the hires size."""

import numpy as np
import pytest

from jaxvideo.demo import resolve_demo
from jaxvideo.hires import HiresFix
from jaxvideo.pipelines.sd import StableDiffusionPipeline
from jaxvideo.request import build_request


@pytest.fixture(scope="module")
def pipeline():
    return StableDiffusionPipeline(resolve_demo("demo:sd1-tiny"))


def run(pipeline, upscaler="latent", strength=0.5, seed=4):
    hires = HiresFix(128, 96, steps=4, strength=strength, upscaler=upscaler)
    req = build_request(
        {
            "prompt": "a fox",
            "width": 64,
            "height": 48,
            "steps": 3,
            "sampler": "euler",
            "seed": seed,
            "hires": hires,
        }
    )
    seen = []
    result = pipeline.generate(req, progress=lambda i, n: seen.append((i, n)))
    return result.images[0], seen


@pytest.mark.parametrize("upscaler", ["latent", "latent-nearest", "lanczos"])
def test_hires_fix_outputs_the_hires_size_and_reports_both_passes(pipeline, upscaler):
    image, seen = run(pipeline, upscaler)
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    assert [n for _, n in seen] == [5] * 5  # 3 first-pass steps + 2 (half of 4) second-pass
    assert [i for i, _ in seen] == [1, 2, 3, 4, 5]


def test_hires_fix_is_reproducible_and_seed_dependent(pipeline):
    a, _ = run(pipeline)
    b, _ = run(pipeline)
    c, _ = run(pipeline, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_hires_settings_are_validated():
    with pytest.raises(ValueError):
        HiresFix(100, 96)
    with pytest.raises(ValueError):
        HiresFix(128, 96, upscaler="esrgan")
