"""The networks Flux / SD3 single files may carry besides the transformer: VAE and text encoders.

Stability's `sd3_medium_incl_clips*.safetensors` and ComfyUI's "checkpoint" saves bundle, under
the prefixes diffusers' single-file loader reads:

* the VAE under `first_stage_model.` (or `vae.`), in the LDM layout: `ldm.keys`' VAE table;
* CLIP ViT-L under `text_encoders.clip_l.transformer.`, CLIP bigG under
  `text_encoders.clip_g.transformer.` and T5 v1.1 XXL under `text_encoders.t5xxl.transformer.`,
  all already under transformers' names (`ldm.keys`' CLIP table: the prefix only goes).

As in diffusers: SD3's CLIP-L is a `CLIPTextModelWithProjection` whose `text_projection` is the
identity (SD3 pools CLIP-L unprojected; a projection in the file is not read), Flux's a plain
`CLIPTextModel`; CLIP bigG keeps the file's `text_projection`. Configs are read from shapes with
`ldm.configs`' rules (64-wide heads); what shapes cannot tell comes from the published models:
CLIP-L's quick GELU and bigG's GELU, the CLIP special tokens at the end of the vocabulary, T5's
gated GELU (when `wi_0` / `wi_1` exist) and 128-position bucket range, and each family's VAE
latent scale and shift. Tokenizers are not in the files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from jaxvideo import families
from jaxvideo.convert.dit_release.cuts import Cut, with_cuts
from jaxvideo.convert.ldm import configs as cfg
from jaxvideo.convert.ldm import keys as lk
from jaxvideo.convert.ldm.layouts import Layout
from jaxvideo.models.registry import class_name_of, spec_for

Shape = Callable[[str], tuple[int, ...]]

VAE_PREFIXES = ("first_stage_model.", "vae.")
CLIP_L = "text_encoders.clip_l.transformer."
CLIP_G = "text_encoders.clip_g.transformer."
T5XXL = "text_encoders.t5xxl.transformer."


@dataclass(frozen=True)
class Tower:
    """A bundled text encoder: its component name, prefix and kind."""

    component: str
    prefix: str
    kind: str  # "clip_l" (quick GELU), "clip_g" (GELU, projection) or "t5"
    # CLIP-L's projection: None (a CLIPTextModel), "identity" (SD3's, as diffusers builds it).
    projection: str | None = None


@dataclass(frozen=True)
class DiTLayout:
    """A family's single-file layout: where its bundled networks live, and published facts."""

    family: str  # the jaxvideo family name the servable folder will have
    pipeline: str  # the diffusers pipeline class
    towers: tuple[Tower, ...]
    vae: Layout  # the VAE facts `ldm.configs.infer_vae_config` reads (its scaling factor)
    vae_shift: float
    example: str  # a diffusers model folder of the family, for messages


def _vae_layout(family: str, pipeline: str, scaling: float) -> Layout:
    return Layout(
        family=family,
        pipeline=pipeline,
        towers=(),
        scheduler_class="FlowMatchEulerDiscreteScheduler",
        vae_scaling=scaling,
        image_size=1024,
    )


FLUX = DiTLayout(
    family=families.FLUX.name,
    pipeline="FluxPipeline",
    towers=(Tower("text_encoder", CLIP_L, "clip_l"), Tower("text_encoder_2", T5XXL, "t5")),
    vae=_vae_layout(families.FLUX.name, "FluxPipeline", 0.3611),
    vae_shift=0.1159,
    example="black-forest-labs/FLUX.1-dev",
)
SD3 = DiTLayout(
    family=families.SD3.name,
    pipeline="StableDiffusion3Pipeline",
    towers=(
        Tower("text_encoder", CLIP_L, "clip_l", projection="identity"),
        Tower("text_encoder_2", CLIP_G, "clip_g"),
        Tower("text_encoder_3", T5XXL, "t5"),
    ),
    vae=_vae_layout(families.SD3.name, "StableDiffusion3Pipeline", 1.5305),
    vae_shift=0.0609,
    example="stabilityai/stable-diffusion-3.5-large",
)

# T5 v1.1's relative-position bucket range (transformers' default; not stored in weights).
T5_MAX_DISTANCE = 128


def _relative(keys: Iterable[str], prefix: str) -> set[str]:
    return {k[len(prefix) :] for k in keys if k.startswith(prefix)}


def vae_prefix(keys: Iterable[str]) -> str | None:
    """The prefix of a bundled VAE (diffusers' `LDM_VAE_KEYS`), or None."""
    keys = list(keys)
    return next((p for p in VAE_PREFIXES if any(k.startswith(p) for k in keys)), None)


def plan_vae(
    keys: list[str], prefix: str, shape: Shape, layout: DiTLayout, what: str
) -> tuple[dict[str, Any], lk.Plan]:
    """The bundled VAE's AutoencoderKL config and key plan."""
    config = cfg.infer_vae_config(_relative(keys, prefix), shape, layout.vae)
    config["shift_factor"] = layout.vae_shift
    config["sample_size"] = 1024
    plan = lk.build_plan(
        keys,
        prefix,
        lk.VAE_KEY_RULES,
        derive=lk.vae_fields(len(config["block_out_channels"])),
        ignore=lk.VAE_IGNORE,
        what=what,
    )
    return config, plan


def clip_config(rel: set[str], shape: Shape, tower: Tower) -> dict[str, Any]:
    """A transformers CLIP text config for a bundled CLIP-L / bigG tower."""
    config = cfg.infer_clip_config(rel, shape)
    vocab = config["vocab_size"]
    # CLIP's BPE vocabulary ends with <|startoftext|>, <|endoftext|>.
    config.update(bos_token_id=vocab - 2, eos_token_id=vocab - 1)
    if tower.kind == "clip_g":
        config["architectures"] = ["CLIPTextModelWithProjection"]
        config["hidden_act"] = "gelu"
        config["projection_dim"] = shape("text_projection.weight")[0]
    elif tower.projection == "identity":
        config["architectures"] = ["CLIPTextModelWithProjection"]
    return config


def t5_config(rel: set[str], shape: Shape) -> dict[str, Any]:
    """A transformers `T5EncoderModel` config for a bundled T5 encoder."""
    vocab, width = shape("shared.weight")
    block = "encoder.block.0.layer."
    buckets, heads = shape(block + "0.SelfAttention.relative_attention_bias.weight")
    gated = block + "1.DenseReluDense.wi_0.weight" in rel
    wi = block + ("1.DenseReluDense.wi_0.weight" if gated else "1.DenseReluDense.wi.weight")
    return {
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "vocab_size": vocab,
        "d_model": width,
        "d_kv": shape(block + "0.SelfAttention.q.weight")[0] // heads,
        "d_ff": shape(wi)[0],
        "num_layers": len(cfg.indices(rel, r"encoder\.block\.(\d+)\.")),
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
        "relative_attention_max_distance": T5_MAX_DISTANCE,
        "feed_forward_proj": "gated-gelu" if gated else "relu",
        "is_gated_act": gated,
        "dense_act_fn": "gelu_new" if gated else "relu",
        "layer_norm_epsilon": 1e-6,
    }


def plan_tower(
    keys: list[str], tower: Tower, shape: Shape, what: str
) -> tuple[dict[str, Any], lk.Plan]:
    """A bundled text encoder's config and key plan."""
    rel = _relative(keys, tower.prefix)
    config = t5_config(rel, shape) if tower.kind == "t5" else clip_config(rel, shape, tower)
    read_projection = tower.kind == "clip_g"
    plan = lk.build_plan(
        keys,
        tower.prefix,
        lk.CLIP_KEY_RULES,
        ignore=tuple(spec_for(class_name_of(config)).ignore),
        skip=lambda key: key == "text_projection.weight" and not read_projection,
        what=what,
    )
    plan = with_cuts(plan)
    if tower.projection == "identity":
        position = next(s.key for k, s in plan.items() if k.endswith("position_embedding.weight"))
        plan["text_projection.weight"] = Cut(position, "eye")
    return config, plan
