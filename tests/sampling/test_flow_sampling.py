"""Flow-matching sampling for Wan: the schedules against diffusers' and their defining formulas,
UniPC and Euler against diffusers' schedulers stepping the same toy velocity field, and every
flow sampler against the closed-form flow ODE of Gaussian data.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from scipy import stats

from jaxvideo.sampling import flow_sigmas
from jaxvideo.sampling.flow_schedules import flow_timestep, time_shift
from jaxvideo.sampling.sampler_base import step_noise
from tests.support.sampling import (
    FLOW_SAMPLER_DEFAULT,
    FLOW_SAMPLER_DEFAULT_ETA,
    FLOW_SAMPLER_FNS,
    FLOW_SCHEDULES,
    SAMPLER_FNS,
)

DIM = 16
_W = (np.random.default_rng(0).standard_normal((DIM, DIM)) / 4).astype(np.float32)


def keys_for(*seeds: int) -> jax.Array:
    return jax.vmap(jax.random.key)(jnp.array(seeds))


def toy_velocity(x: np.ndarray, sigma: float) -> np.ndarray:
    """A smooth, sigma-dependent stand-in for Wan's velocity prediction (float32 throughout)."""
    sigma = np.float32(sigma)
    return np.tanh(x @ _W + np.float32(0.7) * sigma) * np.float32(0.8) + np.float32(0.3) * x - 0.5


class ToyFlowModel:
    """The flow denoiser x - sigma * v around toy_velocity; records every x it is evaluated at."""

    def __init__(self):
        self.inputs: list[np.ndarray] = []

    def __call__(self, x, sigma):
        x = np.asarray(x)
        self.inputs.append(x)
        return jnp.asarray(x - np.float32(sigma) * toy_velocity(x, sigma))


def start_noise(shape=(2, DIM), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------- schedules


def unipc_flow_scheduler(shift: float) -> UniPCMultistepScheduler:
    """What diffusers' Wan pipelines use (solver_order 2, bh2, predict_x0, lower_order_final)."""
    return UniPCMultistepScheduler(
        use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction"
    )


@pytest.mark.parametrize("shift", [3.0, 5.0, 1.0])
def test_discrete_is_diffusers_unipc_flow_schedule_bit_for_bit(shift):
    for steps in (1, 2, 5, 10, 30, 50):
        sched = unipc_flow_scheduler(shift)
        sched.set_timesteps(steps)
        ours = flow_sigmas("discrete", steps, shift)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, sched.sigmas.numpy(), err_msg=f"{steps} steps")
        # diffusers feeds int64 timesteps: ours, truncated.
        t = [flow_timestep(s) for s in ours[:-1]]
        np.testing.assert_allclose(t, sched.timesteps.numpy(), atol=1.0)


def test_default_and_normal_mean_discrete():
    for alias in ("default", "normal", "automatic"):
        np.testing.assert_array_equal(flow_sigmas(alias, 7, 5.0), flow_sigmas("discrete", 7, 5.0))


@pytest.mark.parametrize("name", FLOW_SCHEDULES)
def test_every_schedule_descends_from_at_most_one_to_zero(name):
    for steps in (1, 2, 7, 50):
        for shift in (1.0, 5.0):
            sigmas = flow_sigmas(name, steps, shift)
            assert sigmas.dtype == np.float32 and sigmas.shape == (steps + 1,)
            assert sigmas[-1] == 0 and 0 < sigmas[0] <= 1, (steps, shift)
            assert np.all(np.diff(sigmas) < 0), (steps, shift)


def unshift(sigma: np.ndarray, shift: float) -> np.ndarray:
    """Inverse of time_shift: the flow time u a shifted sigma came from."""
    sigma = sigma.astype(np.float64)
    return sigma / (shift - (shift - 1) * sigma)


@pytest.mark.parametrize("name", ["simple", "beta", "smoothstep"])
def test_timestep_schedules_are_their_unshifted_schedule_shifted(name):
    base = flow_sigmas(name, 12, 1.0)
    for shift in (3.0, 5.0):
        shifted = flow_sigmas(name, 12, shift)
        np.testing.assert_allclose(shifted, time_shift(base.astype(np.float64), shift), atol=1e-6)
        assert np.all(shifted[1:-1] > base[1:-1])  # a shift > 1 spends the steps at more noise


def test_simple_takes_every_nth_of_the_1000_training_sigmas():
    # With steps | 1000: flow times 1, 1 - 1/steps, ..., 1/steps (ComfyUI / sd.cpp "simple").
    for steps, shift in ((10, 5.0), (8, 3.0), (25, 1.0)):
        u = 1 - np.arange(steps) / steps
        np.testing.assert_allclose(flow_sigmas("simple", steps, shift)[:-1], time_shift(u, shift))
    # Otherwise the truncated index: 1000 // 3 = 333 training steps apart.
    np.testing.assert_allclose(flow_sigmas("simple", 3, 1.0), [1.0, 0.667, 0.334, 0.0], rtol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_karras_is_evenly_spaced_in_sigma_to_the_one_seventh(shift):
    sigmas = flow_sigmas("karras", 9, shift)[:-1].astype(np.float64)
    assert sigmas[0] == 1.0
    assert sigmas[-1] == pytest.approx(time_shift(0.001, shift), rel=1e-6)
    steps = np.diff(sigmas ** (1 / 7))
    np.testing.assert_allclose(steps, steps[0], rtol=1e-4)


@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_exponential_is_evenly_spaced_in_log_sigma(shift):
    sigmas = flow_sigmas("exponential", 9, shift)[:-1].astype(np.float64)
    assert sigmas[0] == 1.0
    assert sigmas[-1] == pytest.approx(time_shift(0.001, shift), rel=1e-6)
    steps = np.diff(np.log(sigmas))
    np.testing.assert_allclose(steps, steps[0], rtol=1e-4)


@pytest.mark.parametrize("option", ["use_karras_sigmas", "use_exponential_sigmas"])
def test_karras_and_exponential_match_diffusers_flow_match_euler_unshifted(option):
    # FlowMatchEuler converts its (shift-1) range 1 .. 1/1000 the same way.
    name = {"use_karras_sigmas": "karras", "use_exponential_sigmas": "exponential"}[option]
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, **{option: True})
    sched.set_timesteps(12)
    np.testing.assert_allclose(flow_sigmas(name, 12, 1.0), sched.sigmas.numpy(), rtol=2e-6)


def timestep_fraction(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Where in the training timesteps 0..999 each sigma lies, as a fraction of 999."""
    return (unshift(sigmas, shift) * 1000 - 1) / 999


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_beta_puts_the_timesteps_at_evenly_spaced_beta_quantiles(shift):
    steps = 10
    q = timestep_fraction(flow_sigmas("beta", steps, shift)[:-1], shift)
    cdf = stats.beta.cdf(q, 0.6, 0.6)
    np.testing.assert_allclose(cdf, 1 - np.arange(steps) / steps, atol=2e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_smoothstep_puts_the_timesteps_on_the_smoothstep_curve(shift):
    steps = 10
    q = timestep_fraction(flow_sigmas("smoothstep", steps, shift)[:-1], shift)
    u = 1 - np.arange(steps) / steps
    np.testing.assert_allclose(q, u * u * (3 - 2 * u), atol=2e-6)


@pytest.mark.parametrize(
    "args,message",
    [
        (("sgm", 10, 3.0), "unknown flow scheduler 'sgm'"),
        (("discrete", 0, 3.0), "steps must be at least 1"),
        (("discrete", 10, 0.0), "flow shift must be positive"),
        (("simple", 1001, 3.0), "repeats sigmas at 1001 steps"),
    ],
)
def test_bad_schedule_requests_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        flow_sigmas(*args)


def test_flow_timestep_is_sigma_times_1000():
    assert flow_timestep(np.float32(0.5)) == 500.0
    assert flow_timestep(0.12345) == pytest.approx(123.45)


# ---------------------------------------------------------------------- against diffusers


def run_diffusers(sched, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Step a diffusers flow scheduler on toy_velocity: (the x fed at each step, final x)."""
    sample = torch.from_numpy(x.copy())
    inputs = []
    for i, t in enumerate(sched.timesteps):
        inputs.append(sample.numpy().copy())
        v = torch.from_numpy(toy_velocity(sample.numpy(), float(sched.sigmas[i])))
        sample = sched.step(v, t, sample).prev_sample
    return inputs, sample.numpy()


def run_flow(sampler: str, x: np.ndarray, sigmas: np.ndarray, **kw):
    model = ToyFlowModel()
    out = FLOW_SAMPLER_FNS[sampler](model, jnp.asarray(x), sigmas, keys_for(0), **kw)
    return model.inputs, np.asarray(out)


def assert_same_trajectory(ours, theirs, atol):
    (our_inputs, our_out), (their_inputs, their_out) = ours, theirs
    assert len(our_inputs) == len(their_inputs)
    for i, (a, b) in enumerate(zip(our_inputs, their_inputs, strict=True)):
        np.testing.assert_allclose(a, b, atol=atol, err_msg=f"x at step {i}")
    np.testing.assert_allclose(our_out, their_out, atol=atol, err_msg="final x")


@pytest.mark.parametrize("shift", [3.0, 5.0])
@pytest.mark.parametrize("steps", [1, 2, 5, 10])
def test_unipc_reproduces_diffusers_unipc_flow_trajectory(steps, shift):
    sched = unipc_flow_scheduler(shift)
    sched.set_timesteps(steps)
    x = start_noise()
    ours = run_flow("unipc", x, flow_sigmas("discrete", steps, shift))
    assert_same_trajectory(ours, run_diffusers(sched, x), atol=1e-5)


@pytest.mark.parametrize("name", ["simple", "karras"])
def test_unipc_from_sigma_one_steps_as_diffusers_nudged_start(name):
    """A schedule starting at exactly 1 (alpha = 0, lambda = -inf) is stepped as diffusers
    steps it after nudging the start to 1 - 1e-6."""
    sigmas = flow_sigmas(name, 10, 3.0)
    assert sigmas[0] == 1.0
    sched = unipc_flow_scheduler(1.0)  # no shift on top of the given sigmas
    sched.set_timesteps(sigmas=sigmas[:-1].astype(np.float64))
    x = start_noise()
    ours = run_flow("unipc", x, sigmas)
    assert_same_trajectory(ours, run_diffusers(sched, x), atol=1e-5)


def test_flow_euler_is_diffusers_flow_match_euler():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(8)
    x = start_noise()
    ours = run_flow("euler", x, sched.sigmas.numpy())
    assert_same_trajectory(ours, run_diffusers(sched, x), atol=1e-5)


# --------------------------------------------------------------------- flow euler ancestral


def comfy_euler_ancestral_rf(model, x, sigmas, noises, eta):
    """ComfyUI's sample_euler_ancestral_RF, transcribed plainly (float64)."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = np.asarray(model(x.astype(np.float32), s), np.float64)
        if s_next == 0:
            x = denoised
            continue
        sigma_down = s_next * (1 + (s_next / s - 1) * eta)
        alpha_ip1, alpha_down = 1 - s_next, 1 - sigma_down
        renoise = (s_next**2 - sigma_down**2 * alpha_ip1**2 / alpha_down**2) ** 0.5
        ratio = sigma_down / s
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = (alpha_ip1 / alpha_down) * x + noises[i] * renoise
    return x


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_flow_euler_ancestral_is_comfyui_rf_ancestral(eta):
    sigmas = flow_sigmas("discrete", 6, 5.0)
    x = start_noise()
    noises = [np.asarray(step_noise(keys_for(0), i, x.shape, jnp.float32)) for i in range(6)]
    ref = comfy_euler_ancestral_rf(ToyFlowModel(), x.astype(np.float64), sigmas, noises, eta)
    _, ours = run_flow("euler_a", x, sigmas, eta=eta)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


# ---------------------------------------------------------------- Gaussian data, exactly

MU, STD = 0.4, 0.6  # data x0 ~ N(MU, STD^2) in every coordinate


@jax.jit
def gaussian_denoiser(x, sigma):
    """E[x0 | x] for x = (1 - sigma) x0 + sigma * noise: the exact flow-model x0 prediction."""
    alpha = 1 - sigma
    var = alpha**2 * STD**2 + sigma**2
    return MU + alpha * STD**2 / var * (x - alpha * MU)


def exact_flow_start(z: np.ndarray, sigma: float) -> np.ndarray:
    """x on the flow ODE path of standard score z at sigma; the path ends at MU + STD * z."""
    alpha = 1 - sigma
    return (alpha * MU + math.sqrt(alpha**2 * STD**2 + sigma**2) * z).astype(np.float32)


def flow_ode_error(sampler: str, sigmas: np.ndarray) -> float:
    """Max distance of the sampled endpoints from the exact flow ODE solution's."""
    z = start_noise((1, 512), seed=2)
    x = exact_flow_start(z, float(sigmas[0]))
    eta = 0.0 if sampler in FLOW_SAMPLER_DEFAULT_ETA else None
    out = FLOW_SAMPLER_FNS[sampler](gaussian_denoiser, jnp.asarray(x), sigmas, keys_for(0), eta=eta)
    return float(np.max(np.abs(np.asarray(out) - (MU + STD * z))))


FIRST_ORDER = {"euler", "euler_a", "ddim_trailing", "euler_ge"}


def test_flow_samplers_converge_to_the_exact_flow_ode_solution():
    sigmas = [flow_sigmas("discrete", n, 3.0) for n in (10, 40, 160)]
    errors = {name: [flow_ode_error(name, s) for s in sigmas] for name in FLOW_SAMPLER_FNS}
    for name, (coarse, _, fine) in errors.items():
        # Converging: 16x the steps cut the error at least 4x (or it is at float32's floor).
        assert fine < 0.05 and (fine < coarse / 4 or fine < 1e-3), (name, errors[name])
        if name not in FIRST_ORDER:
            assert fine < errors["euler"][2] / 5, (name, errors[name], errors["euler"])
    assert errors["unipc"][1] < 0.01, errors["unipc"]


@pytest.mark.parametrize("schedule", FLOW_SCHEDULES)
def test_every_flow_sampler_lands_near_the_solution_on_every_schedule(schedule):
    sigmas = flow_sigmas(schedule, 30, 3.0)
    for name in FLOW_SAMPLER_FNS:
        assert flow_ode_error(name, sigmas) < 0.25, name


@pytest.mark.parametrize("sampler", ["unipc", "euler_a"])
def test_a_schedule_split_in_two_runs_still_solves_the_ode(sampler):
    """Wan 2.2 runs its high- and low-noise experts as two sampler runs, the first ending at
    the boundary sigma, not 0."""
    sigmas = flow_sigmas("discrete", 40, 3.0)
    z = start_noise((1, 512), seed=2)
    x = jnp.asarray(exact_flow_start(z, float(sigmas[0])))
    for part in (sigmas[:21], sigmas[20:]):
        x = FLOW_SAMPLER_FNS[sampler](gaussian_denoiser, x, part, keys_for(0), eta=0.0)
    error = float(np.max(np.abs(np.asarray(x) - (MU + STD * z))))
    assert error < {"unipc": 0.02, "euler_a": 0.15}[sampler], error  # as in one run: 8e-3, 0.12


def test_flow_euler_ancestral_samples_the_data_distribution():
    """eta=1 re-noises every step, yet the outputs are N(MU, STD^2) (first order in steps)."""
    z = start_noise((4, 4096), seed=3)
    stds = []
    for steps in (25, 100):
        sigmas = flow_sigmas("discrete", steps, 3.0)
        out = np.asarray(
            FLOW_SAMPLER_FNS["euler_a"](
                gaussian_denoiser, jnp.asarray(z), sigmas, keys_for(*range(4))
            )
        )
        stds.append(float(out.std()))
    assert abs(out.mean() - MU) < 0.02
    assert abs(stds[1] / STD - 1) < 0.08 and stds[1] > stds[0], stds
    # The noise matters: the deterministic solver's output would be an affine map of z.
    assert abs(np.corrcoef(out.ravel(), z.ravel())[0, 1]) < 0.5


# ----------------------------------------------------------------------------- registry


def test_flow_registry():
    assert FLOW_SAMPLER_DEFAULT == "unipc" and FLOW_SAMPLER_DEFAULT in FLOW_SAMPLER_FNS
    assert set(FLOW_SAMPLER_FNS) - {"unipc"} <= set(SAMPLER_FNS)
    assert set(FLOW_SAMPLER_DEFAULT_ETA) <= set(FLOW_SAMPLER_FNS)
    assert FLOW_SAMPLER_FNS["euler_a"] is not SAMPLER_FNS["euler_a"]  # ours is the flow one
    assert "discrete" in FLOW_SCHEDULES


@pytest.mark.parametrize("sampler,twin", [("euler_a", "euler"), ("ddim_trailing", "euler")])
def test_flow_sampler_reduces_to_its_twin(sampler, twin):
    sigmas = flow_sigmas("discrete", 6, 3.0)
    x = start_noise()
    _, ours = run_flow(sampler, x, sigmas, eta=0.0)
    np.testing.assert_allclose(ours, run_flow(twin, x, sigmas)[1], atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddim_trailing", "res_multistep", "res_2s", "euler_ge"])
def test_variance_exploding_noise_is_never_added(sampler):
    sigmas = flow_sigmas("discrete", 6, 3.0)
    x = start_noise()
    _, plain = run_flow(sampler, x, sigmas)
    _, asked = run_flow(sampler, x, sigmas, eta=1.0)
    np.testing.assert_array_equal(asked, plain)


@pytest.mark.parametrize("sampler", FLOW_SAMPLER_FNS)
def test_flow_callback_runs_once_per_step(sampler):
    seen = []
    run_flow(
        sampler, start_noise(), flow_sigmas("discrete", 4, 3.0), callback=lambda *a: seen.append(a)
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
