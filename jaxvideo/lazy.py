"""Objects named as "package.module:attribute", imported on first use: the tables that name
pipelines, demo builders and sampler functions stay free of JAX until one is needed."""

from __future__ import annotations

import functools
import importlib
from typing import Any


@functools.cache
def load(target: str) -> Any:
    """ "package.module:attribute" -> the attribute (importing the module)."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)
