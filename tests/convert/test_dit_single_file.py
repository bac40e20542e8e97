"""Original Flux.1 and SD3 / SD3.5 single files through jaxvideo.convert.dit_release.

Tiny diffusers transformers (every tensor perturbed) are written back into the original layouts
by inverses written here, independently of the converter's tables; diffusers' own single-file
converters must map those files back to exactly the diffusers state dicts (so the fixtures are
the real layouts). Converting the original file must then give the same Flax parameters, key by
key, as converting the diffusers folder: plain, ComfyUI-prefixed, fp8 and scaled-fp8 files, and
an SD3 file bundling its VAE and three text encoders.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers import FluxTransformer2DModel as TorchFlux
from diffusers import SD3Transformer2DModel as TorchSD3
from diffusers.loaders import single_file_utils as sfu
from flax import nnx
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from jaxvideo.convert.cli import main as cli_main
from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.convert.dit_release.checkpoint import DiTSingleFile, convert_dit_single_file
from jaxvideo.weights import load_component
from tests.support.ldm_layout import vae_to_ldm

PREFIX = "model.diffusion_model."
WB = ("weight", "bias")

FLUX_DEV: dict[str, Any] = dict(
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=128,  # Flux.1's head width: the rope axes need no override
    num_attention_heads=2,
    joint_attention_dim=24,
    pooled_projection_dim=12,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_SCHNELL: dict[str, Any] = dict(
    FLUX_DEV, attention_head_dim=16, guidance_embeds=False, axes_dims_rope=(4, 6, 6)
)
SCHNELL_OVERRIDES = {"transformer": {"axes_dims_rope": [4, 6, 6]}}

SD3_MEDIUM: dict[str, Any] = dict(
    sample_size=16,
    patch_size=2,
    in_channels=16,
    num_layers=3,
    attention_head_dim=64,  # MMDiT's head width: no q/k norm tells it
    num_attention_heads=2,
    joint_attention_dim=24,
    caption_projection_dim=128,
    pooled_projection_dim=12,
    out_channels=16,
    pos_embed_max_size=12,
)
SD35_LARGE: dict[str, Any] = dict(
    SD3_MEDIUM, attention_head_dim=8, caption_projection_dim=16, qk_norm="rms_norm"
)
SD35_MEDIUM: dict[str, Any] = dict(SD35_LARGE, dual_attention_layers=(0, 1), pos_embed_max_size=8)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    # Norm scales stop being 1 and zero-init tensors non-zero: a mis-mapping cannot hide.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _swap(t: torch.Tensor) -> torch.Tensor:
    """(a, b) halves -> (b, a): its own inverse."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a])


# --- diffusers -> original layouts, written from the original code's module names --------------


def flux_original(sd: dict[str, torch.Tensor], c: dict[str, Any]) -> dict[str, torch.Tensor]:
    """BFL's `Flux` state dict for a diffusers FluxTransformer2DModel's."""
    o: dict[str, torch.Tensor] = {}

    def linear(orig: str, *diffusers: str, swap: bool = False) -> None:
        for p in WB:
            t = torch.cat([sd.pop(f"{d}.{p}") for d in diffusers])
            o[f"{orig}.{p}"] = _swap(t) if swap else t

    embedders = {"time_in": "timestep_embedder", "vector_in": "text_embedder"}
    if c["guidance_embeds"]:
        embedders["guidance_in"] = "guidance_embedder"
    for orig, emb in embedders.items():
        linear(f"{orig}.in_layer", f"time_text_embed.{emb}.linear_1")
        linear(f"{orig}.out_layer", f"time_text_embed.{emb}.linear_2")
    linear("txt_in", "context_embedder")
    linear("img_in", "x_embedder")
    for i in range(c["num_layers"]):
        d, b = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for s, mod, qkv, norms, out, ff in (
            ("img", "norm1", ("to_q", "to_k", "to_v"), ("norm_q", "norm_k"), "to_out.0", "ff"),
            (
                "txt",
                "norm1_context",
                ("add_q_proj", "add_k_proj", "add_v_proj"),
                ("norm_added_q", "norm_added_k"),
                "to_add_out",
                "ff_context",
            ),
        ):
            linear(f"{d}{s}_mod.lin", f"{b}{mod}.linear")
            linear(f"{d}{s}_attn.qkv", *(f"{b}attn.{p}" for p in qkv))
            o[f"{d}{s}_attn.norm.query_norm.scale"] = sd.pop(f"{b}attn.{norms[0]}.weight")
            o[f"{d}{s}_attn.norm.key_norm.scale"] = sd.pop(f"{b}attn.{norms[1]}.weight")
            linear(f"{d}{s}_attn.proj", f"{b}attn.{out}")
            linear(f"{d}{s}_mlp.0", f"{b}{ff}.net.0.proj")
            linear(f"{d}{s}_mlp.2", f"{b}{ff}.net.2")
    for i in range(c["num_single_layers"]):
        d, b = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        linear(f"{d}modulation.lin", f"{b}norm.linear")
        linear(f"{d}linear1", f"{b}attn.to_q", f"{b}attn.to_k", f"{b}attn.to_v", f"{b}proj_mlp")
        o[f"{d}norm.query_norm.scale"] = sd.pop(f"{b}attn.norm_q.weight")
        o[f"{d}norm.key_norm.scale"] = sd.pop(f"{b}attn.norm_k.weight")
        linear(f"{d}linear2", f"{b}proj_out")
    linear("final_layer.linear", "proj_out")
    linear("final_layer.adaLN_modulation.1", "norm_out.linear", swap=True)
    assert not sd, f"diffusers tensors left unmapped: {sorted(sd)}"
    return o


def sd3_original(sd: dict[str, torch.Tensor], c: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Stability's `MMDiT` state dict for a diffusers SD3Transformer2DModel's."""
    o: dict[str, torch.Tensor] = {"pos_embed": sd.pop("pos_embed.pos_embed")}

    def linear(orig: str, *diffusers: str, swap: bool = False) -> None:
        for p in WB:
            t = torch.cat([sd.pop(f"{d}.{p}") for d in diffusers])
            o[f"{orig}.{p}"] = _swap(t) if swap else t

    def norm(orig: str, diffusers: str) -> None:
        o[f"{orig}.weight"] = sd.pop(f"{diffusers}.weight")

    linear("x_embedder.proj", "pos_embed.proj")
    for i, n in (("0", "1"), ("2", "2")):
        linear(f"t_embedder.mlp.{i}", f"time_text_embed.timestep_embedder.linear_{n}")
        linear(f"y_embedder.mlp.{i}", f"time_text_embed.text_embedder.linear_{n}")
    linear("context_embedder", "context_embedder")
    qk = c.get("qk_norm") is not None
    last = c["num_layers"] - 1
    for i in range(c["num_layers"]):
        x, ctx, b = (
            f"joint_blocks.{i}.x_block.",
            f"joint_blocks.{i}.context_block.",
            f"transformer_blocks.{i}.",
        )
        linear(f"{x}attn.qkv", f"{b}attn.to_q", f"{b}attn.to_k", f"{b}attn.to_v")
        linear(f"{ctx}attn.qkv", *(f"{b}attn.add_{p}_proj" for p in "qkv"))
        if qk:
            norm(f"{x}attn.ln_q", f"{b}attn.norm_q")
            norm(f"{x}attn.ln_k", f"{b}attn.norm_k")
            norm(f"{ctx}attn.ln_q", f"{b}attn.norm_added_q")
            norm(f"{ctx}attn.ln_k", f"{b}attn.norm_added_k")
        linear(f"{x}attn.proj", f"{b}attn.to_out.0")
        if i in c.get("dual_attention_layers", ()):
            linear(f"{x}attn2.qkv", f"{b}attn2.to_q", f"{b}attn2.to_k", f"{b}attn2.to_v")
            if qk:
                norm(f"{x}attn2.ln_q", f"{b}attn2.norm_q")
                norm(f"{x}attn2.ln_k", f"{b}attn2.norm_k")
            linear(f"{x}attn2.proj", f"{b}attn2.to_out.0")
        linear(f"{x}adaLN_modulation.1", f"{b}norm1.linear")
        linear(f"{ctx}adaLN_modulation.1", f"{b}norm1_context.linear", swap=i == last)
        linear(f"{x}mlp.fc1", f"{b}ff.net.0.proj")
        linear(f"{x}mlp.fc2", f"{b}ff.net.2")
        if i != last:  # the last block's text stream ends at its attention
            linear(f"{ctx}attn.proj", f"{b}attn.to_add_out")
            linear(f"{ctx}mlp.fc1", f"{b}ff_context.net.0.proj")
            linear(f"{ctx}mlp.fc2", f"{b}ff_context.net.2")
    linear("final_layer.linear", "proj_out")
    linear("final_layer.adaLN_modulation.1", "norm_out.linear", swap=True)
    assert not sd, f"diffusers tensors left unmapped: {sorted(sd)}"
    return o


def diffusers_flux_converter(inner_dim: int):
    """diffusers' `convert_flux_transformer_checkpoint_to_diffusers`, its hard-coded FLUX.1
    width (`inner_dim = 3072`, which sizes the split of `linear1`) set to the tiny model's."""
    source = inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers)
    assert source.count("inner_dim = 3072") == 1
    namespace = dict(vars(sfu))
    exec(source.replace("inner_dim = 3072", f"inner_dim = {inner_dim}"), namespace)
    return namespace["convert_flux_transformer_checkpoint_to_diffusers"]


def assert_same_state(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


# --- conversions ------------------------------------------------------------------------------


def flax_params(model_dir: Path, name: str = "transformer") -> dict[str, np.ndarray]:
    state = nnx.state(load_component(model_dir, name), nnx.Param)
    leaves = jax.tree_util.tree_leaves_with_path(state)
    return {jax.tree_util.keystr(path): np.asarray(value) for path, value in leaves}


def assert_same_params(ours: Path, theirs: Path, name: str = "transformer") -> None:
    a, b = flax_params(ours, name), flax_params(theirs, name)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _case(root: Path, torch_cls, kwargs: dict[str, Any], seed: int) -> SimpleNamespace:
    torch.manual_seed(seed)
    model = _perturbed(torch_cls(**kwargs))
    model.save_pretrained(root / "diffusers" / "transformer")
    convert_component(root / "diffusers" / "transformer", root / "folder" / "transformer")
    return SimpleNamespace(root=root, state=_state(model), kwargs=kwargs, folder=root / "folder")


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimpleNamespace]:
    root = tmp_path_factory.mktemp("flux")
    cases = {"dev": (FLUX_DEV, 0), "schnell": (FLUX_SCHNELL, 1)}
    out = {}
    for name, (kwargs, seed) in cases.items():
        case = _case(root / name, TorchFlux, kwargs, seed)
        case.original = flux_original(dict(case.state), kwargs)
        out[name] = case
    return out


@pytest.fixture(scope="module")
def sd3(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimpleNamespace]:
    root = tmp_path_factory.mktemp("sd3")
    cases = {"sd3_medium": SD3_MEDIUM, "sd35_large": SD35_LARGE, "sd35_medium": SD35_MEDIUM}
    out = {}
    for seed, (name, kwargs) in enumerate(cases.items()):
        case = _case(root / name, TorchSD3, kwargs, seed)
        # Stability's files nest the MMDiT under the LDM prefix.
        case.original = {PREFIX + k: v for k, v in sd3_original(dict(case.state), kwargs).items()}
        out[name] = case
    return out


@pytest.mark.parametrize(("variant", "prefix"), [("dev", ""), ("dev", PREFIX), ("schnell", "")])
def test_flux_file_converts_like_the_diffusers_folder(flux, tmp_path, variant, prefix) -> None:
    case = flux[variant]
    original = {prefix + k: v for k, v in case.original.items()}
    inner = case.kwargs["num_attention_heads"] * case.kwargs["attention_head_dim"]
    assert_same_state(diffusers_flux_converter(inner)(dict(original)), case.state)

    src = write(tmp_path / "flux1-tiny.safetensors", original)
    overrides = SCHNELL_OVERRIDES if variant == "schnell" else None
    index = convert_dit_single_file(
        src, tmp_path / "out", transformer_only=True, config_overrides=overrides
    )
    assert index["family"] == "flux" and index["components"] == {
        "transformer": "FluxTransformer2DModel"
    }
    assert_same_params(tmp_path / "out", case.folder)
    config = DiTSingleFile(src, config_overrides=overrides).networks["transformer"].config
    for key, value in case.kwargs.items():
        assert config[key] == (list(value) if isinstance(value, tuple) else value), key


@pytest.mark.parametrize("variant", ["sd3_medium", "sd35_large", "sd35_medium"])
def test_sd3_file_converts_like_the_diffusers_folder(sd3, tmp_path, variant) -> None:
    case = sd3[variant]
    theirs = sfu.convert_sd3_transformer_checkpoint_to_diffusers(dict(case.original))
    assert_same_state(theirs, case.state)

    src = write(tmp_path / "sd3-tiny.safetensors", case.original)
    index = convert_dit_single_file(src, tmp_path / "out", transformer_only=True)
    assert index["components"] == {"transformer": "SD3Transformer2DModel"}
    assert_same_params(tmp_path / "out", case.folder)
    config = DiTSingleFile(src).networks["transformer"].config
    for key, value in case.kwargs.items():
        if key != "sample_size":  # not in the weights: the published 128
            assert config[key] == (list(value) if isinstance(value, tuple) else value), key


# --- fp8 --------------------------------------------------------------------------------------


def _fp8(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Matrices as e4m3fn, biases as e5m2, norm scales as bf16."""
    out = {}
    for k, v in original.items():
        if v.ndim >= 2:
            out[k] = v.to(torch.float8_e4m3fn)
        elif k.endswith(".bias"):
            out[k] = v.to(torch.float8_e5m2)
        else:
            out[k] = v.to(torch.bfloat16)
    return out


def test_fp8_file_converts_to_its_float32_upcast(flux, tmp_path) -> None:
    fp8 = {PREFIX + k: v for k, v in _fp8(flux["dev"].original).items()}
    src = write(tmp_path / "flux1-dev-fp8.safetensors", fp8)
    upcast = write(tmp_path / "upcast.safetensors", {k: v.float() for k, v in fp8.items()})
    assert DiTSingleFile(src).source.fp8
    for path, out in ((src, "fp8"), (upcast, "fp32")):
        convert_dit_single_file(path, tmp_path / out, transformer_only=True)
    assert_same_params(tmp_path / "fp8", tmp_path / "fp32")


def test_comfyui_scaled_fp8_file_is_rescaled(sd3, tmp_path) -> None:
    original = sd3["sd35_medium"].original
    gen = torch.Generator().manual_seed(0)
    scaled: dict[str, torch.Tensor] = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    rescaled = {}
    for k, v in original.items():
        if v.ndim == 2 and k.endswith(".weight"):  # ComfyUI scales the Linear weights
            scale = torch.rand((), generator=gen) + 0.5
            stored = (v / scale).to(torch.float8_e4m3fn)
            module = k.removesuffix(".weight")
            scaled |= {
                k: stored,
                module + ".scale_weight": scale,
                module + ".scale_input": torch.ones(()),
            }
            rescaled[k] = stored.float() * scale
        else:
            scaled[k], rescaled[k] = v, v
    src = write(tmp_path / "sd3.5_medium_fp8_scaled.safetensors", scaled)
    reference = write(tmp_path / "rescaled.safetensors", rescaled)
    for path, out in ((src, "scaled"), (reference, "reference")):
        convert_dit_single_file(path, tmp_path / out, transformer_only=True)
    assert_same_params(tmp_path / "scaled", tmp_path / "reference")


# --- an SD3 file bundling its VAE and text encoders -------------------------------------------


def _tiny_clip(seed: int, act: str, projection: int) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=300,
        hidden_size=64,  # one 64-wide head, as the config inference assumes
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=1,
        max_position_embeddings=16,
        hidden_act=act,
        projection_dim=projection,
    )
    return _perturbed(CLIPTextModelWithProjection(config))


def _tiny_t5() -> T5EncoderModel:
    torch.manual_seed(3)
    config = T5Config(
        vocab_size=100,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
    )
    return _perturbed(T5EncoderModel(config))


def _tiny_vae() -> AutoencoderKL:
    torch.manual_seed(4)
    return _perturbed(
        AutoencoderKL(
            block_out_channels=(32, 32),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=16,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    )


def _plain_clip(clip: CLIPTextModelWithProjection) -> CLIPTextModel:
    """The same tower without its projection (transformers' CLIPTextModel names)."""
    plain = CLIPTextModel(clip.config)
    state = {k.removeprefix("text_model."): v for k, v in _state(clip).items()}
    del state["text_projection.weight"]
    plain.load_state_dict(state, strict=True)
    return plain


# family: (transformer case, VAE prefix, the diffusers networks' classes, VAE scale and shift)
BUNDLES = {
    "sd3": (
        "sd35_large",
        "first_stage_model.",
        {
            "text_encoder": "CLIPTextModelWithProjection",
            "text_encoder_2": "CLIPTextModelWithProjection",
            "text_encoder_3": "T5EncoderModel",
        },
        (1.5305, 0.0609),
    ),
    "flux": (
        "dev",
        "vae.",  # diffusers' other LDM_VAE_KEYS prefix
        {"text_encoder": "CLIPTextModel", "text_encoder_2": "T5EncoderModel"},
        (0.3611, 0.1159),
    ),
}


@pytest.mark.parametrize("family", BUNDLES)
def test_bundled_vae_and_text_encoders(flux, sd3, tmp_path, family) -> None:
    variant, vae_prefix, classes, vae_factors = BUNDLES[family]
    case = sd3[variant] if family == "sd3" else flux[variant]
    clip_l, clip_g, t5, vae = (
        _tiny_clip(1, "quick_gelu", 64),
        _tiny_clip(2, "gelu", 48),
        _tiny_t5(),
        _tiny_vae(),
    )
    towers = {"clip_l": clip_l, "clip_g": clip_g, "t5xxl": t5}
    if family == "flux":
        del towers["clip_g"]
    file = {PREFIX + k.removeprefix(PREFIX): v for k, v in case.original.items()}
    for name, model in towers.items():
        file |= {f"text_encoders.{name}.transformer.{k}": v for k, v in _state(model).items()}
    file |= {
        vae_prefix + k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(vae).items()
    }
    # diffusers' single-file readers take the bundled towers by prefix alone ...
    for name, model in towers.items():
        prefix = f"text_encoders.{name}.transformer."
        assert_same_state(sfu.convert_ldm_clip_checkpoint(dict(file), prefix), _state(model))
    assert_same_state(sfu.convert_ldm_vae_checkpoint(dict(file), vae.config), _state(vae))
    # ... SD3's CLIP-L gets an identity projection, whatever the file holds; Flux's has none.
    with torch.no_grad():
        clip_l.text_projection.weight.copy_(torch.eye(64))
    networks = {"text_encoder": clip_l if family == "sd3" else _plain_clip(clip_l)}
    networks |= {"text_encoder_2": clip_g, "text_encoder_3": t5} if family == "sd3" else {}
    networks |= {"text_encoder_2": t5} if family == "flux" else {}
    networks["vae"] = vae
    for name, model in networks.items():
        model.save_pretrained(tmp_path / "diffusers" / name)
        convert_component(tmp_path / "diffusers" / name, tmp_path / "folder" / name)

    src = write(tmp_path / f"{family}_incl_everything.safetensors", file)
    index = convert_dit_single_file(src, tmp_path / "out")
    assert index["family"] == family
    assert {k: v for k, v in index["components"].items() if k.startswith("text")} == classes
    assert not (tmp_path / "out" / "model_index.json").exists()
    assert_same_params(tmp_path / "out", case.folder)
    for name in networks:
        assert_same_params(tmp_path / "out", tmp_path / "folder", name)
    vae_config = DiTSingleFile(src).networks["vae"].config
    assert (vae_config["scaling_factor"], vae_config["shift_factor"]) == vae_factors


# --- refusals and the CLI ---------------------------------------------------------------------


def test_mis_shaped_and_missing_tensors_name_the_original_key(flux, sd3, tmp_path) -> None:
    original = dict(flux["dev"].original)
    original["single_blocks.1.linear2.weight"] = original["single_blocks.1.linear2.weight"][:, 1:]
    src = write(tmp_path / "narrow.safetensors", original)
    with pytest.raises(ConversionError, match="shape mismatch") as info:
        convert_dit_single_file(src, tmp_path / "a", transformer_only=True)
    assert "single_blocks.1.linear2.weight (as single_transformer_blocks.1.proj_out" in str(
        info.value
    )

    original = dict(sd3["sd35_medium"].original)
    key = PREFIX + "joint_blocks.1.context_block.attn.qkv.weight"
    original[key] = original[key][:-1]
    src = write(tmp_path / "short_qkv.safetensors", original)
    with pytest.raises(ConversionError, match="shape mismatch") as info:
        convert_dit_single_file(src, tmp_path / "b", transformer_only=True)
    assert f"{key} (as transformer_blocks.1.attn.add_v_proj.weight)" in str(info.value)

    for case, key in (
        (flux["dev"], "double_blocks.1.txt_attn.norm.key_norm.scale"),
        (sd3["sd35_medium"], PREFIX + "joint_blocks.1.x_block.attn2.ln_k.weight"),
    ):
        original = {k: v for k, v in case.original.items() if k != key}
        with pytest.raises(ConversionError, match="missing") as info:
            DiTSingleFile(write(tmp_path / "missing.safetensors", original))
        assert key in str(info.value)


def test_flux_rope_axes_of_other_head_widths_need_an_override(flux, tmp_path) -> None:
    src = write(tmp_path / "schnell.safetensors", flux["schnell"].original)
    with pytest.raises(ConversionError, match="transformer.axes_dims_rope"):
        DiTSingleFile(src)
    with pytest.raises(ConversionError, match="unknown component"):
        DiTSingleFile(src, config_overrides={**SCHNELL_OVERRIDES, "unet": {"x": 1}})


def test_cli_writes_the_transformer_alone(flux, tmp_path, capsys) -> None:
    src = write(tmp_path / "flux1-schnell.safetensors", flux["schnell"].original)
    override = ["--config-override", "transformer.axes_dims_rope=[4,6,6]", "--quiet"]
    assert cli_main([str(src), str(tmp_path / "refused"), *override]) == 1
    err = capsys.readouterr().err
    assert "--transformer-only" in err and "diffusers folder" in err
    assert not (tmp_path / "refused").exists()
    assert cli_main([str(src), str(tmp_path / "out"), "--transformer-only", *override]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["transformer"]
    assert_same_params(tmp_path / "out", flux["schnell"].folder)
    assert cli_main([str(src), str(tmp_path / "x"), "--transformer-only", "--vae", str(src)]) == 1
