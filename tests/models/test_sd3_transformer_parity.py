"""Parity of the Flax SD3Transformer2DModel with diffusers' on tiny SD3 / SD3.5 Large /
SD3.5 Medium (MMDiT-X, cropped position table) configs, with and without skip-layer guidance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import SD3Transformer2DModel as TorchSD3
from flax import nnx
from safetensors.torch import load_file, save_file

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.models.sd3 import SD3Transformer2DModel, SD3TransformerConfig
from jaxvideo.weights import load_component

ATOL = 1e-4
LATENT = (8, 12)  # non-square: a (4, 6) token grid
TEXT_LEN = 7

SD3: dict[str, Any] = dict(
    sample_size=16,
    patch_size=2,
    in_channels=16,
    num_layers=3,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=24,
    caption_projection_dim=16,
    pooled_projection_dim=12,
    out_channels=16,
    pos_embed_max_size=12,
)
SD35_LARGE: dict[str, Any] = dict(SD3, qk_norm="rms_norm")
# MMDiT-X blocks first, and a table of 8 x 8 < 12 patches whose crop of the (4, 6) grid sits
# at an odd offset (rows 2..5, columns 1..6).
SD35_MEDIUM: dict[str, Any] = dict(SD35_LARGE, dual_attention_layers=(0, 1), pos_embed_max_size=8)

# name: (diffusers kwargs, skip_layers)
CASES: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "sd3": (SD3, ()),
    "sd35_large": (SD35_LARGE, ()),
    "sd35_medium": (SD35_MEDIUM, ()),
    # Skip-layer guidance over a dual-attention block, like StabilityAI's recommended
    # skip_guidance_layers [7, 8, 9] for SD3.5 Medium (whose blocks 0..12 are MMDiT-X).
    "sd35_medium_skip": (SD35_MEDIUM, (1,)),
}


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    # Random offsets on every parameter: norm scales stop being 1 and zero-init biases become
    # non-zero, so a tensor mapped to the wrong place cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _convert(kwargs: dict[str, Any], tmp_path: Path) -> tuple[TorchSD3, Path]:
    torch.manual_seed(0)
    ref = _perturbed(TorchSD3(**kwargs))
    src = tmp_path / "src" / "transformer"
    ref.save_pretrained(src, safe_serialization=True)
    convert_component(src, tmp_path / "dst" / "transformer")
    return ref, tmp_path / "dst"


def _inputs(kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    batch = 2
    return {
        "x": rng.standard_normal((batch, *LATENT, kwargs["in_channels"])).astype(np.float32),
        # Different fractional timesteps per row catch a batch mix-up in the modulation.
        "t": np.array([999.0, 250.5], np.float32),
        "text": rng.standard_normal((batch, TEXT_LEN, kwargs["joint_attention_dim"])).astype(
            np.float32
        ),
        "pooled": rng.standard_normal((batch, kwargs["pooled_projection_dim"])).astype(np.float32),
    }


def _torch_forward(ref: TorchSD3, data: dict[str, np.ndarray], skip: tuple[int, ...]):
    with torch.no_grad():
        out = ref(
            torch.from_numpy(data["x"]).permute(0, 3, 1, 2).contiguous(),
            encoder_hidden_states=torch.from_numpy(data["text"]),
            pooled_projections=torch.from_numpy(data["pooled"]),
            timestep=torch.from_numpy(data["t"]),
            skip_layers=list(skip) or None,
        ).sample
    return out.permute(0, 2, 3, 1).numpy()


def _jax_forward(
    model: SD3Transformer2DModel, data: dict[str, np.ndarray], skip: tuple[int, ...]
) -> np.ndarray:
    # One jit compile is much cheaper than dispatching the network op by op.
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args, skip_layers=skip))
    args = [jnp.asarray(data[k]) for k in ("x", "t", "text", "pooled")]
    return np.asarray(forward(state, *args)).astype(np.float64)


@pytest.mark.parametrize("case", list(CASES))
def test_sd3_transformer_parity(tmp_path: Path, case: str) -> None:
    kwargs, skip = CASES[case]
    ref, dst = _convert(kwargs, tmp_path)
    model = load_component(dst, "transformer")
    assert isinstance(model, SD3Transformer2DModel)

    data = _inputs(kwargs)
    theirs = _torch_forward(ref, data, skip)
    ours = _jax_forward(model, data, skip)
    assert ours.shape == theirs.shape == (2, *LATENT, kwargs["out_channels"])
    err = float(np.abs(ours - theirs).max())
    print(f"{case}: max abs err {err:.2e} (output scale {np.abs(theirs).max():.2f})")
    assert err < ATOL
    if skip:
        # Skipping a block must matter: the unskipped output is far from the skipped one.
        unskipped = _torch_forward(ref, data, ())
        assert np.abs(ours - unskipped).max() > 100 * ATOL


def test_bf16_runs_close_to_fp32(tmp_path: Path) -> None:
    ref, dst = _convert(SD35_MEDIUM, tmp_path)
    model = load_component(dst, "transformer", dtype="bf16")
    data = _inputs(SD35_MEDIUM)
    theirs = _torch_forward(ref, data, ())
    ours = _jax_forward(model, data, ())
    assert np.isfinite(ours).all()
    err = float(np.abs(ours - theirs).max())
    scale = float(np.abs(theirs).max())
    print(f"bf16: max abs err {err:.2e} (output scale {scale:.2f})")
    assert err < 0.05 * scale


def test_wrong_shape_names_key(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "src" / "transformer"
    TorchSD3(**SD35_LARGE).save_pretrained(src, safe_serialization=True)
    path = src / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    key = "transformer_blocks.2.attn.add_q_proj.weight"
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, path)
    with pytest.raises(ConversionError, match="shape mismatch") as info:
        convert_component(src, tmp_path / "dst" / "transformer")
    assert key in str(info.value)
    assert "transformer_blocks.2.attn.add_q_proj.kernel" in str(info.value)


def test_config_from_hf_reads_diffusers_config_and_refuses_bad_values() -> None:
    hf = json.loads(json.dumps(dict(TorchSD3(**dict(SD35_MEDIUM, num_layers=2)).config)))
    hf["some_unknown_key"] = 1
    config = SD3TransformerConfig.from_hf(hf)
    assert (config.dual_attention_layers, config.qk_norm, config.inner_dim) == (
        (0, 1),
        "rms_norm",
        16,
    )
    assert SD3TransformerConfig.from_hf({**hf, "out_channels": None}).out_channels == 16
    for bad, match in (
        ({"qk_norm": "layer_norm"}, "qk_norm"),
        ({"caption_projection_dim": 24}, "caption_projection_dim"),
        ({"dual_attention_layers": [2]}, "dual_attention_layers"),
        ({"pos_embed_max_size": None}, "pos_embed_max_size"),
        ({"num_layers": 0}, "positive"),
    ):
        with pytest.raises(ValueError, match=match):
            SD3TransformerConfig.from_hf({**hf, **bad})


def test_call_refuses_inputs_that_do_not_fit() -> None:
    # Abstract model: the checks fail before any array is touched.
    config = SD3TransformerConfig.from_hf(SD35_MEDIUM)
    model = nnx.eval_shape(lambda: SD3Transformer2DModel(config, rngs=nnx.Rngs(0)))
    x, t = jnp.zeros((1, 8, 8, 16)), jnp.zeros((1,))
    text, pooled = jnp.zeros((1, 3, 24)), jnp.zeros((1, 12))
    with pytest.raises(ValueError, match="multiples"):
        model(jnp.zeros((1, 7, 8, 16)), t, text, pooled)
    with pytest.raises(ValueError, match="pos_embed_max_size"):
        model(jnp.zeros((1, 18, 8, 16)), t, text, pooled)
    with pytest.raises(ValueError, match="timestep"):
        model(x, jnp.zeros((2,)), text, pooled)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(x, t, jnp.zeros((1, 3, 16)), pooled)
    with pytest.raises(ValueError, match="pooled_projections"):
        model(x, t, text, jnp.zeros((1, 16)))
    with pytest.raises(ValueError, match="skip_layers"):
        model(x, t, text, pooled, skip_layers=(3,))
