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
from jaxvideo.families import SD1, SD2, SDXL

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
PREDICTION_TYPES = ("epsilon", "v_prediction")
V_PRED_MARKER = "v_pred"  # ComfyUI saves v-prediction models with this empty tensor
# Inpainting UNets take the noisy latents, the mask and the masked image's latents: 4 + 1 + 4.
INPAINTING_IN_CHANNELS = 9


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
    """A family's single-file layout and the published facts its weights cannot tell."""

    family: str  # the family's name (jaxvideo.families)
    pipeline: str  # the diffusers pipeline class the file corresponds to
    towers: tuple[TextTower, ...]
    scheduler_class: str  # the scheduler its reference diffusers pipeline ships with
    vae_scaling: float  # the VAE's latent `scaling_factor`
    image_size: int  # default image size in pixels
    # The default image size of its v-prediction models, where it differs (SD2's 768px v-model).
    v_prediction_image_size: int | None = None
    # The published models predict v (9-channel inpainting UNets excepted): SD2.
    v_prediction: bool = False
    # Attention heads of every UNet level; None: 64-wide heads (`width // 64` per level).
    unet_heads: int | None = None
    # The UNet's `label_emb` is SDXL's text_time conditioning (pooled text + size/crop ids).
    text_time: bool = False

    def default_prediction_type(self, keys: Iterable[str], in_channels: int) -> str:
        """What the UNet predicts unless the caller says (see the module docstring)."""
        if V_PRED_MARKER in set(keys):
            return "v_prediction"
        inpainting = in_channels == INPAINTING_IN_CHANNELS
        return "v_prediction" if self.v_prediction and not inpainting else "epsilon"

    def default_image_size(self, prediction_type: str) -> int:
        """The image size (pixels) the family's models of `prediction_type` are trained at."""
        if prediction_type == "v_prediction" and self.v_prediction_image_size is not None:
            return self.v_prediction_image_size
        return self.image_size


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

_SDXL_LAYOUT = Layout(
    family=SDXL.name,
    pipeline="StableDiffusionXLPipeline",
    towers=_SDXL_TOWERS,
    scheduler_class="EulerDiscreteScheduler",
    vae_scaling=0.13025,
    image_size=1024,
    text_time=True,
)
_SD2_LAYOUT = Layout(
    family=SD2.name,
    pipeline="StableDiffusionPipeline",
    towers=(_SD2_TOWER,),
    scheduler_class="DDIMScheduler",
    vae_scaling=0.18215,
    image_size=512,
    v_prediction_image_size=768,
    v_prediction=True,
)
_SD1_LAYOUT = Layout(
    family=SD1.name,
    pipeline="StableDiffusionPipeline",
    towers=(_SD1_TOWER,),
    scheduler_class="PNDMScheduler",
    vae_scaling=0.18215,
    image_size=512,
    unet_heads=8,
)
# Checked in this order: SDXL's two towers first, then SD2, then SD1.
LAYOUTS: dict[str, Layout] = {
    layout.family: layout for layout in (_SDXL_LAYOUT, _SD2_LAYOUT, _SD1_LAYOUT)
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


def detect_layout(keys: Iterable[str], name: str = "checkpoint") -> Layout:
    """The layout (SD 1.x, SD 2.x or SDXL base) whose text-encoder prefixes the file holds."""
    keys = list(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders.0.model."):
        raise ConversionError(
            f"{name}: an SDXL refiner (conditioner.embedders.0.model.*): only SDXL base models "
            "are supported"
        )
    layout = next((lay for lay in LAYOUTS.values() if all(has(t.prefix) for t in lay.towers)), None)
    if layout is None or not has(UNET_PREFIX + "input_blocks."):
        raise unknown_layout(name, keys)
    if not has(VAE_PREFIX):
        raise ConversionError(
            f"{name}: a {layout.family} checkpoint without VAE weights ({VAE_PREFIX}*): "
            "single files without a VAE are not supported"
        )
    return layout


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


def scheduler_config(layout: Layout, prediction_type: str) -> dict[str, Any]:
    """The standard training-schedule config of a family (all SD families share the betas)."""
    return {
        "_class_name": layout.scheduler_class,
        **_SCHEDULER_BASE,
        "prediction_type": prediction_type,
    }
