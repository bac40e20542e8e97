"""Reading original DiT files, fp8 ones included, as float tensors.

Flux and SD3 releases, and most of their ComfyUI repacks, ship fp8 weights:

* plain fp8 (`flux1-dev-fp8.safetensors`, `t5xxl_fp8_e4m3fn.safetensors`): `float8_e4m3fn` or
  `float8_e5m2` tensors; numpy has no fp8 dtype, so safetensors' numpy reader fails on them and
  they are read through torch and upcast to float32 (exact: every fp8 value is a float32);
* ComfyUI's "scaled fp8" (`*_fp8_scaled.safetensors`): each fp8 `X.weight` has a float32
  `X.scale_weight` and the file an empty `scaled_fp8` marker tensor. The real weight is
  `weight * scale_weight` (ComfyUI's `scaled_fp8_ops`), computed here in float32;
  `X.scale_input` only scales activations for fp8 matmuls and is dropped.

The scale and marker tensors are not the network's: `keys()` leaves them out, so key plans and
unknown-key checks never see them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from safetensors import safe_open

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.readers import open_checkpoint

SCALE_WEIGHT = ".scale_weight"
# Quantisation bookkeeping of ComfyUI's scaled fp8 files, per layer and per file.
_BOOKKEEPING = re.compile(r"(?:.*\.)?(?:scaled_fp8|scale_weight|scale_input)")


def _is_fp8(dtype: str) -> bool:
    return dtype.startswith("F8_")  # safetensors' F8_E4M3, F8_E5M2


class DequantizingSource:
    """One checkpoint file's tensors as numpy arrays, fp8 upcast and scaled-fp8 rescaled."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._source = open_checkpoint(self.path)
        every = self._source.keys()
        present = set(every)
        self._keys = [k for k in every if not _BOOKKEEPING.fullmatch(k)]
        self._scales = {
            k[: -len(SCALE_WEIGHT)] + ".weight": k for k in every if k.endswith(SCALE_WEIGHT)
        }
        orphans = [s for w, s in self._scales.items() if w not in present]
        if orphans:
            raise ConversionError(
                f"{self.path.name}: scale(s) without a weight: {', '.join(sorted(orphans)[:10])}"
            )
        self._dtypes: dict[str, str] = {}
        if self.path.suffix == ".safetensors":
            with safe_open(str(self.path), framework="numpy") as f:
                self._dtypes = {k: f.get_slice(k).get_dtype() for k in every}

    def keys(self) -> list[str]:
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def fp8(self) -> bool:
        """Whether the file stores fp8 tensors (scaled or not)."""
        return any(_is_fp8(d) for d in self._dtypes.values())

    def shape(self, key: str) -> tuple[int, ...]:
        return self._source.shape(key)

    def _raw(self, key: str) -> np.ndarray:
        if not _is_fp8(self._dtypes.get(key, "")):
            try:
                return np.asarray(self._source.load(key))
            except (TypeError, AttributeError):  # a pickle's fp8 tensor: no numpy dtype
                raise ConversionError(
                    f"{self.path.name}: {key} has a dtype numpy cannot hold (fp8 in a pickle?); "
                    "re-save the file as .safetensors"
                ) from None
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(key).float().numpy()

    def load(self, key: str) -> np.ndarray:
        value = self._raw(key)
        scale_key = self._scales.get(key)
        if scale_key is None:
            return value
        scale = self._raw(scale_key).astype(np.float32)
        try:
            return (value.astype(np.float32) * scale).astype(np.float32)
        except ValueError:
            raise ConversionError(
                f"{self.path.name}: {scale_key} of shape {scale.shape} does not scale "
                f"{key} of shape {value.shape}"
            ) from None

    __getitem__ = load
