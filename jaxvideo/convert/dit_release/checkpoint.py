"""Converting an original Flux.1 or SD3 / SD3.5 single file to jaxvideo component folders.

`SRC` is one `.safetensors` file in Black Forest Labs' Flux layout or Stability's MMDiT layout
(ComfyUI's `model.diffusion_model.` prefix or none), in any float dtype, fp8 and ComfyUI's scaled
fp8 included (`tensors`). The transformer's config is read from tensor shapes (`flux`, `sd3`),
its keys renamed to diffusers names, and then the same key map and shape checks as a diffusers
folder's `transformer/` apply, so both convert to identical Flax weights.

Bundled networks (`bundled`: the VAE, CLIP-L, CLIP bigG, T5) are converted too unless
`transformer_only`. No `model_index.json` is written: the files carry no tokenizers or
scheduler, so the servable folder is assembled by the family's own tooling, which takes those
from the family's diffusers folder; `jaxvideo convert` hence only writes `--transformer-only`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from jaxvideo.convert.core import ConversionError, convert_tensors
from jaxvideo.convert.dit_release import flux, sd3
from jaxvideo.convert.dit_release.bundled import (
    FLUX,
    SD3,
    DiTLayout,
    plan_tower,
    plan_vae,
    vae_prefix,
)
from jaxvideo.convert.dit_release.cuts import with_cuts
from jaxvideo.convert.dit_release.tensors import DequantizingSource
from jaxvideo.convert.ldm import keys as lk
from jaxvideo.convert.ldm.checkpoint import expected_shapes
from jaxvideo.convert.wan_release.transformer import LDM_PREFIX
from jaxvideo.models.registry import class_name_of, spec_for
from jaxvideo.weights import save_component


@dataclass(frozen=True)
class Family:
    """How one family's transformer is read: detection, config, layout, renames."""

    layout: DiTLayout
    detect: Callable[[list[str]], bool]
    infer_config: Callable[..., dict[str, Any]]
    original_keys: Callable[[dict[str, Any]], set[str]]
    rules: Callable[[dict[str, Any]], tuple[lk.KeyRule, ...]]
    derive: Callable[[dict[str, str]], dict[str, Any]]
    name: str  # for messages
    # Refuses look-alike layouts of other networks, by name.
    check: Callable[[set[str], str], None] = lambda _rel, _what: None


FAMILIES = (
    Family(
        FLUX,
        flux.is_flux_original,
        flux.infer_flux_config,
        flux.flux_original_keys,
        lambda _config: flux.FLUX_ORIGINAL_KEY_RULES,
        flux.derive,
        "Flux.1",
        flux.check_flux_layout,
    ),
    Family(
        SD3,
        sd3.is_sd3_original,
        sd3.infer_sd3_config,
        sd3.sd3_original_keys,
        lambda config: sd3.sd3_original_key_rules(config["num_layers"]),
        sd3.derive,
        "SD3",
    ),
)


def _family(keys: list[str]) -> Family | None:
    return next((f for f in FAMILIES if f.detect(keys)), None)


def is_dit_single_file(path: str | Path) -> bool:
    """Whether `path` is a `.safetensors` file holding an original Flux.1 or SD3 transformer."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = list(f.keys())
    except Exception:  # unreadable: left to the other formats' readers, which say why
        return False
    return _family(keys) is not None


@dataclass
class Network:
    """One network of the file: its reference config and where each diffusers tensor is."""

    name: str
    config: dict[str, Any]
    plan: lk.Plan
    what: str


class DiTSingleFile:
    """An opened original Flux.1 / SD3 file: family, configs and key plans, all known (and every
    missing tensor named) before any tensor is read.

    `config_overrides` maps a component (`transformer`, `vae`, `text_encoder`, ...) to config
    fields replacing the inferred ones, e.g. `axes_dims_rope` of a Flux with heads other than
    128 wide. `transformer_only` leaves the bundled networks out.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        config_overrides: Mapping[str, Mapping[str, Any]] | None = None,
        transformer_only: bool = False,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such checkpoint file")
        self.source = DequantizingSource(self.path)
        keys = self.source.keys()
        family = _family(keys)
        if family is None:
            raise ConversionError(f"{self.path.name}: not an original Flux.1 or SD3 file")
        self.family, self.layout = family, family.layout
        overrides = {k: dict(v) for k, v in (config_overrides or {}).items()}
        self.networks = {"transformer": self._transformer(keys, overrides.get("transformer", {}))}
        self.bundled = self._bundled_prefixes(keys)
        if not transformer_only:
            self.networks.update(self._bundled(keys))
        unknown = set(overrides) - set(self.networks)
        if unknown:
            raise ConversionError(
                f"config overrides for unknown component(s) {sorted(unknown)}; "
                f"converting {', '.join(self.networks)}"
            )
        for name, network in self.networks.items():
            if name != "transformer":
                network.config.update(overrides.get(name, {}))

    def _shape(self, prefix: str, what: str) -> Callable[[str], tuple[int, ...]]:
        def shape(key: str) -> tuple[int, ...]:
            try:
                return tuple(self.source.shape(prefix + key))
            except KeyError:
                raise ConversionError(
                    f"{what}: {prefix + key} is missing: an incomplete file"
                ) from None

        return shape

    def _transformer(self, keys: list[str], overrides: dict[str, Any]) -> Network:
        what = f"{self.path.name} [transformer]"
        prefix = LDM_PREFIX if any(k.startswith(LDM_PREFIX) for k in keys) else ""
        rel = {k[len(prefix) :] for k in keys if k.startswith(prefix)}
        self.family.check(rel, what)
        try:
            config = self.family.infer_config(rel, self._shape(prefix, what))
        except ConversionError as e:  # name the file, as the other messages do
            message = str(e)
            named = message if message.startswith(what) else f"{what}: {message}"
            raise ConversionError(named) from None
        config.update(overrides)
        if config.get("axes_dims_rope", ()) is None:
            raise ConversionError(
                f"{what}: heads {config['attention_head_dim']} wide, where every Flux.1 release "
                "has 128 (rope axes 16, 56, 56): give the rope axes, e.g. --config-override "
                "transformer.axes_dims_rope=[16,56,56] scaled to the head width"
            )
        missing = sorted(self.family.original_keys(config) - rel)
        if missing:
            raise ConversionError(
                f"{what}: {len(missing)} tensor(s) of the {self.family.name} layout missing: "
                + ", ".join(prefix + k for k in missing[:10])
                + (" ..." if len(missing) > 10 else "")
            )
        width = config["num_attention_heads"] * config["attention_head_dim"]
        plan = lk.build_plan(
            keys,
            prefix,
            self.family.rules(config),
            derive=self.family.derive,
            width=width,
            what=what,
        )
        return Network("transformer", config, with_cuts(plan), what)

    def _bundled_prefixes(self, keys: list[str]) -> dict[str, str]:
        """{component: prefix} of the VAE and text encoders the file carries besides the
        transformer (none unless the transformer has the LDM prefix)."""
        if not any(k.startswith(LDM_PREFIX) for k in keys):
            return {}
        found = {"vae": vae_prefix(keys)} if vae_prefix(keys) else {}
        for tower in self.layout.towers:
            if any(k.startswith(tower.prefix) for k in keys):
                found[tower.component] = tower.prefix
        return found

    def _bundled(self, keys: list[str]) -> dict[str, Network]:
        networks: dict[str, Network] = {}
        towers = {t.component: t for t in self.layout.towers}
        for name, prefix in self.bundled.items():
            what = f"{self.path.name} [{name}]"
            shape = self._shape(prefix, what)
            if name == "vae":
                config, plan = plan_vae(keys, prefix, shape, self.layout, what)
                plan = with_cuts(plan)
            else:
                config, plan = plan_tower(keys, towers[name], shape, what)
            networks[name] = Network(name, config, plan, what)
        return networks

    @property
    def num_tensors(self) -> int:
        return sum(len(n.plan) for n in self.networks.values())

    def refusal(self) -> str:
        """Why `jaxvideo convert` writes no servable folder from this file, and what to do."""
        bundled = ", ".join(self.bundled) or "nothing else"
        return (
            f"{self.path.name} is an original {self.family.name} single file (bundling "
            f"{bundled}); a servable {self.layout.family} folder also needs tokenizers and a "
            "scheduler the file does not carry. Pass --transformer-only to write DST/transformer/"
            f" alone, and convert a diffusers folder of the model (e.g. {self.layout.example}) "
            "for the other components."
        )

    def convert(
        self,
        dst: str | Path,
        dtype: str = "fp32",
        on_tensor: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Writes `dst/<component>/` for every planned network; returns what a
        `model_index.json` would say (nothing of the kind is written)."""
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        components: dict[str, str] = {}
        for name, network in self.networks.items():
            self.convert_network(name, dst / name, dtype, on_tensor)
            components[name] = class_name_of(network.config)
        return {
            "format": "jaxvideo",
            "format_version": 1,
            "family": self.layout.family,
            "dtype": dtype,
            "source_class": self.layout.pipeline,
            "source_file": self.path.name,
            "components": components,
        }

    def convert_network(
        self,
        name: str,
        out: str | Path,
        dtype: str = "fp32",
        on_tensor: Callable[[str], None] | None = None,
    ) -> None:
        """Writes one network (`transformer`, `vae`, ...) as the component folder `out`."""
        network = self.networks[name]
        spec = spec_for(class_name_of(network.config))
        try:
            expected = expected_shapes(json.dumps(network.config, sort_keys=True))
        except ValueError as e:  # the inferred (or overridden) config is not a valid model
            raise ConversionError(f"{network.what}: {e}") from None
        cache: dict[str, Any] = {}

        def load(name: str) -> Any:
            src = network.plan[name]
            if src.key not in cache:  # fused q/k/v (+ MLP): read once, cut several times
                cache.clear()
                cache[src.key] = self.source.load(src.key)
            return src.cut(cache[src.key])

        try:
            params = convert_tensors(
                load,
                network.plan,
                spec.rules,
                expected,
                ignore=spec.ignore,
                what=network.what,
                on_tensor=on_tensor,
            )
        except ConversionError as e:
            raise ConversionError(lk.annotate(str(e), network.plan)) from None
        save_component(Path(out), network.config, params, dtype)


def convert_dit_single_file(
    src: str | Path,
    dst: str | Path,
    dtype: str = "fp32",
    *,
    transformer_only: bool = False,
    config_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    on_tensor: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Converts an original Flux.1 / SD3 file into `dst/transformer/` (and, unless
    `transformer_only`, `dst/vae/`, `dst/text_encoder*/` for the networks it bundles)."""
    ckpt = DiTSingleFile(src, config_overrides=config_overrides, transformer_only=transformer_only)
    return ckpt.convert(dst, dtype, on_tensor)
