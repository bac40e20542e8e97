"""Parity of the Flax AutoencoderKL with diffusers on tiny random models, and key-map errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import diffusers  # noqa: E402
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # noqa: E402
from flax import nnx
from safetensors.torch import load_file, save_file

from jaxvideo.convert.core import ConversionError  # noqa: E402
from jaxvideo.convert.diffusers_folder import convert_component  # noqa: E402
from jaxvideo.models.vae import VAEConfig  # noqa: E402
from jaxvideo.weights import load_component  # noqa: E402

TOL = 1e-4


def _tiny_vae(channels: tuple[int, ...], **extra: object) -> diffusers.AutoencoderKL:
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
        **{"latent_channels": 4, **extra},
    )
    # Perturb everything: default GroupNorm (1, 0) and zero biases would hide mapping bugs.
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vae.eval()


def _save(vae: diffusers.AutoencoderKL, root: Path) -> Path:
    src = root / "src" / "vae"
    vae.save_pretrained(src, safe_serialization=True)
    return src


def _rewrite(src: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> None:
    """Edits the saved diffusers weights in place to fake a broken or old checkpoint."""
    path = src / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def _convert_and_load(vae: diffusers.AutoencoderKL, root: Path) -> nnx.Module:
    src = _save(vae, root)
    convert_component(src, root / "dst" / "vae")
    return load_component(root / "dst", "vae")


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _check_parity(vae: diffusers.AutoencoderKL, model: nnx.Module) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, size=(2, 3, 32, 32)).astype(np.float32)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    z = rng.standard_normal((2, vae.config.latent_channels, 32 // f, 32 // f)).astype(np.float32)
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(x)).latent_dist
        ref_mean, ref_logvar = _nhwc(dist.mean), _nhwc(dist.logvar)
        ref_img = _nhwc(vae.decode(torch.from_numpy(z)).sample)

    # One jit for both paths: the forward must trace cleanly, and one compile is cheaper.
    run = nnx.jit(lambda m, a, b: (m.encode(a), m.decode(b)))
    (mean, logvar), img = run(
        model, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(z.transpose(0, 2, 3, 1))
    )

    assert mean.shape == ref_mean.shape and logvar.shape == ref_logvar.shape
    assert img.shape == ref_img.shape == (2, 32, 32, 3)
    errs = {
        "mean": float(np.max(np.abs(np.asarray(mean) - ref_mean))),
        "logvar": float(np.max(np.abs(np.asarray(logvar) - ref_logvar))),
        "decode": float(np.max(np.abs(np.asarray(img) - ref_img))),
    }
    print("max abs errors:", errs)
    for name, err in errs.items():
        assert err < TOL, f"{name}: max abs error {err}"
    return errs


@pytest.mark.parametrize("channels", [(16, 32), (16, 32, 32)], ids=["2blocks", "3blocks"])
def test_vae_parity(tmp_path: Path, channels: tuple[int, ...]) -> None:
    vae = _tiny_vae(channels)
    model = _convert_and_load(vae, tmp_path)
    assert model.config.scaling_factor == pytest.approx(0.18215)
    _check_parity(vae, model)


def test_vae_parity_no_quant_no_mid_attention(tmp_path: Path) -> None:
    vae = _tiny_vae(
        (16, 32),
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    model = _convert_and_load(vae, tmp_path)
    assert model.quant_conv is None and model.post_quant_conv is None
    assert model.config.shift_factor == pytest.approx(0.1159)
    _check_parity(vae, model)


def test_vae_parity_16_latent_channels(tmp_path: Path) -> None:
    # The Flux.1 / SD3.5 VAE: 16 latent channels, mid attention, no quant convs, a shift.
    vae = _tiny_vae(
        (16, 32),
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5305,
    )
    model = _convert_and_load(vae, tmp_path)
    assert model.config.latent_channels == 16
    assert model.decoder.conv_in.kernel.shape[2] == 16
    _check_parity(vae, model)


def test_deprecated_attention_keys_convert_identically(tmp_path: Path) -> None:
    # Pre-0.14 diffusers VAEs name attention query/key/value/proj_attn, some as 1x1 convs.
    # Forward parity is covered above, so equal converted weights suffice (no recompile).
    vae = _tiny_vae((16, 32))
    src = _save(vae, tmp_path)
    convert_component(src, tmp_path / "new")
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def edit(tensors: dict) -> None:
        for key in list(tensors):
            for new, old in old_names.items():
                if f".attentions.0.{new}." in key:
                    t = tensors.pop(key)
                    t = t[:, :, None, None] if t.ndim == 2 else t
                    tensors[key.replace(f".{new}.", f".{old}.")] = t.contiguous()

    _rewrite(src, edit)
    convert_component(src, tmp_path / "old")
    new_params = load_file(str(tmp_path / "new" / "model.safetensors"))
    old_params = load_file(str(tmp_path / "old" / "model.safetensors"))
    assert new_params.keys() == old_params.keys()
    assert "decoder.mid_block.attentions.0.to_out.kernel" in new_params
    for key, value in new_params.items():
        assert torch.equal(value, old_params[key]), key


def test_misshaped_tensor_names_key(tmp_path: Path) -> None:
    src = _save(_tiny_vae((16, 32)), tmp_path)
    key = "decoder.up_blocks.0.resnets.1.conv1.weight"

    def edit(t: dict) -> None:
        t[key] = torch.zeros(32, 32, 1, 1)

    _rewrite(src, edit)
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        convert_component(src, tmp_path / "dst" / "vae")


def test_missing_key_names_parameter(tmp_path: Path) -> None:
    src = _save(_tiny_vae((16, 32)), tmp_path)
    _rewrite(src, lambda t: t.pop("encoder.mid_block.attentions.0.group_norm.weight"))
    with pytest.raises(
        ConversionError, match=r"encoder\.mid_block\.attentions\.0\.group_norm\.scale"
    ):
        convert_component(src, tmp_path / "dst" / "vae")


def test_config_rejects_unsupported_blocks() -> None:
    with pytest.raises(ValueError, match="DownBlock2D"):
        VAEConfig.from_hf({"down_block_types": ["DownBlock2D"], "block_out_channels": [8]})
    with pytest.raises(ValueError, match="AttnUpDecoderBlock2D"):
        VAEConfig.from_hf({"up_block_types": ["AttnUpDecoderBlock2D"], "block_out_channels": [8]})
