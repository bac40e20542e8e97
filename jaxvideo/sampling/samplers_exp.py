"""Exponential integrators in lambda = -log(sigma): the DPM-Solver++ family, RES and ER-SDE.

These integrate the linear part of the ODE exactly and approximate only the denoiser, so they
take larger steps than Euler. Algorithms follow k-diffusion / ComfyUI and stable-diffusion.cpp's
denoiser.hpp (variance-exploding form: alpha = 1, lambda = -log sigma).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from jaxvideo.sampling.brownian import BrownianTreeNoise
from jaxvideo.sampling.sampler_base import (
    Denoiser,
    StepCallback,
    ancestral_step,
    lincomb,
    report,
    step_noise,
    to_d,
)


def _phi1(t: float) -> float:
    return 1.0 + t / 2 + t * t / 6 if abs(t) < 1e-6 else math.expm1(t) / t


def _phi2(t: float) -> float:
    return 0.5 + t / 6 + t * t / 24 if abs(t) < 1e-6 else (_phi1(t) - 1.0) / t


def sample_dpmpp_2s_ancestral(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """DPM-Solver++(2S) with ancestral noise: a midpoint evaluation in lambda, then noise."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_down)
            sigma_s = sigma * math.exp(-h / 2)  # the midpoint in lambda
            x2 = lincomb((x, sigma_s / sigma), (denoised, -math.expm1(-h / 2)))
            denoised2 = model(x2, sigma_s)
            x = lincomb((x, sigma_down / sigma), (denoised2, -math.expm1(-h)))
        if sigma_next > 0 and sigma_up > 0:
            x = lincomb((x, 1.0), (step_noise(keys, i, x.shape, x.dtype), sigma_up))
        report(callback, i + 1, n)
    return x


def _sample_dpmpp_2m(
    model: Denoiser, x: jax.Array, sigmas: np.ndarray, callback: StepCallback | None, v2: bool
) -> jax.Array:
    old_denoised = None
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        elif old_denoised is None:
            h = math.log(sigma) - math.log(sigma_next)
            x = lincomb((x, sigma_next / sigma), (denoised, -math.expm1(-h)))
        else:
            h = math.log(sigma) - math.log(sigma_next)
            h_last = math.log(float(sigmas[i - 1])) - math.log(sigma)
            if v2:
                # AUTOMATIC1111 discussion #8457: symmetric step ratio and averaged step size.
                r = max(h_last, h) / min(h_last, h)
                b = -math.expm1(-(h_last + h) / 2)
            else:
                r = h_last / h
                b = -math.expm1(-h)
            x = lincomb(
                (x, sigma_next / sigma),
                (denoised, b * (1 + 1 / (2 * r))),
                (old_denoised, -b / (2 * r)),
            )
        old_denoised = denoised
        report(callback, i + 1, n)
    return x


def sample_dpmpp_2m(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """DPM-Solver++(2M) (Lu et al. 2022), first order on the first and last steps."""
    return _sample_dpmpp_2m(model, x, sigmas, callback, v2=False)


def sample_dpmpp_2m_v2(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """stable-diffusion.cpp's modified DPM++(2M) ("dpm++2mv2")."""
    return _sample_dpmpp_2m(model, x, sigmas, callback, v2=True)


def _sample_dpmpp_2m_sde(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None,
    eta: float,
    brownian: bool,
) -> jax.Array:
    positive = [float(s) for s in sigmas if s > 0]
    tree = None
    if brownian and eta > 0 and len(positive) > 1:
        tree = BrownianTreeNoise(keys, x.shape, x.dtype, min(positive), max(positive))
    old_denoised, h_last = None, None
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            eta_h = eta * h
            b = -math.expm1(-h - eta_h)
            terms = [(x, sigma_next / sigma * math.exp(-eta_h)), (denoised, b)]
            if old_denoised is not None:
                # Midpoint second-order correction (k-diffusion solver_type="midpoint").
                r = h_last / h
                terms += [(denoised, 0.5 * b / r), (old_denoised, -0.5 * b / r)]
            if eta > 0:
                noise = (
                    tree(sigma, sigma_next)
                    if tree is not None
                    else step_noise(keys, i, x.shape, x.dtype)
                )
                terms.append((noise, sigma_next * math.sqrt(-math.expm1(-2 * eta_h))))
            x = lincomb(*terms)
            h_last = h
        old_denoised = denoised
        report(callback, i + 1, n)
    return x


def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """DPM-Solver++(2M) SDE, midpoint variant; fresh per-step noise. eta=0 gives dpm++2m."""
    return _sample_dpmpp_2m_sde(model, x, sigmas, keys, callback, eta, brownian=False)


def sample_dpmpp_2m_sde_bt(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """DPM-Solver++(2M) SDE with Brownian-tree noise: stable as the step count changes."""
    return _sample_dpmpp_2m_sde(model, x, sigmas, keys, callback, eta, brownian=True)


def sample_res_multistep(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """RES multistep (ComfyUI / stable-diffusion.cpp): second-order exponential Adams step.

    eta > 0 makes it ancestral (default 0).
    """
    old_denoised, old_sigma_down = None, None
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0 or old_denoised is None:
            x = lincomb((x, 1.0), (to_d(x, denoised, sigma), sigma_down - sigma))
        else:
            t, t_next = -math.log(sigma), -math.log(sigma_down)
            t_old, t_prev = -math.log(old_sigma_down), -math.log(float(sigmas[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            b2 = _phi2(-h) / c2
            b1 = _phi1(-h) - b2
            b1, b2 = (b if math.isfinite(b) else 0.0 for b in (b1, b2))
            x = lincomb((x, math.exp(-h)), (denoised, h * b1), (old_denoised, h * b2))
        if sigma_next > 0 and sigma_up > 0:
            x = lincomb((x, 1.0), (step_noise(keys, i, x.shape, x.dtype), sigma_up))
        old_denoised, old_sigma_down = denoised, sigma_down
        report(callback, i + 1, n)
    return x


def sample_res_2s(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """RES 2s: two-stage exponential Runge-Kutta (c2 = 1/2). eta > 0 adds ancestral noise."""
    c2 = 0.5
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = denoised
        else:
            t = -math.log(sigma)
            h = -math.log(sigma_down) - t
            a21 = c2 * _phi1(-h * c2)
            b2 = _phi2(-h) / c2
            b1 = _phi1(-h) - b2
            # x + h*a21*(denoised - x), i.e. the exact move to sigma_c2 for a frozen denoised.
            x2 = lincomb((x, 1.0 - h * a21), (denoised, h * a21))
            denoised2 = model(x2, math.exp(-(t + h * c2)))
            x = lincomb((x, 1.0 - h * (b1 + b2)), (denoised, h * b1), (denoised2, h * b2))
        if sigma_next > 0 and sigma_up > 0:
            x = lincomb((x, 1.0), (step_noise(keys, i, x.shape, x.dtype), sigma_up))
        report(callback, i + 1, n)
    return x


def _er_sde_noise_scaler(x: np.ndarray | float) -> np.ndarray | float:
    return x * (np.exp(np.power(x, 0.3)) + 10.0)


def sample_er_sde(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
    max_stage: int = 3,
) -> jax.Array:
    """Extended reverse-time SDE solver, third order (Cui et al. 2023, ER-SDE-Solver-3).

    ComfyUI's sample_er_sde for variance-exploding models (lambda = sigma); eta scales the
    injected noise (ComfyUI's s_noise), default 1.
    """
    points = 200
    lambdas = [max(float(s), 1e-6) if s > 0 else 0.0 for s in sigmas]
    old_denoised = old_denoised_d = None
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        stage = min(max_stage, i + 1)
        if sigma_next == 0:
            x = denoised
        else:
            lam_s, lam_t = lambdas[i], lambdas[i + 1]
            r = float(_er_sde_noise_scaler(lam_t) / _er_sde_noise_scaler(lam_s))
            x = lincomb((x, r), (denoised, 1.0 - r))
            if stage >= 2 and old_denoised is not None:
                dt = lam_t - lam_s
                step = -dt / points
                lam_pos = lam_t + np.arange(points) * step
                scaled_pos = _er_sde_noise_scaler(lam_pos)
                scaled_t = float(_er_sde_noise_scaler(lam_t))
                s = float(np.sum(1.0 / scaled_pos) * step)
                denoised_d = lincomb(
                    (denoised, 1 / (lam_s - lambdas[i - 1])),
                    (old_denoised, -1 / (lam_s - lambdas[i - 1])),
                )
                terms = [(x, 1.0), (denoised_d, dt + s * scaled_t)]
                if stage >= 3 and old_denoised_d is not None:
                    s_u = float(np.sum((lam_pos - lam_s) / scaled_pos) * step)
                    half_span = (lam_s - lambdas[i - 2]) / 2
                    denoised_u = lincomb(
                        (denoised_d, 1 / half_span), (old_denoised_d, -1 / half_span)
                    )
                    terms.append((denoised_u, dt**2 / 2 + s_u * scaled_t))
                x = lincomb(*terms)
                old_denoised_d = denoised_d
            noise_scale = eta * math.sqrt(max(lam_t**2 - lam_s**2 * r**2, 0.0))
            if noise_scale > 0:
                x = lincomb((x, 1.0), (step_noise(keys, i, x.shape, x.dtype), noise_scale))
        old_denoised = denoised
        report(callback, i + 1, n)
    return x
