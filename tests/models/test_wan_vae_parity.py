"""Parity of the Flax Wan video VAE with diffusers' AutoencoderKLWan on tiny random models.

Also checks that the chunked decode (`decode_first` + `decode_next`, each jitted once) is what
`decode` computes, and that the converter refuses broken checkpoints naming the key.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file, save_file

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.models.wan_vae import AutoencoderKLWan, WanVAEConfig
from jaxvideo.weights import load_component

ATOL = 1e-4
Z_DIM = 4
# Without LLVM optimisation the tiny networks compile ~3x faster; the HLO, which is what parity
# checks, is the same.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _hf_config(**extra: Any) -> dict[str, Any]:
    config = dict(
        base_dim=8,
        z_dim=Z_DIM,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, -0.4],
        latents_std=[1.5, 2.0, 2.5, 3.0],
    )
    config.update(extra)
    return config


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    # Random offsets on every tensor: RMS norm gammas stop being 1 and zero-init biases become
    # non-zero, so a tensor mapped to the wrong place cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _reference(**extra: Any) -> diffusers.AutoencoderKLWan:
    torch.manual_seed(0)
    return _perturbed(diffusers.AutoencoderKLWan(**_hf_config(**extra)))


def _save(vae: diffusers.AutoencoderKLWan, root: Path) -> Path:
    src = root / "src" / "vae"
    vae.save_pretrained(src, safe_serialization=True)
    return src


def _convert_and_load(vae: diffusers.AutoencoderKLWan, root: Path) -> AutoencoderKLWan:
    convert_component(_save(vae, root), root / "dst" / "vae")
    model = load_component(root / "dst", "vae")
    assert isinstance(model, AutoencoderKLWan)
    return model


def _ndhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 4, 1)


def _max_err(ours: jax.Array, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape
    return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)))


def _check_parity(
    vae: diffusers.AutoencoderKLWan,
    model: AutoencoderKLWan,
    video_shape: tuple[int, int, int, int],
    latent_frames: int,
) -> tuple[jax.Array, jax.Array]:
    """Encodes a (B, F, H, W) video and decodes `latent_frames` random latents with both models.

    Returns the channels-last latents and our decoded video.
    """
    b, f, h, w = video_shape
    factor = model.config.spatial_factor
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, size=(b, 3, f, h, w)).astype(np.float32)
    z = rng.standard_normal((b, Z_DIM, latent_frames, h // factor, w // factor)).astype(np.float32)
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(x)).latent_dist
        ref = {"mean": _ndhwc(dist.mean), "logvar": _ndhwc(dist.logvar)}
        ref["decode"] = _ndhwc(vae.decode(torch.from_numpy(z)).sample)
    # Clamping to [-1, 1] must not hide the decoder: many outputs lie inside.
    assert np.mean(np.abs(ref["decode"]) < 0.99) > 0.3

    # One jit for both paths: the forward must trace cleanly, and one compile is cheaper.
    graphdef, state = nnx.split(model)

    @partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(state: nnx.State, video: jax.Array, latents: jax.Array) -> Any:
        vae = nnx.merge(graphdef, state)
        return vae.encode(video), vae.decode(latents)

    z_last = jnp.asarray(z.transpose(0, 2, 3, 4, 1))
    (mean, logvar), video = run(state, jnp.asarray(x.transpose(0, 2, 3, 4, 1)), z_last)
    assert video.shape == (b, 1 + 4 * (latent_frames - 1), h, w, 3)
    errs = {
        name: _max_err(ours, ref[name])
        for name, ours in (("mean", mean), ("logvar", logvar), ("decode", video))
    }
    print("max abs errors:", errs)
    for name, err in errs.items():
        assert err < ATOL, f"{name}: max abs error {err}"
    return z_last, video


def _decode_in_chunks(model: AutoencoderKLWan, z: jax.Array) -> tuple[jax.Array, int]:
    """Decodes latent frame by latent frame as the pipeline will: jitted over split state.

    Returns the video and how often the later-chunk function was traced.
    """
    graphdef, state = nnx.split(model)
    traces = {"next": 0}

    @partial(jax.jit, compiler_options=FAST_COMPILE)
    def first(state: nnx.State, z0: jax.Array, cache: Any) -> Any:
        return nnx.merge(graphdef, state).decode_first(z0, cache)

    @partial(jax.jit, compiler_options=FAST_COMPILE)
    def later(state: nnx.State, zt: jax.Array, cache: Any) -> Any:
        traces["next"] += 1
        return nnx.merge(graphdef, state).decode_next(zt, cache)

    empty = model.init_decode_cache(z.shape[0], z.shape[2], z.shape[3])
    frames, cache = first(state, z[:, :1], empty)
    # Fixed-shape cache: the same pytree of shapes before and after every chunk.
    shapes = jax.tree.map(jnp.shape, empty)
    assert jax.tree.map(jnp.shape, cache) == shapes
    assert all(not np.any(np.asarray(c)) for c in empty)
    chunks = [frames]
    for t in range(1, z.shape[1]):
        frames, cache = later(state, z[:, t : t + 1], cache)
        assert frames.shape[1] == 4
        assert jax.tree.map(jnp.shape, cache) == shapes
        chunks.append(frames)
    assert later._cache_size() == 1
    return jnp.concatenate(chunks, axis=1), traces["next"]


def test_wan_vae_video_parity_and_chunked_decode(tmp_path: Path) -> None:
    vae = _reference()
    model = _convert_and_load(vae, tmp_path)
    assert model.config.latents_mean == (0.1, -0.2, 0.3, -0.4)
    assert model.config.latents_std == (1.5, 2.0, 2.5, 3.0)
    # 9 frames -> 3 latent frames; 4 latent frames decode to 13 frames (3 later chunks).
    z, video = _check_parity(vae, model, (2, 9, 16, 32), latent_frames=4)
    chunked, traces = _decode_in_chunks(model, z)
    assert traces == 1
    print("chunked vs decode max abs diff:", _max_err(chunked, np.asarray(video, np.float64)))
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(video), atol=1e-5, rtol=0)


def test_wan_vae_image_parity(tmp_path: Path) -> None:
    # A single frame is one latent frame, through the first-chunk paths only. Temporal
    # halvings on the first two levels instead of the last two, and a wider decoder.
    vae = _reference(temperal_downsample=[True, True, False], decoder_base_dim=12)
    model = _convert_and_load(vae, tmp_path)
    assert model.config.decoder_dim == 12
    _check_parity(vae, model, (1, 1, 32, 16), latent_frames=1)


def test_wan22_residual_patchified_parity(tmp_path: Path) -> None:
    # The Wan 2.2 TI2V-5B layout: residual down/up blocks with AvgDown3D/DupUp3D shortcuts
    # (DupUp3D drops frames on the first chunk), 2x2 patchified pixels, a wider decoder.
    vae = _reference(
        is_residual=True,
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=16,
        decoder_base_dim=12,
    )
    model = _convert_and_load(vae, tmp_path)
    assert model.config.spatial_factor == 16
    _check_parity(vae, model, (1, 5, 32, 32), latent_frames=2)


def _rewrite(src: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> None:
    path = src / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_misshaped_tensor_names_key(tmp_path: Path) -> None:
    src = _save(_reference(), tmp_path)
    key = "decoder.up_blocks.0.upsamplers.0.time_conv.weight"  # (32, 16, 3, 1, 1)

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = torch.zeros(16, 16, 3, 1, 1)

    _rewrite(src, edit)
    with pytest.raises(ConversionError, match="shape mismatch") as info:
        convert_component(src, tmp_path / "dst" / "vae")
    assert key in str(info.value)


def test_missing_gamma_names_parameter(tmp_path: Path) -> None:
    src = _save(_reference(), tmp_path)
    _rewrite(src, lambda t: t.pop("encoder.mid_block.attentions.0.norm.gamma"))
    with pytest.raises(ConversionError, match=r"encoder\.mid_block\.attentions\.0\.norm\.gamma"):
        convert_component(src, tmp_path / "dst" / "vae")


def test_config_from_hf_defaults_and_errors() -> None:
    config = WanVAEConfig.from_hf({"_class_name": "AutoencoderKLWan", "unknown_key": 1})
    assert (config.base_dim, config.z_dim, config.dim_mult) == (96, 16, (1, 2, 4, 4))
    assert config.temperal_downsample == (False, True, True)
    assert len(config.latents_mean) == len(config.latents_std) == 16
    assert config.spatial_factor == 8 and config.decoder_dim == 96
    with pytest.raises(ValueError, match="temperal_downsample"):
        WanVAEConfig.from_hf({"temperal_downsample": [False, True]})
    with pytest.raises(ValueError, match="two temporal downsamples"):
        WanVAEConfig.from_hf({"temperal_downsample": [True, True, True]})
    with pytest.raises(ValueError, match="attn_scales"):
        WanVAEConfig.from_hf({"attn_scales": [0.5]})
    with pytest.raises(ValueError, match="latents_mean"):
        WanVAEConfig.from_hf({"z_dim": 4})
    with pytest.raises(ValueError, match="scale_factor_spatial"):
        WanVAEConfig.from_hf({"patch_size": 2, "in_channels": 12, "out_channels": 12})


def test_encode_refuses_frame_count() -> None:
    config = WanVAEConfig.from_hf(_hf_config())
    model = nnx.eval_shape(lambda: AutoencoderKLWan(config, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="4n \\+ 1"):
        model.encode(jnp.zeros((1, 4, 16, 16, 3)))
