"""The published sampler algorithms, transcribed plainly in numpy (float64) from k-diffusion,
ComfyUI and stable-diffusion.cpp, as references for tests/sampling/test_samplers.py.

Each takes a model with `denoise(x, sigma, uncond=False)`, the sigmas (floats), the noise drawn
at each step, and eta; it returns the final x.
"""

import numpy as np


def ancestral(sigma, sigma_next, eta):  # k-diffusion get_ancestral_step
    if not eta:
        return sigma_next, 0.0
    up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - up**2) ** 0.5, up


def ref_dpmpp_2s_a(m, x, s, z, eta=1.0):  # k-diffusion sample_dpmpp_2s_ancestral
    for i in range(len(s) - 1):
        den = m.denoise(x, s[i])
        down, up = ancestral(s[i], s[i + 1], eta)
        if down == 0:
            x = den
        else:
            t, t_next = -np.log(s[i]), -np.log(down)
            h = t_next - t
            x2 = np.exp(-(t + h / 2)) / np.exp(-t) * x - np.expm1(-h / 2) * den
            den2 = m.denoise(x2, np.exp(-(t + h / 2)))
            x = np.exp(-t_next) / np.exp(-t) * x - np.expm1(-h) * den2
        x = x + z[i] * up if s[i + 1] > 0 else x
    return x


def ref_dpmpp_2mv2(m, x, s, z, eta=None):  # stable-diffusion.cpp sample_dpmpp_2m_v2
    old = None
    for i in range(len(s) - 1):
        den = m.denoise(x, s[i])
        t, t_next = -np.log(s[i]), -np.log(s[i + 1]) if s[i + 1] > 0 else np.inf
        h, a = t_next - t, s[i + 1] / s[i]
        if i == 0 or s[i + 1] == 0:
            x = a * x - np.expm1(-h) * den
        else:
            h_last = t + np.log(s[i - 1])
            r = max(h_last, h) / min(h_last, h)
            b = np.expm1(-(h_last + h) / 2)
            x = a * x - b * ((1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old)
        old = den
    return x


def ref_ipndm(m, x, s, z, eta=None, variable=False):  # stable-diffusion.cpp sample_ipndm(_v)
    hist = []
    for i in range(len(s) - 1):
        d = (x - m.denoise(x, s[i])) / s[i]
        dt, order = s[i + 1] - s[i], min(4, i + 1)
        if order == 1:
            x = x + d * dt
        elif order == 2 and variable:
            k = dt / (s[i] - s[i - 1])
            x = x + ((2 + k) * d - k * hist[-1]) / 2 * dt
        elif order == 2:
            x = x + (3 * d - hist[-1]) / 2 * dt
        elif order == 3:
            x = x + (23 * d - 16 * hist[-1] + 5 * hist[-2]) / 12 * dt
        else:
            x = x + (55 * d - 59 * hist[-1] + 37 * hist[-2] - 9 * hist[-3]) / 24 * dt
        hist = (hist + [d])[-3:]
    return x


def phi1(t):
    return np.expm1(t) / t


def phi2(t):
    return (phi1(t) - 1) / t


def ref_res_multistep(m, x, s, z, eta=0.0):  # ComfyUI sample_res_multistep
    old, old_down = None, None
    for i in range(len(s) - 1):
        den = m.denoise(x, s[i])
        down, up = ancestral(s[i], s[i + 1], eta)
        if down == 0 or old is None:
            x = x + (x - den) / s[i] * (down - s[i])
        else:
            t, t_old, t_next, t_prev = (-np.log(v) for v in (s[i], old_down, down, s[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            b1, b2 = phi1(-h) - phi2(-h) / c2, phi2(-h) / c2
            x = np.exp(-h) * x + h * (b1 * den + b2 * old)
        x = x + z[i] * up if s[i + 1] > 0 else x
        old, old_down = den, down
    return x


def ref_res_2s(m, x, s, z, eta=0.0):  # stable-diffusion.cpp sample_res_2s
    for i in range(len(s) - 1):
        den = m.denoise(x, s[i])
        down, up = ancestral(s[i], s[i + 1], eta)
        if down == 0:
            x = den
        else:
            t, h = -np.log(s[i]), np.log(s[i]) - np.log(down)
            a21, b2 = 0.5 * phi1(-h / 2), phi2(-h) / 0.5
            b1 = phi1(-h) - b2
            x2 = x + h * a21 * (den - x)
            den2 = m.denoise(x2, np.exp(-(t + h / 2)))
            x = x + h * (b1 * (den - x) + b2 * (den2 - x))
        x = x + z[i] * up if s[i + 1] > 0 else x
    return x


def ref_er_sde(m, x, s, z, eta=1.0):  # ComfyUI sample_er_sde, variance-exploding model
    def scaler(v):
        return v * (np.exp(v**0.3) + 10.0)

    lam, old, old_d, pts = np.asarray(s, np.float64), None, None, np.arange(200.0)
    for i in range(len(s) - 1):
        den = m.denoise(x, s[i])
        if s[i + 1] == 0:
            x = den
        else:
            r = scaler(lam[i + 1]) / scaler(lam[i])
            x = r * x + (1 - r) * den
            if i >= 1:
                dt = lam[i + 1] - lam[i]
                pos = lam[i + 1] + pts * (-dt / 200)
                s2 = np.sum(1 / scaler(pos)) * (-dt / 200)
                den_d = (den - old) / (lam[i] - lam[i - 1])
                x = x + (dt + s2 * scaler(lam[i + 1])) * den_d
                if i >= 2:
                    s_u = np.sum((pos - lam[i]) / scaler(pos)) * (-dt / 200)
                    den_u = (den_d - old_d) / ((lam[i] - lam[i - 2]) / 2)
                    x = x + (dt**2 / 2 + s_u * scaler(lam[i + 1])) * den_u
                old_d = den_d
            x = x + eta * z[i] * np.sqrt(max(lam[i + 1] ** 2 - lam[i] ** 2 * r**2, 0))
        old = den
    return x


def ref_euler_ge(m, x, s, z, eta=0.0, gamma=2.0):  # stable-diffusion.cpp gradient estimation
    old_d = None
    for i in range(len(s) - 1):
        den = m.denoise(x, s[i])
        if s[i + 1] == 0:
            x = den
            continue
        down, up = ancestral(s[i], s[i + 1], eta)
        d = (x - den) / s[i]
        d_bar = d if old_d is None else gamma * d + (1 - gamma) * old_d
        x = x + d_bar * (down - s[i]) + z[i] * up
        old_d = d
    return x


def ref_euler_cfg_pp(m, x, s, z, eta=0.0):  # ComfyUI sample_euler_ancestral_cfg_pp
    for i in range(len(s) - 1):
        den, den_uncond = m.denoise(x, s[i]), m.denoise(x, s[i], uncond=True)
        down, up = ancestral(s[i], s[i + 1], eta)
        x = den + (x - den_uncond) / s[i] * down
        x = x + z[i] * up if s[i + 1] > 0 else x
    return x


REFERENCES = {
    "dpm++2s_a": (ref_dpmpp_2s_a, [None, 0.5]),
    "dpm++2mv2": (ref_dpmpp_2mv2, [None]),
    "ipndm": (ref_ipndm, [None]),
    "ipndm_v": (lambda *a, **k: ref_ipndm(*a, **k, variable=True), [None]),
    "res_multistep": (ref_res_multistep, [None, 1.0]),
    "res_2s": (ref_res_2s, [None, 1.0]),
    "er_sde": (ref_er_sde, [None, 0.0]),
    "euler_ge": (ref_euler_ge, [None, 1.0]),
    "euler_cfg_pp": (ref_euler_cfg_pp, [None]),
    "euler_a_cfg_pp": (ref_euler_cfg_pp, [None, 0.5]),
}
