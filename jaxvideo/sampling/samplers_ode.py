"""Probability-flow ODE solvers that step in sigma: Heun, DPM2, iPNDM, LMS and Euler-GE.

Each follows k-diffusion / stable-diffusion.cpp (denoiser.hpp): the derivative is
d = (x - denoised) / sigma and a step moves x by a weighted sum of derivatives times dt.
"""

from __future__ import annotations

import jax
import numpy as np
from numpy.polynomial import Polynomial

from jaxvideo.sampling.sampler_base import (
    Denoiser,
    StepCallback,
    ancestral_step,
    lincomb,
    report,
    step_noise,
    to_d,
)


def sample_heun(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """Heun's method (Karras et al. 2022, Algorithm 1 without churn); Euler on the last step."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        d = to_d(x, model(x, sigma), sigma)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = lincomb((x, 1.0), (d, dt))
        else:
            x2 = lincomb((x, 1.0), (d, dt))
            d2 = to_d(x2, model(x2, sigma_next), sigma_next)
            x = lincomb((x, 1.0), (d, dt / 2), (d2, dt / 2))
        report(callback, i + 1, n)
    return x


def sample_dpm2(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """DPM-Solver-2 in k-diffusion's form: the derivative taken at the log-midpoint sigma."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        d = to_d(x, model(x, sigma), sigma)
        if sigma_next == 0:
            x = lincomb((x, 1.0), (d, -sigma))
        else:
            sigma_mid = float(np.exp(0.5 * (np.log(sigma) + np.log(sigma_next))))
            x2 = lincomb((x, 1.0), (d, sigma_mid - sigma))
            d2 = to_d(x2, model(x2, sigma_mid), sigma_mid)
            x = lincomb((x, 1.0), (d2, sigma_next - sigma))
        report(callback, i + 1, n)
    return x


# Adams-Bashforth weights for equal steps, newest derivative first (iPNDM, Zhang & Chen 2023).
_ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def _sample_ipndm(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    callback: StepCallback | None,
    variable_step: bool,
) -> jax.Array:
    history: list[jax.Array] = []  # up to three previous derivatives, newest last
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        d = to_d(x, model(x, sigma), sigma)
        order = min(4, i + 1)
        dt = sigma_next - sigma
        weights = _ADAMS_BASHFORTH[order]
        if variable_step and order == 2:
            # iPNDM_v: second-order Adams-Bashforth for unequal steps, as stable-diffusion.cpp
            # does it (its third/fourth orders keep the equal-step weights).
            ratio = dt / (sigma - float(sigmas[i - 1]))
            weights = ((2 + ratio) / 2, -ratio / 2)
        past = [d, *reversed(history)]
        x = lincomb((x, 1.0), *((p, w * dt) for p, w in zip(past, weights, strict=True)))
        history = [*history[-2:], d]
        report(callback, i + 1, n)
    return x


def sample_ipndm(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """Improved PNDM: Adams-Bashforth up to fourth order on the stored derivatives."""
    return _sample_ipndm(model, x, sigmas, callback, variable_step=False)


def sample_ipndm_v(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """iPNDM with the variable-step second-order formula of stable-diffusion.cpp."""
    return _sample_ipndm(model, x, sigmas, callback, variable_step=True)


def lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t[i], t[i+1]] of the Lagrange basis polynomial of node t[i-j].

    k-diffusion integrates it numerically (scipy.integrate.quad); the polynomial is of degree
    order-1, so integrating it exactly is both cheaper and more accurate.
    """
    basis = Polynomial([1.0])
    for k in range(order):
        if k != j:
            basis *= Polynomial([-t[i - k], 1.0]) / (t[i - j] - t[i - k])
    antiderivative = basis.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


def sample_lms(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
    order: int = 4,
) -> jax.Array:
    """Linear multistep (k-diffusion sample_lms): polynomial extrapolation of d in sigma."""
    t = np.asarray(sigmas, dtype=np.float64)
    history: list[jax.Array] = []  # newest last
    n = len(sigmas) - 1
    for i in range(n):
        sigma = float(sigmas[i])
        history = [*history[-(order - 1) :], to_d(x, model(x, sigma), sigma)]
        cur_order = min(i + 1, order)
        coeffs = [lms_coefficient(cur_order, t, i, j) for j in range(cur_order)]
        x = lincomb((x, 1.0), *zip(reversed(history), coeffs, strict=True))
        report(callback, i + 1, n)
    return x


def sample_euler_ge(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
    ge_gamma: float = 2.0,
) -> jax.Array:
    """Gradient-estimation Euler (Permenter & Yuan 2024): d_bar = gamma*d + (1-gamma)*d_prev.

    As stable-diffusion.cpp: the last step lands on the denoised prediction, and eta > 0 makes
    it ancestral (default 0, deterministic).
    """
    old_d = None
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
            d = to_d(x, denoised, sigma)
            dt = sigma_down - sigma
            if old_d is None:
                x = lincomb((x, 1.0), (d, dt))
            else:
                x = lincomb((x, 1.0), (d, ge_gamma * dt), (old_d, (1 - ge_gamma) * dt))
            old_d = d
            if sigma_up > 0:
                x = lincomb((x, 1.0), (step_noise(keys, i, x.shape, x.dtype), sigma_up))
        report(callback, i + 1, n)
    return x
