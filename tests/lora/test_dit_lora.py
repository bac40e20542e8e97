"""Flux.1 and SD3 / SD3.5 LoRAs, in the layouts they are published in, merge into the Flax
transformers (and their CLIP / T5 text encoders) as W + multiplier * alpha / rank * up @ down on
the diffusers-named weights.

One set of random rank-4 pairs per model is written under the original code's module names
(BFL's `double_blocks.0.img_attn.qkv`, Stability's `joint_blocks.0.x_block.attn.qkv`), fused
projections included, and, cut into per-module pairs, under diffusers' names: diffusers'
`save_lora_weights` (alpha in its metadata), kohya over original names (`lora_unet_`, sd-scripts)
and over diffusers names (`lora_transformer_`), ComfyUI / ai-toolkit's `diffusion_model.` files,
XLabs' processor LoRAs. Every layout must merge to the same weights, equal to the update the
test computes itself in numpy from the diffusers modules' weights; and the merged transformers
must run like diffusers' own with the LoRA loaded and fused (peft does diffusers' loading).
"""

from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import peft  # noqa: F401 - diffusers' load_lora_weights needs it
import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel
from diffusers import StableDiffusion3Pipeline as TorchSD3Pipeline
from flax import nnx
from peft import LoraConfig
from safetensors.numpy import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.lora import LoraError, LoraSpec, merge_loras
from jaxvideo.lora.formats import parse_lora
from jaxvideo.models.clip import CLIP_TEXT_PROJ_SPEC, CLIP_TEXT_SPEC
from jaxvideo.models.flux import FLUX_TRANSFORMER_SPEC, flux_rope
from jaxvideo.models.sd3 import SD3_TRANSFORMER_SPEC
from jaxvideo.models.t5 import T5_SPEC
from jaxvideo.weights import load_component
from tests.support.reference_numerics import correctly_rounded_timesteps  # noqa: F401

TOL = 1e-4
RANK, ALPHA = 4, 8.0  # scale alpha / rank = 2: exact in float, so pre-scaled copies are too
MULTIPLIER = 0.75
SCALE = MULTIPLIER * ALPHA / RANK

FLUX_CONFIG = dict(
    in_channels=16,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=24,
    pooled_projection_dim=12,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)
# Two blocks: the last one's text stream is pre-only (its adaptive norm swapped); block 0 is
# MMDiT-X (a second image attention).
SD3_CONFIG = dict(
    sample_size=16,
    patch_size=2,
    in_channels=16,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=24,
    caption_projection_dim=16,
    pooled_projection_dim=12,
    out_channels=16,
    pos_embed_max_size=12,
    qk_norm="rms_norm",
    dual_attention_layers=(0,),
)

_D, _S = "transformer_blocks.0.", "single_transformer_blocks.0."
# Original BFL module -> the diffusers modules its output rows feed, in row order (written out
# here, independently of jaxvideo's conversion tables).
FLUX_MODULES = {
    "double_blocks.0.img_attn.qkv": (_D + "attn.to_q", _D + "attn.to_k", _D + "attn.to_v"),
    "double_blocks.0.txt_attn.qkv": (
        _D + "attn.add_q_proj",
        _D + "attn.add_k_proj",
        _D + "attn.add_v_proj",
    ),
    "double_blocks.0.img_attn.proj": (_D + "attn.to_out.0",),
    "double_blocks.0.txt_attn.proj": (_D + "attn.to_add_out",),
    "double_blocks.0.img_mlp.0": (_D + "ff.net.0.proj",),
    "double_blocks.0.txt_mlp.2": (_D + "ff_context.net.2",),
    "double_blocks.0.img_mod.lin": (_D + "norm1.linear",),
    "double_blocks.0.txt_mod.lin": (_D + "norm1_context.linear",),
    "single_blocks.0.linear1": (
        _S + "attn.to_q",
        _S + "attn.to_k",
        _S + "attn.to_v",
        _S + "proj_mlp",
    ),
    "single_blocks.0.linear2": (_S + "proj_out",),
    "single_blocks.0.modulation.lin": (_S + "norm.linear",),
    "img_in": ("x_embedder",),
    "txt_in": ("context_embedder",),
    "time_in.in_layer": ("time_text_embed.timestep_embedder.linear_1",),
    "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2",),
    "guidance_in.in_layer": ("time_text_embed.guidance_embedder.linear_1",),
    "final_layer.linear": ("proj_out",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),
}
_B0, _B1 = "transformer_blocks.0.", "transformer_blocks.1."
SD3_MODULES = {
    "joint_blocks.0.x_block.attn.qkv": (_B0 + "attn.to_q", _B0 + "attn.to_k", _B0 + "attn.to_v"),
    "joint_blocks.0.x_block.attn2.qkv": (
        _B0 + "attn2.to_q",
        _B0 + "attn2.to_k",
        _B0 + "attn2.to_v",
    ),
    "joint_blocks.0.context_block.attn.qkv": (
        _B0 + "attn.add_q_proj",
        _B0 + "attn.add_k_proj",
        _B0 + "attn.add_v_proj",
    ),
    "joint_blocks.0.x_block.attn.proj": (_B0 + "attn.to_out.0",),
    "joint_blocks.0.context_block.attn.proj": (_B0 + "attn.to_add_out",),
    "joint_blocks.0.x_block.mlp.fc1": (_B0 + "ff.net.0.proj",),
    "joint_blocks.0.context_block.mlp.fc2": (_B0 + "ff_context.net.2",),
    "joint_blocks.0.x_block.adaLN_modulation.1": (_B0 + "norm1.linear",),
    "joint_blocks.0.context_block.adaLN_modulation.1": (_B0 + "norm1_context.linear",),
    "joint_blocks.1.x_block.attn.qkv": (_B1 + "attn.to_q", _B1 + "attn.to_k", _B1 + "attn.to_v"),
    "joint_blocks.1.context_block.adaLN_modulation.1": (_B1 + "norm1_context.linear",),
    "x_embedder.proj": ("pos_embed.proj",),  # the patchify conv: a conv LoRA
    "context_embedder": ("context_embedder",),
    "t_embedder.mlp.0": ("time_text_embed.timestep_embedder.linear_1",),
    "y_embedder.mlp.2": ("time_text_embed.text_embedder.linear_2",),
    "final_layer.linear": ("proj_out",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),
}
# Original modules emitting (shift, scale) where diffusers' AdaLayerNormContinuous reads
# (scale, shift): their rows' halves change places.
SWAPPED = {"final_layer.adaLN_modulation.1", "joint_blocks.1.context_block.adaLN_modulation.1"}
# XLabs' processor LoRAs: the original module each adds to. A single block's `qkv_lora` covers
# only linear1's q/k/v rows.
XLABS_MODULES = {
    "double_blocks.0.processor.qkv_lora1": FLUX_MODULES["double_blocks.0.img_attn.qkv"],
    "double_blocks.0.processor.proj_lora1": FLUX_MODULES["double_blocks.0.img_attn.proj"],
    "double_blocks.0.processor.qkv_lora2": FLUX_MODULES["double_blocks.0.txt_attn.qkv"],
    "double_blocks.0.processor.proj_lora2": FLUX_MODULES["double_blocks.0.txt_attn.proj"],
    "single_blocks.0.processor.qkv_lora": FLUX_MODULES["single_blocks.0.linear1"][:3],
    "single_blocks.0.processor.proj_lora": FLUX_MODULES["single_blocks.0.linear2"],
}
CLIP_MODULES = (
    "text_model.encoder.layers.0.self_attn.q_proj",
    "text_model.encoder.layers.0.mlp.fc2",
)
T5_MODULES = (
    "encoder.block.0.layer.0.SelfAttention.q",
    "encoder.block.0.layer.1.DenseReluDense.wo",
)


# --- models -----------------------------------------------------------------------------------


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():  # diffusers zero-inits some layers; noise everywhere
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def _converted(model: torch.nn.Module, root: Path, name: str) -> nnx.Module:
    model.save_pretrained(root / "src" / name)
    convert_component(root / "src" / name, root / "dst" / name)
    return load_component(root / "dst", name)


def _torch_weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny CLIP (with projection) and T5, converted; the same ones serve both models."""
    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    clip = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=16,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=100,
            d_model=32,
            d_kv=8,
            d_ff=48,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
        )
    )
    return SimpleNamespace(
        clip=nnx.split(_converted(clip, root, "clip"))[1],
        t5=nnx.split(_converted(t5, root, "t5"))[1],
        clip_weights=_torch_weights(clip),
        t5_weights=_torch_weights(t5),
    )


# --- LoRA tensors and layouts -----------------------------------------------------------------


def _random_pairs(
    modules: dict[str, tuple[str, ...]], weights: dict[str, np.ndarray], seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{original module: (down, up)}, up as tall as the diffusers weights it feeds together."""
    rng = np.random.default_rng(seed)
    out = {}
    for original, targets in modules.items():
        first = weights[f"{targets[0]}.weight"]
        rows = sum(weights[f"{t}.weight"].shape[0] for t in targets)
        kernel = first.shape[2:]
        down = 0.2 * rng.standard_normal((RANK, first.shape[1], *kernel))
        up = 0.2 * rng.standard_normal((rows, RANK, *(1 for _ in kernel)))
        out[original] = (down.astype(np.float32), up.astype(np.float32))
    return out


def _swap(up: np.ndarray) -> np.ndarray:
    half = up.shape[0] // 2
    return np.concatenate([up[half:], up[:half]])


def _diffusers_pairs(
    modules: dict[str, tuple[str, ...]],
    pairs: dict[str, tuple[np.ndarray, np.ndarray]],
    weights: dict[str, np.ndarray],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The same updates per diffusers module: up's rows cut as the weight's, down shared."""
    out = {}
    for original, targets in modules.items():
        down, up = pairs[original]
        if original in SWAPPED:
            up = _swap(up)
        start = 0
        for target in targets:
            rows = weights[f"{target}.weight"].shape[0]
            out[target] = (down, np.ascontiguousarray(up[start : start + rows]))
            start += rows
        assert start == up.shape[0]
    return out


def _write(
    path: Path,
    entries: list[tuple[str, tuple[np.ndarray, np.ndarray]]],
    down: str,
    up: str,
    *,
    alpha: bool,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Each (key prefix, (down, up)); without alpha keys or metadata, up carries alpha / rank."""
    tensors: dict[str, np.ndarray] = {}
    for key, (a, b) in entries:
        tensors[f"{key}.{down}"] = a
        prescaled = not alpha and metadata is None
        tensors[f"{key}.{up}"] = b * np.float32(ALPHA / RANK) if prescaled else b
        if alpha:
            tensors[f"{key}.alpha"] = np.array(ALPHA, np.float32)
    save_file(tensors, str(path), metadata=metadata)
    return path


def _kohya(prefix: str, pairs: dict) -> list:
    return [(prefix + m.replace(".", "_"), p) for m, p in pairs.items()]


def _dotted(prefix: str, pairs: dict) -> list:
    return [(prefix + m, p) for m, p in pairs.items()]


AB = ("lora_A.weight", "lora_B.weight")
DOWN_UP = ("lora_down.weight", "lora_up.weight")


def _peft_metadata(*components: str) -> dict[str, str]:
    """diffusers' `lora_adapter_metadata`: LoraConfig fields per component."""
    config = {"r": RANK, "lora_alpha": ALPHA}
    fields = {f"{c}.{k}": v for c in components for k, v in config.items()}
    return {"lora_adapter_metadata": json.dumps(fields), "format": "pt"}


def _expected(
    weights: dict[str, np.ndarray], pairs: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, np.ndarray]:
    """{Flax kernel path: W + scale * up @ down in Flax layout}, from the PyTorch weights."""
    out = {}
    for module, (down, up) in pairs.items():
        w = weights[f"{module}.weight"]
        delta = np.tensordot(up.reshape(up.shape[:2]), down, axes=1)
        merged = (w.astype(np.float64) + SCALE * delta).astype(np.float32)
        # Flax kernels: Linear (in, out), conv HWIO; the Dropout-padded lists lose their index.
        path = module.removeprefix("text_model.")
        for old, new in ((".to_out.0", ".to_out"), (".net.0.proj", ".proj"), (".net.2", ".out")):
            path = path.replace(old, new)
        out[f"{path}.kernel"] = merged.T if merged.ndim == 2 else merged.transpose(2, 3, 1, 0)
    return out


def _flat(state: nnx.State) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _check_merged(env: SimpleNamespace, merged: dict[str, nnx.State]) -> None:
    """Every expected kernel holds W + update; every other leaf is the base's, bit for bit."""
    for component, expected in env.expected.items():
        got, base = _flat(merged[component]), _flat(env.states[component])
        assert got.keys() == base.keys()
        for path in base:
            if path in expected:
                np.testing.assert_allclose(
                    got[path], expected[path], rtol=1e-5, atol=1e-6, err_msg=path
                )
                assert not np.array_equal(got[path], base[path]), path
            else:
                np.testing.assert_array_equal(got[path], base[path], err_msg=path)


def _merge(env: SimpleNamespace, path: Path, multiplier: float = MULTIPLIER) -> dict:
    return merge_loras(env.states, [LoraSpec(path, multiplier)], rules=env.rules)


def _assert_same(a: dict[str, nnx.State], b: dict[str, nnx.State], what: str) -> None:
    for component in a:
        fa, fb = _flat(a[component]), _flat(b[component])
        for key in fa:
            np.testing.assert_array_equal(fa[key], fb[key], err_msg=f"{what}: {key}")


# --- Flux -------------------------------------------------------------------------------------


def _flux_layouts(root: Path, env: SimpleNamespace) -> dict[str, Path]:
    bfl, diff = env.original_pairs, env.diffusers_pairs
    clip, t5 = env.clip_pairs, env.t5_pairs
    diffusers_dir = root / "diffusers"
    FluxPipeline.save_lora_weights(
        diffusers_dir,
        transformer_lora_layers={
            f"{m}.lora_{ab}.weight": torch.from_numpy(t.copy())
            for m, (a, b) in diff.items()
            for ab, t in (("A", a), ("B", b))
        },
        transformer_lora_adapter_metadata=LoraConfig(
            r=RANK, lora_alpha=ALPHA, target_modules=list(diff)
        ).to_dict(),
    )
    return {
        # diffusers' own writer (transformer only, alpha in its metadata).
        "diffusers": diffusers_dir / "pytorch_lora_weights.safetensors",
        # PEFT keys for every component, alpha in hand-written metadata.
        "peft": _write(
            root / "peft.safetensors",
            _dotted("transformer.", diff)
            + _dotted("text_encoder.", clip)
            + _dotted("text_encoder_2.", t5),
            *AB,
            alpha=False,
            metadata=_peft_metadata("transformer", "text_encoder", "text_encoder_2"),
        ),
        # sd-scripts / ComfyUI kohya: BFL names, te1 = CLIP-L, te3 = T5.
        "kohya_bfl": _write(
            root / "kohya_bfl.safetensors",
            _kohya("lora_unet_", bfl) + _kohya("lora_te1_", clip) + _kohya("lora_te3_", t5),
            *DOWN_UP,
            alpha=True,
        ),
        # kohya spelling of diffusers names (OneTrainer and others).
        "kohya_diffusers": _write(
            root / "kohya_diffusers.safetensors",
            _kohya("lora_transformer_", diff) + _kohya("lora_te1_", clip),
            *DOWN_UP,
            alpha=True,
        ),
        # ComfyUI / ai-toolkit: BFL names under diffusion_model., ComfyUI's text encoders.
        "comfy_ab": _write(
            root / "comfy_ab.safetensors",
            _dotted("diffusion_model.", bfl)
            + _dotted("text_encoders.clip_l.transformer.", clip)
            + _dotted("text_encoders.t5xxl.transformer.", t5),
            *AB,
            alpha=False,
        ),
        "comfy_down_up": _write(
            root / "comfy_down_up.safetensors",
            _dotted("diffusion_model.", bfl),
            *DOWN_UP,
            alpha=True,
        ),
        # A raw PeftModel state dict over BFL names (fal's Kontext LoRAs): no component named.
        "peft_model_bfl": _write(
            root / "peft_model_bfl.safetensors",
            _dotted("base_model.model.", bfl),
            *AB,
            alpha=False,
        ),
        "kohya_bfl_blocks": _for_diffusers_kohya(root, bfl),
        # XLabs: no alpha (up carries it here), `.down.weight` / `.up.weight`.
        "xlabs": _write(
            root / "xlabs.safetensors",
            _dotted("", env.xlabs_pairs),
            "down.weight",
            "up.weight",
            alpha=False,
        ),
    }


def _for_diffusers_kohya(root: Path, bfl: dict) -> Path:
    """The part of `kohya_bfl` diffusers' kohya converter reads right: it knows no T5, cuts
    `linear1` at FLUX.1's widths (3072 x 3, 12288) rather than this model's, and writes the
    top-level modules (`img_in`, `time_in`, `final_layer`, ...) without the `transformer.`
    prefix its loader filters by, so diffusers 0.42 silently drops them. The blocks remain.
    """
    blocks = {
        k: v
        for k, v in bfl.items()
        if k.startswith(("double_blocks.", "single_blocks.")) and not k.endswith("linear1")
    }
    return _write(
        root / "kohya_bfl_blocks.safetensors", _kohya("lora_unet_", blocks), *DOWN_UP, alpha=True
    )


# Which components each Flux layout covers.
FLUX_COVERS = {
    "diffusers": ("transformer",),
    "peft": ("transformer", "text_encoder", "text_encoder_2"),
    "kohya_bfl": ("transformer", "text_encoder", "text_encoder_2"),
    "kohya_diffusers": ("transformer", "text_encoder"),
    "comfy_ab": ("transformer", "text_encoder", "text_encoder_2"),
    "comfy_down_up": ("transformer",),
    "peft_model_bfl": ("transformer",),
}


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory, encoders: SimpleNamespace) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("flux_lora")
    ref = _perturbed(FluxTransformer2DModel(**FLUX_CONFIG))
    model = _converted(ref, root, "transformer")
    graphdef, state = nnx.split(model)
    weights = _torch_weights(ref)
    env = SimpleNamespace(ref=ref, graphdef=graphdef, config=model.config)
    env.original_pairs = _random_pairs(FLUX_MODULES, weights, seed=1)
    env.diffusers_pairs = _diffusers_pairs(FLUX_MODULES, env.original_pairs, weights)
    env.clip_pairs = _random_pairs({m: (m,) for m in CLIP_MODULES}, encoders.clip_weights, 2)
    env.t5_pairs = _random_pairs({m: (m,) for m in T5_MODULES}, encoders.t5_weights, 3)
    env.xlabs_pairs = _random_pairs(XLABS_MODULES, weights, seed=4)
    env.xlabs_expected = _expected(
        weights, _diffusers_pairs(XLABS_MODULES, env.xlabs_pairs, weights)
    )
    env.states = {
        "transformer": state,
        "text_encoder": encoders.clip,
        "text_encoder_2": encoders.t5,
    }
    # As `pipelines.flux.FluxPipeline._merge_loras` passes them.
    env.rules = {
        "transformer": FLUX_TRANSFORMER_SPEC.rules,
        "text_encoder": CLIP_TEXT_SPEC.rules,
        "text_encoder_2": T5_SPEC.rules,
    }
    env.all_expected = {
        "transformer": _expected(weights, env.diffusers_pairs),
        "text_encoder": _expected(encoders.clip_weights, env.clip_pairs),
        "text_encoder_2": _expected(encoders.t5_weights, env.t5_pairs),
    }
    env.files = _flux_layouts(root, env)
    return env


def _covering(env: SimpleNamespace, components: tuple[str, ...]) -> SimpleNamespace:
    return SimpleNamespace(states=env.states, expected={c: env.all_expected[c] for c in components})


@pytest.mark.parametrize("name", list(FLUX_COVERS))
def test_flux_layouts_merge_to_w_plus_scaled_up_down(flux: SimpleNamespace, name: str) -> None:
    merged = _merge(flux, flux.files[name])
    _check_merged(_covering(flux, FLUX_COVERS[name]), merged)
    # Components a file leaves alone come back as the very same state.
    for component in set(flux.states) - set(FLUX_COVERS[name]):
        assert merged[component] is flux.states[component]
    # Bit for bit what the diffusers-named file gives, for the transformer.
    want = _merge(flux, flux.files["diffusers"])
    _assert_same({"transformer": merged["transformer"]}, want, name)


def test_fused_bfl_modules_become_one_pair_per_diffusers_module(flux: SimpleNamespace) -> None:
    pairs = parse_lora(flux.files["kohya_bfl"])
    transformer = [p for p in pairs if p.component == "transformer"]
    assert {p.module for p in transformer} == set(flux.diffusers_pairs)
    assert not any(p.kohya for p in transformer)  # renamed: dotted diffusers names now
    linear1 = [p for p in transformer if p.key.startswith("lora_unet_single_blocks_0_linear1.")]
    assert [p.up.shape[0] for p in linear1] == [32, 32, 32, 128]
    assert {p.component for p in pairs} == {"transformer", "text_encoder", "t5"}
    assert {p.scale for p in pairs} == {ALPHA / RANK}


def test_multiplier_zero_leaves_every_weight(flux: SimpleNamespace) -> None:
    merged = _merge(flux, flux.files["kohya_bfl"], 0.0)
    for component, state in flux.states.items():
        assert merged[component] is state


def test_xlabs_processor_loras(flux: SimpleNamespace) -> None:
    """XLabs' `processor.qkv_lora1` & co.: a single block's `qkv_lora` is linear1's q/k/v only."""
    env = SimpleNamespace(states=flux.states, expected={"transformer": flux.xlabs_expected})
    _check_merged(env, _merge(flux, flux.files["xlabs"]))


def test_flux_modules_the_model_lacks_are_named(flux: SimpleNamespace, tmp_path: Path) -> None:
    def pair(out: int, inp: int = 32) -> tuple[np.ndarray, np.ndarray]:
        return np.ones((2, inp), np.float32), np.ones((out, 2), np.float32)

    for key, (down, up) in (
        ("lora_unet_double_blocks_3_img_attn_qkv", DOWN_UP),  # the model has one double block
        ("diffusion_model.single_blocks.0.norm.query_norm", AB),  # a norm scale: not a LoRA's
        ("transformer.transformer_blocks.0.attn.to_qq", AB),
        ("lora_te1_text_model_encoder_layers_7_mlp_fc1", DOWN_UP),
    ):
        path = _write(tmp_path / "bad.safetensors", [(key, pair(96))], down, up, alpha=False)
        with pytest.raises(LoraError, match=f"matches no module.*{key}.{down}"):
            _merge(flux, path)
    # A fused module among known ones is one missing module, named once.
    path = _write(
        tmp_path / "mixed.safetensors",
        [("lora_unet_double_blocks_5_img_attn_qkv", pair(96))]
        + [("lora_unet_double_blocks_0_img_attn_proj", pair(32))],
        *DOWN_UP,
        alpha=True,
    )
    with pytest.raises(LoraError, match=r"1 LoRA module\(s\).*double_blocks_5_img_attn_qkv"):
        _merge(flux, path)
    # A FLUX.1-dev sized LoRA (3072 wide) on this tiny model.
    path = _write(
        tmp_path / "big.safetensors",
        [("lora_unet_single_blocks_0_linear1", pair(21504, 3072))],
        *DOWN_UP,
        alpha=True,
    )
    with pytest.raises(LoraError, match="single_blocks_0_linear1.*another model size"):
        _merge(flux, path)


@partial(jax.jit, static_argnums=0)
def _flux_jit(graphdef, state, x, t, context, pooled, rope, guidance):
    return nnx.merge(graphdef, state)(x, t, context, pooled, rope, guidance)


def _flux_inputs(config) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    rows, cols, text = 3, 4, 5
    ids = np.zeros((rows, cols, 3), np.float32)
    ids[..., 1] = np.arange(rows)[:, None]
    ids[..., 2] = np.arange(cols)[None, :]
    return {
        "x": rng.standard_normal((2, rows * cols, 16)).astype(np.float32),
        "context": rng.standard_normal((2, text, 24)).astype(np.float32),
        "pooled": rng.standard_normal((2, 12)).astype(np.float32),
        "t": np.array([1.0, 0.2505], np.float32),
        "guidance": np.array([3.5, 1.25], np.float32),
        "txt_ids": np.zeros((text, 3), np.float32),
        "img_ids": ids.reshape(-1, 3),
    }


@pytest.mark.usefixtures("correctly_rounded_timesteps")
@pytest.mark.parametrize("name", ["diffusers", "kohya_bfl_blocks", "xlabs"])
def test_flux_merge_matches_diffusers_fused_lora(flux: SimpleNamespace, name: str) -> None:
    data = _flux_inputs(flux.config)
    pipe = FluxPipeline(
        scheduler=None,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=copy.deepcopy(flux.ref),
    )
    pipe.load_lora_weights(str(flux.files[name]))
    pipe.fuse_lora(lora_scale=MULTIPLIER)
    t = {k: torch.from_numpy(v) for k, v in data.items()}
    with torch.no_grad():
        want = pipe.transformer(
            hidden_states=t["x"],
            encoder_hidden_states=t["context"],
            pooled_projections=t["pooled"],
            timestep=t["t"],
            img_ids=t["img_ids"],
            txt_ids=t["txt_ids"],
            guidance=t["guidance"],
        ).sample.numpy()

    rope = tuple(
        jnp.asarray(a)
        for a in flux_rope(np.concatenate([data["txt_ids"], data["img_ids"]]), flux.config)
    )
    args = [jnp.asarray(data[k]) for k in ("x", "t", "context", "pooled")]

    def ours(state: nnx.State) -> np.ndarray:
        return np.asarray(
            _flux_jit(flux.graphdef, state, *args, rope, jnp.asarray(data["guidance"]))
        )

    merged = _merge(flux, flux.files[name])["transformer"]
    base, got = ours(flux.states["transformer"]), ours(merged)
    # The LoRA must move the output far beyond the tolerance, or the comparison proves nothing.
    assert np.abs(base - want).max() > 100 * TOL
    err = float(np.abs(got - want).max())
    print(f"{name}: max abs err {err:.2e} (output scale {np.abs(want).max():.2f})")
    assert err < TOL


# --- SD3 --------------------------------------------------------------------------------------


def _sd3_layouts(root: Path, env: SimpleNamespace) -> dict[str, Path]:
    orig, diff = env.original_pairs, env.diffusers_pairs
    clip, t5 = env.clip_pairs, env.t5_pairs

    def torch_layers(pairs: dict) -> dict[str, torch.Tensor]:
        return {
            f"{m}.lora_{ab}.weight": torch.from_numpy(t.copy())
            for m, (a, b) in pairs.items()
            for ab, t in (("A", a), ("B", b))
        }

    def config(pairs: dict) -> dict:
        return LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(pairs)).to_dict()

    TorchSD3Pipeline.save_lora_weights(
        root / "diffusers",
        transformer_lora_layers=torch_layers(diff),
        transformer_lora_adapter_metadata=config(diff),
    )
    TorchSD3Pipeline.save_lora_weights(
        root / "diffusers_te",
        transformer_lora_layers=torch_layers(diff),
        text_encoder_lora_layers=torch_layers(clip),
        text_encoder_2_lora_layers=torch_layers(clip),
        transformer_lora_adapter_metadata=config(diff),
        text_encoder_lora_adapter_metadata=config(clip),
        text_encoder_2_lora_adapter_metadata=config(clip),
    )
    return {
        "diffusers": root / "diffusers" / "pytorch_lora_weights.safetensors",
        # diffusers' writer with both CLIPs.
        "diffusers_te": root / "diffusers_te" / "pytorch_lora_weights.safetensors",
        # kohya over diffusers names (OneTrainer); te1/te2 the CLIPs, te3 the T5.
        "kohya_diffusers": _write(
            root / "kohya_diffusers.safetensors",
            _kohya("lora_transformer_", diff)
            + _kohya("lora_te1_", clip)
            + _kohya("lora_te2_", clip)
            + _kohya("lora_te3_", t5),
            *DOWN_UP,
            alpha=True,
        ),
        # sd-scripts: the MMDiT's own names.
        "kohya_original": _write(
            root / "kohya_original.safetensors",
            _kohya("lora_unet_", orig) + _kohya("lora_te3_", t5),
            *DOWN_UP,
            alpha=True,
        ),
        # ComfyUI: original names under diffusion_model., ComfyUI's text encoders.
        "comfy_ab": _write(
            root / "comfy_ab.safetensors",
            _dotted("diffusion_model.", orig)
            + _dotted("text_encoders.clip_l.transformer.", clip)
            + _dotted("text_encoders.clip_g.transformer.", clip)
            + _dotted("text_encoders.t5xxl.transformer.", t5),
            *AB,
            alpha=False,
        ),
    }


SD3_COVERS = {
    "diffusers": ("transformer",),
    "diffusers_te": ("transformer", "text_encoder", "text_encoder_2"),
    "kohya_diffusers": ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"),
    "kohya_original": ("transformer", "text_encoder_3"),
    "comfy_ab": ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"),
}


@pytest.fixture(scope="module")
def sd3(tmp_path_factory: pytest.TempPathFactory, encoders: SimpleNamespace) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("sd3_lora")
    ref = _perturbed(SD3Transformer2DModel(**SD3_CONFIG))
    graphdef, state = nnx.split(_converted(ref, root, "transformer"))
    weights = _torch_weights(ref)
    env = SimpleNamespace(ref=ref, graphdef=graphdef)
    env.original_pairs = _random_pairs(SD3_MODULES, weights, seed=5)
    env.diffusers_pairs = _diffusers_pairs(SD3_MODULES, env.original_pairs, weights)
    env.clip_pairs = _random_pairs({m: (m,) for m in CLIP_MODULES}, encoders.clip_weights, 6)
    env.t5_pairs = _random_pairs({m: (m,) for m in T5_MODULES}, encoders.t5_weights, 7)
    # SD3's text_encoder_2 is a CLIP (the same tiny one here), its T5 text_encoder_3.
    env.states = {
        "transformer": state,
        "text_encoder": encoders.clip,
        "text_encoder_2": encoders.clip,
        "text_encoder_3": encoders.t5,
    }
    env.rules = {
        "transformer": SD3_TRANSFORMER_SPEC.rules,
        "text_encoder": CLIP_TEXT_PROJ_SPEC.rules,
        "text_encoder_2": CLIP_TEXT_PROJ_SPEC.rules,
        "text_encoder_3": T5_SPEC.rules,
    }
    clip_expected = _expected(encoders.clip_weights, env.clip_pairs)
    env.all_expected = {
        "transformer": _expected(weights, env.diffusers_pairs),
        "text_encoder": clip_expected,
        "text_encoder_2": clip_expected,
        "text_encoder_3": _expected(encoders.t5_weights, env.t5_pairs),
    }
    env.files = _sd3_layouts(root, env)
    return env


@pytest.mark.parametrize("name", list(SD3_COVERS))
def test_sd3_layouts_merge_to_w_plus_scaled_up_down(sd3: SimpleNamespace, name: str) -> None:
    merged = _merge(sd3, sd3.files[name])
    _check_merged(_covering(sd3, SD3_COVERS[name]), merged)
    for component in set(sd3.states) - set(SD3_COVERS[name]):
        assert merged[component] is sd3.states[component]
    want = _merge(sd3, sd3.files["diffusers"])
    _assert_same({"transformer": merged["transformer"]}, want, name)


def test_sd3_modules_the_model_lacks_are_named(sd3: SimpleNamespace, tmp_path: Path) -> None:
    pair = (np.ones((2, 16), np.float32), np.ones((48, 2), np.float32))
    for key in (
        "lora_unet_joint_blocks_4_x_block_attn_qkv",  # the model has two blocks
        "lora_transformer_transformer_blocks_0_attn_to_qq",
        "diffusion_model.joint_blocks.1.x_block.attn2.qkv",  # block 1 is not MMDiT-X
    ):
        down_up = AB if key.startswith("diffusion_model.") else DOWN_UP
        path = _write(tmp_path / "bad.safetensors", [(key, pair)], *down_up, alpha=False)
        with pytest.raises(LoraError, match=f"matches no module.*{key}.{down_up[0]}"):
            _merge(sd3, path)


def test_sd3_t5_lora_without_a_t5_is_refused(sd3: SimpleNamespace) -> None:
    states = {k: v for k, v in sd3.states.items() if k != "text_encoder_3"}
    rules = {k: v for k, v in sd3.rules.items() if k != "text_encoder_3"}
    with pytest.raises(LoraError, match="match nothing.*lora_te3_encoder_block_0"):
        merge_loras(states, [LoraSpec(sd3.files["kohya_original"], 1.0)], rules=rules)


def test_sd3_merge_matches_diffusers_fused_lora(sd3: SimpleNamespace) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 12, 16)).astype(np.float32)
    text = rng.standard_normal((2, 7, 24)).astype(np.float32)
    pooled = rng.standard_normal((2, 12)).astype(np.float32)
    t = np.array([999.0, 250.5], np.float32)
    pipe = TorchSD3Pipeline(
        scheduler=None,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
        transformer=copy.deepcopy(sd3.ref),
    )
    pipe.load_lora_weights(str(sd3.files["diffusers"]))
    pipe.fuse_lora(lora_scale=MULTIPLIER)
    with torch.no_grad():
        want = (
            pipe.transformer(
                torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
                encoder_hidden_states=torch.from_numpy(text),
                pooled_projections=torch.from_numpy(pooled),
                timestep=torch.from_numpy(t),
            )
            .sample.permute(0, 2, 3, 1)
            .numpy()
        )
    forward = jax.jit(lambda state, *a: nnx.merge(sd3.graphdef, state)(*a))
    args = [jnp.asarray(a) for a in (x, t, text, pooled)]
    merged = _merge(sd3, sd3.files["kohya_original"])["transformer"]
    base = np.asarray(forward(sd3.states["transformer"], *args))
    got = np.asarray(forward(merged, *args))
    assert np.abs(base - want).max() > 100 * TOL
    err = float(np.abs(got - want).max())
    print(f"sd3: max abs err {err:.2e} (output scale {np.abs(want).max():.2f})")
    assert err < TOL
