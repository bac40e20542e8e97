"""UniPC (Zhao et al. 2023) for rectified-flow models, as diffusers runs Wan.

The same algorithm as diffusers' UniPCMultistepScheduler with use_flow_sigmas=True and
prediction_type="flow_prediction" at its defaults: data prediction (predict_x0), B(h) = e^-h - 1
("bh2"), second order, the UniC corrector after every model evaluation, first order on the first
and the last step (lower_order_final). Flow parameterisation: x = alpha * x0 + sigma * noise with
alpha = 1 - sigma, and lambda = log(alpha / sigma).

With bh2 and data prediction, B(h) equals h * phi_1(h) = e^-h - 1, so every update is
    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) (m_s + correction)
where m is the denoiser's output (the x0 prediction) and h = lambda_t - lambda_s.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from jaxvideo.sampling.sampler_base import Denoiser, StepCallback, lincomb, report

# Sigma 1 is pure noise: alpha = 0 and lambda = -inf. diffusers (and Wan's own solver) start the
# discrete schedule at 1 - 1e-6 instead, stored as float32; coefficients here cap every sigma
# there, so a schedule that starts at exactly 1 steps as diffusers would step it.
_SIGMA_CAP = float(np.float32(1.0 - 1e-6))


def _capped(sigma: float) -> float:
    return min(sigma, _SIGMA_CAP)


def _lambda(sigma: float) -> float:
    """Log signal-to-noise ratio log(alpha / sigma) of a positive (capped) flow sigma."""
    return math.log(1.0 - sigma) - math.log(sigma)


def _predictor(
    x: jax.Array,
    sigma: float,
    sigma_next: float,
    denoised: jax.Array,
    previous: tuple[float, jax.Array] | None,
) -> jax.Array:
    """UniP step from sigma to sigma_next > 0; second order when `previous` (sigma, denoised)."""
    s0, t = _capped(sigma), _capped(sigma_next)
    h = _lambda(t) - _lambda(s0)
    a = (1.0 - t) * math.expm1(-h)
    if previous is None:
        return lincomb((x, t / s0), (denoised, -a))
    sigma_prev, denoised_prev = previous
    rk = (_lambda(_capped(sigma_prev)) - _lambda(s0)) / h
    # rho_p = 1/2 on D1 = (m_prev - m0) / rk, as diffusers simplifies the order-2 predictor.
    k = 0.5 * a / rk
    return lincomb((x, t / s0), (denoised, k - a), (denoised_prev, -k))


def _corrector_weights(h: float, rk: float) -> tuple[float, float]:
    """(rho_prev, rho_t) of the order-2 UniC: the 2x2 system R rho = b of diffusers, solved."""
    hh = -h
    phi = math.expm1(hh)
    b1 = (phi / hh - 1.0) / phi
    b2 = 2.0 * ((phi / hh - 1.0) / hh - 0.5) / phi
    rho_prev = (b1 - b2) / (1.0 - rk)
    return rho_prev, b1 - rho_prev


def _corrector(
    x_last: jax.Array,
    sigma_last: float,
    sigma: float,
    denoised_last: jax.Array,
    denoised: jax.Array,
    previous: tuple[float, jax.Array] | None,
) -> jax.Array:
    """UniC: redo the step sigma_last -> sigma from x_last, now knowing the model at sigma.

    Order 1 without `previous`, else order 2 using (sigma, denoised) from the step before.
    """
    s0, t = _capped(sigma_last), _capped(sigma)
    h = _lambda(t) - _lambda(s0)
    a = (1.0 - t) * math.expm1(-h)
    if previous is None:
        return lincomb((x_last, t / s0), (denoised_last, -0.5 * a), (denoised, -0.5 * a))
    sigma_prev, denoised_prev = previous
    rk = (_lambda(_capped(sigma_prev)) - _lambda(s0)) / h
    rho_prev, rho_t = _corrector_weights(h, rk)
    k = a * rho_prev / rk  # on D1 = (m_prev - m0) / rk
    return lincomb(
        (x_last, t / s0),
        (denoised_last, a * rho_t + k - a),
        (denoised, -a * rho_t),
        (denoised_prev, -k),
    )


def sample_unipc(
    model: Denoiser,
    x: jax.Array,
    sigmas: np.ndarray,
    keys: jax.Array,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> jax.Array:
    """UniPC-2 (bh2, data prediction) for flow models; deterministic, eta is ignored.

    `model(x, sigma)` must return the x0 prediction x - sigma * v. One model evaluation per
    step: the model output at the predicted sample drives both the corrector of that sample
    and the next predictor (the corrector costs no extra evaluation).
    """
    history: list[tuple[float, jax.Array]] = []  # (sigma, denoised) of the last two steps
    x_last = x  # the corrected sample the previous predictor started from
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        if sigma_next == 0:
            # The last step is first order and lands on the x0 prediction (alpha=1, sigma=0);
            # the corrected sample would be multiplied by 0, so skip correcting it.
            x = denoised
        else:
            if history:
                sigma_last, denoised_last = history[-1]
                previous = history[-2] if len(history) == 2 else None
                x = _corrector(x_last, sigma_last, sigma, denoised_last, denoised, previous)
            x_last = x
            order = min(2, n - i, len(history) + 1)
            x = _predictor(x, sigma, sigma_next, denoised, history[-1] if order == 2 else None)
        history = [*history[-1:], (sigma, denoised)]
        report(callback, i + 1, n)
    return x
