"""Schedules (all of them) and the Euler samplers against diffusers on a toy epsilon model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

from jaxvideo.sampling import TrainingSchedule, make_sigmas
from tests.support.sampling import SAMPLER_FNS, SCHEDULERS

SD_SCHEDULE = TrainingSchedule()  # SD 1.x: scaled_linear 0.00085..0.012 over 1000 steps


def toy_eps(x_in: np.ndarray, t: float) -> np.ndarray:
    """A smooth, time-dependent stand-in for a UNet's noise prediction."""
    return np.tanh(0.7 * x_in + 0.001 * t) * 0.9


def diffusers_scheduler(cls, use_karras: bool):
    return (
        cls(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="linspace",
            use_karras_sigmas=use_karras,
        )
        if cls is EulerDiscreteScheduler
        else cls(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="linspace",
        )
    )


@pytest.mark.parametrize("scheduler,use_karras", [("discrete", False), ("karras", True)])
def test_sigmas_and_timesteps_match_diffusers_euler(scheduler, use_karras):
    ref = diffusers_scheduler(EulerDiscreteScheduler, use_karras)
    ref.set_timesteps(12)
    sigmas = make_sigmas(SD_SCHEDULE, scheduler, 12)
    np.testing.assert_allclose(sigmas, ref.sigmas.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        SD_SCHEDULE.sigma_to_t(sigmas[:-1]), ref.timesteps.numpy(), rtol=1e-5, atol=1e-3
    )


def run_ours(sampler: str, scheduler: str, steps: int, x0: np.ndarray, seed: int) -> np.ndarray:
    sigmas = make_sigmas(SD_SCHEDULE, scheduler, steps)

    def model(x, sigma):
        t = float(SD_SCHEDULE.sigma_to_t(np.asarray(sigma)))
        c_in = 1.0 / np.sqrt(float(sigma) ** 2 + 1.0)
        eps = toy_eps(np.asarray(x) * c_in, t)
        return x - float(sigma) * jnp.asarray(eps)

    keys = jax.vmap(jax.random.key)(jnp.array([seed]))
    x = jnp.asarray(x0) * sigmas[0]
    return np.asarray(SAMPLER_FNS[sampler](model, x, sigmas, keys))


def run_diffusers_euler(steps: int, x0: np.ndarray, use_karras: bool) -> np.ndarray:
    sched = diffusers_scheduler(EulerDiscreteScheduler, use_karras)
    sched.set_timesteps(steps)
    x = torch.from_numpy(x0) * sched.init_noise_sigma
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        eps = torch.from_numpy(toy_eps(x_in.numpy(), float(t)))
        x = sched.step(eps, t, x).prev_sample
    return x.numpy()


@pytest.mark.parametrize("scheduler,use_karras", [("discrete", False), ("karras", True)])
def test_euler_matches_diffusers(scheduler, use_karras):
    x0 = np.random.default_rng(0).standard_normal((1, 4, 4, 2)).astype(np.float32)
    ours = run_ours("euler", scheduler, 10, x0, seed=0)
    ref = run_diffusers_euler(10, x0, use_karras)
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_euler_ancestral_step_matches_diffusers_given_the_same_noise():
    """Each ancestral update equals diffusers' EulerAncestral step fed identical noise."""
    from jaxvideo.sampling.samplers import _ancestral_update

    steps = 8
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32))
    sched = diffusers_scheduler(EulerAncestralDiscreteScheduler, False)
    sched.set_timesteps(steps)
    ours_sigmas = make_sigmas(SD_SCHEDULE, "discrete", steps)
    np.testing.assert_allclose(ours_sigmas, sched.sigmas.numpy(), rtol=1e-5, atol=1e-6)
    x = x * sched.init_noise_sigma
    draw = torch.Generator().manual_seed(7)  # replays the noise diffusers draws
    gen = torch.Generator().manual_seed(7)
    for i, t in enumerate(sched.timesteps):
        sigma, sigma_next = float(sched.sigmas[i]), float(sched.sigmas[i + 1])
        eps = torch.from_numpy(toy_eps(sched.scale_model_input(x, t).numpy(), float(t)))
        noise = torch.randn(x.shape, generator=draw)
        denoised = x - sigma * eps
        ours = _ancestral_update(
            jnp.asarray(x.numpy()),
            jnp.asarray(denoised.numpy()),
            sigma,
            sigma_next,
            jnp.asarray(noise.numpy()),
            1.0,
        )
        x = sched.step(eps, t, x, generator=gen).prev_sample
        np.testing.assert_allclose(np.asarray(ours), x.numpy(), atol=1e-4)


def test_ancestral_noise_is_per_sample_and_batch_independent():
    """Image i of a batch equals the image generated alone with the same seed."""
    # test_samplers.py's latent shape, so the noise draw compiles once for both files.
    x0 = np.random.default_rng(2).standard_normal((2, 32, 32, 2)).astype(np.float32)
    batched = run_ours_batch(x0, seeds=[5, 6])
    alone = run_ours_batch(x0[1:], seeds=[6])
    np.testing.assert_allclose(batched[1:], alone, atol=1e-6)
    assert not np.allclose(batched[0], batched[1])


def run_ours_batch(x0: np.ndarray, seeds: list[int]) -> np.ndarray:
    sigmas = make_sigmas(SD_SCHEDULE, "discrete", 5)

    def model(x, sigma):
        return x * 0.5

    keys = jax.vmap(jax.random.key)(jnp.array(seeds))
    return np.asarray(SAMPLER_FNS["euler_a"](model, jnp.asarray(x0), sigmas, keys))


def test_progress_callback_reports_every_step():
    seen = []
    sigmas = make_sigmas(SD_SCHEDULE, "karras", 4)
    keys = jax.vmap(jax.random.key)(jnp.array([0]))
    SAMPLER_FNS["euler"](
        lambda x, s: x * 0.1, jnp.ones((1, 2)), sigmas, keys, lambda i, n: seen.append((i, n))
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


# --- every schedule -------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_schedule_descends_from_sigma_max_to_zero(scheduler):
    sigma_max = float(SD_SCHEDULE.sigmas()[-1])
    for steps in (1, 2, 3, 7, 20, 50):
        sigmas = make_sigmas(SD_SCHEDULE, scheduler, steps)
        assert sigmas.dtype == np.float32 and sigmas.shape == (steps + 1,), steps
        assert sigmas[-1] == 0 and np.all(sigmas[:-1] > 0), steps
        assert np.all(np.diff(sigmas) < 0), (steps, sigmas)
        np.testing.assert_allclose(sigmas[0], sigma_max, rtol=1e-5)


@pytest.mark.parametrize("scheduler", ["discrete", "karras", "exponential", "kl_optimal"])
def test_range_schedules_end_at_sigma_min(scheduler):
    sigmas = make_sigmas(SD_SCHEDULE, scheduler, 9)
    np.testing.assert_allclose(sigmas[-2], SD_SCHEDULE.sigmas()[0], rtol=1e-5)


def test_exponential_matches_diffusers():
    ref = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        use_exponential_sigmas=True,
    )
    ref.set_timesteps(12)
    np.testing.assert_allclose(make_sigmas(SD_SCHEDULE, "exponential", 12), ref.sigmas, rtol=1e-5)


@pytest.mark.parametrize("steps", [8, 10, 25])
def test_simple_is_diffusers_trailing_spacing_when_steps_divide_1000(steps):
    ref = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
    )
    ref.set_timesteps(steps)
    np.testing.assert_allclose(make_sigmas(SD_SCHEDULE, "simple", steps), ref.sigmas, rtol=1e-5)


def test_lcm_schedule_picks_diffusers_lcm_timesteps():
    from diffusers import LCMScheduler

    for steps in (1, 4, 8, 50):
        ref = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        ref.set_timesteps(steps)
        expected = SD_SCHEDULE.sigmas()[ref.timesteps.numpy()]
        np.testing.assert_allclose(make_sigmas(SD_SCHEDULE, "lcm", steps)[:-1], expected)
    with pytest.raises(ValueError, match="at most 50"):
        make_sigmas(SD_SCHEDULE, "lcm", 51)


def log_interp_sigma(t: np.ndarray) -> np.ndarray:
    """k-diffusion's t_to_sigma: log-sigma interpolated between integer timesteps."""
    return np.exp(np.interp(t, np.arange(1000), np.log(SD_SCHEDULE.sigmas().astype(np.float64))))


@pytest.mark.parametrize(
    "scheduler,timesteps",
    [
        ("sgm_uniform", lambda n: np.linspace(999, 0, n + 1)[:-1]),
        ("smoothstep", lambda n: (lambda u: u * u * (3 - 2 * u))(1 - np.arange(n) / n) * 999),
    ],
)
def test_timestep_schedules_follow_their_definition(scheduler, timesteps):
    for steps in (3, 12):
        expected = log_interp_sigma(timesteps(steps))
        np.testing.assert_allclose(
            make_sigmas(SD_SCHEDULE, scheduler, steps)[:-1], expected, rtol=1e-5
        )


def test_kl_optimal_is_even_in_arctan_sigma():
    angles = np.arctan(make_sigmas(SD_SCHEDULE, "kl_optimal", 9)[:-1].astype(np.float64))
    np.testing.assert_allclose(np.diff(angles), np.diff(angles)[0], rtol=1e-4)


def test_beta_schedule_uses_beta_quantiles_of_the_timesteps():
    from scipy import stats

    from jaxvideo.sampling.schedules import beta_ppf

    p = np.linspace(0, 1, 41)
    np.testing.assert_allclose(beta_ppf(p, 0.6, 0.6), stats.beta.ppf(p, 0.6, 0.6), atol=1e-9)
    np.testing.assert_allclose(beta_ppf(p, 2.0, 0.5), stats.beta.ppf(p, 2.0, 0.5), atol=1e-9)
    for steps in (4, 30):
        t = stats.beta.ppf(1 - np.arange(steps) / steps, 0.6, 0.6) * 999
        np.testing.assert_allclose(
            make_sigmas(SD_SCHEDULE, "beta", steps)[:-1], log_interp_sigma(t), rtol=1e-5
        )


def test_ays_is_the_published_table_log_linearly_stretched():
    from jaxvideo.sampling.schedule_tables import AYS_NOISE_LEVELS

    sd1, sdxl = np.array(AYS_NOISE_LEVELS["SD1.5"]), np.array(AYS_NOISE_LEVELS["SDXL"])
    np.testing.assert_allclose(make_sigmas(SD_SCHEDULE, "ays", 10)[:-1], sd1[:-1], rtol=1e-6)
    # 20 steps put the 10-step table on every other point; the rest are log-midpoints.
    twenty = make_sigmas(SD_SCHEDULE, "ays", 20).astype(np.float64)
    np.testing.assert_allclose(twenty[:-1:2], sd1[:-1], rtol=1e-6)
    np.testing.assert_allclose(
        twenty[1:-1:2],
        np.sqrt(sd1[:-2] * sd1[1:-1])[:9].tolist() + [np.sqrt(sd1[-2] * sd1[-1])],
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        make_sigmas(SD_SCHEDULE, "ays", 10, table="SDXL")[:-1], sdxl[:-1], rtol=1e-6
    )
    with pytest.raises(ValueError, match="AYS table"):
        make_sigmas(SD_SCHEDULE, "ays", 10, table="flux")


def test_gits_uses_its_optimised_rows_up_to_20_steps():
    from jaxvideo.sampling.schedule_tables import GITS_INTERIOR, GITS_SIGMA_MAX

    for steps in (2, 5, 20):
        expected = [GITS_SIGMA_MAX, *GITS_INTERIOR[steps - 2]]
        np.testing.assert_allclose(
            make_sigmas(SD_SCHEDULE, "gits", steps)[:-1], expected, rtol=1e-6
        )
    np.testing.assert_allclose(
        make_sigmas(SD_SCHEDULE, "gits", 10)[:4],
        [14.61464119, 5.85520077, 2.84484982, 1.67050016],
        rtol=1e-6,
    )


def test_aliases_and_unknown_names():
    np.testing.assert_array_equal(
        make_sigmas(SD_SCHEDULE, "normal", 5), make_sigmas(SD_SCHEDULE, "discrete", 5)
    )
    with pytest.raises(KeyError):
        make_sigmas(SD_SCHEDULE, "flux", 5)


def test_custom_sigmas_are_validated_and_end_in_zero():
    from jaxvideo.sampling import custom_sigmas

    np.testing.assert_array_equal(
        custom_sigmas([14.6, 3.0, 0.5]), np.float32([14.6, 3.0, 0.5, 0.0])
    )
    np.testing.assert_array_equal(custom_sigmas((2.0, 1.0, 0.0)), np.float32([2.0, 1.0, 0.0]))
    for bad in (
        [],
        [0.0],
        [1.0, 1.0],
        [1.0, 2.0],
        [3.0, float("nan")],
        [2.0, -1.0],
        ["x"],
        [1.0, 0.0, 0.5],
    ):
        with pytest.raises(ValueError):
            custom_sigmas(bad)


def test_shifted_timestep_rescales_the_denoiser_to_the_shifted_sigma():
    from jaxvideo.sampling import shifted_timestep

    train = SD_SCHEDULE.sigmas().astype(np.float64)
    same = shifted_timestep(SD_SCHEDULE, train[600], 1000)
    assert (
        same.t == 600
        and same.c_skip == pytest.approx(1.0)
        and same.c_out == pytest.approx(-train[600])
    )
    half = shifted_timestep(SD_SCHEDULE, train[600], 500)  # t' = 600 * 500 / 1000
    assert half.t == 300 and half.c_out == pytest.approx(-train[300], rel=1e-6)
    assert half.c_skip == pytest.approx(np.sqrt(train[300] ** 2 + 1) / np.sqrt(train[600] ** 2 + 1))
    with pytest.raises(ValueError):
        shifted_timestep(SD_SCHEDULE, 1.0, 0)
