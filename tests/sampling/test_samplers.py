"""Every sampler against a reference: a diffusers scheduler fed identical noise where one is
faithful, else the published algorithm transcribed plainly in numpy; plus toy denoisers whose
answers are known (a single data point, Gaussian data with a closed-form probability-flow ODE).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxvideo.sampling import TrainingSchedule, make_sigmas
from jaxvideo.sampling.brownian import BrownianTreeNoise
from jaxvideo.sampling.sampler_base import step_noise
from tests.support.sampler_references import REFERENCES
from tests.support.sampling import (
    SAMPLER_DEFAULT_ETA,
    SAMPLER_DEFAULT_SCHEDULE,
    SAMPLER_FNS,
    SAMPLER_NEEDS_UNCOND,
    SAMPLERS,
    SCHEDULERS,
)

SD = TrainingSchedule()  # SD 1.x: scaled_linear 0.00085..0.012 over 1000 steps
# One latent shape throughout (big enough for variance checks): on CPU the compiles are the cost.
SHAPE = (1, 32, 32, 2)
SDCPP_SAMPLERS = (
    "euler", "euler_a", "heun", "dpm2", "dpm++2s_a", "dpm++2m", "dpm++2mv2", "ipndm", "ipndm_v",
    "lcm", "ddim_trailing", "tcd", "res_multistep", "res_2s", "er_sde", "euler_cfg_pp",
    "euler_a_cfg_pp", "euler_ge", "dpm++2m_sde", "dpm++2m_sde_bt", "lms",
)  # fmt: skip
DIFFUSERS_KWARGS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def keys_for(*seeds: int) -> jax.Array:
    return jax.vmap(jax.random.key)(jnp.array(seeds))


def unit_noise(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def toy_eps(x_in: np.ndarray, t: float, uncond: bool = False) -> np.ndarray:
    """A smooth, time-dependent stand-in for a UNet's noise prediction."""
    return np.tanh((0.5 if uncond else 0.7) * x_in + 0.001 * t) * 0.9


class ToyModel:
    """k-diffusion denoiser around toy_eps, usable from numpy and as the samplers' model."""

    def __init__(self, round_t: bool = False):
        self.round_t = round_t  # diffusers' DPM-Solver feeds the UNet rounded timesteps

    def denoise(self, x: np.ndarray, sigma: float, uncond: bool = False) -> np.ndarray:
        sigma = float(sigma)
        t = float(SD.sigma_to_t(np.float64(sigma)))
        t = round(t) if self.round_t else t
        return x - sigma * toy_eps(x / math.sqrt(sigma**2 + 1), t, uncond)

    def __call__(self, x, sigma, return_uncond: bool = False):
        x = np.asarray(x)
        out = jnp.asarray(self.denoise(x, sigma), jnp.float32)
        if return_uncond:
            return out, jnp.asarray(self.denoise(x, sigma, uncond=True), jnp.float32)
        return out


def run(sampler, model, x, sigmas, seed=0, eta=None, callback=None, **kw) -> np.ndarray:
    out = SAMPLER_FNS[sampler](model, jnp.asarray(x), sigmas, keys_for(seed), callback, eta, **kw)
    return np.asarray(out)


def noises_for(seed: int, n: int, shape=SHAPE) -> list[np.ndarray]:
    """The noise our samplers draw at steps 0..n-1, to feed the references."""
    return [np.asarray(step_noise(keys_for(seed), i, shape, jnp.float32)) for i in range(n)]


def test_registry_has_stable_diffusion_cpp_names():
    assert SAMPLERS == SDCPP_SAMPLERS
    assert set(SAMPLERS) >= SAMPLER_NEEDS_UNCOND
    assert set(SAMPLER_DEFAULT_ETA) <= set(SAMPLERS)
    assert set(SAMPLER_DEFAULT_SCHEDULE.values()) <= set(SCHEDULERS)
    assert SAMPLER_DEFAULT_SCHEDULE == {"lcm": "lcm", "tcd": "lcm", "ddim_trailing": "simple"}


# --- diffusers twins ------------------------------------------------------------------------


class ReplayNoise:
    """Stands in for diffusers' randn_tensor, returning the noise our sampler draws per step."""

    def __init__(self, noises):
        self.noises = list(noises)

    def __call__(self, shape, **kw):
        return torch.from_numpy(self.noises.pop(0))


def run_k_scheduler(sched, steps, x_unit):
    """A diffusers k-diffusion-style scheduler (x = x0 + sigma * noise) on the toy model."""
    sched.set_timesteps(steps)
    x = torch.from_numpy(x_unit) * sched.init_noise_sigma
    x_start = x.numpy().copy()
    for t in sched.timesteps:
        eps = toy_eps(sched.scale_model_input(x, t).numpy(), float(t))
        x = sched.step(torch.from_numpy(eps), t, x).prev_sample
    return x_start, x.numpy()


@pytest.mark.parametrize(
    "sampler,cls_name,module",
    [
        ("heun", "HeunDiscreteScheduler", None),
        ("dpm2", "KDPM2DiscreteScheduler", None),
        ("lms", "LMSDiscreteScheduler", None),
        ("euler_a", "EulerAncestralDiscreteScheduler", "scheduling_euler_ancestral_discrete"),
    ],
)
def test_k_samplers_match_diffusers(sampler, cls_name, module, monkeypatch):
    # diffusers' LMS integrates its coefficients with scipy (a test requirement).
    import diffusers

    steps, x_unit = 8, unit_noise(1)
    if module is not None:
        replay = ReplayNoise(noises_for(0, steps))
        monkeypatch.setattr(getattr(diffusers.schedulers, module), "randn_tensor", replay)
    sched = getattr(diffusers, cls_name)(**DIFFUSERS_KWARGS, timestep_spacing="linspace")
    x_start, ref = run_k_scheduler(sched, steps, x_unit)
    sigmas = make_sigmas(SD, "discrete", steps)
    # Heun and KDPM2 list each inner sigma twice (one per model evaluation).
    np.testing.assert_allclose(sigmas, np.unique(sched.sigmas.numpy())[::-1], rtol=1e-5)
    ours = run(sampler, ToyModel(), x_start, sigmas)
    np.testing.assert_allclose(ours, ref, atol=3e-4)


def run_vp_scheduler(sched, steps, x_unit, step_kw=lambda i: {}):
    """A diffusers DDPM-parameterised scheduler (x_vp = x_k * sqrt(alpha)) on the toy model."""
    sched.set_timesteps(steps)
    x = torch.from_numpy(x_unit)
    for i, t in enumerate(sched.timesteps):
        eps = torch.from_numpy(toy_eps(x.numpy(), float(t)))
        x = sched.step(eps, t, x, **step_kw(i))[0]
    return x.numpy()


def vp_to_k(x_unit: np.ndarray, sigma: float) -> np.ndarray:
    return x_unit * np.float32(math.sqrt(1 + float(sigma) ** 2))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_trailing_matches_diffusers_ddim_trailing(eta):
    from diffusers import DDIMScheduler

    steps, x_unit = 10, unit_noise(2)
    noises = noises_for(0, steps)
    sched = DDIMScheduler(**DIFFUSERS_KWARGS, timestep_spacing="trailing", clip_sample=False)
    step_kw = lambda i: {"eta": eta, "variance_noise": torch.from_numpy(noises[i])}  # noqa: E731
    ref = run_vp_scheduler(sched, steps, x_unit, step_kw)
    sigmas = make_sigmas(SD, SAMPLER_DEFAULT_SCHEDULE["ddim_trailing"], steps)
    ours = run("ddim_trailing", ToyModel(), vp_to_k(x_unit, sigmas[0]), sigmas, eta=eta)
    np.testing.assert_allclose(ours, ref, atol=3e-4)


@pytest.mark.parametrize(
    "sampler,algorithm", [("dpm++2m", "dpmsolver++"), ("dpm++2m_sde", "sde-dpmsolver++")]
)
def test_dpmpp_2m_family_matches_diffusers_dpm_solver(sampler, algorithm):  # fmt: skip
    from diffusers import DPMSolverMultistepScheduler

    steps, x_unit = 10, unit_noise(3)
    noises = noises_for(0, steps)
    sched = DPMSolverMultistepScheduler(
        **DIFFUSERS_KWARGS,
        algorithm_type=algorithm,
        solver_order=2,
        use_karras_sigmas=True,
        final_sigmas_type="zero",
    )
    step_kw = lambda i: {"variance_noise": torch.from_numpy(noises[i])}  # noqa: E731
    ref = run_vp_scheduler(sched, steps, x_unit, step_kw)
    sigmas = make_sigmas(SD, "karras", steps)
    np.testing.assert_allclose(sigmas, sched.sigmas.numpy(), rtol=1e-5)
    ours = run(sampler, ToyModel(round_t=True), vp_to_k(x_unit, sigmas[0]), sigmas)
    np.testing.assert_allclose(ours, ref, atol=3e-4)


@pytest.mark.parametrize("sampler,eta", [("lcm", None), ("tcd", None), ("tcd", 0.0)])
def test_consistency_samplers_match_diffusers(sampler, eta, monkeypatch):
    import diffusers.schedulers.scheduling_lcm as lcm_module
    import diffusers.schedulers.scheduling_tcd as tcd_module

    steps, x_unit = 4, unit_noise(4)
    module = lcm_module if sampler == "lcm" else tcd_module
    monkeypatch.setattr(module, "randn_tensor", ReplayNoise(noises_for(0, steps)))
    if sampler == "lcm":
        sched = module.LCMScheduler(**DIFFUSERS_KWARGS)
        step_kw = lambda i: {}  # noqa: E731
    else:
        sched = module.TCDScheduler(**DIFFUSERS_KWARGS)
        gamma = SAMPLER_DEFAULT_ETA["tcd"] if eta is None else eta
        step_kw = lambda i: {"eta": gamma}  # noqa: E731
    ref = run_vp_scheduler(sched, steps, x_unit, step_kw)
    sigmas = make_sigmas(SD, SAMPLER_DEFAULT_SCHEDULE[sampler], steps)
    np.testing.assert_allclose(SD.sigma_to_t(sigmas[:-1]), sched.timesteps.numpy(), atol=1e-2)
    ours = run(sampler, ToyModel(), vp_to_k(x_unit, sigmas[0]), sigmas, eta=eta)
    np.testing.assert_allclose(ours, ref, atol=3e-4)


# --- published algorithms, transcribed plainly ----------------------------------------------


@pytest.mark.parametrize(
    "sampler,eta", [(name, eta) for name, (_, etas) in REFERENCES.items() for eta in etas]
)
def test_sampler_matches_its_published_algorithm(sampler, eta):
    ref_fn, _ = REFERENCES[sampler]
    steps = 8
    sigmas = make_sigmas(SD, "karras", steps)
    x = unit_noise(5) * sigmas[0]
    model = ToyModel()
    ref_eta = SAMPLER_DEFAULT_ETA.get(sampler, 0.0) if eta is None else eta
    s64 = [float(v) for v in sigmas]
    ref = ref_fn(model, x.astype(np.float64), s64, noises_for(0, steps), eta=ref_eta)
    np.testing.assert_allclose(run(sampler, model, x, sigmas, eta=eta), ref, atol=3e-4)


# --- toy denoisers with known answers -------------------------------------------------------


class PointModel:
    """Data that is a single point: the exact denoiser returns it whatever x and sigma."""

    def __init__(self, x0: np.ndarray):
        self.x0 = jnp.asarray(x0)

    def __call__(self, x, sigma, return_uncond=False):
        return (self.x0, self.x0) if return_uncond else self.x0


class GaussianModel:
    """Data ~ N(0, s^2) per element: the exact denoiser is x * s^2 / (s^2 + sigma^2)."""

    def __init__(self, s: float = 1.0):
        self.s2 = s * s

    def __call__(self, x, sigma, return_uncond=False):
        out = x * (self.s2 / (self.s2 + float(sigma) ** 2))
        return (out, out) if return_uncond else out


def karras_sigmas(steps: int, sigma_min: float = 0.005, sigma_max: float = 14.6) -> np.ndarray:
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / 7), sigma_max ** (1 / 7)
    return np.append((hi + ramp * (lo - hi)) ** 7, 0.0).astype(np.float32)


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "tcd"])
def test_every_sampler_lands_on_a_single_data_point(sampler):
    # tcd ends on the t=0 training sample, sqrt(a0)*x0 + sqrt(1-a0)*eps, as diffusers does.
    x0 = unit_noise(6)
    sigmas = make_sigmas(SD, SAMPLER_DEFAULT_SCHEDULE.get(sampler, "karras"), 6)
    x = x0 + unit_noise(7) * sigmas[0]
    np.testing.assert_allclose(run(sampler, PointModel(x0), x, sigmas), x0, atol=2e-5)


# Deterministic ODE solvers (stochastic ones with eta=0), and which of them are higher order.
ODE_SAMPLERS = {
    "euler": None, "heun": None, "dpm2": None, "dpm++2m": None, "dpm++2mv2": None,
    "ipndm": None, "ipndm_v": None, "lms": None, "res_multistep": None, "res_2s": None,
    "euler_ge": None, "ddim_trailing": None, "euler_cfg_pp": None, "euler_a": 0.0,
    "dpm++2s_a": 0.0, "dpm++2m_sde": 0.0, "dpm++2m_sde_bt": 0.0, "euler_a_cfg_pp": 0.0,
}  # fmt: skip
FIRST_ORDER = {"euler", "ddim_trailing", "euler_cfg_pp", "euler_a", "euler_a_cfg_pp", "euler_ge"}
# Neither is a consistent second-order method on uneven log-sigma steps: euler_ge's gamma=2
# extrapolation and dpm++2mv2's averaged step (A1111 discussion 8457) only approach it.
WEAK = {"euler_ge", "dpm++2mv2"}


def pf_ode_error(sampler: str, steps: int) -> float:
    """Max error against the closed-form probability-flow ODE solution for N(0, 1) data."""
    sigmas = karras_sigmas(steps)
    x_t = unit_noise(8) * math.sqrt(1 + float(sigmas[0]) ** 2)  # a sample of the marginal
    exact = x_t / math.sqrt(1 + float(sigmas[0]) ** 2)  # x(sigma) ~ sqrt(s^2 + sigma^2)
    out = run(sampler, GaussianModel(1.0), x_t, sigmas, eta=ODE_SAMPLERS[sampler])
    return float(np.max(np.abs(out - exact)))


def test_ode_samplers_converge_on_gaussian_data():
    errors = {name: (pf_ode_error(name, 8), pf_ode_error(name, 16)) for name in ODE_SAMPLERS}
    for name, (coarse, fine) in errors.items():
        assert fine < coarse, (name, coarse, fine)
        if name in WEAK:
            continue
        # Halving the step roughly halves a first-order error; higher orders do better.
        assert fine < coarse * (0.7 if name in FIRST_ORDER else 0.4), (name, coarse, fine)
        if name not in FIRST_ORDER:
            assert fine < errors["euler"][1] / 2, (name, fine, errors["euler"][1])


@pytest.mark.parametrize(
    "sampler,eta",
    [
        ("euler_a", None), ("dpm++2s_a", None), ("dpm++2m_sde", None), ("dpm++2m_sde_bt", None),
        ("er_sde", None), ("euler_a_cfg_pp", None), ("ddim_trailing", 1.0),
        ("res_multistep", 1.0), ("res_2s", 1.0), ("euler_ge", 1.0),
    ],
)  # fmt: skip
def test_sde_samplers_reach_the_data_variance(sampler, eta):
    """Gaussian data N(0, 0.25): the stochastic samplers' outputs have that variance.

    (Euler-type ancestral steps are first order: 0.77 of it at 24 steps, 0.89 at 48.)
    """
    sigmas = karras_sigmas(48, sigma_min=0.03)
    x = unit_noise(9) * math.sqrt(0.25 + float(sigmas[0]) ** 2)
    out = run(sampler, GaussianModel(0.5), x, sigmas, seed=3, eta=eta)
    assert abs(np.var(out) / 0.25 - 1) < 0.15, np.var(out)
    # The noise must matter: the deterministic solver's output is a fixed rescaling of x.
    assert abs(np.corrcoef(out.ravel(), x.ravel())[0, 1]) < 0.9


@pytest.mark.parametrize(
    "sampler,twin,eta",
    [
        ("dpm++2m_sde", "dpm++2m", 0.0),
        ("dpm++2m_sde_bt", "dpm++2m", 0.0),
        ("ddim_trailing", "euler", None),
        ("euler_a", "euler", 0.0),
        ("euler_cfg_pp", "euler", None),
        ("euler_a_cfg_pp", "euler_a", None),
    ],
)
def test_sampler_reduces_to_its_twin(sampler, twin, eta):
    """eta=0 removes the SDE part; CFG++ without guidance (uncond == cond) is plain Euler."""
    sigmas = make_sigmas(SD, "karras", 6)
    x = unit_noise(10) * sigmas[0]
    model = GaussianModel(0.8)
    ours = run(sampler, model, x, sigmas, eta=eta)
    np.testing.assert_allclose(ours, run(twin, model, x, sigmas, eta=eta), atol=1e-5)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_every_scheduler_without_nan(sampler):
    model = GaussianModel(1.0)
    for scheduler in SCHEDULERS:
        sigmas = make_sigmas(SD, scheduler, 3)
        out = run(sampler, model, unit_noise(11) * sigmas[0], sigmas)
        assert np.all(np.isfinite(out)), scheduler
        assert np.max(np.abs(out)) < 50, scheduler  # three big steps may overshoot, not explode


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_callback_runs_once_per_step(sampler):
    seen = []
    sigmas = make_sigmas(SD, "karras", 4)
    run(
        sampler,
        GaussianModel(),
        unit_noise(12) * sigmas[0],
        sigmas,
        callback=lambda *a: seen.append(a),
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize(
    "sampler", [s for s in SAMPLERS if SAMPLER_DEFAULT_ETA.get(s) or s == "lcm"]
)
def test_stochastic_samplers_are_per_sample_and_batch_independent(sampler):
    sigmas = make_sigmas(SD, SAMPLER_DEFAULT_SCHEDULE.get(sampler, "karras"), 4)
    x = np.concatenate([unit_noise(13), unit_noise(14)]) * sigmas[0]
    model = GaussianModel()
    batched = SAMPLER_FNS[sampler](model, jnp.asarray(x), sigmas, keys_for(5, 6))
    alone = SAMPLER_FNS[sampler](model, jnp.asarray(x[1:]), sigmas, keys_for(6))
    np.testing.assert_allclose(np.asarray(batched)[1:], np.asarray(alone), atol=1e-5)
    again = SAMPLER_FNS[sampler](model, jnp.asarray(x[1:]), sigmas, keys_for(7))
    assert not np.allclose(np.asarray(again), np.asarray(alone))  # the seed matters


@pytest.mark.parametrize("sampler", sorted(SAMPLER_NEEDS_UNCOND))
def test_cfg_pp_samplers_require_the_uncond_contract(sampler):
    sigmas = make_sigmas(SD, "karras", 2)
    with pytest.raises(TypeError, match="return_uncond"):
        run(sampler, lambda x, sigma: x, unit_noise(15) * sigmas[0], sigmas)


def test_brownian_tree_is_one_path_in_sigma():
    keys = keys_for(3)
    tree = BrownianTreeNoise(keys, SHAPE, jnp.float32, 0.03, 14.6)
    other = BrownianTreeNoise(keys, SHAPE, jnp.float32, 0.03, 14.6)
    a, b, c = 0.5, 2.0, 9.0
    # W is a pure function of t: query order does not matter...
    np.testing.assert_allclose(np.asarray(tree.w(b)), np.asarray((other.w(c), other.w(b))[1]))
    # ...so interval noises add up like increments of one path.
    whole = np.asarray(tree(a, c)) * math.sqrt(c - a)
    parts = np.asarray(tree(a, b)) * math.sqrt(b - a) + np.asarray(tree(b, c)) * math.sqrt(c - b)
    np.testing.assert_allclose(whole, parts, atol=1e-5)
    assert np.allclose(np.asarray(tree.w(0.03)), 0)


def test_brownian_noise_is_standard_normal_and_independent_across_intervals():
    tree = BrownianTreeNoise(keys_for(4), SHAPE, jnp.float32, 0.03, 14.6)
    first, second = np.asarray(tree(1.0, 1.3)).ravel(), np.asarray(tree(1.3, 4.0)).ravel()
    for z in (first, second):
        assert abs(np.mean(z)) < 0.1 and abs(np.var(z) - 1) < 0.1
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.1
