"""Reading LoRA files: kohya/A1111, diffusers/PEFT and ComfyUI key layouts -> `LoraPair`s.

Nothing here knows the model: kohya module names stay in their underscore form and are split
back into dots later against the model's own module list (`targets.py`), because guessing
where the dots go (`proj_in` vs `proj.in`) is what goes wrong with hand-written replace chains.

Transformer LoRAs also ship under the original code's module names (Wan's `blocks.0.self_attn.q`,
Flux's `double_blocks.0.img_attn.qkv`, SD3's `joint_blocks.0.x_block.attn.qkv`; ComfyUI files
under `diffusion_model.`, kohya's `lora_unet_double_blocks_0_img_attn_qkv`); `renames` turns
those closed names into diffusers' (a fused projection's LoRA into one pair per diffusers
module), so they reach the same parameters as a diffusers LoRA.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from jaxvideo.lora.renames import Part, cut_up, original_parts
from jaxvideo.lora.spec import LoraError, LoraPair

SAFETENSORS_EXTS = (".safetensors",)
PICKLE_EXTS = (".pt", ".pth", ".ckpt")
LORA_EXTS = SAFETENSORS_EXTS + PICKLE_EXTS

# kohya-ss / A1111: lora_unet_<module_with_underscores>.lora_down.weight etc. SDXL and SD3 files
# use te1/te2 for their two CLIPs, SD1/SD2 files plain te; sd-scripts' Flux and SD3 LoRAs name
# the T5 te3, OneTrainer's DiT LoRAs the denoiser `lora_transformer_`.
_KOHYA = re.compile(
    r"lora_(unet|transformer|te|te1|te2|te3)_(\w+)\.(lora_down\.weight|lora_up\.weight|alpha)"
)
# Files that name "the denoiser" without saying whether it is a UNet or a transformer (kohya's
# `lora_unet_`, ComfyUI's `diffusion_model.`); `_denoiser_name` decides per file.
DENOISER = "<denoiser>"
# The T5 encoder: `text_encoder_2` of Flux, `text_encoder_3` of SD3; the merge picks the one the
# model has (`merge.COMPONENT_CHOICES`).
T5_ENCODER = "t5"
KOHYA_COMPONENTS = {
    "unet": DENOISER,
    "transformer": "transformer",
    "te": "text_encoder",
    "te1": "text_encoder",
    "te2": "text_encoder_2",
    "te3": T5_ENCODER,
}
# ComfyUI's text encoder prefixes (`text_encoders.clip_l.transformer.`).
_COMFY_ENCODERS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": T5_ENCODER}
# Transformer denoisers number their layers `blocks.N` (Wan), `transformer_blocks.N`,
# `single_transformer_blocks.N` (diffusers' Flux, SD3), `double_blocks.N` / `single_blocks.N`
# (BFL's Flux), `joint_blocks.N` (MMDiT); a UNet has none of them at its top level.
_TRANSFORMER_MODULE = re.compile(
    r"(?:single_transformer_|transformer_|double_|single_|joint_)?blocks[._]\d+[._].*"
)

# diffusers / PEFT. `base_model.model.` is what `PeftModel.save_pretrained` writes; a segment
# after lora_A/lora_B is an adapter name left in a raw `state_dict()`. ComfyUI writes
# `diffusion_model.` + original module names with either spelling of down/up.
_PEFT_PREFIX = "base_model.model."
_COMPONENT = (
    r"(?:(unet|text_encoder|text_encoder_2|text_encoder_3|transformer|transformer_2"
    r"|(?:model\.)?diffusion_model|text_encoders\.(?:clip_l|clip_g|t5xxl)\.transformer)\.)?"
)
_DIFFUSERS = re.compile(
    _COMPONENT
    + r"(.+?)\.(?:lora_(A|B)(?:\.[^.]+)?\.weight|lora\.(down|up)\.weight"
    + r"|lora_linear_layer\.(down|up)\.weight|lora_(down|up)\.weight|(alpha))"
)
# XLabs' Flux LoRAs: `double_blocks.0.processor.qkv_lora1.down.weight` (`renames` maps them).
_XLABS = re.compile(_COMPONENT + r"(.+?\.processor\.(?:qkv|proj)_lora[12]?)\.(down|up)\.weight")
# Components whose module names may be original code names (None: the file does not say).
_ORIGINAL_NAMED = (None, DENOISER, "transformer", "transformer_2")
# diffusers' pre-PEFT attention-processor layout: attn1.processor.to_q_lora.down.weight, and
# its text-encoder twin self_attn.to_q_lora.down.weight (meaning self_attn.q_proj).
_PROCESSOR = re.compile(
    _COMPONENT + r"(.+?)\.(?:processor\.)?(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight"
)
_CLIP_ATTN_NAMES = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}

# LyCORIS and friends store something other than a plain down/up pair; say so by name.
_UNSUPPORTED = (
    (re.compile(r".*\.hada_\w+"), "LoHa"),
    (re.compile(r".*\.lokr_\w+"), "LoKr"),
    (re.compile(r".*\.lora_mid\.weight"), "LoCon with a Tucker mid weight"),
    (re.compile(r".*\.(?:dora_scale|lora_magnitude_vector(?:\.\w+)*)"), "DoRA"),
    (re.compile(r".*\.diff(?:_b)?"), "full weight diff"),
    (re.compile(r".*\.[wb]_norm"), "norm"),
    (re.compile(r".*\.(?:lora_B|lora_up|lora\.up)(?:\.\w+)?\.bias"), "LoRA bias"),
)

METADATA_KEY = "lora_adapter_metadata"


def _to_numpy(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a LoRA file as float32 numpy arrays, and its safetensors metadata."""
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_EXTS:
        try:
            return _read_safetensors(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise LoraError(f"{path.name}: not a readable safetensors file ({e})") from e
    if suffix in PICKLE_EXTS:
        return _read_pickle(path), {}
    raise LoraError(f"{path.name}: unsupported LoRA file type; use one of {', '.join(LORA_EXTS)}")


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    out: dict[str, np.ndarray] = {}
    with safe_open(str(path), framework="numpy") as f:
        metadata = dict(f.metadata() or {})
        keys = list(f.keys())
        bf16: list[str] = []
        for key in keys:
            try:
                out[key] = _to_numpy(f.get_tensor(key))
            except TypeError:  # numpy has no bfloat16
                bf16.append(key)
    if bf16:
        # jax's ml_dtypes reads bfloat16; import lazily, only files that need it pay for it.
        with safe_open(str(path), framework="flax") as f:
            for key in bf16:
                out[key] = _to_numpy(f.get_tensor(key).astype("float32"))
    return out, metadata


def _read_pickle(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional at serving time
        raise LoraError(
            f"{path.name}: reading {path.suffix} LoRAs needs torch; use safetensors"
        ) from None
    try:
        # weights_only: a pickle can run code on load; this refuses anything but tensors.
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise LoraError(f"{path.name}: cannot load as a weights-only torch file ({e})") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise LoraError(f"{path.name}: holds a {type(obj).__name__}, not a dict of tensors")
    return {
        str(k): v.detach().to(torch.float32).numpy()
        for k, v in obj.items()
        if isinstance(v, torch.Tensor)
    }


def _metadata_configs(metadata: Mapping[str, str]) -> dict[str, Any]:
    """diffusers' `lora_adapter_metadata`: PEFT LoraConfig fields, `component.`-prefixed."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return {}  # metadata is advisory; a broken blob falls back to alpha = rank
    return parsed if isinstance(parsed, dict) else {}


def _config_alpha(
    config: Mapping[str, Any], component: str | None, module: str
) -> tuple[Any, bool]:
    """(alpha, use_rslora) from PEFT config fields, or (None, False) when none apply."""
    prefix = f"{component}." if component else ""
    fields = {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}
    if component and not any(k in fields for k in ("lora_alpha", "alpha_pattern")):
        fields = config  # saved by `save_lora_adapter` for one model: no prefix
    rslora = bool(fields.get("use_rslora", False))
    for pattern, alpha in (fields.get("alpha_pattern") or {}).items():
        # PEFT's own rule: the pattern must match the module name's tail at a dot boundary.
        if re.fullmatch(rf"(?:.*\.)?(?:{pattern})", module):
            return alpha, rslora
    return fields.get("lora_alpha"), rslora


def _unsupported(key: str) -> str | None:
    return next((kind for regex, kind in _UNSUPPORTED if regex.fullmatch(key)), None)


def _component(prefix: str | None) -> str | None:
    if prefix is None:
        return None
    if prefix.endswith("diffusion_model"):
        return DENOISER
    if prefix.startswith("text_encoders."):
        return _COMFY_ENCODERS[prefix.split(".")[1]]
    return prefix


def _classify(key: str) -> tuple[str | None, str, bool, str] | None:
    """(component, module, kohya, role) for one tensor name; role is down/up/alpha."""
    m = _KOHYA.fullmatch(key)
    if m:
        role = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}[m[3]]
        return KOHYA_COMPONENTS[m[1]], m[2], True, role
    name = key.removeprefix(_PEFT_PREFIX)
    m = _XLABS.fullmatch(name)
    if m:
        return _component(m[1]), m[2], False, m[3]
    m = _PROCESSOR.fullmatch(name)
    if m:
        parent, proj = m[2], m[3]
        if parent.endswith("self_attn"):
            module = f"{parent}.{_CLIP_ATTN_NAMES[proj]}"
        else:
            module = f"{parent}.{'to_out.0' if proj == 'to_out' else proj}"
        return _component(m[1]), module, False, m[4]
    m = _DIFFUSERS.fullmatch(name)
    if m:
        ab, role = m[3], m[4] or m[5] or m[6] or m[7]
        if ab:
            role = "down" if ab == "A" else "up"
        return _component(m[1]), m[2], False, role
    return None


Group = tuple[str | None, str, bool]  # (component, module, kohya) as the file names them


def _renamed(group: Group) -> tuple[str | None, bool, tuple[Part, ...]]:
    """(component, kohya, diffusers parts) of a file's module: original code names become
    diffusers' (dotted: no longer kohya names), and a file's denoiser with original names is a
    transformer. Other names stay one part of themselves."""
    component, module, kohya = group
    parts = original_parts(module, underscored=kohya) if component in _ORIGINAL_NAMED else None
    if parts is None:
        return component, kohya, (Part(module),)
    return "transformer" if component == DENOISER else component, False, parts


def _denoiser_name(renamed: Mapping[Group, tuple[str | None, bool, tuple[Part, ...]]]) -> str:
    """What a file's `lora_unet_` / `diffusion_model.` prefix means: original transformer names
    or top-level `blocks.N` / `transformer_blocks.N` layers make it a transformer LoRA, anything
    else (SD's down/up blocks) a UNet one."""
    for (named, module, _), (component, _, _) in renamed.items():
        if named == DENOISER and (component != DENOISER or _TRANSFORMER_MODULE.fullmatch(module)):
            return "transformer"
    return "unet"


def parse_lora(path: Path) -> list[LoraPair]:
    """Every low-rank pair of a LoRA file, with its alpha folded into `scale`."""
    tensors, metadata = read_tensors(path)
    if not tensors:
        raise LoraError(f"{path.name}: the file holds no tensors")
    configs = _metadata_configs(metadata)
    groups: dict[Group, dict[str, np.ndarray]] = {}
    names: dict[Group, dict[str, str]] = {}
    unknown: list[str] = []
    for key, value in tensors.items():
        classified = _classify(key)
        if classified is None:
            kind = _unsupported(key)
            if kind is not None:
                raise LoraError(f"{path.name}: {kind} weights ({key!r}) are not supported")
            unknown.append(key)
            continue
        component, module, kohya, role = classified
        groups.setdefault((component, module, kohya), {})[role] = value
        names.setdefault((component, module, kohya), {})[role] = key
    if unknown:
        raise LoraError(
            f"{path.name}: {len(unknown)} tensor(s) are not LoRA weights in a known layout: "
            + ", ".join(unknown[:5])
            + (" ..." if len(unknown) > 5 else "")
        )
    renamed = {group: _renamed(group) for group in groups}
    denoiser = _denoiser_name(renamed)
    pairs = []
    for group, parts in groups.items():
        named, kohya, targets = renamed[group]
        component = denoiser if named == DENOISER else named
        # Errors name a real key of the file, so a user can find it.
        label = names[group].get("down") or next(iter(names[group].values()))
        if "down" not in parts or "up" not in parts:
            have = ", ".join(sorted(parts))
            raise LoraError(f"{path.name}: {label} needs both down and up weights (has {have})")
        down, up = parts["down"], parts["up"]
        rank = down.shape[0]
        if down.ndim not in (2, 4, 5) or up.ndim != down.ndim or up.shape[1] != rank or rank == 0:
            raise LoraError(
                f"{path.name}: {label}: down {down.shape} and up {up.shape} are not a LoRA pair"
            )
        for target in targets:
            scale = _scale(parts, configs, component, target.module)
            part_up = cut_up(up, down, target)
            pairs.append(LoraPair(label, component, target.module, kohya, down, part_up, scale))
    return pairs


def _scale(
    parts: Mapping[str, np.ndarray], configs: Mapping[str, Any], component: str | None, module: str
) -> float:
    """alpha / rank (alpha / sqrt(rank) for rsLoRA): the file's alpha, else PEFT metadata's."""
    rank = parts["down"].shape[0]
    rslora = False
    if "alpha" in parts:
        # kohya's trainer reads alpha 0 (or none) as alpha = rank; so do we.
        alpha = float(parts["alpha"].reshape(-1)[0]) or float(rank)
    else:
        found, rslora = _config_alpha(configs, component, module)
        alpha = float(rank if found is None else found)
    return alpha / (math.sqrt(rank) if rslora else rank)
