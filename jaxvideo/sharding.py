"""Device mesh, logical axis rules, and placing parameters on devices shard by shard.

The serve config's `mesh:` (data / fsdp / tensor / context sizes) becomes one
`jax.sharding.Mesh`. The engine activates it (`activate`) while it loads and runs models; code
below reads it from that context, so networks and pipelines never take a mesh argument:

- parameters are placed at load by `param_sharding`: attention heads and MLP hidden units
  over `tensor` (column-parallel in, row-parallel out, as Megatron does), the model dimension
  over `fsdp`; a dimension that does not divide stays whole;
- activations are pinned at a few points with `constrain` (CFG pairs and batched requests
  over `data`, Wan's token sequence over `context`, VAE image rows over every axis); XLA's
  GSPMD partitioner propagates the rest, pads dimensions that do not divide and inserts the
  collectives (e.g. the all-gather of keys/values for sequence-parallel attention).

Without a mesh (one device) every function here is a no-op.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvideo.config import MESH_AXES
from jaxvideo.models.context_parallel import mode as context_parallel_mode

# Logical axis -> the mesh axes it is split over.
LOGICAL_AXIS_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data",),
    "heads": ("tensor",),
    "mlp": ("tensor",),
    "embed": ("fsdp",),
    "seq": ("context",),
    "rows": MESH_AXES,
}

_ATTN_IN = r"(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj|q_proj|k_proj|v_proj|q|k|v)"
_ATTN_OUT = r"(to_out|to_add_out|out_proj|o)"
_MLP_IN = r"((ff|ffn|ff_context)\.proj|proj_mlp|fc1|wi|wi_0|wi_1)"
_MLP_OUT = r"((ff|ffn|ff_context)\.out|fc2|wo)"

# Parameter path (dotted Flax path) -> logical axes of its dimensions. Linear kernels are
# (in, out). Names cover the UNet, the Wan, Flux and SD3 transformers (their text streams'
# `add_*`/`to_add_out`/`ff_context` too), CLIP, T5 and VAE attention blocks. Flux's single
# blocks project [attention, MLP] with one `proj_out`, which keeps the default (fsdp) layout.
PARAM_RULES: tuple[tuple[re.Pattern[str], tuple[str | None, ...]], ...] = tuple(
    (re.compile(pattern), axes)
    for pattern, axes in (
        (rf"(^|\.){_ATTN_IN}\.kernel$", ("embed", "heads")),
        (rf"(^|\.){_ATTN_IN}\.bias$", ("heads",)),
        (rf"(^|\.){_ATTN_OUT}\.kernel$", ("heads", "embed")),
        (rf"(^|\.){_MLP_IN}\.kernel$", ("embed", "mlp")),
        (rf"(^|\.){_MLP_IN}\.bias$", ("mlp",)),
        (rf"(^|\.){_MLP_OUT}\.kernel$", ("mlp", "embed")),
    )
)


def build_mesh(
    sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None
) -> Mesh | None:
    """The mesh of the config's axis sizes (missing axes have size 1); None for one device."""
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    count = math.prod(shape)
    if count == 1:
        return None
    devices = list(jax.devices() if devices is None else devices)
    if count > len(devices):
        raise ValueError(
            f"mesh {dict(sizes)} needs {count} devices; JAX sees {len(devices)} "
            f"({devices[0].platform})"
        )
    return Mesh(np.array(devices[:count]).reshape(shape), MESH_AXES)


@contextlib.contextmanager
def activate(mesh: Mesh | None, context_parallel: str = "ulysses") -> Iterator[None]:
    """Makes `mesh` the context for loading and for tracing the jitted functions, with
    sequence-parallel attention as `context_parallel` says (jaxvideo.models.context_parallel)."""
    with (
        context_parallel_mode(context_parallel),
        jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext(),
    ):
        yield


def current_mesh() -> Mesh | None:
    mesh = jax.sharding.get_mesh()
    return None if mesh.empty else mesh


def _mesh_axes(logical: str | None, sizes: Mapping[str, int], length: int | None):
    """The mesh axes of one dimension: those of size > 1; with `length`, only if it divides."""
    if logical is None:
        return None
    axes = tuple(a for a in LOGICAL_AXIS_RULES[logical] if sizes.get(a, 1) > 1)
    if not axes or length is not None and length % math.prod(sizes[a] for a in axes):
        return None
    return axes[0] if len(axes) == 1 else axes


def logical_spec(
    logical: Sequence[str | None], sizes: Mapping[str, int], shape: Sequence[int] | None = None
) -> P:
    """PartitionSpec of logical axes; with `shape`, dimensions that do not divide stay whole."""
    lengths = shape if shape is not None else [None] * len(logical)
    return P(*(_mesh_axes(n, sizes, length) for n, length in zip(logical, lengths, strict=True)))


def param_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    """Logical axes of a parameter: a rule's, else the last dimension over `fsdp`."""
    for pattern, axes in PARAM_RULES:
        if pattern.search(path) and len(axes) == ndim:
            return axes
    return (None,) * (ndim - 1) + ("embed",) if ndim >= 2 else (None,) * ndim


def param_sharding(mesh: Mesh, path: str, shape: Sequence[int]) -> NamedSharding:
    spec = logical_spec(param_axes(path, len(shape)), mesh.shape, shape)
    return NamedSharding(mesh, spec)


def place(
    mesh: Mesh, path: str, shape: Sequence[int], read: Callable[[tuple[slice, ...]], np.ndarray]
) -> jax.Array:
    """A parameter built shard by shard: `read(index)` returns just that block, so a sharded
    tensor is never whole in host memory."""
    return jax.make_array_from_callback(tuple(shape), param_sharding(mesh, path, shape), read)


def to_host(x: jax.Array | np.ndarray) -> np.ndarray:
    """A device array as numpy. One spread over other hosts' devices (jaxvideo.distributed)
    is gathered first, a collective, so every process of the slice makes this call."""
    if getattr(x, "is_fully_addressable", True):  # numpy, or on this host's devices
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def constrain(x: jax.Array, *logical: str | None) -> jax.Array:
    """Pins an activation's layout under the context mesh (inside jit); no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(logical, dict(mesh.shape)))
