"""Distance between two pictures (or videos) of the same request: PSNR and SSIM.

Used to measure what step caching and fewer sampler steps cost against a reference output
with the same seed. SSIM is Wang et al. 2004's (Gaussian window sigma 1.5, K1 0.01, K2 0.03,
data range 255) on each RGB channel, averaged; a video's is the mean over its frames.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two HxWx3 images or FxHxWx3 videos (uint8)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 4:
        return float(np.mean([ssim(x, y) for x, y in zip(a, b, strict=True)]))
    x, y = a.astype(np.float64), b.astype(np.float64)
    blur = lambda z: gaussian_filter(z, sigma=(1.5, 1.5, 0), truncate=3.5)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    index = ((2 * mx * my + _C1) * (2 * cov + _C2)) / ((mx**2 + my**2 + _C1) * (vx + vy + _C2))
    return float(np.mean(index))
