"""Converting an original-layout (LDM / A1111) single-file SD checkpoint to a jaxvideo folder.

Single files (`.safetensors`, or `.ckpt` pickles opened only with torch's `weights_only=True`)
hold every network under its original prefix. The family is told from the text encoders'
prefixes and the prediction type defaulted as `ldm.layouts` documents; configs are inferred from
tensor shapes (`ldm.configs`); keys are renamed to diffusers names (`ldm.keys`); then each
network goes through the same component key maps and shape checks as a diffusers folder, and
the same jaxvideo folder format is written, with the caller's tokenizer folders and the
family's standard scheduler config.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from jaxvideo.convert.core import ConversionError, convert_tensors
from jaxvideo.convert.ldm import configs as cfg
from jaxvideo.convert.ldm import keys as lk
from jaxvideo.convert.ldm.layouts import (
    PREDICTION_TYPES,
    UNET_PREFIX,
    VAE_PREFIX,
    TextTower,
    detect_layout,
    scheduler_config,
)
from jaxvideo.convert.readers import open_checkpoint
from jaxvideo.convert.tokenizer_dirs import copy_tokenizer, read_tokenizer
from jaxvideo.models.registry import class_name_of, spec_for
from jaxvideo.weights import abstract_model, param_shapes, save_component

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


@dataclass
class Component:
    """One network to write: its reference config and where each diffusers tensor comes from."""

    name: str
    config: dict[str, Any]
    plan: lk.Plan = field(default_factory=dict)


class SingleFileCheckpoint:
    """An opened single file: family, inferred configs and key plans, before any tensor is read.

    `config_overrides` maps a component name (`unet`, `vae`, `text_encoder`, `text_encoder_2`)
    to config fields replacing the inferred ones: the heads and group-norm sizes that shapes
    cannot tell, for models that do not follow their family's published values.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        tokenizer: str | Path | None = None,
        tokenizer_2: str | Path | None = None,
        prediction_type: str | None = None,
        config_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such checkpoint file")
        if self.path.suffix not in SINGLE_FILE_SUFFIXES:
            raise ConversionError(
                f"{self.path}: not a single-file checkpoint "
                f"(expected {', '.join(SINGLE_FILE_SUFFIXES)})"
            )
        self.source = open_checkpoint(self.path)
        keys = self.source.keys()
        self.layout = detect_layout(keys, self.path.name)
        self.family = self.layout.family
        if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
            raise ConversionError(
                f"unknown prediction type {prediction_type!r}; one of {', '.join(PREDICTION_TYPES)}"
            )
        given = {"tokenizer": tokenizer, "tokenizer_2": tokenizer_2}
        missing = [t for t in self.layout.towers if given[t.tokenizer] is None]
        if missing:
            raise ConversionError(
                f"{self.path.name} is an {self.family} single file, which carries no tokenizer. "
                + " ".join(f"Pass {t.flag} DIR: {t.hint}." for t in missing)
                + " Local folders only: nothing is downloaded."
            )
        self.tokenizers = {t.tokenizer: Path(given[t.tokenizer]) for t in self.layout.towers}
        overrides = {k: dict(v) for k, v in (config_overrides or {}).items()}
        self.components = self._plan(keys, prediction_type, overrides)
        unknown = set(overrides) - set(self.components)
        if unknown:
            raise ConversionError(
                f"config overrides for unknown component(s) {sorted(unknown)}; "
                f"this file has {', '.join(self.components)}"
            )

    @property
    def num_tensors(self) -> int:
        return sum(len(c.plan) for c in self.components.values())

    def _plan(
        self, keys: list[str], prediction_type: str | None, overrides: dict[str, dict[str, Any]]
    ) -> dict[str, Component]:
        name = self.path.name
        comps: dict[str, Component] = {}
        for tower in self.layout.towers:
            comps[tower.component] = self._text_component(tower, keys, overrides)

        unet_keys = _relative(keys, UNET_PREFIX)
        pooled = comps.get("text_encoder_2")
        unet = cfg.infer_unet_config(
            unet_keys,
            self._shape(UNET_PREFIX),
            self.layout,
            pooled_dim=pooled.config["projection_dim"] if pooled else None,
        )
        unet.update(overrides.get("unet", {}))
        cfg.check_unet_heads(unet, self.layout)
        self.prediction_type = prediction_type or self.layout.default_prediction_type(
            keys, unet["in_channels"]
        )
        vae = cfg.infer_vae_config(
            _relative(keys, VAE_PREFIX), self._shape(VAE_PREFIX), self.layout
        )
        vae.update(overrides.get("vae", {}))
        size = self.layout.default_image_size(self.prediction_type)
        vae.setdefault("sample_size", size)
        unet.setdefault("sample_size", size // 2 ** (len(vae["block_out_channels"]) - 1))

        context = sum(c.config["hidden_size"] for c in comps.values())
        if unet["cross_attention_dim"] != context:
            raise ConversionError(
                f"{name}: the UNet attends to {unet['cross_attention_dim']}-wide text but the "
                f"{self.family} text encoder(s) give {context}: mismatched components"
            )
        comps["unet"] = Component(
            "unet",
            unet,
            lk.build_plan(
                keys,
                UNET_PREFIX,
                lk.UNET_KEY_RULES,
                derive=lk.unet_fields(unet["layers_per_block"]),
                what=f"{name} [unet]",
            ),
        )
        comps["vae"] = Component(
            "vae",
            vae,
            lk.build_plan(
                keys,
                VAE_PREFIX,
                lk.VAE_KEY_RULES,
                derive=lk.vae_fields(len(vae["block_out_channels"])),
                ignore=lk.VAE_IGNORE,
                what=f"{name} [vae]",
            ),
        )
        return comps

    def _text_component(
        self, tower: TextTower, keys: list[str], overrides: dict[str, dict[str, Any]]
    ) -> Component:
        rel = _relative(keys, tower.prefix)
        shape = self._shape(tower.prefix)
        what = f"{self.path.name} [{tower.component}]"
        if tower.open_clip:
            config = cfg.infer_open_clip_config(
                rel,
                shape,
                with_projection=tower.with_projection,
                drop_last_layer=tower.drop_last_layer,
            )
        else:
            config = cfg.infer_clip_config(rel, shape)
        config.update(read_tokenizer(self.tokenizers[tower.tokenizer], tower.flag))
        config.update(overrides.get(tower.component, {}))
        vocab = config.pop("tokenizer_size")
        if vocab > config["vocab_size"]:
            raise ConversionError(
                f"{what}: the {tower.flag} tokenizer has {vocab} tokens but the text encoder "
                f"embeds only {config['vocab_size']}: wrong tokenizer"
            )
        if not tower.open_clip:
            # Buffers the text encoder's key map skips (position_ids) stay out of the plan.
            ignore = tuple(spec_for(class_name_of(config)).ignore)
            plan = lk.build_plan(keys, tower.prefix, lk.CLIP_KEY_RULES, ignore=ignore, what=what)
            return Component(tower.component, config, plan)
        last = cfg.open_clip_layers(rel) - 1

        def skip(key: str) -> bool:
            # SD2: the text encoder stops one layer short of the file's tower (see docstring).
            if not tower.drop_last_layer:
                return key == "text_projection" and not tower.with_projection
            return key == "text_projection" or key.startswith(f"transformer.resblocks.{last}.")

        plan = lk.build_plan(
            keys,
            tower.prefix,
            lk.OPEN_CLIP_KEY_RULES,
            ignore=lk.OPEN_CLIP_IGNORE,
            skip=skip,
            width=config["hidden_size"],
            what=what,
        )
        return Component(tower.component, config, plan)

    def _shape(self, prefix: str) -> cfg.Shape:
        def shape(key: str) -> tuple[int, ...]:
            try:
                return self.source.shape(prefix + key)
            except KeyError:
                raise ConversionError(
                    f"{self.path.name}: {prefix + key} is missing: an incomplete or unsupported "
                    f"{self.family} layout"
                ) from None

        return shape

    def convert(
        self,
        dst: str | Path,
        dtype: str = "fp32",
        on_tensor: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Writes the jaxvideo model folder; returns its `model_index.json`."""
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        components: dict[str, str] = {}
        for comp in self.components.values():
            self._convert_component(comp, dst / comp.name, dtype, on_tensor)
            components[comp.name] = class_name_of(comp.config)
        for folder, src in self.tokenizers.items():
            copy_tokenizer(src, dst / folder)
            components[folder] = "copied"
        (dst / "scheduler").mkdir(exist_ok=True)
        (dst / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(scheduler_config(self.layout, self.prediction_type), indent=2)
        )
        components["scheduler"] = "copied"
        index = {
            "format": "jaxvideo",
            "format_version": 1,
            "family": self.family,
            "dtype": dtype,
            "source_class": self.layout.pipeline,
            "source_file": self.path.name,
            "components": components,
        }
        (dst / "model_index.json").write_text(json.dumps(index, indent=2))
        return index

    def _convert_component(
        self, comp: Component, out: Path, dtype: str, on_tensor: Callable[[str], None] | None
    ) -> None:
        spec = spec_for(class_name_of(comp.config))
        expected = expected_shapes(json.dumps(comp.config, sort_keys=True))
        cache: dict[str, Any] = {}

        def load(key: str) -> Any:
            src = comp.plan[key]
            if src.key not in cache:  # fused q/k/v: read once, cut three times
                cache.clear()
                cache[src.key] = self.source.load(src.key)
            return src.cut(cache[src.key])

        try:
            params = convert_tensors(
                load,
                comp.plan,
                spec.rules,
                expected,
                ignore=spec.ignore,
                what=f"{self.path.name} [{comp.name}]",
                on_tensor=on_tensor,
            )
        except ConversionError as e:
            raise ConversionError(lk.annotate(str(e), comp.plan)) from None
        save_component(out, comp.config, params, dtype)


@lru_cache(maxsize=16)
def expected_shapes(config_json: str) -> dict[str, tuple[int, ...]]:
    """{flax_path: shape} of the network a config.json describes (read-only, cached).

    Tracing a UNet abstractly takes seconds on a CPU; converting several files of one model
    (or re-converting one) traces it once.
    """
    hf_config = json.loads(config_json)
    spec = spec_for(class_name_of(hf_config))
    return param_shapes(abstract_model(spec, spec.config_from_hf(hf_config)))


def _relative(keys: Iterable[str], prefix: str) -> list[str]:
    return [k[len(prefix) :] for k in keys if k.startswith(prefix)]


def is_single_file(path: str | Path) -> bool:
    """Whether `path` names a file (existing or not) rather than a diffusers folder."""
    path = Path(path)
    return path.is_file() or (path.suffix in SINGLE_FILE_SUFFIXES and not path.is_dir())


def convert_single_file(
    src: str | Path,
    dst: str | Path,
    dtype: str = "fp32",
    *,
    tokenizer: str | Path | None = None,
    tokenizer_2: str | Path | None = None,
    prediction_type: str | None = None,
    config_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    on_tensor: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Converts an LDM-layout single file; see the module docstring for the rules."""
    ckpt = SingleFileCheckpoint(
        src,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        prediction_type=prediction_type,
        config_overrides=config_overrides,
    )
    return ckpt.convert(dst, dtype, on_tensor)
