"""Finding LoRA files in the configured folder, without ever leaving it.

Requests name LoRAs by stem (`my_style`) or by path relative to the folder
(`styles/my_style.safetensors`). Every name is resolved (symlinks included) and must land
inside the folder: a request can never read an arbitrary file through a LoRA name.
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxvideo.lora.formats import LORA_EXTS
from jaxvideo.lora.spec import LoraError


def _is_lora_file(path: Path) -> bool:
    return path.suffix.lower() in LORA_EXTS


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def list_loras(folder: str | Path) -> list[dict[str, str]]:
    """Every LoRA file under `folder`: [{"name": stem, "path": relative posix path}], by path.

    Files (or symlinks) that resolve outside the folder are left out, as `resolve_lora_path`
    would refuse them. A missing folder lists nothing.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        return []
    found: list[dict[str, str]] = []
    # os.walk without followlinks: a symlinked directory cannot make the walk leave the tree.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in filenames:
            path = Path(dirpath) / filename
            if _is_lora_file(path) and path.is_file() and _inside(path, root):
                found.append({"name": path.stem, "path": path.relative_to(root).as_posix()})
    return sorted(found, key=lambda entry: entry["path"])


def resolve_lora_path(folder: str | Path, requested: str) -> Path:
    """The resolved file a request names: a stem, or a relative path with or without extension.

    Raises `LoraError` for names resolving outside `folder` (absolute paths elsewhere, `..`,
    symlinks pointing out), for ambiguous stems and for names matching no LoRA file.
    """
    root = Path(folder).resolve()
    name = str(requested).strip()
    if not name or "\x00" in name:
        raise LoraError("empty LoRA name")
    if not name.isprintable() or name != name.encode("utf-8", "replace").decode("utf-8"):
        raise LoraError(f"LoRA {requested!r} is not a file name")  # no file system holds it
    candidate = root / name  # an absolute `name` replaces root here, and is checked below
    if not _inside(candidate, root):
        raise LoraError(f"LoRA {requested!r} is outside the LoRA folder")
    options = [candidate] if _is_lora_file(candidate) else []
    # Stems may contain dots (`style.v2`), so extensions are appended, never substituted.
    options += [candidate.with_name(candidate.name + ext) for ext in LORA_EXTS]
    for option in options:
        if option.is_file():
            if not _inside(option, root):
                raise LoraError(f"LoRA {requested!r} is outside the LoRA folder")
            return option.resolve()
    if "/" not in name and "\\" not in name:
        matches = [entry["path"] for entry in list_loras(root) if entry["name"] == name]
        if len(matches) == 1:
            return (root / matches[0]).resolve()
        if len(matches) > 1:
            raise LoraError(
                f"LoRA name {requested!r} is ambiguous ({', '.join(matches)}); give its path"
            )
    raise LoraError(f"no LoRA named {requested!r} in the LoRA folder")
