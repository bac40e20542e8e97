"""Parity of the Flax FluxTransformer2DModel with diffusers' on tiny dev (guidance embedding),
schnell and Kontext-shaped inputs (reference-image tokens with their own positions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel as TorchFlux
from flax import nnx
from safetensors.torch import load_file, save_file

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.models.flux import FluxTransformer2DModel, FluxTransformerConfig, flux_rope
from jaxvideo.weights import load_component
from tests.support.reference_numerics import correctly_rounded_timesteps  # noqa: F401

ATOL = 1e-4
# The reference's sinusoids at guidance x 1000 need correctly rounded frequencies (see there).
pytestmark = pytest.mark.usefixtures("correctly_rounded_timesteps")
BASE: dict[str, Any] = dict(
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=24,
    pooled_projection_dim=12,
    axes_dims_rope=(4, 6, 6),
)
TEXT_LEN = 5


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    # Random offsets on every tensor: norm scales stop being 1 and zero-init biases become
    # non-zero, so a tensor mapped to the wrong place cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _image_ids(rows: int, cols: int, index: int = 0, offset: tuple[int, int] = (0, 0)):
    """diffusers' `_prepare_latent_image_ids`, with Kontext's index / offset for references."""
    ids = np.zeros((rows, cols, 3), np.float32)
    ids[..., 0] = index
    ids[..., 1] = np.arange(rows)[:, None] + offset[0]
    ids[..., 2] = np.arange(cols)[None, :] + offset[1]
    return ids.reshape(-1, 3)


def _inputs(kwargs: dict[str, Any], grids: list[tuple[int, int, int, tuple[int, int]]]):
    rng = np.random.default_rng(0)
    batch = 2
    img_ids = np.concatenate([_image_ids(r, c, i, o) for r, c, i, o in grids])
    tokens = len(img_ids)
    return {
        "x": rng.standard_normal((batch, tokens, kwargs["in_channels"])).astype(np.float32),
        "context": rng.standard_normal((batch, TEXT_LEN, BASE["joint_attention_dim"])).astype(
            np.float32
        ),
        "pooled": rng.standard_normal((batch, BASE["pooled_projection_dim"])).astype(np.float32),
        # Different fractional timesteps and guidance per row catch a batch mix-up.
        "t": np.array([1.0, 0.2505], np.float32),
        "guidance": np.array([3.5, 1.25], np.float32),
        "txt_ids": np.zeros((TEXT_LEN, 3), np.float32),
        "img_ids": img_ids,
    }


def _torch_forward(ref: TorchFlux, data: dict[str, Any], guidance: bool) -> np.ndarray:
    t = {k: torch.from_numpy(v) for k, v in data.items()}
    with torch.no_grad():
        out = ref(
            hidden_states=t["x"],
            encoder_hidden_states=t["context"],
            pooled_projections=t["pooled"],
            timestep=t["t"],
            img_ids=t["img_ids"],
            txt_ids=t["txt_ids"],
            guidance=t["guidance"] if guidance else None,
        ).sample
    return out.numpy()


def _jax_forward(model: FluxTransformer2DModel, data: dict[str, Any], guidance: bool):
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args))
    positions = np.concatenate([data["txt_ids"], data["img_ids"]])
    rope = tuple(jnp.asarray(a) for a in flux_rope(positions, model.config))
    args = [jnp.asarray(data[k]) for k in ("x", "t", "context", "pooled")]
    g = jnp.asarray(data["guidance"]) if guidance else None
    return np.asarray(forward(state, *args, rope, g))


def _convert(ref: torch.nn.Module, tmp_path: Path) -> FluxTransformer2DModel:
    src = tmp_path / "src" / "transformer"
    ref.save_pretrained(src, safe_serialization=True)
    convert_component(src, tmp_path / "dst" / "transformer")
    model = load_component(tmp_path / "dst", "transformer")
    assert isinstance(model, FluxTransformer2DModel)
    return model


# name: (diffusers kwargs, guidance embedding, image grids (rows, cols, index, offset))
CASES = {
    # FLUX.1-dev: the distilled guidance scale is embedded; a non-square latent.
    "dev": (dict(BASE, guidance_embeds=True), True, [(3, 5, 0, (0, 0))]),
    # FLUX.1-schnell: no guidance embedder.
    "schnell": (BASE, False, [(4, 4, 0, (0, 0))]),
    # Kontext: two reference images after the target, index 1 and offset positions
    # (stable-diffusion.cpp's increase_ref_index gives the second index 2).
    "kontext": (
        dict(BASE, guidance_embeds=True),
        True,
        [(3, 4, 0, (0, 0)), (3, 4, 1, (0, 0)), (2, 3, 2, (3, 4))],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_flux_transformer_parity(tmp_path: Path, case: str) -> None:
    kwargs, guidance, grids = CASES[case]
    torch.manual_seed(0)
    ref = _perturbed(TorchFlux(**kwargs))
    model = _convert(ref, tmp_path)
    assert (model.time_text_embed.guidance_embedder is not None) == guidance

    data = _inputs(kwargs, grids)
    theirs = _torch_forward(ref, data, guidance)
    ours = _jax_forward(model, data, guidance)
    assert ours.shape == theirs.shape == (*data["x"].shape[:2], kwargs["in_channels"])
    err = float(np.abs(ours.astype(np.float64) - theirs).max())
    print(f"{case}: max abs err {err:.2e} (output scale {np.abs(theirs).max():.2f})")
    assert err < ATOL


def test_guidance_is_required_exactly_by_dev_models(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dev = _convert(_perturbed(TorchFlux(**dict(BASE, guidance_embeds=True))), tmp_path / "dev")
    schnell = _convert(_perturbed(TorchFlux(**BASE)), tmp_path / "schnell")
    data = _inputs(BASE, [(2, 2, 0, (0, 0))])
    with pytest.raises(ValueError, match="guidance"):
        _jax_forward(dev, data, guidance=False)
    with pytest.raises(ValueError, match="guidance"):
        _jax_forward(schnell, data, guidance=True)


def test_wrong_shape_names_key(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "src" / "transformer"
    TorchFlux(**BASE).save_pretrained(src, safe_serialization=True)
    path = src / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    key = "single_transformer_blocks.1.proj_out.weight"
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, path)
    with pytest.raises(ConversionError, match="shape mismatch") as info:
        convert_component(src, tmp_path / "dst" / "transformer")
    assert key in str(info.value)


def test_config_refuses_rope_axes_that_do_not_fill_the_head() -> None:
    with pytest.raises(ValueError, match="axes_dims_rope"):
        FluxTransformerConfig.from_hf(dict(BASE, axes_dims_rope=[4, 6, 4]))


def test_bf16_stays_close_to_fp32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = _perturbed(TorchFlux(**dict(BASE, guidance_embeds=True)))
    model = _convert(ref, tmp_path)
    half = load_component(tmp_path / "dst", "transformer", dtype="bf16")
    data = _inputs(BASE, [(3, 3, 0, (0, 0))])
    full, low = _jax_forward(model, data, True), _jax_forward(half, data, True)
    scale = np.abs(full).max()
    assert np.abs(low.astype(np.float32) - full).max() < 0.05 * scale
