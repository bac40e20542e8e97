"""Shared schema pieces: JSON-strict number fields, the static ranges of request fields as
validators, and loading with a 400 on any failure.

Request schemas never use `load_default`: a key is in the loaded dict only if the client sent
it, which is what the merge precedence (client > operator > family) is built on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from jaxvideo.request import FIELD_RANGES
from webapp.core.errors import ApiError

log = logging.getLogger(__name__)


class Int(fields.Integer):
    """A JSON integer (`8` or `8.0`); strings, booleans, `8.5` and floats too large to hold an
    exact integer (`5e16`) are type errors."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid", input=value)
        return value


class Num(fields.Float):
    """A JSON number; strings and booleans are type errors, NaN/Infinity are rejected."""

    def _validated(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class Bool(fields.Boolean):
    """A JSON boolean; `0`, `1` and strings are type errors, as the documented schema says (a
    multipart form's "true"/"false" are converted before loading, webapp/openai/forms.py)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class Flag(fields.Field):
    """A boolean sent as `true`/`false` or as the integers 0/1 (A1111 uses both)."""

    default_error_messages = {"invalid": "Not a valid boolean or 0/1."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise self.make_error("invalid")


def in_range(field: str) -> validate.Range:
    """The validator of a GenerationRequest field's static range (`FIELD_RANGES`), for the
    surface fields that carry it."""
    bounds = FIELD_RANGES[field]
    return validate.Range(
        min=bounds.low,
        max=bounds.high,
        min_inclusive=not bounds.low_open,
        max_inclusive=not bounds.high_open,
        error=f"must be {bounds.describe()}",
    )


def load(schema: Schema, data: Any, *, unknown: str | None = None) -> dict[str, Any]:
    """Loads `data`; any validation error becomes a 400 naming the first offending field.
    Unknown keys follow `unknown`, else the schema's own `Meta.unknown` (logged if excluded)."""
    if not isinstance(data, Mapping):
        raise ApiError(400, "invalid json", detail="the request body must be a JSON object")
    unknown = unknown or schema.unknown
    if unknown == EXCLUDE:
        ignored = sorted(set(data) - {f.data_key or name for name, f in schema.fields.items()})
        if ignored:
            log.debug("ignoring unknown fields: %s", ", ".join(map(str, ignored)))
    try:
        return schema.load(data, unknown=unknown)
    except ValidationError as exc:
        path, message = first_error(exc.messages)
        raise ApiError(400, f"{path}: {message}" if path else message, param=path or None) from exc


def first_error(messages: Any, path: str = "") -> tuple[str, str]:
    """The first (path, message) in marshmallow's nested error dict: `lora[0].path`."""
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            if isinstance(key, int):
                sub = f"{path}[{key}]"
            elif key == "_schema":
                sub = path
            else:
                sub = f"{path}.{key}" if path else str(key)
            return first_error(value, sub)
    if isinstance(messages, list) and messages:
        return first_error(messages[0], path)
    return path, str(messages)
