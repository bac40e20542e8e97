"""Will a model and a request fit on the devices? Estimated before anything is loaded or run.

Per device, a served model needs its weights (every component, each parameter divided as
`jaxvideo.sharding` places it on the mesh) plus the activations of the one network call
running at a time: the denoiser (latents under CFG, split over `data` and, for the DiTs'
token streams, `context`) or the VAE decode (split over image rows on every axis). Both come
from the configs alone (`jaxvideo.cost`), so the plan is made before a weight is read:

- at start, the engine refuses a model whose weights and default request do not fit;
- at submission, a request whose activations do not fit next to the loaded weights is a 400;
- with models loaded on demand, the engine evicts the least recently used until one fits.

The device's memory is what JAX reports for it (its allocator's limit on GPU and TPU), or
`server.device_memory_gib` where set (always on CPU, where devices share the host's memory).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxvideo.cost import Cost, NetworkCall, Shape, abstract_component, call_cost, split_factor
from jaxvideo.families import family
from jaxvideo.request import GenerationRequest
from jaxvideo.sharding import logical_spec, param_axes
from jaxvideo.weights import flat_path, read_config

GIB = 2**30
# What XLA needs besides the values the plan counts (its own workspace, the compiled
# programs, fragmentation): kept free on every device.
RESERVE_FRACTION = 0.10


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def shape_of(req: GenerationRequest, frames: int | None = None) -> Shape:
    """The dimensions of `req` that set memory; CFG unless every guidance scale is 1."""
    high = req.high_noise.guidance_scale if req.high_noise is not None else None
    scales = [s for s in (req.guidance_scale, req.guidance_scale_2, high) if s is not None]
    return Shape(
        width=req.width,
        height=req.height,
        frames=frames if frames is not None else max(1, req.num_frames),
        batch=req.batch_count,
        cfg=any(s != 1.0 for s in scales),
    )


@dataclass(frozen=True)
class Estimate:
    """Per-device bytes of one model serving one request shape."""

    weights: int
    activations: int
    peak_call: str  # the network call with the largest activations ("transformer", "vae")
    shape: Shape

    @property
    def total(self) -> int:
        return self.weights + self.activations

    def describe(self) -> str:
        s = self.shape
        size = f"{s.width}x{s.height}" + (f", {s.frames} frames" if s.frames > 1 else "")
        images = f"{s.batch} image{'s' if s.batch != 1 else ''}{' with CFG' if s.cfg else ''}"
        return (
            f"{gib(self.total)} per device (weights {gib(self.weights)} + activations "
            f"{gib(self.activations)} in the {self.peak_call} at {size}, {images})"
        )


class ModelPlan:
    """The memory plan of one model folder under one mesh and dtype, from its configs."""

    def __init__(
        self,
        folder: str | Path,
        dtype: str,
        mesh: Mapping[str, int],
        configs: Mapping[str, Mapping[str, Any]] | None = None,
        index: Mapping[str, Any] | None = None,
    ):
        folder = Path(folder)
        self.index = dict(index) if index is not None else _index(folder)
        self.family = family(self.index["family"])
        self.configs = dict(configs) if configs is not None else _configs(folder, self.family)
        self.dtype = dtype
        self.mesh = {axis: int(size) for axis, size in mesh.items()}
        self._modules: dict[str, nnx.Module] = {}

    def module(self, component: str) -> nnx.Module:
        if component not in self._modules:
            self._modules[component] = abstract_component(self.configs[component], self.dtype)
        return self._modules[component]

    @functools.cached_property
    def weight_bytes(self) -> int:
        """Bytes of every component's parameters on one device, as they are placed."""
        return sum(
            shard_bytes(flat_path(path), value.shape, value.dtype, self.mesh)
            for component in self.configs
            for path, value in nnx.to_flat_state(nnx.state(self.module(component)))
        )

    def calls(self, shape: Shape) -> list[NetworkCall]:
        return self.family.load_pipeline().network_calls(self.configs, self.index, shape)

    @functools.lru_cache(maxsize=256)  # noqa: B019 -- one plan per served model, long-lived
    def costs(self, shape: Shape) -> tuple[tuple[NetworkCall, Cost], ...]:
        return tuple((c, call_cost(self.module(c.component), c)) for c in self.calls(shape))

    def estimate(self, shape: Shape) -> Estimate:
        per_device = [
            (math.ceil(cost.activation_bytes / split_factor(call, self.mesh)), call.component)
            for call, cost in self.costs(shape)
        ]
        activations, peak_call = max(per_device)
        return Estimate(self.weight_bytes, activations, peak_call, shape)

    def flops(self, shape: Shape) -> dict[str, float]:
        """FLOPs per call of each role ("denoiser", "decoder"), all devices together; a
        decoder that runs per latent frame counts every frame."""
        out: dict[str, float] = {}
        for call, cost in self.costs(shape):
            out[call.role] = out.get(call.role, 0.0) + cost.flops * call.count
        return out


def shard_bytes(path: str, shape, dtype, mesh: Mapping[str, int]) -> int:
    """Bytes of one device's block of a parameter (jaxvideo.sharding's placement)."""
    spec = logical_spec(param_axes(path, len(shape)), mesh, shape)
    ways = 1
    for axes in spec:
        for axis in (axes,) if isinstance(axes, str) else axes or ():
            ways *= mesh.get(axis, 1)
    return math.prod(shape) * np.dtype(dtype).itemsize // ways


def device_memory(configured_gib: float | None, devices: int = 1) -> int:
    """Bytes one device may use: the configured figure, else the device's own limit (GPU,
    TPU), else the host's memory shared by `devices` CPU devices."""
    if configured_gib is not None:
        return int(configured_gib * GIB)
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, devices)


def usable(memory: int) -> int:
    return int(memory * (1 - RESERVE_FRACTION))


def _index(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "model_index.json").read_text())


def _configs(folder: Path, spec) -> dict[str, dict[str, Any]]:
    """Reference configs of the components that hold weights, by folder name."""
    return {
        name: read_config(folder / name)
        for name in spec.components
        if (folder / name / "config.json").is_file()
    }
