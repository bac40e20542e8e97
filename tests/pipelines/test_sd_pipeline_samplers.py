"""Every sampler and every schedule generates through the SD pipeline (demo model)."""

import numpy as np
import pytest

from jaxvideo.demo import resolve_demo
from jaxvideo.pipelines.sd import StableDiffusionPipeline
from jaxvideo.request import build_request
from tests.support.sampling import SAMPLERS, SCHEDULERS


@pytest.fixture(scope="module")
def pipeline():
    return StableDiffusionPipeline(resolve_demo("demo:sd1-tiny"))


def generate(pipeline, **fields):
    req = build_request(
        {
            "prompt": "a fox",
            "width": 64,
            "height": 64,
            "steps": 3,
            "seed": 2,
            "guidance_scale": 1.5,
            **fields,
        }
    )
    steps = []
    image = pipeline.generate(req, progress=lambda i, n: steps.append((i, n))).images[0]
    return image, steps


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_generates_with_its_default_schedule(pipeline, sampler):
    image, steps = generate(pipeline, sampler=sampler, scheduler="default")
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert steps == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_schedule_generates(pipeline, scheduler):
    image, _ = generate(pipeline, sampler="euler", scheduler=scheduler)
    assert image.shape == (64, 64, 3)


def test_samplers_differ_from_each_other(pipeline):
    a, _ = generate(pipeline, sampler="euler", scheduler="karras", steps=4)
    b, _ = generate(pipeline, sampler="dpm++2m", scheduler="karras", steps=4)
    assert not np.array_equal(a, b)


def test_custom_sigmas_replace_the_schedule(pipeline):
    steps = []
    req = build_request(
        {
            "prompt": "a fox",
            "width": 64,
            "height": 64,
            "seed": 2,
            "sampler": "euler",
            "custom_sigmas": (14.6, 3.0, 0.5),
        }
    )
    image = pipeline.generate(req, progress=lambda i, n: steps.append(n)).images[0]
    assert image.shape == (64, 64, 3) and steps == [3, 3, 3]  # a final 0 was appended
    from jaxvideo.errors import InvalidRequest

    bad = build_request(
        {"prompt": "a fox", "width": 64, "height": 64, "seed": 2, "custom_sigmas": (1.0, 2.0)}
    )
    with pytest.raises(InvalidRequest):
        pipeline.generate(bad)


def test_shifted_timestep_feeds_the_unet_the_shifted_time(pipeline):
    """x0 = c_skip * x + c_out * eps(x / sqrt(sigma^2 + 1), t'), as sd.cpp defines the shift."""
    import jax.numpy as jnp

    from jaxvideo.sampling import shifted_timestep

    sigma, shift = 5.0, 500
    s = shifted_timestep(pipeline.schedule, sigma, shift)
    t, c_skip, c_out = pipeline._timestep(sigma, shift)
    assert (t, c_skip, c_out) == (s.t, s.c_skip, s.c_out) and t < 1000 * shift / 1000
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 8, 8, 4)), jnp.float32)
    ctx = pipeline.conditioner("a fox", "", -1, 64, 64).context[1:]
    got = pipeline._denoise(
        pipeline._unet_state,
        x * c_skip,
        jnp.float32(-c_out),
        jnp.float32(t),
        jnp.float32(c_out),
        ctx,
        None,
        None,
        jnp.float32(1.0),
        False,
        False,
    )
    unet = pipeline._unet_def, pipeline._unet_state
    from flax import nnx

    eps = nnx.merge(*unet)(x / np.sqrt(sigma**2 + 1), jnp.full((1,), t), ctx)
    np.testing.assert_allclose(got, c_skip * x + c_out * eps, atol=1e-5)
    req = build_request(
        {
            "prompt": "a fox",
            "width": 64,
            "height": 64,
            "steps": 2,
            "seed": 2,
            "shifted_timestep": shift,
        }
    )
    assert pipeline.generate(req).images[0].shape == (64, 64, 3)
