"""Brownian-tree noise: interval noise from one Brownian motion per sample, in sigma.

An SDE sampler that draws its noise as W(sigma_b) - W(sigma_a) of a fixed Brownian path sees the
same path whatever the step count, so an image changes smoothly with the number of steps
(k-diffusion's BrownianTreeNoiseSampler, stable-diffusion.cpp's dpm++2m_sde_bt). W(t) is built by
bisection: each midpoint is the Brownian bridge of its interval's ends plus a standard normal
drawn for that tree node, so W at any t is a pure function of (seed, t). Every W is a linear
combination of W(t_max) and the node normals; the weights are host float64 arithmetic and the
device only draws the normals and sums them.
"""

from __future__ import annotations

import math

import jax

from jaxvideo.sampling.sampler_base import lincomb, step_noise

# Folded into each sample key; the tree's node normals then reuse step_noise's compiled draw.
BROWNIAN_SALT = 0x0B20_0000


def bridge_weights(
    t: float, t_min: float, t_max: float, depth: int
) -> tuple[float, dict[int, float]]:
    """W(t) = w_max_weight * W(t_max) + sum(weight * z[node]) for the bisection tree.

    Nodes are numbered as a binary heap (root 1, children 2k and 2k + 1); z[node] is the
    standard normal drawn at that node; the returned nodes are the `depth` nodes on t's path.
    Below `depth` levels W is interpolated linearly.
    """
    # Coefficient vectors of W at the current interval's ends; key 0 stands for W(t_max).
    w_a: dict[int, float] = {}
    w_c: dict[int, float] = {0: 1.0}
    a, c, node = t_min, t_max, 1
    path = []
    for _ in range(depth):
        path.append(node)
        m = 0.5 * (a + c)
        w_m = {k: 0.5 * w_a.get(k, 0.0) + 0.5 * w_c.get(k, 0.0) for k in w_a.keys() | w_c.keys()}
        w_m[node] = math.sqrt((c - m) * (m - a) / (c - a))  # the bridge's standard deviation
        if t >= m:
            a, w_a, node = m, w_m, 2 * node + 1
        else:
            c, w_c, node = m, w_m, 2 * node
    alpha = (t - a) / (c - a) if c > a else 0.0
    weights = {
        k: (1 - alpha) * w_a.get(k, 0.0) + alpha * w_c.get(k, 0.0) for k in w_a.keys() | w_c.keys()
    }
    # Every node on the path, zero weights included: a fixed number of terms, one compile.
    return weights.pop(0, 0.0), {k: weights.get(k, 0.0) for k in path}


class BrownianTreeNoise:
    """Unit-variance noise for [sigma_a, sigma_b]: (W(b) - W(a)) / sqrt(|b - a|), per sample."""

    def __init__(
        self,
        keys: jax.Array,
        shape: tuple[int, ...],
        dtype,
        sigma_min: float,
        sigma_max: float,
        depth: int = 20,
    ) -> None:
        self.t_min, self.t_max, self.depth = float(sigma_min), float(sigma_max), depth
        self.shape, self.dtype = tuple(shape), dtype
        self.tree_keys = jax.vmap(lambda k: jax.random.fold_in(k, BROWNIAN_SALT))(keys)
        self._normals: dict[int, jax.Array] = {}
        self._w: dict[float, jax.Array] = {}

    def _z(self, node: int) -> jax.Array:
        if node not in self._normals:
            self._normals[node] = step_noise(self.tree_keys, node, self.shape, self.dtype)
        return self._normals[node]

    def w(self, t: float) -> jax.Array:
        """The Brownian path at t (W(t_min) = 0, Var W(t) = t - t_min), cached."""
        t = min(max(float(t), self.t_min), self.t_max)
        if t not in self._w:
            w_max_weight, weights = bridge_weights(t, self.t_min, self.t_max, self.depth)
            w_max = self._z(0)  # node 0 is not in the heap: W(t_max) / sqrt(t_max - t_min)
            scale = math.sqrt(self.t_max - self.t_min)
            terms = [(w_max, w_max_weight * scale)]
            terms += [(self._z(node), weight) for node, weight in sorted(weights.items())]
            self._w[t] = lincomb(*terms)
        return self._w[t]

    def __call__(self, sigma_a: float, sigma_b: float) -> jax.Array:
        lo, hi = sorted(min(max(float(s), self.t_min), self.t_max) for s in (sigma_a, sigma_b))
        span = max(hi - lo, 1e-12)
        return lincomb((self.w(hi), 1 / math.sqrt(span)), (self.w(lo), -1 / math.sqrt(span)))
