"""The single-file layouts of the SD families: where each network lives, and telling them apart.

A family is recognised by its text encoders' prefixes (the UNet and VAE prefixes are shared):

- SD 1.x: `cond_stage_model.transformer.*` (OpenAI CLIP ViT-L, a pickled transformers model);
- SD 2.x: `cond_stage_model.model.*` (OpenCLIP ViT-H, fused q/k/v). SD2 conditions on the
  penultimate layer, so, like diffusers' single-file loader, the last of its 24 layers (and the
  unused `text_projection`) is dropped: the text encoder has 23 layers;
- SDXL base: `conditioner.embedders.0.transformer.*` (CLIP ViT-L) and
  `conditioner.embedders.1.model.*` (OpenCLIP bigG with projection, all layers kept).

The prediction type cannot be read from the weights. Unless the caller says: a file carrying
ComfyUI's empty `v_pred` marker tensor is v-prediction; SD2 is v-prediction (diffusers'
single-file default for SD2 is the 768px v-model stable-diffusion-2-1) except 9-channel
inpainting UNets (stable-diffusion-2-inpainting, epsilon); SD1 and SDXL are epsilon. SD2 512px
"base" checkpoints are epsilon models and need the override. The default image size follows
(SD2 v-prediction 768px, other SD2 and SD1 512px, SDXL 1024px).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jaxvideo.convert.core import ConversionError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
PREDICTION_TYPES = ("epsilon", "v_prediction")
V_PRED_MARKER = "v_pred"  # ComfyUI saves v-prediction models with this empty tensor


@dataclass(frozen=True)
class TextTower:
    """One text encoder of a family's single-file layout."""

    component: str  # jaxvideo / diffusers component name
    prefix: str
    open_clip: bool  # OpenCLIP naming (fused qkv) rather than a pickled transformers CLIP
    tokenizer: str  # the tokenizer folder it pairs with
    flag: str  # the CLI option that supplies that tokenizer
    hint: str  # which tokenizer that is, for the error when it is missing
    with_projection: bool = False
    drop_last_layer: bool = False


@dataclass(frozen=True)
class Layout:
    family: str
    pipeline: str  # the diffusers pipeline class the file corresponds to
    towers: tuple[TextTower, ...]


_SD1_TOWER = TextTower(
    component="text_encoder",
    prefix="cond_stage_model.transformer.",
    open_clip=False,
    tokenizer="tokenizer",
    flag="--tokenizer",
    hint="the CLIP ViT-L/14 tokenizer, e.g. the tokenizer/ folder of a diffusers SD1.5 model",
)
_SD2_TOWER = TextTower(
    component="text_encoder",
    prefix="cond_stage_model.model.",
    open_clip=True,
    tokenizer="tokenizer",
    flag="--tokenizer",
    hint="the OpenCLIP tokenizer, e.g. the tokenizer/ folder of a diffusers SD2 model",
    drop_last_layer=True,
)
_SDXL_TOWERS = (
    TextTower(
        component="text_encoder",
        prefix="conditioner.embedders.0.transformer.",
        open_clip=False,
        tokenizer="tokenizer",
        flag="--tokenizer",
        hint="the tokenizer/ folder of a diffusers SDXL model (CLIP ViT-L)",
    ),
    TextTower(
        component="text_encoder_2",
        prefix="conditioner.embedders.1.model.",
        open_clip=True,
        tokenizer="tokenizer_2",
        flag="--tokenizer-2",
        hint="the tokenizer_2/ folder of a diffusers SDXL model (OpenCLIP bigG)",
        with_projection=True,
    ),
)

# Checked in this order: SDXL's two towers first, then SD2, then SD1.
LAYOUTS: dict[str, Layout] = {
    "sdxl": Layout("sdxl", "StableDiffusionXLPipeline", _SDXL_TOWERS),
    "sd2": Layout("sd2", "StableDiffusionPipeline", (_SD2_TOWER,)),
    "sd1": Layout("sd1", "StableDiffusionPipeline", (_SD1_TOWER,)),
}

SUPPORTED_LAYOUTS = (
    "SD 1.x (model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*), "
    "SD 2.x (... cond_stage_model.model.*), SDXL base (... conditioner.embedders.0.transformer.*"
    " + conditioner.embedders.1.model.*)"
)


def key_prefix(key: str) -> str:
    """A key's first two dotted names, stopping at a layer number: what identifies a layout."""
    parts = []
    for part in key.split(".")[:2]:
        if part.isdigit():
            break
        parts.append(part)
    return ".".join(parts) or key


_HINTS = (
    (("lora", "lokr", ".hada_"), "a LoRA/LyCORIS adapter, which patches a base model"),
    (("double_blocks", "single_blocks"), "a Flux transformer, not a Stable Diffusion model"),
    (("joint_blocks",), "an SD3 transformer, which is not supported"),
)


def _hint(keys: list[str]) -> str:
    text = " ".join(keys[:2000]).lower()
    for needles, what in _HINTS:
        if any(n in text for n in needles):
            return f" It looks like {what}."
    if any(k.startswith(("down_blocks.", "text_model.", "encoder.down_blocks.")) for k in keys):
        return " Its keys use diffusers names: convert the diffusers model folder instead."
    return ""


def unknown_layout(name: str, keys: list[str]) -> ConversionError:
    counts = Counter(key_prefix(k) for k in keys)
    found = ", ".join(f"{p} ({n})" for p, n in counts.most_common(8))
    if len(counts) > 8:
        found += f", ... ({len(counts) - 8} more)"
    return ConversionError(
        f"{name}: not a Stable Diffusion single-file checkpoint in a supported layout. "
        f"Found key prefixes: {found or 'none (empty file)'}. Supported layouts: "
        f"{SUPPORTED_LAYOUTS}.{_hint(keys)}"
    )


def detect_family(keys: Iterable[str], name: str = "checkpoint") -> str:
    """sd1 / sd2 / sdxl from which text-encoder prefixes the file holds."""
    keys = list(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders.0.model."):
        raise ConversionError(
            f"{name}: an SDXL refiner (conditioner.embedders.0.model.*): only SDXL base models "
            "are supported"
        )
    family = next((f for f, lay in LAYOUTS.items() if all(has(t.prefix) for t in lay.towers)), None)
    if family is None or not has(UNET_PREFIX + "input_blocks."):
        raise unknown_layout(name, keys)
    if not has(VAE_PREFIX):
        raise ConversionError(
            f"{name}: a {family} checkpoint without VAE weights ({VAE_PREFIX}*): "
            "single files without a VAE are not supported"
        )
    return family


def default_prediction_type(family: str, keys: Iterable[str], in_channels: int) -> str:
    if V_PRED_MARKER in set(keys):
        return "v_prediction"
    return "v_prediction" if family == "sd2" and in_channels != 9 else "epsilon"


def image_size(family: str, prediction_type: str) -> int:
    if family == "sdxl":
        return 1024
    return 768 if family == "sd2" and prediction_type == "v_prediction" else 512


_SCHEDULER_BASE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
# The scheduler each family's reference diffusers pipeline ships with.
SCHEDULER_CLASS = {"sd1": "PNDMScheduler", "sd2": "DDIMScheduler", "sdxl": "EulerDiscreteScheduler"}


def scheduler_config(family: str, prediction_type: str) -> dict[str, Any]:
    """The standard training-schedule config of a family (all SD families share the betas)."""
    return {
        "_class_name": SCHEDULER_CLASS[family],
        **_SCHEDULER_BASE,
        "prediction_type": prediction_type,
    }
