"""Parity of the Flax CLIP vision tower with transformers through convert + load, and of
`clip_preprocess` with `CLIPImageProcessor`."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.torch import load_file, save_file

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.models.clip_vision import (
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    clip_preprocess,
)
from jaxvideo.weights import load_component

IMAGE = 32
LAYERS = 3
ATOL = 1e-4


@nnx.jit
def _outputs(model: CLIPVisionModel, x: jnp.ndarray) -> dict[str, jnp.ndarray]:
    # One compiled function for every output: eager dispatch is several times slower here.
    last, pooled = model.encode(x)
    return {
        "hidden_states[-2]": model(x, output_layer=-2),
        "hidden_states[0]": model(x, output_layer=0),
        "hidden_states[1]": model(x, output_layer=1),
        "last_hidden_state": last,
        "pooled": pooled,
    }


def _hf_config(hidden_act: str) -> transformers.CLIPVisionConfig:
    return transformers.CLIPVisionConfig(
        image_size=IMAGE,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        projection_dim=24,
        hidden_act=hidden_act,
    )


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    # Random offsets on every tensor: LayerNorm scales/biases stop being 1/0, so a tensor
    # mapped to the wrong place cannot go unnoticed.
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _reference(cls, hidden_act: str = "gelu") -> torch.nn.Module:
    torch.manual_seed(0)
    return _perturbed(cls(_hf_config(hidden_act)))


def _save(model: torch.nn.Module, tmp_path: Path) -> Path:
    src = tmp_path / "src" / "image_encoder"
    model.save_pretrained(src, safe_serialization=True)
    return src


def _pixels() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, IMAGE, IMAGE)).astype(np.float32)


def _nhwc(pixels: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(pixels.transpose(0, 2, 3, 1))


def _check(name: str, ours, theirs: torch.Tensor) -> None:
    theirs = theirs.numpy()
    assert ours.shape == theirs.shape, name
    err = float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)))
    print(f"{name}: max abs err {err:.2e}")
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("hidden_act", ["gelu", "quick_gelu"])
def test_clip_vision_parity(tmp_path: Path, hidden_act: str) -> None:
    ref = _reference(transformers.CLIPVisionModel, hidden_act)
    convert_component(_save(ref, tmp_path), tmp_path / "dst" / "image_encoder")
    model = load_component(tmp_path / "dst", "image_encoder")
    assert type(model) is CLIPVisionModel

    pixels = _pixels()
    with torch.no_grad():
        out = ref(torch.from_numpy(pixels), output_hidden_states=True)
    ours = _outputs(model, _nhwc(pixels))
    theirs = {
        "hidden_states[-2]": out.hidden_states[-2],  # what Wan conditions on
        "hidden_states[0]": out.hidden_states[0],
        "hidden_states[1]": out.hidden_states[1],
        "last_hidden_state": out.last_hidden_state,
        "pooled": out.pooler_output,
    }
    for name, value in theirs.items():
        _check(f"{hidden_act} {name}", ours[name], value)


def test_clip_vision_with_projection_parity(tmp_path: Path) -> None:
    ref = _reference(transformers.CLIPVisionModelWithProjection)
    convert_component(_save(ref, tmp_path), tmp_path / "dst" / "image_encoder")
    model = load_component(tmp_path / "dst", "image_encoder")
    assert isinstance(model, CLIPVisionModelWithProjection)

    pixels = _pixels()
    with torch.no_grad():
        out = ref(torch.from_numpy(pixels), output_hidden_states=True)
    ours = _outputs(model, _nhwc(pixels))
    _check("proj hidden_states[-2]", ours["hidden_states[-2]"], out.hidden_states[-2])
    _check("proj last_hidden_state", ours["last_hidden_state"], out.last_hidden_state)
    _check("proj image_embeds", ours["pooled"], out.image_embeds)


def test_transformers4_prefixed_checkpoint(tmp_path: Path) -> None:
    # Published Wan image encoders (transformers 4) prefix keys with `vision_model.` and may
    # carry the `position_ids` buffer; they must convert to the same parameters.
    ref = _reference(transformers.CLIPVisionModel)
    src = _save(ref, tmp_path)
    tensors = {f"vision_model.{k}": v for k, v in load_file(src / "model.safetensors").items()}
    tensors["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    save_file(tensors, src / "model.safetensors")
    convert_component(src, tmp_path / "dst" / "image_encoder")
    model = load_component(tmp_path / "dst", "image_encoder")

    pixels = _pixels()
    with torch.no_grad():
        out = ref(torch.from_numpy(pixels), output_hidden_states=True)
    ours = _outputs(model, _nhwc(pixels))
    _check("prefixed hidden_states[-2]", ours["hidden_states[-2]"], out.hidden_states[-2])
    _check("prefixed pooler_output", ours["pooled"], out.pooler_output)


def _broken_checkpoint(tmp_path: Path, edit) -> Path:
    src = _save(_reference(transformers.CLIPVisionModel), tmp_path)
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, src / "model.safetensors")
    return src


def test_wrong_shape_names_key(tmp_path: Path) -> None:
    key = "embeddings.patch_embedding.weight"

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = tensors[key][:, :, :-1].contiguous()

    src = _broken_checkpoint(tmp_path, edit)
    with pytest.raises(ConversionError, match="shape mismatch") as info:
        convert_component(src, tmp_path / "dst" / "image_encoder")
    assert key in str(info.value)
    assert "embeddings.patch_embedding.kernel" in str(info.value)


def test_missing_key_names_parameter(tmp_path: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        del tensors["embeddings.class_embedding"]

    src = _broken_checkpoint(tmp_path, edit)
    with pytest.raises(ConversionError, match="missing") as info:
        convert_component(src, tmp_path / "dst" / "image_encoder")
    assert "embeddings.class_embedding" in str(info.value)


def test_config_and_call_errors() -> None:
    hf = json.loads(_hf_config("gelu").to_json_string())
    config = CLIPVisionConfig.from_hf({**hf, "unknown_key": 1})
    assert (config.image_size, config.patch_size, config.num_positions) == (IMAGE, 8, 17)
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPVisionConfig.from_hf({**hf, "hidden_act": "relu"})
    with pytest.raises(ValueError, match="patch_size"):
        CLIPVisionConfig.from_hf({**hf, "patch_size": 7})

    # Abstract model: the checks fail before any array is touched.
    model = nnx.eval_shape(lambda: CLIPVisionModel(config, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="output_layer"):
        model(jnp.zeros((1, IMAGE, IMAGE, 3)), output_layer=LAYERS + 1)
    with pytest.raises(ValueError, match="image size"):
        model(jnp.zeros((1, IMAGE + 8, IMAGE, 3)))


@pytest.mark.parametrize("shape", [(300, 457), (500, 301), (100, 150), (224, 224)])
def test_clip_preprocess_matches_image_processor(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    processor = transformers.CLIPImageProcessor()  # PIL backend without torchvision
    theirs = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = clip_preprocess(image)
    assert ours.dtype == np.float32 and ours.shape == (224, 224, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        clip_preprocess(image.astype(np.float32))
