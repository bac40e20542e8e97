"""Reading PyTorch checkpoints without materialising them: safetensors (zero copy) and .bin/.ckpt.

`.bin`/`.ckpt` files are pickles and are only ever opened with torch's `weights_only=True`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from safetensors import safe_open

from jaxvideo.convert.core import ConversionError

WEIGHT_NAMES = ("diffusion_pytorch_model", "model", "pytorch_model")


class TensorSource:
    """Keys and a per-key loader over one or several checkpoint files."""

    def __init__(self, files: list[Path]):
        self.files = files
        self._owner: dict[str, Path] = {}
        self._torch_cache: dict[Path, dict] = {}
        for f in files:
            for key in self._file_keys(f):
                self._owner[key] = f

    def _file_keys(self, path: Path) -> list[str]:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="numpy") as f:
                return list(f.keys())
        return list(self._torch_dict(path).keys())

    def _torch_dict(self, path: Path) -> dict:
        if path not in self._torch_cache:
            import torch  # only for pickled checkpoints; serving never needs it

            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            if "state_dict" in sd and isinstance(sd["state_dict"], dict):
                sd = sd["state_dict"]
            self._torch_cache[path] = sd
        return self._torch_cache[path]

    def keys(self) -> list[str]:
        return list(self._owner)

    def __len__(self) -> int:
        return len(self._owner)

    def load(self, key: str) -> np.ndarray:
        path = self._owner[key]
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="numpy") as f:
                try:
                    return f.get_tensor(key)
                except TypeError:  # dtype numpy cannot read natively
                    pass
            with safe_open(str(path), framework="pt") as f:
                return _torch_to_numpy(f.get_tensor(key))
        return _torch_to_numpy(self._torch_dict(path)[key])

    __getitem__ = load

    def shape(self, key: str) -> tuple[int, ...]:
        """A tensor's shape without reading its data (config inference reads many of these)."""
        path = self._owner[key]
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="numpy") as f:
                return tuple(f.get_slice(key).get_shape())
        return tuple(self._torch_dict(path)[key].shape)


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        return t.float().numpy()
    return t.detach().cpu().numpy()


def find_weight_files(component_dir: Path) -> list[Path]:
    """The weight files of a diffusers/transformers component folder, preferring safetensors."""
    for ext in (".safetensors", ".bin"):
        for stem in WEIGHT_NAMES:
            index = component_dir / f"{stem}{ext}.index.json"
            if index.is_file():
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                return [component_dir / s for s in shards]
            single = component_dir / f"{stem}{ext}"
            if single.is_file():
                return [single]
    # A variant such as diffusion_pytorch_model.fp16.safetensors
    for ext in (".safetensors", ".bin"):
        found = sorted(
            p for p in component_dir.glob(f"*{ext}") if not p.name.endswith(".index.json")
        )
        if found:
            return found[:1]
    raise FileNotFoundError(f"no .safetensors or .bin weights in {component_dir}")


def open_component(component_dir: Path) -> TensorSource:
    return TensorSource(find_weight_files(component_dir))


def open_checkpoint(path: Path) -> TensorSource:
    """One checkpoint file (single-file model, release file); unreadable ones fail saying why."""
    try:
        return TensorSource([path])
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False; that would run the pickle's code.
        raise ConversionError(
            f"{path}: the pickle holds objects other than tensors, and .ckpt files are only "
            "opened with torch.load(weights_only=True). Re-save its weights as .safetensors "
            "with a tool you trust."
        ) from None
    except Exception as e:  # truncated or corrupt file: say so instead of a traceback
        raise ConversionError(
            f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})"
        ) from None
