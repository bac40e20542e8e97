"""Converting an original Wan release (Wan-AI/Wan2.1, Wan2.2 layout) to a jaxvideo model folder.

`SRC` is a release folder or one transformer file:

* a folder with the Wan code's `config.json` and `diffusion_pytorch_model*.safetensors`
  (sharded with an `.index.json`, or one file), or Wan 2.2 A14B's `high_noise_model/` and
  `low_noise_model/` folders of that form (diffusers' `transformer` / `transformer_2`);
* a `.safetensors` transformer under the Wan code's names (ComfyUI repacks nest it under
  `model.diffusion_model.`), its `config.json` next to it or, lacking one, read from shapes.

A servable folder also needs the text encoder, its tokenizer, the VAE and a scheduler config,
plus the CLIP image encoder for Wan 2.1 I2V / FLF2V. The release's own files are converted when
found in the release folder or named (`Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth`, the
`google/umt5-xxl` tokenizer folder). What the original files cannot give (the CLIP encoder: the
release's open-clip XLM-RoBERTa file is not converted; Wan 2.2's 48-channel VAE) comes from a
`base` folder: a diffusers Wan model folder, or one this tool converted. Everything missing is
listed, with where to get it, before anything is written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from jaxvideo.convert.core import ConversionError, convert_tensors
from jaxvideo.convert.diffusers_folder import (
    COPIED,
    MODEL_INDEX,
    convert_component,
    detect_family,
)
from jaxvideo.convert.ldm import keys as lk
from jaxvideo.convert.ldm.checkpoint import expected_shapes
from jaxvideo.convert.readers import (
    TensorSource,
    find_weight_files,
    open_checkpoint,
    open_component,
)
from jaxvideo.convert.wan_release.t5 import (
    is_wan_t5_original,
    wan_t5_original_config,
    wan_t5_original_plan,
)
from jaxvideo.convert.wan_release.transformer import (
    infer_original_config,
    is_wan_transformer_original,
    wan_original_config,
    wan_original_plan,
)
from jaxvideo.convert.wan_release.vae import (
    is_wan_vae_original,
    wan_vae_original_config,
    wan_vae_original_plan,
)
from jaxvideo.demo_wan import WAN_SCHEDULER
from jaxvideo.models.registry import class_name_of, spec_for
from jaxvideo.weights import CONFIG_FILE, save_component

# Wan 2.2 A14B: diffusers' `transformer` is the high-noise expert, `transformer_2` the low-noise.
EXPERT_DIRS = {"transformer": "high_noise_model", "transformer_2": "low_noise_model"}
# The Wan 2.2 configs' `boundary`: the high-noise expert runs while t >= boundary * 1000.
BOUNDARY_RATIOS = {"t2v": 0.875, "i2v": 0.9}
RELEASE_VAE = "Wan2.1_VAE.pth"
RELEASE_VAE_22 = "Wan2.2_VAE.pth"
RELEASE_TEXT_ENCODER = "models_t5_umt5-xxl-enc-bf16.pth"
RELEASE_TOKENIZER = "google/umt5-xxl"
# diffusers' Wan scheduler (its Wan-AI/*-Diffusers folders ship this one).
SCHEDULER_CONFIG: dict[str, Any] = WAN_SCHEDULER
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
# What a Wan pipeline's networks are, so a --base of another family is refused.
EXPECTED_CLASSES = {
    "vae": ("AutoencoderKLWan",),
    "text_encoder": ("UMT5EncoderModel",),
    "image_encoder": ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
}
_IMAGE_COMPONENTS = ("image_encoder", "image_processor")


def _original_config(path: Path) -> dict[str, Any] | None:
    """The Wan code's config.json at `path` (it has `dim`), or None."""
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return config if isinstance(config, dict) and "dim" in config else None


def is_wan_original(path: str | Path) -> bool:
    """Whether `path` is an original Wan release folder or original-layout transformer file."""
    path = Path(path)
    if path.is_dir():
        if (path / MODEL_INDEX).is_file():
            return False
        configs = [path / CONFIG_FILE, *(path / d / CONFIG_FILE for d in EXPERT_DIRS.values())]
        return any(_original_config(c) is not None for c in configs)
    if path.is_file() and path.suffix == ".safetensors":
        with safe_open(str(path), framework="numpy") as f:
            return is_wan_transformer_original(f.keys())
    return False


@dataclass
class Network:
    """One network read from an original file: its reference config and key plan."""

    name: str
    config: dict[str, Any]
    plan: lk.Plan
    source: TensorSource
    what: str

    def convert(self, out: Path, dtype: str, on_tensor: Callable[[str], None] | None) -> None:
        spec = spec_for(class_name_of(self.config))
        expected = expected_shapes(json.dumps(self.config, sort_keys=True))
        try:
            params = convert_tensors(
                lambda key: self.plan[key].cut(self.source.load(self.plan[key].key)),
                self.plan,
                spec.rules,
                expected,
                ignore=spec.ignore,
                what=self.what,
                on_tensor=on_tensor,
            )
        except ConversionError as e:
            raise ConversionError(lk.annotate(str(e), self.plan)) from None
        save_component(out, self.config, params, dtype)


def _shape_of(source: TensorSource, what: str) -> Callable[[str], tuple[int, ...]]:
    def shape(key: str) -> tuple[int, ...]:
        try:
            return source.shape(key)
        except KeyError:
            raise ConversionError(f"{what}: {key} is missing: an incomplete file") from None

    return shape


class BaseFolder:
    """A diffusers Wan folder, or a converted jaxvideo one, lending the components the original
    files cannot give."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_path = self.path / MODEL_INDEX
        if not index_path.is_file():
            raise ConversionError(
                f"--base {self.path}: no {MODEL_INDEX}; expected a diffusers Wan model folder "
                "(e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers) or a folder this tool converted"
            )
        self.converted = json.loads(index_path.read_text()).get("format") == "jaxvideo"

    def has(self, name: str) -> bool:
        return (self.path / name).is_dir()

    def config(self, name: str) -> dict[str, Any]:
        path = self.path / name / CONFIG_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def _is_network(self, name: str) -> bool:
        return name not in COPIED and not self.converted

    def num_tensors(self, name: str) -> int:
        return len(open_component(self.path / name)) if self._is_network(name) else 0

    def copy(self, name: str, dst: Path, dtype: str, on_tensor) -> None:
        if self._is_network(name):
            convert_component(self.path / name, dst / name, dtype, on_tensor)
        else:
            shutil.copytree(self.path / name, dst / name, dirs_exist_ok=True)


class WanOriginalCheckpoint:
    """An original Wan release, opened and planned: every config, key plan and source is known
    (and every missing piece reported) before any tensor is read.

    `config_overrides` maps a component (`transformer`, `vae`, `text_encoder`, `scheduler`, ...)
    to config fields replacing the derived ones. `transformer_only` writes the transformer(s)
    alone, without `model_index.json`: for swapping a fine-tune into a converted folder.
    """

    def __init__(
        self,
        src: str | Path,
        *,
        transformer_2: str | Path | None = None,
        vae: str | Path | None = None,
        text_encoder: str | Path | None = None,
        tokenizer: str | Path | None = None,
        base: str | Path | None = None,
        config_overrides: Mapping[str, Mapping[str, Any]] | None = None,
        transformer_only: bool = False,
    ):
        self.src = Path(src)
        self.transformer_only = transformer_only
        if transformer_only and any(p is not None for p in (vae, text_encoder, tokenizer, base)):
            raise ConversionError("--transformer-only converts the transformer alone")
        self.overrides = {k: dict(v) for k, v in (config_overrides or {}).items()}
        self.networks: dict[str, Network] = {}
        self.model_type = self._plan_transformers(transformer_2)
        # Components the base folder lends: {name: folder}.
        self.lent: dict[str, BaseFolder] = {}
        self.tokenizer: Path | None = None
        if not transformer_only:
            self._plan_rest(vae, text_encoder, tokenizer, BaseFolder(base) if base else None)
        known = {*self.networks, "scheduler"}
        unknown = set(self.overrides) - known
        if unknown:
            raise ConversionError(
                f"config overrides for unknown component(s) {sorted(unknown)}; "
                f"converting {', '.join(sorted(known))}"
            )
        for name, network in self.networks.items():
            network.config.update(self.overrides.get(name, {}))
        if not transformer_only:
            self._check_fit()

    # --- the transformer(s) --------------------------------------------------------------------

    def _expert_sources(self, transformer_2: str | Path | None) -> dict[str, Path]:
        """{component: file or folder} of the transformer(s)."""
        if self.src.is_dir() and (self.src / EXPERT_DIRS["transformer"]).is_dir():
            if transformer_2 is not None:
                raise ConversionError(f"{self.src} holds both experts; --transformer-2 is moot")
            return {name: self.src / d for name, d in EXPERT_DIRS.items()}
        sources = {"transformer": self.src}
        if transformer_2 is not None:
            sources["transformer_2"] = Path(transformer_2)
        return sources

    def _plan_transformers(self, transformer_2: str | Path | None) -> str:
        model_types = []
        for name, path in self._expert_sources(transformer_2).items():
            self.networks[name], model_type = _transformer(name, path)
            model_types.append(model_type)
        if len(set(model_types)) > 1:
            raise ConversionError(f"the two experts are different models: {model_types}")
        if "transformer_2" in self.networks and model_types[0] not in BOUNDARY_RATIOS:
            raise ConversionError(f"two experts of a Wan {model_types[0]} model are unsupported")
        return model_types[0]

    # --- everything else -----------------------------------------------------------------------

    def _release_file(self, name: str) -> Path | None:
        path = self.src / name
        return path if self.src.is_dir() and path.exists() else None

    def _plan_rest(self, vae, text_encoder, tokenizer, base: BaseFolder | None) -> None:
        transformer = self.networks["transformer"].config
        needed = ["vae", "text_encoder", "tokenizer"]
        if transformer.get("image_dim") is not None:
            needed += _IMAGE_COMPONENTS
        missing: dict[str, str] = {}
        vae = vae or self._release_file(RELEASE_VAE)
        if vae is not None:
            self.networks["vae"] = _vae(Path(vae))
        text_encoder = text_encoder or self._release_file(RELEASE_TEXT_ENCODER)
        if text_encoder is not None:
            self.networks["text_encoder"] = _text_encoder(Path(text_encoder))
        tokenizer = tokenizer or self._release_file(RELEASE_TOKENIZER)
        if tokenizer is not None:
            self.tokenizer = _checked_tokenizer(Path(tokenizer))
        for name in needed:
            if name in self.networks or (name == "tokenizer" and self.tokenizer):
                continue
            if base is not None and base.has(name):
                self.lent[name] = base
            else:
                missing[name] = self._hint(name)
        if missing:
            raise ConversionError(
                f"{self.src.name}: a servable Wan folder also needs "
                + "; ".join(f"{name} ({hint})" for name, hint in missing.items())
                + ". Or pass --transformer-only to write the transformer alone."
            )
        if base is not None and base.has("scheduler"):
            self.lent["scheduler"] = base

    def _hint(self, name: str) -> str:
        """Where to get a missing component."""
        base = "--base DIR: a diffusers Wan folder of this model, or one this tool converted"
        if name == "vae" and self._release_file(RELEASE_VAE_22):
            return f"{RELEASE_VAE_22} (48 channels) is not read from its original layout; {base}"
        release = {
            "vae": f"--vae {RELEASE_VAE}",
            "text_encoder": f"--text-encoder {RELEASE_TEXT_ENCODER}",
            "tokenizer": f"--tokenizer DIR, the release's {RELEASE_TOKENIZER} folder",
        }
        if name in release:
            return f"{release[name]}, or {base}"
        # The release's CLIP is open-clip XLM-RoBERTa ViT-H/14; diffusers uses its vision tower.
        return f"Wan 2.1 image-to-video's CLIP vision model, not read from the release; {base}"

    def _component_config(self, name: str) -> dict[str, Any]:
        if name in self.networks:
            return self.networks[name].config
        return self.lent[name].config(name) if name in self.lent else {}

    def _check_fit(self) -> None:
        """Components of different models fail here, not at the first generation."""
        for name, base in self.lent.items():
            config = base.config(name)
            wanted = EXPECTED_CLASSES.get(name)
            if wanted and (not config or class_name_of(config) not in wanted):
                raise ConversionError(
                    f"--base {base.path}: its {name} is not a {' or '.join(wanted)}"
                )
        transformer = self.networks["transformer"].config
        z_dim = self._component_config("vae").get("z_dim", 16)
        width = self._component_config("text_encoder").get("d_model")
        image = self._component_config("image_encoder").get("hidden_size")
        for what, ours, theirs in (
            (f"VAE latents (z_dim {z_dim})", transformer["out_channels"], z_dim),
            (f"text encoder width ({width})", transformer["text_dim"], width),
            (f"image encoder width ({image})", transformer.get("image_dim"), image),
        ):
            if theirs is not None and ours is not None and ours != theirs:
                raise ConversionError(
                    f"{self.src.name}: the transformer expects {ours} where the {what} gives "
                    f"{theirs}: components of different models"
                )

    # --- writing -------------------------------------------------------------------------------

    @property
    def num_tensors(self) -> int:
        planned = sum(len(n.plan) for n in self.networks.values())
        return planned + sum(base.num_tensors(name) for name, base in self.lent.items())

    def convert(
        self,
        dst: str | Path,
        dtype: str = "fp32",
        on_tensor: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Writes the jaxvideo model folder; returns its `model_index.json` (transformer-only:
        the same fields, not written)."""
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        components: dict[str, str] = {}
        for name, network in self.networks.items():
            network.convert(dst / name, dtype, on_tensor)
            components[name] = class_name_of(network.config)
        settings: dict[str, Any] = {}
        if "transformer_2" in self.networks:
            settings["boundary_ratio"] = BOUNDARY_RATIOS[self.model_type]
        if self.model_type == "ti2v":
            settings["expand_timesteps"] = True
        index = {
            "format": "jaxvideo",
            "format_version": 1,
            "family": detect_family(settings, dst),
            "dtype": dtype,
            "source_class": "WanPipeline"
            if self.model_type in ("t2v", "ti2v")
            else "WanImageToVideoPipeline",
            "source_file": self.src.name,
            "components": components,
            **settings,
        }
        if self.transformer_only:
            return index
        if self.tokenizer is not None:
            shutil.copytree(self.tokenizer, dst / "tokenizer", dirs_exist_ok=True)
            components["tokenizer"] = "copied"
        for name, base in self.lent.items():
            base.copy(name, dst, dtype, on_tensor)
            config = base.config(name)
            components[name] = class_name_of(config) if name not in COPIED else "copied"
        self._write_scheduler(dst / "scheduler")
        components.setdefault("scheduler", "copied")
        (dst / MODEL_INDEX).write_text(json.dumps(index, indent=2))
        return index

    def _write_scheduler(self, out: Path) -> None:
        path = out / "scheduler_config.json"
        config = json.loads(path.read_text()) if path.is_file() else dict(SCHEDULER_CONFIG)
        config.update(self.overrides.get("scheduler", {}))
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))


def _transformer(name: str, path: Path) -> tuple[Network, str]:
    """A transformer network from a release folder or a file; returns it and its model_type."""
    if path.is_dir():
        source = TensorSource(find_weight_files(path))
        original = _original_config(path / CONFIG_FILE)
        if original is None:
            raise ConversionError(f"{path}: no original Wan config.json (with `dim`)")
    else:
        source = open_checkpoint(path)
        original = _original_config(path.parent / CONFIG_FILE)
    keys = source.keys()
    what = f"{path.name} [{name}]"
    if not is_wan_transformer_original(keys):
        raise ConversionError(f"{what}: not a Wan transformer under the Wan code's names")
    if original is None:
        original = infer_original_config(keys, _shape_of(source, what))
    image_keys = {k: source.shape(k) for k in keys if "img_emb." in k}
    config = wan_original_config(original, image_keys)
    model_type = original.get("model_type", "t2v")
    return Network(name, config, wan_original_plan(keys, what=what), source, what), model_type


def _vae(path: Path) -> Network:
    source = open_checkpoint(path)
    keys = source.keys()
    what = f"{path.name} [vae]"
    if not is_wan_vae_original(keys):
        raise ConversionError(f"{what}: not a Wan VAE under the Wan code's names")
    config = wan_vae_original_config(keys, _shape_of(source, what), what=what)
    plan = wan_vae_original_plan(keys, config["num_res_blocks"], what=what)
    return Network("vae", config, plan, source, what)


def _text_encoder(path: Path) -> Network:
    source = open_checkpoint(path)
    keys = source.keys()
    what = f"{path.name} [text_encoder]"
    if not is_wan_t5_original(keys):
        raise ConversionError(f"{what}: not the Wan code's umt5 encoder")
    config = wan_t5_original_config(keys, _shape_of(source, what))
    return Network("text_encoder", config, wan_t5_original_plan(keys, what=what), source, what)


def _checked_tokenizer(path: Path) -> Path:
    if not path.is_dir() or not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ConversionError(
            f"--tokenizer {path}: not a T5 tokenizer folder (expected tokenizer.json or "
            f"spiece.model, as in the release's {RELEASE_TOKENIZER} folder)"
        )
    return path
