"""Parity of jaxvideo's Flax CLIP text encoder with transformers, through convert + load."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.models import registry
from jaxvideo.models.clip import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
)
from jaxvideo.weights import load_component

VOCAB = 1000
LENGTH = 77
ATOL = 1e-4
EOT = VOCAB - 1  # the real end-of-text token id of the tiny vocabulary
EOS_AT = (5, 30, LENGTH - 1)  # first EOT position of each input row


def _hf_config(hidden_act: str, eos_token_id: int) -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=LENGTH,
        hidden_act=hidden_act,
        projection_dim=24,
        bos_token_id=EOT - 1,
        eos_token_id=eos_token_id,
        pad_token_id=1,
    )


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    # Random offsets on every tensor: LayerNorm scales/biases stop being 1/0 and zero-init
    # biases become non-zero, so a tensor mapped to the wrong place cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _save(model: torch.nn.Module, tmp_path: Path) -> Path:
    src = tmp_path / "src" / "text_encoder"
    model.save_pretrained(src, safe_serialization=True)
    return src


def _input_ids() -> np.ndarray:
    rng = np.random.default_rng(0)
    # As in the real CLIP vocabulary the EOT token is the highest id (legacy configs say
    # eos_token_id=2 and transformers then pools at argmax(input_ids)), and the ordinary tokens
    # never equal 2, so a pooling rule that looked for id 2 would land on the wrong position.
    # Rows 0 and 2 pad with the EOT id (SD 1.x style), row 1 with the pad id.
    ids = rng.integers(3, EOT - 1, size=(3, LENGTH))
    ids[:, 0] = EOT - 1  # BOS
    for row, eos_at in enumerate(EOS_AT):
        ids[row, eos_at:] = EOT if row != 1 else 1
        ids[row, eos_at] = EOT
    return ids.astype(np.int64)


def _max_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize(
    ("hidden_act", "eos_token_id"),
    [("quick_gelu", 2), ("quick_gelu", EOT), ("gelu", 2), ("gelu", EOT)],
)
def test_clip_text_parity(tmp_path: Path, hidden_act: str, eos_token_id: int) -> None:
    torch.manual_seed(0)
    ref = _perturbed(transformers.CLIPTextModel(_hf_config(hidden_act, eos_token_id)))
    src = _save(ref, tmp_path)
    convert_component(src, tmp_path / "dst" / "text_encoder")
    model = load_component(tmp_path / "dst", "text_encoder")
    assert isinstance(model, CLIPTextModel)

    ids = _input_ids()
    with torch.no_grad():
        out = ref(torch.from_numpy(ids), output_hidden_states=True)
        penultimate = out.hidden_states[-2]
        penultimate_normed = ref.final_layer_norm(penultimate)
    jids = jnp.asarray(ids, dtype=jnp.int32)

    hidden, pooled = model(jids)
    skip_hidden, skip_pooled = model(jids, skip_layers=1)
    raw_hidden, _ = model(jids, skip_layers=1, final_norm=False)
    checks = {
        "last_hidden_state": (hidden, out.last_hidden_state),
        "pooler_output": (pooled, out.pooler_output),
        "pooler_output (skip_layers=1)": (skip_pooled, out.pooler_output),
        "final_layer_norm(hidden_states[-2])": (skip_hidden, penultimate_normed),
        "hidden_states[-2]": (raw_hidden, penultimate),
    }
    for name, (ours, theirs) in checks.items():
        theirs = theirs.numpy()
        assert ours.shape == theirs.shape, name
        err = _max_err(ours, theirs)
        print(f"{hidden_act} eos={eos_token_id} {name}: max abs err {err:.2e}")
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=ATOL, rtol=0, err_msg=name)
    # Pooling reads the first EOT of each row, whichever rule the config's eos id selects.
    np.testing.assert_array_equal(np.asarray(pooled), np.asarray(hidden)[[0, 1, 2], EOS_AT])


def test_clip_text_legacy_prefixed_checkpoint(tmp_path: Path) -> None:
    # Published SD checkpoints (transformers 4.x) prefix keys with `text_model.` and may carry
    # the `position_ids` buffer; they must convert to the same parameters.
    torch.manual_seed(0)
    ref = _perturbed(transformers.CLIPTextModel(_hf_config("quick_gelu", 2)))
    src = _save(ref, tmp_path)
    legacy = tmp_path / "legacy" / "text_encoder"
    legacy.mkdir(parents=True)
    tensors = {f"text_model.{k}": v for k, v in load_file(src / "model.safetensors").items()}
    tensors["text_model.embeddings.position_ids"] = torch.arange(LENGTH)[None]
    save_file(tensors, legacy / "model.safetensors")
    (legacy / "config.json").write_text((src / "config.json").read_text())
    convert_component(legacy, tmp_path / "dst" / "text_encoder")
    model = load_component(tmp_path / "dst", "text_encoder")

    ids = _input_ids()
    with torch.no_grad():
        out = ref(torch.from_numpy(ids))
    hidden, pooled = model(jnp.asarray(ids, dtype=jnp.int32))
    np.testing.assert_allclose(np.asarray(hidden), out.last_hidden_state.numpy(), atol=ATOL)
    np.testing.assert_allclose(np.asarray(pooled), out.pooler_output.numpy(), atol=ATOL)


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_clip_text_with_projection_parity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hidden_act: str
) -> None:
    # The registry entry for SDXL's second encoder is added separately; register it here.
    monkeypatch.setitem(
        registry._SPECS,
        "CLIPTextModelWithProjection",
        "jaxvideo.models.clip:CLIP_TEXT_PROJ_SPEC",
    )
    torch.manual_seed(0)
    ref = _perturbed(transformers.CLIPTextModelWithProjection(_hf_config(hidden_act, EOT)))
    src = tmp_path / "src" / "text_encoder_2"
    ref.save_pretrained(src, safe_serialization=True)
    convert_component(src, tmp_path / "dst" / "text_encoder_2")
    model = load_component(tmp_path / "dst", "text_encoder_2")
    assert isinstance(model, CLIPTextModelWithProjection)

    ids = _input_ids()
    with torch.no_grad():
        out = ref(torch.from_numpy(ids), output_hidden_states=True)
    jids = jnp.asarray(ids, dtype=jnp.int32)
    hidden, text_embeds = model(jids)
    raw_hidden, skip_embeds = model(jids, skip_layers=1, final_norm=False)
    checks = {
        "last_hidden_state": (hidden, out.last_hidden_state),
        "text_embeds": (text_embeds, out.text_embeds),
        "text_embeds (skip_layers=1)": (skip_embeds, out.text_embeds),
        "hidden_states[-2]": (raw_hidden, out.hidden_states[-2]),
    }
    for name, (ours, theirs) in checks.items():
        theirs = theirs.numpy()
        assert ours.shape == theirs.shape, name
        print(f"proj {hidden_act} {name}: max abs err {_max_err(ours, theirs):.2e}")
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=ATOL, rtol=0, err_msg=name)


def _broken_checkpoint(tmp_path: Path, edit) -> Path:
    torch.manual_seed(0)
    src = _save(transformers.CLIPTextModel(_hf_config("quick_gelu", 2)), tmp_path)
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, src / "model.safetensors")
    return src


def test_wrong_shape_names_key(tmp_path: Path) -> None:
    key = "encoder.layers.1.mlp.fc1.weight"

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = tensors[key][:-1].contiguous()

    src = _broken_checkpoint(tmp_path, edit)
    with pytest.raises(ConversionError, match=r"shape mismatch") as info:
        convert_component(src, tmp_path / "dst" / "text_encoder")
    assert key in str(info.value)
    assert "encoder.layers.1.mlp.fc1.kernel" in str(info.value)


def test_missing_key_names_parameter(tmp_path: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        del tensors["encoder.layers.0.layer_norm2.bias"]

    src = _broken_checkpoint(tmp_path, edit)
    with pytest.raises(ConversionError, match=r"missing") as info:
        convert_component(src, tmp_path / "dst" / "text_encoder")
    assert "encoder.layers.0.layer_norm2.bias" in str(info.value)


def test_config_from_hf_and_skip_bounds() -> None:
    hf = json.loads(_hf_config("gelu", 2).to_json_string())
    hf["some_unknown_key"] = 1
    config = CLIPTextConfig.from_hf(hf)
    assert (config.hidden_act, config.eos_token_id, config.num_hidden_layers) == (
        "gelu",
        2,
        3,
    )
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextConfig.from_hf({**hf, "hidden_act": "relu"})

    from flax import nnx

    # Abstract model: the bounds check fails before any array is touched.
    model = nnx.eval_shape(lambda: CLIPTextModel(config, rngs=nnx.Rngs(0)))
    ids = jnp.zeros((1, 8), jnp.int32)
    with pytest.raises(ValueError, match="skip_layers"):
        model(ids, skip_layers=3)
