"""Trained demo models shipped inside the package (`demo:sd1-shapes`, `demo:wan-shapes`).

Each is a converted model folder under this package, written by `jaxvideo train-demo NAME
jaxvideo/demo_models/NAME` (jaxvideo.train): small networks trained here, on the CPU, on the
synthetic shapes of `jaxvideo.demo_data`, so the default server draws what it is told. The
demo cache gets a copy on first use, like the random demo models it builds.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path


def packaged(name: str) -> Path:
    """The shipped folder of trained demo `name`."""
    folder = Path(str(resources.files(__name__).joinpath(name)))
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the trained demo model {name!r} is not in this install ({folder}); "
            f"train it with `jaxvideo train-demo {name} {folder}`"
        )
    return folder


# What tells one trained folder from another: a newer package's model replaces a cached copy.
_IDENTITY = ("model_index.json", "training.json")


def is_current(name: str, copy: Path) -> bool:
    """Whether `copy` (a demo cache folder) holds the shipped folder of trained demo `name`."""
    shipped = packaged(name)
    return all(
        (copy / f).is_file() and (copy / f).read_bytes() == (shipped / f).read_bytes()
        for f in _IDENTITY
    )


def install_sd1_shapes(out_dir: str | Path) -> Path:
    """Copies the trained SD-1.x shapes demo into `out_dir` (a `demo:` cache folder)."""
    shutil.copytree(packaged("sd1-shapes"), out_dir, dirs_exist_ok=True)
    return Path(out_dir)


def install_wan_shapes(out_dir: str | Path) -> Path:
    """Copies the trained Wan 2.1 shapes (text-to-video) demo into `out_dir`."""
    shutil.copytree(packaged("wan-shapes"), out_dir, dirs_exist_ok=True)
    return Path(out_dir)
