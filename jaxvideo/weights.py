"""The converted-model folder format: per-component `config.json` + `model.safetensors`.

A jaxvideo model folder mirrors a diffusers folder: `model_index.json` at the top and one
subfolder per component. Each network subfolder holds the reference `config.json` (unchanged,
so the PyTorch config stays the single source of truth) and `model.safetensors` whose keys are
dotted Flax parameter paths in Flax layout. Loading needs neither torch nor a network.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from jaxvideo.convert.core import ConversionError
from jaxvideo.models.registry import ComponentSpec, class_name_of, spec_for
from jaxvideo.sharding import current_mesh, place
from jaxvideo.tensor_file import TensorFile

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

DTYPES = {
    "fp32": jnp.float32,
    "float32": jnp.float32,
    "fp16": jnp.float16,
    "float16": jnp.float16,
    "bf16": jnp.bfloat16,
    "bfloat16": jnp.bfloat16,
}


def serving_dtype(name: str) -> str:
    """A configured dtype name with "auto" decided for the platform: bf16 where the devices are
    accelerators (tensor cores, MXUs), fp32 on CPU, which has no fast half-precision path."""
    if name != "auto":
        return name
    return "fp32" if jax.default_backend() == "cpu" else "bf16"


def resolve_dtype(name: str | Any) -> Any:
    if not isinstance(name, str):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}") from None


def flat_path(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def abstract_model(spec: ComponentSpec, config: Any, dtype: Any = jnp.float32) -> nnx.Module:
    """The network with ShapeDtypeStructs in place of arrays (nothing allocated); a fresh
    module each call, from a cached shape tree: tracing a full-size network's construction
    takes seconds to tens of seconds (SDXL's UNet ~36 s with flax 0.12), and describing,
    planning and loading a model each need it."""
    key = (id(spec.build), repr(config), str(np.dtype(dtype)))
    if key not in _ABSTRACT:
        # Rngs passed in rather than created inside: markedly faster tracing with flax 0.12.
        model = nnx.eval_shape(
            lambda rngs: spec.build(config, rngs=rngs, dtype=dtype, param_dtype=dtype), nnx.Rngs(0)
        )
        _ABSTRACT[key] = nnx.split(model)
    graphdef, state = _ABSTRACT[key]
    return nnx.merge(graphdef, jax.tree.map(lambda x: x, state))


# (network builder, config, dtype) -> the (graphdef, shapes) of the built network.
_ABSTRACT: dict[tuple[int, str, str], tuple[Any, Any]] = {}


def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    state = nnx.state(model, nnx.Param)
    return {flat_path(p): tuple(v.shape) for p, v in nnx.to_flat_state(state)}


def read_config(component_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(component_dir) / CONFIG_FILE).read_text())


def save_component(
    component_dir: str | Path,
    hf_config: Mapping[str, Any],
    params: Mapping[str, np.ndarray],
    dtype: Any = jnp.float32,
) -> None:
    out = Path(component_dir)
    out.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype(resolve_dtype(dtype))
    arrays = {k: np.ascontiguousarray(np.asarray(v).astype(np_dtype)) for k, v in params.items()}
    save_file(arrays, str(out / WEIGHTS_FILE), metadata={"format": "jaxvideo-flax"})
    (out / CONFIG_FILE).write_text(json.dumps(dict(hf_config), indent=2, sort_keys=True))


def load_params_into(
    model: nnx.Module, weights_path: str | Path, dtype: Any | None = None, what: str = ""
) -> nnx.Module:
    """Fills an abstract `model` from a jaxvideo safetensors file, checking every key.

    Each tensor is read with plain reads into a buffer of its own and put on the device
    (`jaxvideo.tensor_file`: the file is never mapped whole, so the host peak is the weights
    plus one tensor); under a device mesh (`jaxvideo.sharding.activate`) each parameter is
    read and placed one shard per device."""
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    expected = {flat_path(p): p for p in flat}
    with TensorFile(weights_path) as f:
        keys = set(f.keys())
        missing = sorted(set(expected) - keys)
        unexpected = sorted(keys - set(expected))
        if missing or unexpected:
            raise ConversionError(
                f"{what or weights_path}: weights do not fit the model "
                f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
            )
        mesh = current_mesh()
        for key, path in expected.items():
            var = flat[path]
            shape = f.shape(key)
            if shape != tuple(var.shape):
                raise ConversionError(
                    f"{what or weights_path}: {key} has shape {shape}, "
                    f"model expects {tuple(var.shape)}"
                )
            np_dtype = np.dtype(dtype if dtype is not None else var.dtype)
            if mesh is None or not shape:
                # One tensor's buffer at a time: it lives until its device copy exists.
                var.set_value(jax.device_put(f.read(key).astype(np_dtype, copy=False)))
            else:
                read = partial(_read_block, f, key, np_dtype)
                var.set_value(place(mesh, key, shape, read))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _read_block(f: TensorFile, key: str, dtype: np.dtype, index: tuple[slice, ...]) -> np.ndarray:
    return f.read_block(key, index).astype(dtype, copy=False)


_abstract = threading.local()


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """`load_component` returns networks with shapes in place of weights, reading nothing:
    a pipeline built so describes its model (modes, features, defaults) without loading it."""
    before = getattr(_abstract, "on", False)
    _abstract.on = True
    try:
        yield
    finally:
        _abstract.on = before


def load_component(model_dir: str | Path, name: str, *, dtype: str | Any = "fp32") -> nnx.Module:
    """Loads one converted network (`text_encoder`, `unet`, `vae`, ...) from a model folder
    (shapes only, under `shapes_only`).

    Networks take and return channels-last arrays (NHWC for images).
    """
    component_dir = Path(model_dir) / name
    if not (component_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{component_dir} has no {CONFIG_FILE}: not a converted component")
    hf_config = read_config(component_dir)
    spec = spec_for(class_name_of(hf_config))
    jdtype = resolve_dtype(dtype)
    model = abstract_model(spec, spec.config_from_hf(hf_config), jdtype)
    if getattr(_abstract, "on", False):
        return model
    return load_params_into(model, component_dir / WEIGHTS_FILE, jdtype, what=str(component_dir))
