"""LoRAs reach the Wan pipelines: the video changes, multiplier 0 changes nothing, and on the
two-expert model `is_high_noise` LoRAs go to the high-noise expert only."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxvideo.demo import resolve_demo
from jaxvideo.demo_wan import wan_tiny_configs
from jaxvideo.errors import InvalidRequest
from jaxvideo.lora import LoraError, LoraSpec
from jaxvideo.pipelines.wan import WanPipeline
from jaxvideo.request import build_request

DIM = wan_tiny_configs(256)["transformer"]["num_attention_heads"] * 16


def _peft_lora(path, seed: int) -> LoraSpec:
    """A diffusers/PEFT LoRA on the first block's self-attention query, rank 4, large enough to
    show in a 2-step video of random weights."""
    rng = np.random.default_rng(seed)
    down = rng.standard_normal((4, DIM)).astype(np.float32)
    up = rng.standard_normal((DIM, 4)).astype(np.float32)
    save_file(
        {
            "transformer.blocks.0.attn1.to_q.lora_A.weight": down,
            "transformer.blocks.0.attn1.to_q.lora_B.weight": up,
        },
        str(path),
    )
    return LoraSpec(path, 1.0)


def _request(**fields):
    base = {
        "prompt": "a lantern",
        "mode": "vid_gen",
        "width": 32,
        "height": 32,
        "num_frames": 5,
        "steps": 2,
        "sampler": "euler",
        "seed": 1,
    }
    return build_request({**base, **fields})


@pytest.fixture(scope="module")
def wan21():
    return WanPipeline(resolve_demo("demo:wan-tiny"))


def test_a_lora_changes_the_video_and_multiplier_zero_does_not(wan21, tmp_path):
    lora = _peft_lora(tmp_path / "style.safetensors", 0)
    base = wan21.generate(_request()).videos[0]
    styled = wan21.generate(_request(loras=(lora,))).videos[0]
    off = wan21.generate(_request(loras=(LoraSpec(lora.path, 0.0),))).videos[0]
    assert np.abs(styled.astype(int) - base).mean() > 1.0
    np.testing.assert_array_equal(off, base)


def test_a_high_noise_lora_needs_two_experts(wan21, tmp_path):
    lora = _peft_lora(tmp_path / "high.safetensors", 1)
    with pytest.raises(LoraError, match="two-expert"):
        wan21.generate(_request(loras=(LoraSpec(lora.path, 1.0, is_high_noise=True),)))


def test_high_noise_loras_change_only_the_high_noise_stage(tmp_path):
    wan22 = WanPipeline(resolve_demo("demo:wan22-tiny"))
    picture = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    lora = _peft_lora(tmp_path / "high.safetensors", 2)
    high = LoraSpec(lora.path, 1.0, is_high_noise=True)
    states = wan22._lora_states(_request(init_image=picture, loras=(high,)))
    base = wan22._lora_states(_request(init_image=picture))
    assert states["transformer_2"] is base["transformer_2"]  # the low-noise expert untouched
    assert states["transformer"] is not base["transformer"]
    low = wan22._lora_states(_request(init_image=picture, loras=(lora,)))
    assert low["transformer"] is base["transformer"]
    assert low["transformer_2"] is not base["transformer_2"]
    with pytest.raises(InvalidRequest, match="init_image"):
        wan22.generate(_request())
