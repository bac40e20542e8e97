"""Parity of the Flax WanTransformer3DModel with diffusers' on tiny T2V / I2V / FLF2V / TI2V,
and of the original-Wan-checkpoint key table with diffusers' single-file converter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel as TorchWan
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from flax import nnx
from safetensors.torch import load_file, save_file

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.convert.wan_release.transformer import (
    LDM_PREFIX,
    wan_original_config,
    wan_original_plan,
)
from jaxvideo.models.wan import WanTransformer3DModel, WanTransformerConfig
from jaxvideo.weights import load_component

ATOL = 1e-4
# diffusers' Wan attention takes the last 512 context tokens as text whenever the model has
# image projections, so image-conditioned checks use exactly 512 text tokens.
TEXT_LEN_I2V = 512
IMAGE_TOKENS = 5  # stands in for CLIP's 257

BASE: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=24,
    freq_dim=32,
    ffn_dim=48,
    num_layers=2,
    rope_max_seq_len=64,
)
I2V: dict[str, Any] = dict(BASE, in_channels=36, image_dim=20, added_kv_proj_dim=32)

# name: (diffusers kwargs, latent (F, H, W), text length, per-token timesteps)
CASES: dict[str, tuple[dict[str, Any], tuple[int, int, int], int, bool]] = {
    # Wan 2.1 / 2.2 A14B text-to-video; odd frame count and a non-square latent.
    "t2v": (BASE, (3, 8, 12), 7, False),
    # Wan 2.1 image-to-video: CLIP image tokens through add_k/add_v projections.
    "i2v": (I2V, (3, 8, 8), TEXT_LEN_I2V, False),
    # Wan 2.1 first-last-frame: both frames' tokens plus a learned position embedding.
    "flf2v": (dict(I2V, pos_embed_seq_len=2 * IMAGE_TOKENS), (3, 8, 8), TEXT_LEN_I2V, False),
    # Wan 2.2 TI2V-5B: 48 channels, one timestep per token (first frame pinned at t=0); this
    # config also turns off the cross-attention norm.
    "ti2v": (
        dict(BASE, in_channels=48, out_channels=48, cross_attn_norm=False),
        (3, 8, 8),
        7,
        True,
    ),
}


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    # Random offsets on every tensor (scale_shift_table and pos_embed are parameters too):
    # norm scales stop being 1, zero-init biases and pos_embed become non-zero, so a tensor
    # mapped to the wrong place cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _save(model: torch.nn.Module, tmp_path: Path) -> Path:
    src = tmp_path / "src" / "transformer"
    model.save_pretrained(src, safe_serialization=True)
    return src


def _inputs(kwargs: dict[str, Any], latent, text_len: int, per_token: bool) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    batch = 2
    f, h, w = latent
    out: dict[str, Any] = {
        "x": rng.standard_normal((batch, f, h, w, kwargs["in_channels"])).astype(np.float32),
        "context": rng.standard_normal((batch, text_len, kwargs["text_dim"])).astype(np.float32),
        # Different fractional timesteps per row catch a batch mix-up in the modulation.
        "t": np.array([999.0, 250.5], np.float32),
    }
    if per_token:
        tokens_per_frame = (h // 2) * (w // 2)
        mask = np.ones(f * tokens_per_frame, np.float32)
        mask[:tokens_per_frame] = 0.0  # the pinned first frame, as diffusers' TI2V pipeline
        out["t"] = out["t"][:, None] * mask[None]
    if kwargs.get("image_dim"):
        # FLF2V: diffusers takes (2B, N, D), first and last frame of each row adjacent.
        rows = batch * (2 if kwargs.get("pos_embed_seq_len") else 1)
        shape = (rows, IMAGE_TOKENS, kwargs["image_dim"])
        out["image"] = rng.standard_normal(shape).astype(np.float32)
    return out


def _torch_forward(ref: TorchWan, data: dict[str, Any]) -> np.ndarray:
    image = data.get("image")
    with torch.no_grad():
        out = ref(
            torch.from_numpy(data["x"]).permute(0, 4, 1, 2, 3).contiguous(),
            torch.from_numpy(data["t"]),
            torch.from_numpy(data["context"]),
            encoder_hidden_states_image=None if image is None else torch.from_numpy(image),
        ).sample
    return out.permute(0, 2, 3, 4, 1).numpy()


def _jax_forward(model: WanTransformer3DModel, data: dict[str, Any]) -> np.ndarray:
    # One jit compile is much cheaper than dispatching the network op by op.
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args))
    image = data.get("image")
    args = [jnp.asarray(data[k]) for k in ("x", "t", "context")]
    return np.asarray(forward(state, *args, None if image is None else jnp.asarray(image)))


@pytest.mark.parametrize("case", list(CASES))
def test_wan_transformer_parity(tmp_path: Path, case: str) -> None:
    kwargs, latent, text_len, per_token = CASES[case]
    torch.manual_seed(0)
    ref = _perturbed(TorchWan(**kwargs))
    src = _save(ref, tmp_path)
    convert_component(src, tmp_path / "dst" / "transformer")
    model = load_component(tmp_path / "dst", "transformer")
    assert isinstance(model, WanTransformer3DModel)

    data = _inputs(kwargs, latent, text_len, per_token)
    theirs = _torch_forward(ref, data)
    ours = _jax_forward(model, data)
    assert ours.shape == theirs.shape == (2, *latent, kwargs["out_channels"])
    err = float(np.abs(ours.astype(np.float64) - theirs).max())
    print(f"{case}: max abs err {err:.2e} (output scale {np.abs(theirs).max():.2f})")
    assert err < ATOL

    if case == "flf2v":
        # The (B, 2N, D) layout of the same tokens embeds to the same image tokens.
        embed = nnx.jit(lambda embedder, image: embedder(image))
        embedder, image = model.condition_embedder.image_embedder, jnp.asarray(data["image"])
        folded = embed(embedder, image.reshape(2, 2 * IMAGE_TOKENS, -1))
        np.testing.assert_array_equal(folded, embed(embedder, image))


def _broken_checkpoint(tmp_path: Path, edit) -> Path:
    torch.manual_seed(0)
    src = _save(TorchWan(**I2V), tmp_path)
    path = src / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    return src


def test_wrong_shape_names_key(tmp_path: Path) -> None:
    key = "blocks.1.attn2.add_k_proj.weight"

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = tensors[key][:, :-1].contiguous()

    src = _broken_checkpoint(tmp_path, edit)
    with pytest.raises(ConversionError, match="shape mismatch") as info:
        convert_component(src, tmp_path / "dst" / "transformer")
    assert key in str(info.value)
    assert "blocks.1.attn2.add_k_proj.kernel" in str(info.value)


def test_missing_scale_shift_table_names_parameter(tmp_path: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        del tensors["blocks.0.scale_shift_table"]

    src = _broken_checkpoint(tmp_path, edit)
    with pytest.raises(ConversionError, match="missing") as info:
        convert_component(src, tmp_path / "dst" / "transformer")
    assert "blocks.0.scale_shift_table" in str(info.value)


def test_patch_embedding_kernel_is_conv3d_layout(tmp_path: Path) -> None:
    # The Flax kernel is the conv3d weight in THWIO order (what the converter's rule produces).
    torch.manual_seed(0)
    ref = _perturbed(TorchWan(**dict(BASE, patch_size=(2, 2, 2), num_layers=1)))
    convert_component(_save(ref, tmp_path), tmp_path / "dst" / "transformer")
    model = load_component(tmp_path / "dst", "transformer")
    weight = ref.patch_embedding.weight.detach().numpy()
    np.testing.assert_array_equal(
        model.patch_embedding.kernel[...], weight.transpose(2, 3, 4, 1, 0)
    )
    data = _inputs(BASE, (4, 4, 6), 3, False)
    np.testing.assert_allclose(_jax_forward(model, data), _torch_forward(ref, data), atol=ATOL)


def test_config_from_hf_reads_diffusers_config_and_refuses_bad_values() -> None:
    hf = dict(TorchWan(**dict(I2V, num_layers=1)).config)
    hf = json.loads(json.dumps(hf, default=list))
    hf["some_unknown_key"] = 1
    config = WanTransformerConfig.from_hf(hf)
    assert (config.patch_size, config.image_dim, config.added_kv_proj_dim) == ((1, 2, 2), 20, 32)
    assert WanTransformerConfig.from_hf({**hf, "out_channels": None}).out_channels == 36
    for bad, match in (
        ({"added_kv_proj_dim": None}, "together"),
        ({"added_kv_proj_dim": 64}, "must equal"),
        ({"attention_head_dim": 15, "added_kv_proj_dim": 30}, "even"),
        ({"patch_size": [1, 2]}, "patch_size"),
        ({"num_layers": 0}, "positive"),
        ({"image_dim": None, "added_kv_proj_dim": None, "pos_embed_seq_len": 4}, "image_dim"),
    ):
        with pytest.raises(ValueError, match=match):
            WanTransformerConfig.from_hf({**hf, **bad})


def test_call_refuses_inputs_that_do_not_fit() -> None:
    # Abstract model: the checks fail before any array is touched.
    i2v = WanTransformerConfig.from_hf(I2V)
    model = nnx.eval_shape(lambda: WanTransformer3DModel(i2v, rngs=nnx.Rngs(0)))
    x = jnp.zeros((1, 3, 8, 8, 36))
    t = jnp.zeros((1,))
    ctx = jnp.zeros((1, 4, 24))
    with pytest.raises(ValueError, match="needs image_context"):
        model(x, t, ctx)
    with pytest.raises(ValueError, match="multiples"):
        model(jnp.zeros((1, 3, 7, 8, 36)), t, ctx, jnp.zeros((1, 5, 20)))
    with pytest.raises(ValueError, match="timestep"):
        model(x, jnp.zeros((1, 5)), ctx, jnp.zeros((1, 5, 20)))
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        model(jnp.zeros((1, 65, 8, 8, 36)), t, ctx, jnp.zeros((1, 5, 20)))


# --- original Wan release checkpoints (jaxvideo.convert.wan_release.transformer) ----------------


def _original_tensors(prefix: str = "") -> dict[str, torch.Tensor]:
    """A tiny Wan 2.1 FLF2V `WanModel` state dict under the Wan code's names (I2V branch and
    emb_pos included), with the shapes of the FLF2V parity config."""
    dim, ffn, layers, image, out = 32, 48, 2, 20, 16 * 4
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (dim, 36, 1, 2, 2),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, 24),
        "text_embedding.2.weight": (dim, dim),
        "time_embedding.0.weight": (dim, 32),
        "time_embedding.2.weight": (dim, dim),
        "time_projection.1.weight": (6 * dim, dim),
        "head.head.weight": (out, dim),
        "head.modulation": (1, 2, dim),
        "img_emb.proj.0.weight": (image,),
        "img_emb.proj.1.weight": (image, image),
        "img_emb.proj.3.weight": (dim, image),
        "img_emb.proj.4.weight": (dim,),
        "img_emb.emb_pos": (1, 2 * IMAGE_TOKENS, image),
    }
    for name in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2"):
        shapes[f"{name}.bias"] = (dim,)
    shapes["time_projection.1.bias"] = (6 * dim,)
    shapes["head.head.bias"] = (out,)
    for name in ("img_emb.proj.0", "img_emb.proj.1", "img_emb.proj.3", "img_emb.proj.4"):
        shapes[f"{name}.bias"] = shapes[f"{name}.weight"][:1]
    for n in range(layers):
        b = f"blocks.{n}."
        shapes[b + "modulation"] = (1, 6, dim)
        for attn, projs in (
            ("self_attn", "qkvo"),
            ("cross_attn", ("q", "k", "v", "o", "k_img", "v_img")),
        ):
            for proj in projs:
                shapes[f"{b}{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"{b}{attn}.{proj}.bias"] = (dim,)
            for norm in ("norm_q", "norm_k") + (("norm_k_img",) if attn == "cross_attn" else ()):
                shapes[f"{b}{attn}.{norm}.weight"] = (dim,)
        shapes[b + "norm3.weight"] = shapes[b + "norm3.bias"] = (dim,)
        shapes[b + "ffn.0.weight"], shapes[b + "ffn.0.bias"] = (ffn, dim), (ffn,)
        shapes[b + "ffn.2.weight"], shapes[b + "ffn.2.bias"] = (dim, ffn), (dim,)
    gen = torch.Generator().manual_seed(0)
    return {prefix + k: torch.randn(s, generator=gen) for k, s in shapes.items()}


ORIGINAL_FLF2V_CONFIG = {
    "dim": 32,
    "eps": 1e-06,
    "ffn_dim": 48,
    "freq_dim": 32,
    "in_dim": 36,
    "model_type": "flf2v",
    "num_heads": 2,
    "num_layers": 2,
    "out_dim": 16,
    "text_dim": 24,
    "text_len": 512,
}


@pytest.mark.parametrize("prefix", ["", LDM_PREFIX])
def test_original_key_table_matches_diffusers_single_file_converter(prefix: str) -> None:
    tensors = _original_tensors(prefix)
    plan = wan_original_plan(tensors)
    ours = {name: tensors[src.key] for name, src in plan.items()}
    theirs = convert_wan_transformer_to_diffusers(dict(tensors))
    # diffusers' single-file converter leaves FLF2V's emb_pos unrenamed (its conversion
    # script maps it to pos_embed, as we do); every other tensor must land on the same name.
    assert theirs.pop("img_emb.emb_pos") is ours.pop("condition_embedder.image_embedder.pos_embed")
    assert sorted(ours) == sorted(theirs)
    assert all(ours[k] is theirs[k] for k in ours)

    # The renamed tensors fill exactly the diffusers model the converted config describes.
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    config = wan_original_config(ORIGINAL_FLF2V_CONFIG, shapes)
    assert config == {
        **dict(I2V, patch_size=[1, 2, 2], pos_embed_seq_len=2 * IMAGE_TOKENS),
        "_class_name": "WanTransformer3DModel",
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 1024,
    }
    WanTransformerConfig.from_hf(config)
    ref = TorchWan(**{k: v for k, v in config.items() if not k.startswith("_")})
    state = {name: tensors[src.key] for name, src in plan.items()}
    ref.load_state_dict(state, strict=True)


def test_original_config_of_wan_releases() -> None:
    # Wan2.1-T2V-1.3B's config.json; Wan 2.2 I2V-A14B says "i2v" but has no CLIP branch.
    t2v = {"dim": 1536, "ffn_dim": 8960, "in_dim": 16, "model_type": "t2v", "num_heads": 12}
    config = wan_original_config({**t2v, "num_layers": 30, "out_dim": 16, "text_len": 512}, {})
    assert (config["num_attention_heads"], config["attention_head_dim"]) == (12, 128)
    assert (config["ffn_dim"], config["num_layers"], config["image_dim"]) == (8960, 30, None)
    i2v22 = {"dim": 5120, "in_dim": 36, "model_type": "i2v", "num_heads": 40}
    assert wan_original_config(i2v22, {})["added_kv_proj_dim"] is None
    i2v21 = wan_original_config(i2v22, {"img_emb.proj.0.weight": (1280,)})
    assert (i2v21["image_dim"], i2v21["added_kv_proj_dim"]) == (1280, 5120)
    for bad, match in (
        ({"model_type": "vace"}, "model_type"),
        ({"model_type": "flf2v"}, "emb_pos"),
        ({"window_size": [8, 8]}, "window_size"),
    ):
        with pytest.raises(ConversionError, match=match):
            wan_original_config({**t2v, **bad}, {})


def test_original_unknown_key_is_named() -> None:
    tensors = _original_tensors()
    tensors["vace_blocks.0.after_proj.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="vace_blocks.0.after_proj.weight"):
        wan_original_plan(tensors)
