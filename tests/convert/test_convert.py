"""Checkpoint readers: pickled .bin weights (opened weights_only) convert like safetensors;
folders whose networks cannot work together are refused before converting."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.numpy import load_file

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.diffusers_folder import convert_component, convert_diffusers_folder
from jaxvideo.convert.readers import find_weight_files


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        layers_per_block=1,
    )


def test_bin_and_safetensors_checkpoints_convert_to_identical_weights(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "st" / "vae", safe_serialization=True)
    vae.save_pretrained(tmp_path / "bin" / "vae", safe_serialization=False)
    assert find_weight_files(tmp_path / "bin" / "vae")[0].suffix == ".bin"

    for kind in ("st", "bin"):
        convert_component(tmp_path / kind / "vae", tmp_path / f"{kind}-out" / "vae")
    a = load_file(tmp_path / "st-out" / "vae" / "model.safetensors")
    b = load_file(tmp_path / "bin-out" / "vae" / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 20
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_conversion_to_bf16_halves_the_weights(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "src" / "vae")
    convert_component(tmp_path / "src" / "vae", tmp_path / "out" / "vae", dtype="bf16")
    weights = load_file(tmp_path / "out" / "vae" / "model.safetensors")
    assert {str(w.dtype) for w in weights.values()} == {"bfloat16"}


def test_a_folder_whose_networks_disagree_is_refused_before_converting(tmp_path):
    from diffusers import StableDiffusionPipeline

    from tests.support import tiny_sd

    parts = tiny_sd.components(tmp_path, "sd1")
    parts["unet"] = tiny_sd.unet(cross_attention_dim=48)  # the text encoder is 32 wide
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None)
    pipe.save_pretrained(tmp_path / "src", safe_serialization=True)
    with pytest.raises(
        ConversionError, match="32-wide context, the UNet's cross_attention_dim is 48"
    ):
        convert_diffusers_folder(tmp_path / "src", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()  # refused before a tensor was converted
