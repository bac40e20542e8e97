"""Step caching (jaxvideo.sampling.cache_modes, step_cache): option parsing, the forecasts the
policies make, and what a cached sampler run does on a real pipeline (the random SD demo; the
trained demos' quality bounds are measured through the server in tests/web/test_e2e_cache.py).
"""

from __future__ import annotations

from dataclasses import replace

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvideo.errors import InvalidRequest
from jaxvideo.sampling import cache_modes, step_cache
from jaxvideo.sampling.cache_modes import parse


def test_every_mode_parses_with_sd_cpp_defaults_and_round_trips_through_the_codec():
    from jaxvideo.request import GenerationRequest
    from jaxvideo.request_codec import decode_request, encode_request

    for mode in cache_modes.MODES:
        cache = parse(mode)
        assert dict(cache.options) == cache_modes.defaults(mode)
        data, arrays = encode_request(GenerationRequest(step_cache=cache))
        assert decode_request(data, arrays).step_cache == cache
    assert parse("ucache")["threshold"] == 1.0 and parse("easycache")["threshold"] == 0.2
    assert parse("dbcache")["threshold"] == 0.08 and parse("dbcache")["warmup"] == 8
    assert parse("spectrum")["w"] == 0.4 and parse("spectrum")["stop"] == 0.9
    assert parse("cache-dit", "fn=4,Bn=2")["Fn"] == 4  # sd.cpp takes either case
    assert parse("disabled") is None and parse("") is None


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("fast",), "cache_mode"),
        (("easycache", "decay=0.5"), "cache_option"),
        (("ucache", "threshold=nan"), "cache_option"),
        (("spectrum", "w=1.5"), "cache_option"),
        (("taylorseer", "order=4"), "cache_option"),
        (("taylorseer", "", "1,0,2"), "scm_mask"),
        (("spectrum", "", "1,0"), "scm_mask"),
    ],
)
def test_bad_modes_options_and_masks_are_refused_by_field(args, field):
    with pytest.raises(InvalidRequest) as info:
        parse(*args)
    assert info.value.field == field


def test_a_model_refuses_modes_of_the_other_architecture_and_cfg_pp_samplers():
    cache_modes.check("ucache", cache_modes.UNET_MODES, needs_uncond=False)
    with pytest.raises(InvalidRequest, match="its modes: ucache, spectrum"):
        cache_modes.check("easycache", cache_modes.UNET_MODES, needs_uncond=False)
    with pytest.raises(InvalidRequest, match="CFG\\+\\+"):
        cache_modes.check("spectrum", cache_modes.DIT_MODES, needs_uncond=True)


def test_taylor_extrapolation_is_exact_on_a_polynomial_of_its_order():
    taylor = step_cache._Taylor(order=2)
    for call in (0, 2, 4):  # computed every other call
        taylor.update(jnp.full((2,), 1.0 + 0.5 * call), call)
    # First differences of a line are exact: 1 + 0.5 * 5 at call 5.
    np.testing.assert_allclose(np.asarray(taylor.extrapolate(5)), 3.5, rtol=1e-6)


def test_spectrum_forecast_follows_a_smooth_trajectory():
    sigmas = np.linspace(1.0, 0.0, 21)
    policy = step_cache._Spectrum(parse("spectrum", "lam=0,w=1"), sigmas)
    line = lambda count: 2.0 - 0.03 * count  # noqa: E731
    for count in range(4):
        policy.calls = count
        policy.computed(None, None, jnp.full((3,), line(count)), 0.5)
    # With no ridge and all weight on the Chebyshev fit, a line is forecast exactly.
    weights = policy.weights(6)
    forecast = sum(w * line(c) for w, c in zip(weights, range(4), strict=True))
    assert forecast == pytest.approx(line(6), rel=1e-6)


@pytest.fixture(scope="module")
def engine():
    from jaxvideo.config import config_from_dict
    from jaxvideo.engine import Engine

    config = {"models": [{"name": "sd", "family": "sd1", "path": "demo:sd1-tiny"}]}
    return Engine(config_from_dict(config))


def _generate(engine, **fields):
    from jaxvideo.request import build_request

    defaults = engine.model_info("sd").defaults
    request = build_request({"prompt": "a cat", "seed": 3, "steps": 12, **fields}, {}, defaults)
    return engine.generate(replace(request, model="sd"))


def test_a_cached_run_reports_its_skips_and_stays_near_the_uncached_picture(engine):
    from jaxvideo import quality

    plain = _generate(engine, sampler="euler")
    assert "step_cache" not in plain.info
    for mode in cache_modes.UNET_MODES:
        cached = _generate(engine, sampler="euler", step_cache=parse(mode))
        info = cached.info["step_cache"]
        assert info["mode"] == mode and info["denoiser_calls"] == 12
        assert 0 < info["skipped"] < 12 and info["computed"] + info["skipped"] == 12
        assert quality.psnr(plain.images[0], cached.images[0]) > 20.0, mode
    # A threshold of 0 never skips, so the picture is exactly the uncached one.
    exact = _generate(engine, sampler="euler", step_cache=parse("ucache", "threshold=0"))
    assert exact.info["step_cache"]["skipped"] == 0
    np.testing.assert_array_equal(exact.images[0], plain.images[0])


def test_the_engine_refuses_dit_modes_on_a_unet_and_does_not_batch_cached_requests(engine):
    from jaxvideo.request import build_request

    defaults = engine.model_info("sd").defaults
    request = replace(
        build_request({"prompt": "x", "step_cache": parse("easycache")}, {}, defaults), model="sd"
    )
    with pytest.raises(InvalidRequest) as info:
        engine.prepare(request)
    assert info.value.field == "step_cache"
    cached = replace(request, step_cache=parse("spectrum"))
    assert engine.batch_key(cached) is None
    assert engine.batch_key(replace(cached, step_cache=None)) is not None
    assert engine.model_info("sd").cache_modes == cache_modes.UNET_MODES


def _benchmark(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_step_cache_benchmark_reports_each_mode():
    argv = ["--model", "demo:sd1-tiny", "--prompts", "8", "--steps", "8", "--sampler", "euler"]
    reports = _benchmark("step_cache").main(argv)
    assert [r["mode"] for r in reports] == list(cache_modes.UNET_MODES)
    for report in reports:
        assert report["calls"] == 64 and 0 < report["computed"] < 64
        assert report["call_ratio"] == pytest.approx(64 / report["computed"], abs=1e-3)
        assert 0.0 < report["ssim"] < 1.0 and report["psnr"] > 0


def test_the_sampler_benchmark_measures_against_its_reference():
    argv = ["--model", "demo:sd1-tiny", "--prompts", "8", "--steps", "6"]
    argv += ["--samplers", "euler", "euler_a", "--reference", "euler:6"]
    reports = {r["sampler"]: r for r in _benchmark("sampler_quality").main(argv)}
    assert reports["euler"]["ssim"] == 1.0  # the reference itself
    assert reports["euler_a"]["ssim"] < 1.0  # ancestral noise takes it elsewhere
