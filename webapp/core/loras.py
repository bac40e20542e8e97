"""Structured LoRA fields (`lora: [{path, multiplier, is_high_noise}]`) -> `LoraSpec`s.

Every surface that takes LoRAs (sdapi `lora`, sdcpp `lora`, `lora` inside `sd_cpp_extra_args`
on OpenAI and sdapi) goes through `lora_specs`, so every path is resolved with
`resolve_lora_path` against `server.lora_dir`: a name outside the folder (`..`, an absolute
path elsewhere, a symlink out), a missing file, or a server without a LoRA folder answer 400
naming the field. (The peer does not confine LoRA paths inside extra args; this server does.)
Prompt-embedded `<lora:...>` tags are not parsed, as in the peer.

`jaxvideo.lora` imports JAX (its merge module), so it is imported on first use: importing the
web layer stays JAX-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from webapp.core.errors import invalid

# Bounds the merge work one request can ask for; real prompts use a handful.
MAX_LORAS = 16


def lora_specs(
    entries: Sequence[Mapping[str, Any]] | None, lora_dir: str | None, param: str = "lora"
) -> tuple[Any, ...]:
    """Schema-loaded LoRA entries -> `LoraSpec`s resolved inside `lora_dir`; () for none."""
    if not entries:
        return ()
    from jaxvideo.lora import LoraError, LoraSpec, resolve_lora_path

    if lora_dir is None:
        raise invalid(
            param, "this server has no LoRA folder configured (server.lora_dir)", "unsupported"
        )
    if len(entries) > MAX_LORAS:
        raise invalid(param, f"at most {MAX_LORAS} LoRAs per request, got {len(entries)}")
    specs = []
    for index, entry in enumerate(entries):
        where = f"{param}[{index}]"
        try:
            path = resolve_lora_path(lora_dir, entry["path"])
        except LoraError as exc:  # the message names the LoRA as requested, never the folder
            raise invalid(f"{where}.path", str(exc), code="invalid_lora") from exc
        # The schema already refused non-finite multipliers, which LoraSpec would too.
        multiplier = entry.get("multiplier", 1.0)
        specs.append(LoraSpec(path, multiplier, bool(entry.get("is_high_noise", False))))
    return tuple(specs)


def available_loras(lora_dir: str | None) -> list[dict[str, str]]:
    """`[{"name": stem, "path": relative path}]` under `lora_dir`, by path; [] without one."""
    if lora_dir is None:
        return []
    from jaxvideo.lora import list_loras

    return list_loras(lora_dir)
