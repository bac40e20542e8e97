"""Wan LoRAs in the layouts they are published in merge into the Flax Wan transformer exactly as
diffusers loads and fuses them.

One set of random PEFT down/up weights on a tiny Wan 2.1 I2V transformer (self/cross attention,
the image key/value projections, the FFN, and the embedders / head) is written as: diffusers'
`save_lora_weights` (alpha in its metadata), ComfyUI's `diffusion_model.` + original Wan names
(lora_A/B, and lora_down/up + alpha), the original names without a prefix, musubi-tuner's kohya
`lora_unet_blocks_0_self_attn_q`, kohya over diffusers names, and a bare PEFT state dict. Every
layout must merge to the same Flax weights, and those must run like diffusers' transformer with
the LoRA loaded (diffusers converts the ComfyUI layout itself) and fused.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import peft  # noqa: F401 - diffusers' load_lora_weights needs it
import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from flax import nnx
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.lora import LoraError, LoraSpec, merge_loras
from jaxvideo.lora.formats import parse_lora
from jaxvideo.models.wan import WAN_TRANSFORMER_RULES
from jaxvideo.weights import load_component

TOL = 1e-4
RANK, ALPHA = 4, 8.0  # scale alpha / rank = 2: exact in float, so pre-scaled copies are too
MULTIPLIER = 0.75
RULES = {"transformer": WAN_TRANSFORMER_RULES}
TEXT_TOKENS = 512  # diffusers splits image tokens off the context's first len - 512 tokens
IMAGE_TOKENS = 5
CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=36,
    out_channels=16,
    text_dim=24,
    freq_dim=32,
    ffn_dim=48,
    num_layers=2,
    rope_max_seq_len=64,
    image_dim=20,
    added_kv_proj_dim=32,
)

# diffusers module -> the original Wan code's name for it.
_BLOCK_MODULES = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
ORIGINAL_NAMES = {
    **{f"blocks.{n}.{d}": f"blocks.{n}.{o}" for n in range(2) for d, o in _BLOCK_MODULES.items()},
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "proj_out": "head.head",
}


def _reference() -> WanTransformer3DModel:
    torch.manual_seed(0)
    model = WanTransformer3DModel(**CONFIG)
    with torch.no_grad():  # diffusers zero-inits some layers; noise everywhere
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


LORA_CONFIG = LoraConfig(
    r=RANK, lora_alpha=ALPHA, target_modules=list(ORIGINAL_NAMES), init_lora_weights=False
)


def _peft_layers(model: WanTransformer3DModel) -> dict[str, torch.Tensor]:
    """{`<module>.lora_A.weight`: down, `<module>.lora_B.weight`: up}, random and non-zero."""
    torch.manual_seed(1)
    lora = copy.deepcopy(model)
    lora.add_adapter(LORA_CONFIG)
    layers = {k: v.contiguous() for k, v in get_peft_model_state_dict(lora).items()}
    assert {k.rsplit(".lora_", 1)[0] for k in layers} == set(ORIGINAL_NAMES)
    return layers


def _pairs(layers: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {m: (layers[f"{m}.lora_A.weight"], layers[f"{m}.lora_B.weight"]) for m in ORIGINAL_NAMES}


def _write(path: Path, pairs, name, down: str, up: str, *, alpha: bool) -> Path:
    """Each pair under `name(module)`; without alpha keys, up carries alpha / rank instead."""
    out: dict[str, torch.Tensor] = {}
    for module, (a, b) in pairs.items():
        key = name(module)
        out[f"{key}.{down}"] = a
        out[f"{key}.{up}"] = b if alpha else b * (ALPHA / RANK)
        if alpha:
            out[f"{key}.alpha"] = torch.tensor(ALPHA)
    save_file(out, str(path))
    return path


def _layouts(root: Path, layers: dict[str, torch.Tensor]) -> dict[str, Path]:
    pairs = _pairs(layers)
    WanPipeline.save_lora_weights(
        root / "diffusers",
        transformer_lora_layers=layers,
        transformer_lora_adapter_metadata=LORA_CONFIG.to_dict(),
    )

    def original(prefix: str):
        return lambda m: prefix + ORIGINAL_NAMES[m]

    def kohya(m: str) -> str:
        return "lora_unet_" + ORIGINAL_NAMES[m].replace(".", "_")

    lora_ab, down_up = ("lora_A.weight", "lora_B.weight"), ("lora_down.weight", "lora_up.weight")
    return {
        "diffusers": root / "diffusers" / "pytorch_lora_weights.safetensors",
        "comfy_ab": _write(
            root / "comfy_ab.safetensors",
            pairs,
            original("diffusion_model."),
            *lora_ab,
            alpha=False,
        ),
        "comfy_down_up": _write(
            root / "comfy.safetensors", pairs, original("diffusion_model."), *down_up, alpha=True
        ),
        "original_unprefixed": _write(
            root / "original.safetensors", pairs, original(""), *lora_ab, alpha=True
        ),
        "musubi": _write(root / "musubi.safetensors", pairs, kohya, *down_up, alpha=True),
        "kohya_diffusers_names": _write(
            root / "kohya.safetensors",
            pairs,
            lambda m: "lora_unet_" + m.replace(".", "_"),
            *down_up,
            alpha=True,
        ),
        "peft_unprefixed": _write(root / "peft.safetensors", pairs, str, *lora_ab, alpha=False),
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("wan_lora")
    ref = _reference()
    ref.save_pretrained(root / "src" / "transformer")
    convert_component(root / "src" / "transformer", root / "dst" / "transformer")
    graphdef, state = nnx.split(load_component(root / "dst", "transformer"))
    layers = _peft_layers(ref)
    rng = np.random.default_rng(0)
    return SimpleNamespace(
        ref=ref,
        graphdef=graphdef,
        state=state,
        layers=layers,
        files=_layouts(root, layers),
        x=rng.standard_normal((2, 3, 8, 8, CONFIG["in_channels"])).astype(np.float32),
        t=np.array([999.0, 250.5], np.float32),
        context=rng.standard_normal((2, TEXT_TOKENS, CONFIG["text_dim"])).astype(np.float32),
        image=rng.standard_normal((2, IMAGE_TOKENS, CONFIG["image_dim"])).astype(np.float32),
    )


@partial(jax.jit, static_argnums=0)
def _forward_jit(graphdef, state, x, t, context, image):
    return nnx.merge(graphdef, state)(x, t, context, image)


def _flax_forward(env: SimpleNamespace, state: nnx.State) -> np.ndarray:
    args = map(jnp.asarray, (env.x, env.t, env.context, env.image))
    return np.asarray(_forward_jit(env.graphdef, state, *args))


def _torch_forward(env: SimpleNamespace, model: WanTransformer3DModel) -> np.ndarray:
    with torch.no_grad():
        out = model(
            torch.from_numpy(env.x).permute(0, 4, 1, 2, 3).contiguous(),
            torch.from_numpy(env.t),
            torch.from_numpy(env.context),
            encoder_hidden_states_image=torch.from_numpy(env.image),
        ).sample
    return out.permute(0, 2, 3, 4, 1).numpy()


def _flat(state: nnx.State) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _merged(env: SimpleNamespace, path: Path, multiplier: float = MULTIPLIER, **kw) -> nnx.State:
    return merge_loras({"transformer": env.state}, [LoraSpec(path, multiplier)], rules=RULES, **kw)[
        "transformer"
    ]


# --- every layout, one merge ------------------------------------------------------------------


def test_layouts_parse_to_the_diffusers_modules(env: SimpleNamespace) -> None:
    for name, path in env.files.items():
        pairs = parse_lora(path)
        kohya = name == "kohya_diffusers_names"  # split into dots later, against the model
        want = {m.replace(".", "_") if kohya else m for m in ORIGINAL_NAMES}
        assert {p.module for p in pairs} == want, name
        # Files without alpha keys (or metadata) carry alpha / rank in their up weights.
        scale = 1.0 if name in ("comfy_ab", "peft_unprefixed") else ALPHA / RANK
        assert {p.scale for p in pairs} == {scale}, name
        if name not in ("peft_unprefixed", "original_unprefixed"):
            # The file names its denoiser (`lora_unet_`, `diffusion_model.`, `transformer.`).
            assert {p.component for p in pairs} == {"transformer"}, name
        assert all(p.kohya == kohya for p in pairs), name


def test_a_file_without_blocks_is_still_a_transformer_lora(
    env: SimpleNamespace, tmp_path: Path
) -> None:
    save_file(
        _pair(tmp_path, "diffusion_model.head.head", dims=(32, 64)),
        str(tmp_path / "head.safetensors"),
    )
    (pair,) = parse_lora(tmp_path / "head.safetensors")
    assert (pair.component, pair.module) == ("transformer", "proj_out")
    merged = _flat(_merged(env, tmp_path / "head.safetensors", 1.0))
    base = _flat(env.state)
    assert [k for k in base if not np.array_equal(merged[k], base[k])] == ["proj_out.kernel"]


@pytest.mark.parametrize(
    "name",
    [
        "comfy_ab",
        "comfy_down_up",
        "original_unprefixed",
        "musubi",
        "kohya_diffusers_names",
        "peft_unprefixed",
    ],
)
def test_every_layout_merges_to_the_same_weights(env: SimpleNamespace, name: str) -> None:
    want = _flat(_merged(env, env.files["diffusers"]))
    got = _flat(_merged(env, env.files[name]))
    base = _flat(env.state)
    changed = {k for k in base if not np.array_equal(want[k], base[k])}
    assert len(changed) == len(ORIGINAL_NAMES)  # one kernel per LoRA module, nothing else
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}: {key}")


# --- parity with diffusers' own loading and fusing --------------------------------------------


@pytest.mark.parametrize("name", ["diffusers", "comfy_ab"])
def test_merged_transformer_matches_diffusers_fused_lora(env: SimpleNamespace, name: str) -> None:
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        scheduler=None,
        transformer=copy.deepcopy(env.ref),
    )
    pipe.load_lora_weights(str(env.files[name]))
    pipe.fuse_lora(lora_scale=MULTIPLIER)
    want = _torch_forward(env, pipe.transformer)

    base = _flax_forward(env, env.state)
    got = _flax_forward(env, _merged(env, env.files[name]))
    # The LoRA must move the output far beyond the tolerance, or the comparison proves nothing.
    assert np.abs(base - want).max() > 100 * TOL
    err = float(np.abs(got - want).max())
    print(f"{name}: max abs err {err:.2e} (output scale {np.abs(want).max():.2f})")
    assert err < TOL


# --- Wan 2.2 experts --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["diffusers", "comfy_down_up", "musubi"])
def test_high_noise_loras_go_to_the_high_noise_expert(env: SimpleNamespace, name: str) -> None:
    states = {"transformer": env.state, "transformer_high": env.state}
    rules = {"transformer": WAN_TRANSFORMER_RULES, "transformer_high": WAN_TRANSFORMER_RULES}
    low_only = _flat(_merged(env, env.files["diffusers"]))
    spec = LoraSpec(env.files[name], MULTIPLIER, is_high_noise=True)
    merged = merge_loras(states, [spec], rules=rules, high_noise_component="transformer_high")
    assert merged["transformer"] is env.state
    high = _flat(merged["transformer_high"])
    for key in low_only:
        np.testing.assert_array_equal(high[key], low_only[key], err_msg=key)
    plain = merge_loras(
        states, [LoraSpec(env.files[name], MULTIPLIER)], rules=rules, high_noise_component="x"
    )
    assert plain["transformer_high"] is env.state
    assert plain["transformer"] is not env.state


# --- refusals ---------------------------------------------------------------------------------


def _pair(path: Path, prefix: str, down: str = "lora_down", dims=(32, 32)) -> dict:
    up = "lora_up" if down == "lora_down" else "lora_B"
    return {
        f"{prefix}.{down}.weight": torch.ones(2, dims[0]),
        f"{prefix}.{up}.weight": torch.ones(dims[1], 2),
    }


def test_modules_the_model_lacks_are_named(env: SimpleNamespace, tmp_path: Path) -> None:
    for key in (
        "diffusion_model.blocks.5.self_attn.q",  # the tiny model has two blocks
        "lora_unet_blocks_0_self_attn_qq",
        "blocks.0.cross_attn.norm_q",  # a norm: no LoRA-able weight
    ):
        save_file(_pair(tmp_path, key), str(tmp_path / "bad.safetensors"))
        with pytest.raises(LoraError, match=f"matches no module.*{key}.lora_down.weight"):
            _merged(env, tmp_path / "bad.safetensors")
    # One unknown module among known ones is still refused, naming it.
    tensors = _pair(tmp_path, "lora_unet_blocks_9_ffn_0")
    tensors.update(_pair(tmp_path, "lora_unet_blocks_1_ffn_0", dims=(32, 48)))
    save_file(tensors, str(tmp_path / "mixed.safetensors"))
    with pytest.raises(LoraError, match="1 LoRA module.*lora_unet_blocks_9_ffn_0"):
        _merged(env, tmp_path / "mixed.safetensors")


def test_wrong_model_size_and_missing_expert_are_refused(
    env: SimpleNamespace, tmp_path: Path
) -> None:
    key = "diffusion_model.blocks.0.self_attn.q"
    save_file(_pair(tmp_path, key, "lora_A", dims=(48, 48)), str(tmp_path / "big.safetensors"))
    with pytest.raises(LoraError, match=f"{key}.lora_A.weight.*another model size"):
        _merged(env, tmp_path / "big.safetensors")
    with pytest.raises(LoraError, match="high-noise LoRA needs a two-expert model"):
        merge_loras(
            {"transformer": env.state},
            [LoraSpec(env.files["musubi"], 1.0, is_high_noise=True)],
            rules=RULES,
        )
