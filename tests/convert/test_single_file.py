"""Single-file (LDM / A1111 layout) checkpoints convert like their diffusers folders.

Tiny random SD1, SD2 (OpenCLIP text tower) and SDXL (two text encoders) diffusers pipelines are
saved as folders and, through an independent diffusers->LDM mapping
(`tests/support/ldm_layout.py`), as original-layout single files. Converting either must give
identical Flax weights, and diffusers' own single-file loader must read the file to those same
weights.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers import StableDiffusionPipeline as TorchSDPipeline
from diffusers import StableDiffusionXLPipeline as TorchSDXLPipeline
from safetensors.numpy import load_file
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from jaxvideo.convert.core import ConversionError, convert_tensors
from jaxvideo.convert.diffusers_folder import convert_diffusers_folder
from jaxvideo.convert.ldm.checkpoint import (
    SingleFileCheckpoint,
    convert_single_file,
    expected_shapes,
)
from jaxvideo.models.registry import class_name_of, spec_for
from jaxvideo.tokenizers import write_tiny_clip_tokenizer
from jaxvideo.weights import read_config
from tests.support.ldm_layout import pipeline_to_ldm

REPO = Path(__file__).resolve().parents[2]
NETWORKS = {
    "sd1": ("text_encoder", "unet", "vae"),
    "sd2": ("text_encoder", "unet", "vae"),
    "sdxl": ("text_encoder", "text_encoder_2", "unet", "vae"),
}
# What tensor shapes cannot tell, for models narrower than the families' published configs.
# SD1 needs none: its tiny model keeps the real rules (8 UNet heads, 64-wide text heads, 32 groups).
OVERRIDES = {
    "sd1": {},
    "sd2": {
        "unet": {"attention_head_dim": [2, 4], "norm_num_groups": 8},
        "vae": {"norm_num_groups": 8},
        "text_encoder": {"num_attention_heads": 4},
    },
    "sdxl": {
        "unet": {"attention_head_dim": [2, 4], "norm_num_groups": 8},
        "vae": {"norm_num_groups": 8},
        "text_encoder": {"num_attention_heads": 4},
        "text_encoder_2": {"num_attention_heads": 4},
    },
}


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere: diffusers zero-inits conv_out, which would hide mapping bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def text_encoder(tok: CLIPTokenizer, cls=CLIPTextModel, **kw) -> torch.nn.Module:
    config = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2)
    config.update(num_attention_heads=4, hidden_act="quick_gelu", max_position_embeddings=77)
    config.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config.update(pad_token_id=tok.pad_token_id, vocab_size=len(tok), **kw)
    return cls(CLIPTextConfig(**config))


def tiny_pipeline(family: str, tok_dir: Path):
    torch.manual_seed(0)
    tok = CLIPTokenizer.from_pretrained(str(tok_dir))
    groups = 32 if family == "sd1" else 8
    vae = AutoencoderKL(
        block_out_channels=(32, 32) if family == "sd1" else (8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=groups,
        layers_per_block=1,
    )
    unet_kw = dict(sample_size=8, block_out_channels=(32, 64), norm_num_groups=groups)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear")
    if family == "sd1":  # 8 heads and 64-wide text heads: SD1's own rules, no overrides
        te = text_encoder(tok, hidden_size=64, num_attention_heads=1)
        unet = UNet2DConditionModel(
            **unet_kw,
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64,
            attention_head_dim=8,
        )
        parts = dict(text_encoder=te, tokenizer=tok, safety_checker=None, feature_extractor=None)
        pipe = TorchSDPipeline(vae=vae, unet=unet, scheduler=scheduler, **parts)
    elif family == "sd2":  # attention in every level: upsamplers at output_blocks.N.2
        te = text_encoder(tok, hidden_act="gelu", projection_dim=32)
        unet = UNet2DConditionModel(
            **unet_kw,
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * 2,
            up_block_types=("CrossAttnUpBlock2D",) * 2,
            cross_attention_dim=32,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
        )
        parts = dict(text_encoder=te, tokenizer=tok, safety_checker=None, feature_extractor=None)
        pipe = TorchSDPipeline(vae=vae, unet=unet, scheduler=scheduler, **parts)
    else:
        te = text_encoder(tok)
        # Different widths, as in SDXL: diffusers' loader tells its two towers apart by width.
        te2 = text_encoder(
            tok, CLIPTextModelWithProjection, hidden_size=48, hidden_act="gelu", projection_dim=16
        )
        unet = UNet2DConditionModel(
            **unet_kw,
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=32 + 48,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=16 + 6 * 8,
        )
        parts = dict(text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok)
        pipe = TorchSDXLPipeline(vae=vae, unet=unet, scheduler=scheduler, **parts)
    for i, name in enumerate(NETWORKS[family]):
        perturb(getattr(pipe, name), seed=i + 1)
    return pipe


def tokenizers(family: str, tok_dir: Path) -> dict:
    return {"tokenizer": tok_dir, "tokenizer_2": tok_dir if family == "sdxl" else None}


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl"])
def family_case(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(family)
    write_tiny_clip_tokenizer(root / "tok")
    pipe = tiny_pipeline(family, root / "tok")
    pipe.save_pretrained(root / "folder", safe_serialization=True)
    ldm = pipeline_to_ldm(pipe, family)
    save_file(ldm, root / "model.safetensors")
    convert_diffusers_folder(root / "folder", root / "from_folder")
    convert_single_file(
        root / "model.safetensors",
        root / "from_file",
        config_overrides=OVERRIDES[family],
        **tokenizers(family, root / "tok"),
    )
    return family, root, ldm


def assert_same_weights(a: Path, b: Path) -> int:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)
    return len(wa)


def jax_config(component_dir: Path):
    hf = read_config(component_dir)
    return spec_for(class_name_of(hf)).config_from_hf(hf)


def test_single_file_converts_to_the_same_flax_weights_and_configs_as_the_folder(family_case):
    family, root, _ = family_case
    for name in NETWORKS[family]:
        n = assert_same_weights(root / "from_folder" / name, root / "from_file" / name)
        assert n > 10
        ours, ref = jax_config(root / "from_file" / name), jax_config(root / "from_folder" / name)
        if name == "vae":  # tiny diffusers VAEs default to SD1's scaling; ours is the family's
            assert ours.scaling_factor == (0.13025 if family == "sdxl" else 0.18215)
            ours = dataclasses.replace(ours, scaling_factor=ref.scaling_factor)
        if name == "text_encoder":  # projection_dim is unused without a projection
            ours = dataclasses.replace(ours, projection_dim=ref.projection_dim)
        assert ours == ref, name
    index = json.loads((root / "from_file" / "model_index.json").read_text())
    assert index["family"] == family and index["format"] == "jaxvideo"
    expected = set(NETWORKS[family]) | {"tokenizer", "scheduler"}
    assert set(index["components"]) == expected | ({"tokenizer_2"} if family == "sdxl" else set())
    assert (root / "from_file" / "tokenizer" / "vocab.json").is_file()
    scheduler = json.loads((root / "from_file/scheduler/scheduler_config.json").read_text())
    # SD2 files default to diffusers' SD2 single-file config (stable-diffusion-2-1, v-prediction).
    assert scheduler["prediction_type"] == ("v_prediction" if family == "sd2" else "epsilon")


def torch_to_flax(module: torch.nn.Module, component_dir: Path) -> dict[str, np.ndarray]:
    hf = read_config(component_dir)
    spec = spec_for(class_name_of(hf))
    expected = expected_shapes(json.dumps(hf, sort_keys=True))
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    return convert_tensors(sd, sd.keys(), spec.rules, expected, ignore=spec.ignore)


def test_diffusers_single_file_loader_reads_the_file_to_our_weights(family_case):
    family, root, _ = family_case
    cls = TorchSDXLPipeline if family == "sdxl" else TorchSDPipeline
    pipe = cls.from_single_file(
        str(root / "model.safetensors"), config=str(root / "folder"), local_files_only=True
    )
    for name in NETWORKS[family]:
        theirs = torch_to_flax(getattr(pipe, name), root / "from_file" / name)
        ours = load_file(root / "from_file" / name / "model.safetensors")
        assert theirs.keys() == ours.keys()
        for key in ours:
            np.testing.assert_array_equal(theirs[key], ours[key], err_msg=f"{name}: {key}")


def test_ckpt_pickle_converts_like_safetensors(family_case, tmp_path):
    family, root, ldm = family_case
    torch.save({"state_dict": ldm, "global_step": 1}, tmp_path / "model.ckpt")
    convert_single_file(
        tmp_path / "model.ckpt",
        tmp_path / "out",
        config_overrides=OVERRIDES[family],
        **tokenizers(family, root / "tok"),
    )
    for name in NETWORKS[family]:
        assert_same_weights(root / "from_file" / name, tmp_path / "out" / name)


@pytest.mark.parametrize("family_case", ["sd2"], indirect=True)  # one family via the CLI
def test_cli_converts_a_single_file_with_tokenizer_and_config_overrides(family_case, tmp_path):
    family, root, _ = family_case
    spec = importlib.util.spec_from_file_location(
        "convert_weights", REPO / "tools/convert_weights.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = [str(root / "model.safetensors"), str(tmp_path / "out"), "--quiet"]
    assert cli.main(args) == 1  # no tokenizer
    overrides = [
        f"--config-override={c}.{k}={json.dumps(v)}"
        for c, fields in OVERRIDES[family].items()
        for k, v in fields.items()
    ]
    args += ["--tokenizer", str(root / "tok"), "--prediction-type", "v_prediction", *overrides]
    assert cli.main(args) == 0
    for name in NETWORKS[family]:
        assert_same_weights(root / "from_file" / name, tmp_path / "out" / name)
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["family"] == "sd2" and index["source_file"] == "model.safetensors"


def test_prediction_type_rules_and_override(family_case, tmp_path):
    family, root, ldm = family_case
    kw = dict(config_overrides=OVERRIDES[family], **tokenizers(family, root / "tok"))
    default = SingleFileCheckpoint(root / "model.safetensors", **kw)
    assert default.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    size = {"sd1": 512, "sd2": 768, "sdxl": 1024}[family]
    assert default.components["vae"].config["sample_size"] == size
    assert default.components["unet"].config["sample_size"] == size // 2  # 2-level tiny VAE
    flipped = "epsilon" if family == "sd2" else "v_prediction"
    override = SingleFileCheckpoint(root / "model.safetensors", prediction_type=flipped, **kw)
    assert override.prediction_type == flipped
    # ComfyUI marks v-prediction files with an empty `v_pred` tensor.
    marked = write(tmp_path / "vpred.safetensors", {**ldm, "v_pred": torch.zeros(0)})
    assert SingleFileCheckpoint(marked, **kw).prediction_type == "v_prediction"


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return path


@pytest.mark.parametrize(
    "keys, expect",
    [
        (
            [f"lora_unet_down_blocks_{i}_attentions_0_proj_in.lora_down.weight" for i in range(3)]
            + ["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"],
            ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down", "LoRA"],
        ),
        (
            [
                "model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
                "vae.decoder.conv_in.bias",
            ],
            ["model.diffusion_model (1)", "vae.decoder (1)", "Flux"],
        ),
        (["alpha", "beta.gamma.delta"], ["alpha (1)", "beta.gamma (1)"]),
    ],
)
def test_unknown_layout_lists_the_prefixes_found_and_the_layouts_supported(tmp_path, keys, expect):
    path = write(tmp_path / "x.safetensors", {k: torch.zeros(2) for k in keys})
    with pytest.raises(ConversionError) as err:
        SingleFileCheckpoint(path, tokenizer=tmp_path)
    message = str(err.value)
    assert "Found key prefixes" in message and "cond_stage_model.transformer" in message
    for part in expect:
        assert part in message


def test_missing_tokenizer_says_which_one_is_needed(family_case):
    family, root, _ = family_case
    with pytest.raises(ConversionError) as err:
        SingleFileCheckpoint(root / "model.safetensors", tokenizer=None)
    assert "--tokenizer DIR" in str(err.value) and "downloaded" in str(err.value)
    assert ("--tokenizer-2" in str(err.value)) == (family == "sdxl")


def test_mis_shaped_tensor_names_the_file_key(family_case, tmp_path):
    family, root, ldm = family_case
    # A fused OpenCLIP projection where there is one, otherwise a UNet conv.
    key = {
        "sd1": "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
        "sd2": "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        "sdxl": "model.diffusion_model.output_blocks.1.1.proj_in.weight",
    }[family]
    bad = dict(ldm)
    bad[key] = bad[key][:, :-1]
    path = write(tmp_path / "bad.safetensors", bad)
    with pytest.raises(ConversionError) as err:
        convert_single_file(
            path,
            tmp_path / "out",
            config_overrides=OVERRIDES[family],
            **tokenizers(family, root / "tok"),
        )
    assert key in str(err.value) and "shape" in str(err.value)


class NotATensor:
    """Stands in for the training objects (callbacks, optimizers) some .ckpt pickles hold."""


def test_ckpt_holding_objects_is_refused_not_unpickled(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callback": NotATensor()}, tmp_path / "x.ckpt")
    with pytest.raises(ConversionError, match="weights_only=True"):
        SingleFileCheckpoint(tmp_path / "x.ckpt", tokenizer=tmp_path)
