"""The family table: one `FamilySpec` row per model family, the one place family facts live.

A family is a kind of model folder that one pipeline class serves: SD 1.x, SDXL, Wan 2.2, ...
Everything else (the config's family names, the engine, the web layer's feature rules, the
converters, the demo models) reads these rows or their fields; nothing else spells a family
name. The module is free of JAX: pipelines and demo builders are named as "module:attribute"
and imported on first use (`load`), so the config and the web layer can read the table.

Adding a family: docs/ARCHITECTURE.md, "Adding a family".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from jaxvideo.lazy import load


@dataclass(frozen=True)
class FamilySpec:
    """What a family is made of and how its models behave by default.

    `components` maps each network folder of a converted model to the reference classes it
    may hold (their conversion tables are `jaxvideo.models.registry` entries); `optional`
    components may be absent (Wan 2.1 I2V's image encoder, Wan 2.2's second expert).
    `defaults` are the request fields a model of the family gets unless the client or the
    operator set them.
    """

    name: str
    title: str  # what people call it: "Stable Diffusion XL", "Wan 2.2"
    pipeline: str  # "module:Class" implementing jaxvideo.pipelines.base.Pipeline
    components: Mapping[str, tuple[str, ...]]
    defaults: Mapping[str, Any]
    optional: tuple[str, ...] = ()
    video: bool = False  # makes videos (vid_gen); image mode is a one-frame video
    flow: bool = False  # rectified flow: flow samplers and schedules, flow_shift
    # SD text conditioning: "module:Class" in jaxvideo.pipelines.sd_conditioning.
    conditioner: str | None = None
    # The family whose sampler runs this one finishes (an SDXL refiner refines SDXL).
    refines: str | None = None
    # A second, high-noise denoiser (Wan 2.2 A14B): `is_high_noise` LoRAs and its own stage.
    high_noise_expert: bool = False
    # Which published "Align Your Steps" noise-level table the `ays` schedule uses.
    ays_table: str = "SD1.5"
    # Tiny random-weight demo models: name (as in `demo:<name>`) -> builder "module:function".
    demos: Mapping[str, str] = field(default_factory=dict)

    def load_pipeline(self) -> Any:
        """The pipeline class (imports it, and with it JAX)."""
        return load(self.pipeline)

    def __post_init__(self) -> None:
        # Rows are shared by every model and request: keep them read-only.
        object.__setattr__(self, "components", MappingProxyType(dict(self.components)))
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(self, "demos", MappingProxyType(dict(self.demos)))


_SD = "jaxvideo.pipelines.sd:StableDiffusionPipeline"
_WAN = "jaxvideo.pipelines.wan:WanPipeline"
_FLUX = "jaxvideo.pipelines.flux:FluxPipeline"
_SD3 = "jaxvideo.pipelines.sd3:StableDiffusion3Pipeline"
_CLIP = ("CLIPTextModel",)
_CLIP_PROJ = ("CLIPTextModelWithProjection",)
_UNET = ("UNet2DConditionModel",)
_VAE = ("AutoencoderKL",)
_WAN_COMPONENTS = {
    "text_encoder": ("UMT5EncoderModel", "T5EncoderModel"),
    "transformer": ("WanTransformer3DModel",),
    "transformer_2": ("WanTransformer3DModel",),
    "vae": ("AutoencoderKLWan",),
    "image_encoder": ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
}

_SD_DEFAULTS: dict[str, Any] = {
    "steps": 20,
    "guidance_scale": 7.0,
    "sampler": "euler_a",
    "scheduler": "default",  # the sampler's own choice (lcm -> lcm, ...), else discrete
    "clip_skip": -1,
}
_WAN_DEFAULTS: dict[str, Any] = {
    "width": 832,
    "height": 480,
    "num_frames": 81,
    "fps": 16,
    "steps": 50,
    "guidance_scale": 5.0,
    "sampler": "unipc",  # what Wan ships (diffusers' UniPCMultistepScheduler)
    "scheduler": "discrete",
}

SD1 = FamilySpec(
    name="sd1",
    title="Stable Diffusion 1.x",
    pipeline=_SD,
    components={"text_encoder": _CLIP, "unet": _UNET, "vae": _VAE},
    defaults={**_SD_DEFAULTS, "width": 512, "height": 512},
    conditioner="jaxvideo.pipelines.sd_conditioning:ClipConditioner",
    demos={
        "sd1-tiny": "jaxvideo.demo_sd:build_sd1_tiny",
        "sd1-shapes": "jaxvideo.demo_models:install_sd1_shapes",  # trained, shipped
    },
)
SD2 = FamilySpec(
    name="sd2",
    title="Stable Diffusion 2.x",
    pipeline=_SD,
    components={"text_encoder": _CLIP, "unet": _UNET, "vae": _VAE},
    defaults={**_SD_DEFAULTS, "width": 768, "height": 768},
    conditioner="jaxvideo.pipelines.sd_conditioning:ClipConditioner",
)
SDXL = FamilySpec(
    name="sdxl",
    title="Stable Diffusion XL",
    pipeline=_SD,
    components={
        "text_encoder": _CLIP,
        "text_encoder_2": _CLIP_PROJ,
        "unet": _UNET,
        "vae": _VAE,
    },
    defaults={**_SD_DEFAULTS, "width": 1024, "height": 1024, "guidance_scale": 5.0},
    conditioner="jaxvideo.pipelines.sd_conditioning:SDXLConditioner",
    ays_table="SDXL",
)
SDXL_REFINER = FamilySpec(
    name="sdxl_refiner",
    title="Stable Diffusion XL refiner",
    pipeline=_SD,
    components={"text_encoder_2": _CLIP_PROJ, "unet": _UNET, "vae": _VAE},
    defaults={**_SD_DEFAULTS, "width": 1024, "height": 1024, "guidance_scale": 5.0},
    conditioner="jaxvideo.pipelines.sd_conditioning:SDXLRefinerConditioner",
    refines=SDXL.name,
)
WAN21 = FamilySpec(
    name="wan21",
    title="Wan 2.1",
    pipeline=_WAN,
    components=_WAN_COMPONENTS,
    optional=("transformer_2", "image_encoder"),
    defaults=_WAN_DEFAULTS,
    video=True,
    flow=True,
    demos={
        "wan-tiny": "jaxvideo.demo_wan:build_wan_tiny",
        "wan-shapes": "jaxvideo.demo_models:install_wan_shapes",  # trained, shipped
    },
)
WAN22 = FamilySpec(
    name="wan22",
    title="Wan 2.2",
    pipeline=_WAN,
    components=_WAN_COMPONENTS,
    optional=("transformer_2", "image_encoder"),
    # Wan 2.2 A14B's published settings: 40 steps, CFG 4 (high noise) / 3 (low noise).
    defaults={**_WAN_DEFAULTS, "steps": 40, "guidance_scale": 4.0, "guidance_scale_2": 3.0},
    video=True,
    flow=True,
    high_noise_expert=True,
    demos={"wan22-tiny": "jaxvideo.demo_wan:build_wan22_tiny"},
)

FLUX = FamilySpec(
    name="flux",
    title="FLUX.1",
    pipeline=_FLUX,
    components={
        "text_encoder": _CLIP,
        "text_encoder_2": ("T5EncoderModel",),
        "transformer": ("FluxTransformer2DModel",),
        "vae": _VAE,
    },
    # FLUX.1-dev's published settings (diffusers' FluxPipeline): 28 steps, distilled guidance
    # 3.5 and no true CFG; a schnell folder's own defaults (4 steps) come from the pipeline.
    defaults={
        "width": 1024,
        "height": 1024,
        "steps": 28,
        "guidance_scale": 1.0,
        "distilled_guidance": 3.5,
        "sampler": "euler",
        "scheduler": "discrete",
    },
    flow=True,
    demos={"flux-tiny": "jaxvideo.demo_dit:build_flux_tiny"},
)

SD3 = FamilySpec(
    name="sd3",
    title="Stable Diffusion 3.5",
    pipeline=_SD3,
    components={
        "text_encoder": _CLIP_PROJ,
        "text_encoder_2": _CLIP_PROJ,
        "text_encoder_3": ("T5EncoderModel",),
        "transformer": ("SD3Transformer2DModel",),
        "vae": _VAE,
    },
    optional=("text_encoder_3",),  # diffusers runs SD3 without T5 (zeros in its place)
    # StableDiffusion3Pipeline's defaults: 28 steps, CFG 7.
    defaults={
        "width": 1024,
        "height": 1024,
        "steps": 28,
        "guidance_scale": 7.0,
        "sampler": "euler",
        "scheduler": "discrete",
        "clip_skip": -1,
    },
    flow=True,
    demos={"sd3-tiny": "jaxvideo.demo_dit:build_sd3_tiny"},
)

FAMILIES: Mapping[str, FamilySpec] = MappingProxyType(
    {spec.name: spec for spec in (SD1, SD2, SDXL, SDXL_REFINER, WAN21, WAN22, FLUX, SD3)}
)
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


def family(name: str) -> FamilySpec:
    """The row of `name`; ValueError naming the known families otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown model family {name!r}; one of {', '.join(FAMILY_NAMES)}"
        ) from None


def demo_builder(name: str) -> tuple[FamilySpec, str]:
    """(family, builder "module:function") of the demo model `name` (as in demo:<name>)."""
    for spec in FAMILIES.values():
        if name in spec.demos:
            return spec, spec.demos[name]
    known = [demo for spec in FAMILIES.values() for demo in spec.demos]
    raise ValueError(f"unknown demo model {name!r}; available: {', '.join(known)}")
