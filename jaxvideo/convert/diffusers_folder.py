"""Converting a diffusers-format model folder (model_index.json + subfolders) to jaxvideo's."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxvideo.convert.core import ConversionError, convert_tensors
from jaxvideo.convert.readers import open_component
from jaxvideo.families import (
    FAMILIES,
    FLUX,
    SD1,
    SD2,
    SD3,
    SDXL,
    SDXL_REFINER,
    WAN21,
    WAN22,
    family,
)
from jaxvideo.models.registry import class_name_of, spec_for
from jaxvideo.weights import CONFIG_FILE, abstract_model, param_shapes, save_component

# Components copied verbatim: tokenizers and scheduler configs need no conversion.
COPIED = (
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
    "scheduler",
    "feature_extractor",
    "image_processor",
)
# Networks converted: every component folder a family may have, in first-seen order.
CONVERTED = tuple(dict.fromkeys(name for spec in FAMILIES.values() for name in spec.components))
# Pipeline settings (model_index.json) the Wan pipelines read: the Wan 2.2 expert switch and
# TI2V's per-token timesteps.
CARRIED_SETTINGS = ("boundary_ratio", "expand_timesteps")

MODEL_INDEX = "model_index.json"


def convert_component(
    src_dir: Path,
    dst_dir: Path,
    dtype: str = "fp32",
    on_tensor: Callable[[str], None] | None = None,
) -> None:
    """Converts one network folder (config.json + weights) into a jaxvideo component folder."""
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    config_path = src_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ConversionError(f"{src_dir} has no {CONFIG_FILE}")
    hf_config = json.loads(config_path.read_text())
    spec = spec_for(class_name_of(hf_config))
    expected = param_shapes(abstract_model(spec, spec.config_from_hf(hf_config)))
    source = open_component(src_dir)
    params = convert_tensors(
        source.load,
        source.keys(),
        spec.rules,
        expected,
        ignore=spec.ignore,
        what=str(src_dir),
        on_tensor=on_tensor,
    )
    save_component(dst_dir, hf_config, params, dtype)


def count_tensors(src: Path) -> int:
    return sum(len(open_component(src / c)) for c in CONVERTED if (src / c / CONFIG_FILE).is_file())


def convert_diffusers_folder(
    src: str | Path,
    dst: str | Path,
    dtype: str = "fp32",
    on_tensor: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Converts every network of a diffusers pipeline folder and copies tokenizers/scheduler.

    Returns the jaxvideo `model_index.json` written to `dst`.
    """
    src, dst = Path(src), Path(dst)
    index_path = src / MODEL_INDEX
    if not index_path.is_file():
        raise ConversionError(f"{src} is not a diffusers folder: no {MODEL_INDEX}")
    index = json.loads(index_path.read_text())
    configs = {
        name: json.loads((src / name / CONFIG_FILE).read_text())
        for name in CONVERTED
        if (src / name / CONFIG_FILE).is_file()
    }
    if "unet" not in configs and "transformer" not in configs:
        raise ConversionError(f"{src}: no unet or transformer component found")
    # Converted folders keep the reference configs unchanged, so the source tells the family
    # and whether its networks fit together, before any tensor is converted.
    family_name = detect_family(index, src)
    disagreements = family(family_name).load_pipeline().component_mismatches(configs)
    if disagreements:
        raise ConversionError(f"{src}: its components disagree: {'; '.join(disagreements)}")
    dst.mkdir(parents=True, exist_ok=True)
    components: dict[str, str] = {}
    for name, config in configs.items():
        convert_component(src / name, dst / name, dtype, on_tensor)
        components[name] = class_name_of(config)
    for name in COPIED:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, dirs_exist_ok=True)
            components[name] = "copied"
    out_index = {
        "format": "jaxvideo",
        "format_version": 1,
        "family": family_name,
        "dtype": dtype,
        "source_class": index.get("_class_name"),
        "components": components,
        **{key: index[key] for key in CARRIED_SETTINGS if index.get(key) is not None},
    }
    (dst / MODEL_INDEX).write_text(json.dumps(out_index, indent=2))
    return out_index


# The family of a transformer-based folder by its transformer class (Wan: see detect_family).
TRANSFORMER_FAMILIES = {"FluxTransformer2DModel": FLUX.name, "SD3Transformer2DModel": SD3.name}


def detect_family(index: dict[str, Any], dst: Path) -> str:
    """The model family of a diffusers (or converted) folder: by its transformer's class
    (Wan 2.1 or 2.2 by their settings), else an SD family."""
    transformer = dst / "transformer" / CONFIG_FILE
    if transformer.is_file():
        name = json.loads(transformer.read_text()).get("_class_name")
        if name in TRANSFORMER_FAMILIES:
            return TRANSFORMER_FAMILIES[name]
        if name != "WanTransformer3DModel":
            known = ", ".join(["WanTransformer3DModel", *TRANSFORMER_FAMILIES])
            raise ConversionError(f"{dst}: unsupported transformer {name!r}; one of {known}")
        # Wan 2.2: two experts (A14B) or per-token timesteps with the 48-channel VAE (TI2V).
        wan22 = (dst / "transformer_2").is_dir() or index.get("expand_timesteps")
        return WAN22.name if wan22 else WAN21.name
    return detect_sd_family(index, dst)


def detect_sd_family(index: dict[str, Any], dst: Path) -> str:
    """SD family: SDXL by its text_time conditioning, SD 2.x by its OpenCLIP text encoder
    (plain GELU, where SD 1.x's CLIP ViT-L uses quick GELU) or 1024-wide cross-attention."""
    unet = json.loads((dst / "unet" / CONFIG_FILE).read_text())
    if "XL" in str(index.get("_class_name", "")) or unet.get("addition_embed_type") == "text_time":
        # The refiner conditions on text_encoder_2 alone.
        return SDXL.name if (dst / "text_encoder" / CONFIG_FILE).is_file() else SDXL_REFINER.name
    text_config_path = dst / "text_encoder" / CONFIG_FILE
    text = json.loads(text_config_path.read_text()) if text_config_path.is_file() else {}
    if text.get("hidden_act") == "gelu" or unet.get("cross_attention_dim") == 1024:
        return SD2.name
    return SD1.name
