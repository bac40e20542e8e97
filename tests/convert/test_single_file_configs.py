"""Real-sized single files are recognised with the families' own rules, without overrides.

Full-size SD1.5 / SD2.1 / SDXL-base networks are built on torch's meta device (shapes, no
memory), laid out as single files by `tests/support/ldm_layout.py`, and planned (not converted): the
inferred configs must be the published diffusers ones and the renamed keys exactly the keys of
the diffusers modules.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from jaxvideo.convert.ldm import checkpoint
from jaxvideo.convert.ldm.layouts import LAYOUTS
from jaxvideo.tokenizers import write_tiny_clip_tokenizer
from tests.support.ldm_layout import pipeline_to_ldm

CA, DOWN, UP = "CrossAttnDownBlock2D", "DownBlock2D", "UpBlock2D"
SD_UNET = dict(
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=[CA, CA, CA, DOWN],
    up_block_types=[UP, "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=2,
)
# The fields of the published diffusers configs (stable-diffusion-v1-5, stable-diffusion-2-1,
# stable-diffusion-xl-base-1.0) that decide the network.
PUBLISHED_UNET = {
    "sd1": dict(SD_UNET, attention_head_dim=8, cross_attention_dim=768, sample_size=64),
    "sd2": dict(
        SD_UNET,
        attention_head_dim=[5, 10, 20, 20],
        cross_attention_dim=1024,
        use_linear_projection=True,
        sample_size=96,
    ),
    "sdxl": dict(
        block_out_channels=[320, 640, 1280],
        down_block_types=[DOWN, CA, CA],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", UP],
        layers_per_block=2,
        transformer_layers_per_block=[1, 2, 10],
        attention_head_dim=[5, 10, 20],
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        sample_size=128,
    ),
}
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
OPEN_CLIP_H = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16
)
OPEN_CLIP_BIG_G = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    projection_dim=1280,
)
PUBLISHED_TEXT = {
    "sd1": {"text_encoder": dict(CLIP_L, hidden_act="quick_gelu")},
    "sd2": {"text_encoder": dict(OPEN_CLIP_H, hidden_act="gelu")},
    "sdxl": {
        "text_encoder": dict(CLIP_L, hidden_act="quick_gelu"),
        "text_encoder_2": dict(OPEN_CLIP_BIG_G, hidden_act="gelu"),
    },
}
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4)


def meta_pipeline(family: str) -> SimpleNamespace:
    with torch.device("meta"):
        unet_kw = {k: v for k, v in PUBLISHED_UNET[family].items() if k != "sample_size"}
        unet = UNet2DConditionModel(**unet_kw)
        vae = AutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            **SD_VAE,
        )
        text = {}
        for name, fields in PUBLISHED_TEXT[family].items():
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            text[name] = cls(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **fields))
    return SimpleNamespace(unet=unet, vae=vae, **text)


class ShapeSource:
    """Keys and shapes of a state dict, standing in for an opened checkpoint file."""

    def __init__(self, sd: dict[str, torch.Tensor]):
        self.sd = sd

    def keys(self) -> list[str]:
        return list(self.sd)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.sd[key].shape)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_published_configs_and_diffusers_keys_come_out_of_a_real_sized_file(
    family, tmp_path, monkeypatch
):
    pipe = meta_pipeline(family)
    # SD2 files carry the unused 24th OpenCLIP layer; the projection only needs a shape.
    with torch.device("meta"):
        sd = pipeline_to_ldm(pipe, family)
    monkeypatch.setattr(checkpoint, "open_checkpoint", lambda _path: ShapeSource(sd))
    (tmp_path / "real.safetensors").touch()
    write_tiny_clip_tokenizer(tmp_path / "tok")
    tok = tmp_path / "tok"
    ckpt = checkpoint.SingleFileCheckpoint(
        tmp_path / "real.safetensors", tokenizer=tok, tokenizer_2=tok
    )
    assert ckpt.family == family
    comps = ckpt.components
    for key, value in PUBLISHED_UNET[family].items():
        assert comps["unet"].config[key] == value, key
    for key, value in SD_VAE.items():
        assert comps["vae"].config[key] == value, key
    for name, fields in PUBLISHED_TEXT[family].items():
        for key, value in fields.items():
            assert comps[name].config[key] == value, (name, key)
    for name in ("unet", "vae", *PUBLISHED_TEXT[family]):
        theirs = {k.removeprefix("text_model.") for k in getattr(pipe, name).state_dict()}
        ours = {k.removeprefix("text_model.") for k in comps[name].plan}
        assert ours == theirs, name
    assert ckpt.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")


def test_sd2_inpainting_defaults_to_epsilon():
    # stable-diffusion-2-inpainting is an epsilon model, unlike the 768px SD2 v-models.
    assert LAYOUTS["sd2"].default_prediction_type([], in_channels=9) == "epsilon"
    assert LAYOUTS["sd2"].default_prediction_type([], in_channels=4) == "v_prediction"
    assert LAYOUTS["sd1"].default_prediction_type(["v_pred"], in_channels=4) == "v_prediction"
