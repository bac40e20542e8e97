"""Parity of the Flax UNet2DConditionModel with diffusers' on tiny random SD1/SD2/SDXL configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import diffusers  # noqa: E402
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from jaxvideo.convert.core import ConversionError  # noqa: E402
from jaxvideo.convert.diffusers_folder import convert_component  # noqa: E402
from jaxvideo.models.layers import conv2d  # noqa: E402
from jaxvideo.models.unet import UNetConfig  # noqa: E402
from jaxvideo.weights import load_component  # noqa: E402

TOL = 1e-4

BASE: dict[str, Any] = dict(
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    sample_size=16,
)

CONFIGS: dict[str, dict[str, Any]] = {
    # SD 1.x: 1x1-conv projections, one head count for every block.
    "sd1": dict(BASE, layers_per_block=2, norm_num_groups=8, attention_head_dim=8),
    # SD 2.x: Linear projections, per-block head counts, deeper transformers.
    "sd2": dict(
        BASE,
        layers_per_block=1,
        norm_num_groups=16,
        attention_head_dim=[2, 4],
        use_linear_projection=True,
        transformer_layers_per_block=2,
        upcast_attention=True,
    ),
    # Less common knobs: sin-first embedding with shift, bottom/right downsample padding,
    # mid-block output scaling, centred input, odd spatial size (upsample to the skip's size).
    "odd": dict(
        BASE,
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=4,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        mid_block_scale_factor=2.0,
        center_input_sample=True,
    ),
    # SDXL: text_time addition embedding, attention only in the lower block.
    "sdxl": dict(
        BASE,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=[2, 4],
        use_linear_projection=True,
        transformer_layers_per_block=[1, 2],
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
    ),
}

# 8x8 puts sd2's lower level at 4x4, below IM2COL_MAX_PIXELS: the im2col conv path is covered.
SPATIAL = {"odd": (9, 10), "sd2": (8, 8)}


def _torch_unet(config: dict[str, Any]) -> Any:
    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(**config).eval()
    # diffusers zero-inits conv_out (and some proj_out): noise on everything exposes mapping bugs.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _convert(model: Any, root: Path) -> Path:
    src = root / "src" / "unet"
    model.save_pretrained(src)
    convert_component(src, root / "dst" / "unet")
    return root / "dst"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet_matches_diffusers(name: str, tmp_path: Path) -> None:
    config = CONFIGS[name]
    torch_model = _torch_unet(config)
    flax_model = load_component(_convert(torch_model, tmp_path), "unet")

    rng = np.random.default_rng(0)
    h, w = SPATIAL.get(name, (16, 16))
    sample = rng.standard_normal((2, 4, h, w), dtype=np.float32)
    context = rng.standard_normal((2, 7, 32), dtype=np.float32)
    # A scalar timestep for one config checks broadcasting over the batch.
    timesteps = np.float32(500.5) if name == "odd" else np.array([999.0, 17.5], np.float32)
    kwargs: dict[str, Any] = {}
    flax_kwargs: dict[str, Any] = {}
    if config.get("addition_embed_type") == "text_time":
        text_embeds = rng.standard_normal((2, 32), dtype=np.float32)
        time_ids = np.array([[64, 48, 0, 8, 64, 48], [32, 32, 4, 0, 32, 32]], np.float32)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.from_numpy(text_embeds),
            "time_ids": torch.from_numpy(time_ids),
        }
        flax_kwargs["added_cond"] = (jnp.asarray(text_embeds), jnp.asarray(time_ids))

    with torch.no_grad():
        expected = torch_model(
            torch.from_numpy(sample),
            torch.tensor(timesteps),
            torch.from_numpy(context),
            **kwargs,
        ).sample.numpy()

    @nnx.jit
    def forward(model, x, t, ctx, extra):
        return model(x, t, ctx, **extra)

    got = forward(
        flax_model,
        jnp.asarray(sample.transpose(0, 2, 3, 1)),
        jnp.asarray(timesteps),
        jnp.asarray(context),
        flax_kwargs,
    )
    got = np.asarray(got).transpose(0, 3, 1, 2)
    assert got.shape == expected.shape
    err = float(np.abs(got - expected).max())
    print(f"{name}: max abs error {err:.3g} (output scale {np.abs(expected).max():.3g})")
    assert err < TOL


@pytest.fixture(scope="module")
def saved_sd1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unet_src")
    _torch_unet(dict(CONFIGS["sd1"], layers_per_block=1)).save_pretrained(root / "unet")
    return root / "unet"


def _edited_copy(src: Path, dst: Path, edit: Any) -> Path:
    dst.mkdir(parents=True)
    shutil.copy(src / "config.json", dst / "config.json")
    tensors = load_file(str(src / "diffusion_pytorch_model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "diffusion_pytorch_model.safetensors"))
    return dst


def test_misshaped_tensor_names_key(saved_sd1: Path, tmp_path: Path) -> None:
    key = "down_blocks.0.resnets.0.conv1.weight"

    def shrink(t: dict[str, Any]) -> None:
        t[key] = t[key][:-1].contiguous()

    src = _edited_copy(saved_sd1, tmp_path / "src", shrink)
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        convert_component(src, tmp_path / "dst")


def test_missing_tensor_names_parameter(saved_sd1: Path, tmp_path: Path) -> None:
    def drop(t: dict[str, Any]) -> None:
        del t["mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0.weight"]

    src = _edited_copy(saved_sd1, tmp_path / "src", drop)
    with pytest.raises(ConversionError, match=r"mid_block\.attentions\.0\.transformer_blocks\.0"):
        convert_component(src, tmp_path / "dst")


def test_unexpected_tensor_names_key(saved_sd1: Path, tmp_path: Path) -> None:
    def add(t: dict[str, Any]) -> None:
        t["up_blocks.0.resnets.0.extra.weight"] = torch.zeros(3)

    src = _edited_copy(saved_sd1, tmp_path / "src", add)
    with pytest.raises(ConversionError, match=r"up_blocks\.0\.resnets\.0\.extra\.weight"):
        convert_component(src, tmp_path / "dst")


def test_every_diffusers_key_is_mapped(saved_sd1: Path, tmp_path: Path) -> None:
    """The converted file holds exactly the model's parameters (no silent drops or extras)."""
    convert_component(saved_sd1, tmp_path / "unet")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "unet" / "model.safetensors"), framework="numpy") as f:
        converted = len(list(f.keys()))
    assert converted == len(load_file(str(saved_sd1 / "diffusion_pytorch_model.safetensors")))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"class_embed_type": "timestep"}, "class_embed_type"),
        ({"addition_embed_type": "text"}, "addition_embed_type"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
        ({"only_cross_attention": True}, "only_cross_attention"),
        ({"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D"]}, "SimpleCrossAttn"),
        ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "UNetMidBlock2DSimpleCrossAttn"),
        ({"norm_num_groups": None}, "GroupNorm"),
    ],
)
def test_unsupported_options_raise(saved_sd1: Path, override: dict[str, Any], match: str) -> None:
    config = json.loads((saved_sd1 / "config.json").read_text())
    config.update(override)
    with pytest.raises(ValueError, match=match):
        UNetConfig.from_hf(config)


@pytest.mark.parametrize(("kernel", "size"), [(3, 2), (3, 4), (1, 2), (1, 8)])
def test_matmul_conv_paths_match_xla_conv(kernel: int, size: int) -> None:
    """1x1 and tiny-spatial 3x3 convs run as matmuls; they must equal lax's conv."""
    conv = conv2d(6, 5, kernel, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, size, size, 6), np.float32))
    np.testing.assert_allclose(conv(x), nnx.Conv.__call__(conv, x), atol=1e-5)
