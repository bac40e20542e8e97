"""Schedules and samplers against diffusers' Euler schedulers on a toy epsilon model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

from jaxvideo.sampling import SAMPLER_FNS, TrainingSchedule, make_sigmas

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
    x0 = np.random.default_rng(2).standard_normal((2, 4, 4, 2)).astype(np.float32)
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
