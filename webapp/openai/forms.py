"""Multipart form fields -> the JSON shape a JSON-strict schema loads.

The OpenAI SDK sends `videos.create` as multipart, with its `extra_body` keys as form fields:
numbers and booleans as strings (`"5"`, `"true"`), objects as bracketed keys
(`state[kind]`, `state[payload][segment_index]`, `output[return_state]`), lists as `key[]`, and
None values left out. `form_to_json` rebuilds that structure and converts the strings to the
types the schema declares, so both content types go through one schema; a whole object may
also arrive as one JSON text field (`-F 'state={"kind": ...}'`).

Continuation payloads are opaque to the schema (a `Dict` field), so their leaves are converted
with the types `jaxvideo.continuation` registers for the state's kind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from marshmallow import Schema, fields

from jaxvideo.continuation import KINDS
from webapp.core.errors import invalid
from webapp.core.schemas import Int, Num

_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_TRUE, _FALSE = frozenset(("true", "1", "yes", "on")), frozenset(("false", "0", "no", "off"))


def form_to_json(schema: Schema, items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Form (key, value) pairs -> a dict for `schema`; a value that cannot be converted is a
    400 naming its field. Empty strings mean "not sent" (the SDK's rendering of None)."""
    nested: dict[str, Any] = {}
    for key, value in items:
        if value == "" and key != "prompt":
            continue
        _insert(nested, key, value)
    return {key: _convert(schema.fields.get(key), value, key) for key, value in nested.items()}


def _insert(tree: dict[str, Any], key: str, value: str) -> None:
    """`a[b][c]` -> tree["a"]["b"]["c"] = value; a trailing `[]` appends to a list."""
    match = _KEY.fullmatch(key)
    parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))] if match else []
    if not parts or "" in parts[:-1]:
        raise invalid(key, "malformed form field name (objects in lists are not supported)")
    node: Any = tree
    for part in parts[:-2] if parts[-1] == "" else parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise invalid(key, "sent both as a value and as an object")
    if parts[-1] == "":
        values = node.setdefault(parts[-2], [])
        if not isinstance(values, list):
            raise invalid(key, "sent both as a value and as a list")
        values.append(value)
    elif parts[-1] in node:
        raise invalid(key, "sent more than once")
    else:
        node[parts[-1]] = value


def _convert(field: fields.Field | None, value: Any, path: str) -> Any:
    """Converts form strings to what `field` loads; unknown fields pass through unchanged
    (the schema then rejects them by name)."""
    if field is None:
        return value
    if value == "null" and field.allow_none:  # `-F output_path=null` means no value, as in JSON
        return None
    if isinstance(field, (fields.Nested, fields.Dict)) and isinstance(value, str):
        return _json_object(value, path)
    if isinstance(field, fields.Nested) and isinstance(value, Mapping):
        inner = field.schema.fields
        return {key: _convert(inner.get(key), item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(field, fields.Dict) and isinstance(value, Mapping):
        return _state(value) if path == "state" else dict(value)
    if not isinstance(value, str):
        return value
    if isinstance(field, Int):
        return _number(value, path, int)
    if isinstance(field, Num):
        return _number(value, path, float)
    if isinstance(field, fields.Boolean):
        return _boolean(value, path)
    return value


def _json_object(text: str, path: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise invalid(path, f"expected a JSON object ({exc})") from exc


def _number(text: str, path: str, kind: type) -> Any:
    try:
        return kind(text.strip())
    except ValueError:
        raise invalid(path, f"expected {'an integer' if kind is int else 'a number'}") from None


def _boolean(text: str, path: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise invalid(path, "expected true or false")


def _state(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A bracketed `state[...]` -> the envelope with typed payload leaves (registered kinds)."""
    state = dict(raw)
    payload = state.get("payload")
    if not isinstance(payload, Mapping):
        return state
    payload = dict(payload)
    if isinstance(payload.get("schema_version"), str):
        payload["schema_version"] = _number(
            payload["schema_version"], "state.payload.schema_version", int
        )
    types = KINDS.get(state.get("kind"), {}).get(payload.get("schema_version"), {})
    for name, kind in types.items():
        if kind is int and isinstance(payload.get(name), str):
            payload[name] = _number(payload[name], f"state.payload.{name}", int)
    state["payload"] = payload
    return state
