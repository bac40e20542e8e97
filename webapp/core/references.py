"""File-ish video inputs: `input_reference` / `reference_url` images and `output_path`.

FastVideo takes `input_reference` as a file path; a server must not read any file a client
names, so a path must resolve (symlinks followed) inside `server.input_dir`; without one, paths
are refused. Uploads, data URLs, raw base64 and `{"image_url": <data URL>}` objects always work.
A string is a path when it cannot be base64 (it has a `.`, `~`, `:`, ...), or when it is short
and does not decode as a base64 image (`inputs/frame` is valid base64 too).
`reference_url` is fetched by nobody: this server has no network access, so only `data:` URLs
are accepted. `output_path` (write the MP4 there too) must resolve inside `server.output_dir`.
Messages name paths as the client sent them, never the configured folders.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxvideo.config import ServerConfig
from webapp.core.errors import ApiError, invalid
from webapp.core.images import decode_image

# Raw base64 (standard or URL-safe alphabet, maybe wrapped): anything else is a path.
_BASE64 = re.compile(r"[A-Za-z0-9+/=_\-\s]+")
# Longer strings are never taken for paths; a path's parts are at most _MAX_NAME bytes (POSIX
# NAME_MAX on Linux file systems).
_MAX_PATH = 4096
_MAX_NAME = 255


def reference_image(value: Any, param: str, limits: ServerConfig) -> np.ndarray:
    """An `input_reference` value (string or `{image_url}` object) -> HxWx3 uint8."""
    if isinstance(value, Mapping):
        return _reference_object(value, param, limits)
    if not isinstance(value, str):
        raise invalid(param, "expected a file path, a data URL, base64 or {image_url}")
    text = value.strip()
    if text[:5].lower() == "data:":
        return decode_image(text, param, limits)
    if len(text) <= _MAX_PATH and not _BASE64.fullmatch(text):  # `.`, `~`, `:`: a path
        return decode_image(read_input_file(text, param, limits), param, limits)
    try:
        return decode_image(text, param, limits)
    except ApiError:
        if len(text) > _MAX_PATH:
            raise
        # Short and not an image: most likely a path (`/data/frame` is valid base64 too).
        return decode_image(read_input_file(text, param, limits), param, limits)


def url_image(url: str, param: str, limits: ServerConfig) -> np.ndarray:
    """`reference_url`: only a data: URL (this server never fetches from the network)."""
    if url.strip()[:5].lower() != "data:":
        raise invalid(
            param, "only data: URLs are accepted (this server does not fetch URLs)", "unsupported"
        )
    return decode_image(url.strip(), param, limits)


def read_input_file(path: str, param: str, limits: ServerConfig) -> bytes:
    """The bytes of `path` (relative to, or absolute inside, `server.input_dir`)."""
    if limits.input_dir is None:
        raise invalid(
            param,
            "file paths are not accepted: this server has no input folder (server.input_dir); "
            "upload the file or send a data URL",
            "unsupported",
        )
    resolved = confined(path, limits.input_dir)
    if resolved is None:
        raise invalid(param, f"{path!r} is outside the input folder", "invalid_path")
    if not os.path.isfile(resolved):
        raise invalid(param, f"{path!r} is not a file in the input folder", "invalid_path")
    if os.path.getsize(resolved) > limits.max_body_bytes:
        raise invalid(param, f"{path!r} is larger than {limits.max_body_bytes} bytes")
    with open(resolved, "rb") as file:
        return file.read()


def output_file(path: str, job_id: str, limits: ServerConfig, param: str = "output_path") -> str:
    """Where to write a job's MP4: `path` names a `.mp4` file, or else a folder that gets
    `<job id>.mp4`; either must resolve inside `server.output_dir`, within the file system's
    limits on names (checked now, not after the generation)."""
    target = path if path.lower().endswith(".mp4") else os.path.join(path, f"{job_id}.mp4")
    if len(_utf8(target)) > _MAX_PATH or any(
        len(_utf8(part)) > _MAX_NAME for part in target.split(os.sep)
    ):
        raise invalid(
            param,
            f"too long (at most {_MAX_PATH} bytes, {_MAX_NAME} per folder or file name)",
            "invalid_path",
        )
    resolved = confined(target, limits.output_dir)
    if resolved is None or os.path.isdir(resolved):
        raise invalid(
            param, f"{path!r} is not a file path inside the output folder", "invalid_path"
        )
    return resolved


def confined(path: str, folder: str) -> str | None:
    """`path` (relative to `folder`, or absolute) fully resolved, or None when it leaves the
    resolved `folder` by `..`, an absolute path elsewhere or a symlink."""
    if "\0" in path or not _encodable(path):  # no file name holds these; os.path would raise
        return None
    root = os.path.realpath(folder)
    resolved = os.path.realpath(os.path.join(root, os.path.expanduser(path)))
    return resolved if os.path.commonpath((root, resolved)) == root else None


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates counted, refused later


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reference_object(value: Mapping[str, Any], param: str, limits: ServerConfig) -> np.ndarray:
    if set(value) - {"image_url", "file_id"}:
        raise invalid(param, "expected {image_url} or {file_id}")
    if "file_id" in value:
        raise invalid(
            f"{param}.file_id", "file ids are not supported; send image_url", "unsupported"
        )
    url = value.get("image_url")
    if not isinstance(url, str):
        raise invalid(f"{param}.image_url", "expected a string")
    return url_image(url, f"{param}.image_url", limits)
