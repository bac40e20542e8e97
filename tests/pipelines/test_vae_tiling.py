"""Tiled VAE decoding covers the image seamlessly and equals the plain decode for one tile."""

import numpy as np
import pytest

from jaxvideo.demo import resolve_demo
from jaxvideo.pipelines.sd import StableDiffusionPipeline
from jaxvideo.tiling import VaeTiling, _starts, tiled_decode


def test_tile_origins_cover_the_extent_with_overlap():
    assert _starts(64, 32, 0.5) == [0, 16, 32]
    assert _starts(40, 32, 0.5) == [0, 8]
    assert _starts(16, 32, 0.5) == [0]


def test_a_smooth_decoder_is_reproduced_exactly_by_weighted_tiles():
    """Blending weights sum to one everywhere: a per-pixel decoder comes back unchanged."""
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((1, 20, 28, 4)).astype(np.float32)

    def decode(z):  # nearest-neighbour upsampling: each output pixel depends on one latent
        return np.repeat(np.repeat(np.asarray(z)[..., :3], 8, axis=1), 8, axis=2)

    tiled = tiled_decode(decode, latents, VaeTiling(8, 8, 0.5))
    np.testing.assert_allclose(tiled, decode(latents), atol=1e-5)


def test_from_sdcpp_reads_absolute_and_relative_sizes():
    assert VaeTiling.from_sdcpp(tile_size_x=16, tile_size_y=24) == VaeTiling(16, 24, 0.5)
    rel = VaeTiling.from_sdcpp(rel_size_x=0.5, rel_size_y=2, latent_width=64, latent_height=48)
    assert (rel.tile_width, rel.tile_height) == (32, 24)
    assert VaeTiling.from_sdcpp() == VaeTiling(32, 32, 0.5)


@pytest.fixture(scope="module")
def demo_pipeline():
    return StableDiffusionPipeline(resolve_demo("demo:sd1-tiny"))


def test_tiled_decode_of_a_real_vae_is_seamless(demo_pipeline):
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((1, 24, 24, 4)).astype(np.float32)
    full = demo_pipeline.decode(latents).astype(np.float32)
    whole = demo_pipeline.decode(latents, VaeTiling(24, 24, 0.5)).astype(np.float32)
    # One tile == plain decode, up to rounding: the two are separately compiled programs
    # (the plain one converts to uint8 on device), whose fp32 sums may differ in the last bit.
    assert np.abs(whole - full).max() <= 1 and (whole != full).mean() < 1e-3
    tiled = demo_pipeline.decode(latents, VaeTiling(12, 12, 0.5)).astype(np.float32)
    assert tiled.shape == full.shape
    # No seam: the jump across tile borders is no larger than anywhere else in the image.
    jumps = np.abs(np.diff(tiled, axis=2)).mean(axis=(0, 1, 3))
    borders = [x * 8 - 1 for x in (6, 12, 18)]
    assert jumps[borders].max() < 3 * np.median(jumps)
