"""Parity of the Flax T5/UMT5 encoders with transformers through convert + load; the tiny T5
tokenizer and Wan's prompt tokenisation."""

from __future__ import annotations

import ast
import html
import json
import re
from pathlib import Path

import ftfy
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from diffusers.utils import is_ftfy_available
from flax import nnx
from safetensors.torch import load_file, save_file

from jaxvideo import tokenizers
from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.models.registry import spec_for
from jaxvideo.models.t5 import (
    T5Encoder,
    T5EncoderConfig,
    _clamp_fp16,
    relative_position_buckets,
)
from jaxvideo.weights import load_component

VOCAB = 300
LENGTH = 40
ATOL = 1e-4
VALID = (LENGTH, 25, 7)  # unpadded tokens per row

# One compiled forward per model: eager dispatch of the tiny network is ~5x slower here.
_run = nnx.jit(lambda model, ids, mask: model(ids, mask))


def _diffusers_prompt_clean():
    """diffusers' Wan `prompt_clean`, executed from its source file.

    Importing `diffusers.pipelines.wan` costs ~10 s of this file's budget; the three cleaning
    functions only need `html`, `re` and ftfy (a jaxvideo dependency, as in Wan's release).
    """
    import diffusers.pipelines.wan as wan

    source = (Path(wan.__file__).parent / "pipeline_wan.py").read_text()
    names = {"basic_clean", "whitespace_clean", "prompt_clean"}
    tree = ast.parse(source)
    tree.body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert {n.name for n in tree.body} == names
    scope = {"html": html, "re": re, "is_ftfy_available": is_ftfy_available, "ftfy": ftfy}
    exec(compile(tree, "pipeline_wan.py", "exec"), scope)
    return scope["prompt_clean"]


def _hf_config(family: str, feed_forward_proj: str, buckets: int, max_distance: int):
    cls = transformers.UMT5Config if family == "umt5" else transformers.T5Config
    return cls(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=37,
        num_layers=2,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=max_distance,
        feed_forward_proj=feed_forward_proj,
        dropout_rate=0.0,
    )


def _reference(family: str, feed_forward_proj: str, buckets: int = 8, max_distance: int = 20):
    torch.manual_seed(0)
    config = _hf_config(family, feed_forward_proj, buckets, max_distance)
    cls = transformers.UMT5EncoderModel if family == "umt5" else transformers.T5EncoderModel
    model = cls(config)
    # Random offsets on every tensor: RMS-norm scales stop being 1, so a tensor mapped to the
    # wrong place (or a bias table read from the wrong layer) cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _save(model: torch.nn.Module, tmp_path: Path, *, tied_copy: bool = False) -> Path:
    src = tmp_path / "src" / "text_encoder"
    model.save_pretrained(src, safe_serialization=True)
    if tied_copy:
        # transformers 4 (published Wan checkpoints) also stores the tied embedding copy.
        tensors = load_file(src / "model.safetensors")
        tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"].clone()
        save_file(tensors, src / "model.safetensors")
    return src


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, size=(len(VALID), LENGTH))
    mask = np.zeros_like(ids)
    for row, valid in enumerate(VALID):
        ids[row, valid - 1] = 1  # </s>
        ids[row, valid:] = 0  # <pad>
        mask[row, :valid] = 1
    return ids, mask


def _max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _reference_output(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(ids), torch.from_numpy(mask)).last_hidden_state
    return out.float().numpy()


@pytest.mark.parametrize(
    ("family", "feed_forward_proj", "buckets", "max_distance", "tied_copy"),
    [
        ("umt5", "gated-gelu", 8, 20, False),
        ("t5", "relu", 32, 128, True),
        ("t5", "gelu", 8, 20, False),
        # T5 v1.1 (Flux.1 and SD3.5's T5-XXL): gated GELU, untied head.
        ("t5", "gated-gelu", 32, 128, False),
    ],
)
def test_t5_encoder_parity(
    tmp_path: Path,
    family: str,
    feed_forward_proj: str,
    buckets: int,
    max_distance: int,
    tied_copy: bool,
) -> None:
    ref = _reference(family, feed_forward_proj, buckets, max_distance)
    convert_component(_save(ref, tmp_path, tied_copy=tied_copy), tmp_path / "dst" / "text_encoder")
    model = load_component(tmp_path / "dst", "text_encoder")
    assert isinstance(model, T5Encoder)
    # UMT5 owns a bias table per layer, T5 only in layer 0.
    tables = [
        b.layer[0].SelfAttention.relative_attention_bias is not None for b in model.encoder.block
    ]
    assert tables == ([True, True] if family == "umt5" else [True, False])

    ids, mask = _inputs()
    theirs = _reference_output(ref, ids, mask)
    ours = np.asarray(_run(model, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))
    assert ours.shape == theirs.shape == (len(VALID), LENGTH, 32)
    err = _max_err(ours, theirs)
    print(f"{family} {feed_forward_proj} buckets={buckets}/{max_distance}: max abs err {err:.2e}")
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)
    # The mask matters: without it the padded rows would read their pad tokens.
    unmasked = np.asarray(_run(model, jnp.asarray(ids, jnp.int32), jnp.ones(mask.shape, jnp.int32)))
    assert _max_err(unmasked[2, : VALID[2]], theirs[2, : VALID[2]]) > 1e-2


def test_umt5_bf16_as_close_as_transformers_bf16(tmp_path: Path) -> None:
    # Real UMT5-XXL runs in bf16: our bf16 run must stay as close to the fp32 reference as
    # transformers' own bf16 run does (norms and softmax are fp32 in both).
    ref = _reference("umt5", "gated-gelu")
    convert_component(_save(ref, tmp_path), tmp_path / "dst" / "text_encoder", dtype="bf16")
    model = load_component(tmp_path / "dst", "text_encoder", dtype="bf16")
    ids, mask = _inputs()
    ours = _run(model, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    assert ours.dtype == jnp.bfloat16
    exact = _reference_output(ref, ids, mask)
    torch_bf16 = _reference_output(ref.to(torch.bfloat16), ids, mask)

    def mean_rel(x) -> float:
        return float(np.mean(np.abs(np.asarray(x, np.float32) - exact)) / np.mean(np.abs(exact)))

    ours_err, theirs_err = mean_rel(ours), mean_rel(torch_bf16)
    print(f"umt5 bf16 mean rel err: ours {ours_err:.2e}, transformers {theirs_err:.2e}")
    assert ours_err < 1.25 * theirs_err


@pytest.mark.parametrize(("buckets", "max_distance"), [(32, 128), (8, 20), (64, 256)])
def test_relative_position_buckets_match_transformers(buckets: int, max_distance: int) -> None:
    config = _hf_config("umt5", "gated-gelu", buckets, max_distance)
    attention = transformers.models.umt5.modeling_umt5.UMT5Attention(
        config, has_relative_attention_bias=True
    )
    positions = torch.arange(600)
    theirs = attention._relative_position_bucket(positions[None, :] - positions[:, None]).numpy()
    ours = relative_position_buckets(600, buckets, max_distance)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.max() == buckets - 1  # the far-distance clamp is exercised


def test_clamp_fp16_matches_transformers() -> None:
    def reference(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x)
        top = torch.finfo(t.dtype).max
        limit = torch.where(torch.isinf(t).any(), top - 1000, top)
        return torch.clamp(t, min=-limit, max=limit).numpy()

    finite = np.array([1.0, -65504.0, 3.5], np.float16)
    overflowed = np.array([np.inf, -np.inf, 65504.0, 2.0], np.float16)
    for x in (finite, overflowed):
        np.testing.assert_array_equal(np.asarray(_clamp_fp16(jnp.asarray(x))), reference(x))
    assert np.isfinite(np.asarray(_clamp_fp16(jnp.asarray(overflowed)))).all()


def _broken_checkpoint(tmp_path: Path, family: str, edit) -> Path:
    src = _save(_reference(family, "gated-gelu"), tmp_path)
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, src / "model.safetensors")
    return src


def test_wrong_shape_names_key(tmp_path: Path) -> None:
    key = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = tensors[key][:-1].contiguous()

    src = _broken_checkpoint(tmp_path, "umt5", edit)
    with pytest.raises(ConversionError, match="shape mismatch") as info:
        convert_component(src, tmp_path / "dst" / "text_encoder")
    assert key in str(info.value)
    assert "encoder.block.1.layer.1.DenseReluDense.wi_1.kernel" in str(info.value)


def test_missing_bias_table_names_parameter(tmp_path: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        del tensors["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]

    src = _broken_checkpoint(tmp_path, "t5", edit)
    with pytest.raises(ConversionError, match="missing") as info:
        convert_component(src, tmp_path / "dst" / "text_encoder")
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.embedding" in str(
        info.value
    )


def test_umt5_weights_under_t5_class_are_refused(tmp_path: Path) -> None:
    # A T5 config expects one bias table; UMT5's per-layer tables must not be silently dropped.
    src = _save(_reference("umt5", "gated-gelu"), tmp_path)
    config = json.loads((src / "config.json").read_text())
    config.update(architectures=["T5EncoderModel"], model_type="t5")
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="unexpected") as info:
        convert_component(src, tmp_path / "dst" / "text_encoder")
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in str(info.value)


def test_config_from_hf() -> None:
    # Omitted keys take the family's transformers defaults; the class name picks the family.
    umt5 = spec_for("UMT5EncoderModel").config_from_hf({"d_model": 64, "unknown_key": 1})
    assert umt5 == T5EncoderConfig(
        vocab_size=250112,
        d_model=64,
        d_ff=1024,
        num_layers=8,
        num_heads=6,
        feed_forward_proj="gated-gelu",
        per_layer_position_bias=True,
    )
    assert umt5.activation == "gelu_new" and umt5.is_gated
    t5 = spec_for("T5EncoderModel").config_from_hf({})
    assert (t5.per_layer_position_bias, t5.feed_forward_proj, t5.d_ff) == (False, "relu", 2048)
    assert T5EncoderConfig.from_hf({"model_type": "umt5"}).per_layer_position_bias
    for bad in ("gated-gelu-x", "swish", "ungated-relu"):
        with pytest.raises(ValueError, match="feed_forward_proj"):
            T5EncoderConfig.from_hf({"feed_forward_proj": bad})
    for bad in ({"relative_attention_num_buckets": 2}, {"relative_attention_max_distance": 8}):
        with pytest.raises(ValueError, match="relative_attention_num_buckets"):
            T5EncoderConfig.from_hf(bad)


PROMPTS = [
    "A cat &amp;amp; a   dog,\n running on the beach!",
    "  tiny\tprompt  ",
    "x" * 80,  # longer than max_length: truncated, </s> kept
    "mojibake: cafÃ© Ã  la carte",  # ftfy repairs this to "café à la carte"
]


def test_tiny_t5_tokenizer_loads_as_t5(tmp_path: Path) -> None:
    assert tokenizers.write_tiny_t5_tokenizer(tmp_path / "tokenizer") == 256
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "tokenizer", local_files_only=True)
    assert tok.is_fast and type(tok).__name__.startswith("T5Tokenizer")
    assert len(tok) == 256
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("a cat")["input_ids"]
    assert ids[-1] == 1 and 2 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "a cat"
    assert tok("é")["input_ids"] == [tok.convert_tokens_to_ids("\u2581"), 2, 1]
    for bad in (50, 10_000):
        with pytest.raises(ValueError, match="vocab_size"):
            tokenizers.write_tiny_t5_tokenizer(tmp_path / "bad", bad)


def test_t5_token_ids_match_wan_tokenisation(tmp_path: Path) -> None:
    prompt_clean = _diffusers_prompt_clean()
    folder = tmp_path / "tokenizer"
    tokenizers.write_tiny_t5_tokenizer(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    max_length = 32
    # diffusers' WanPipeline._get_t5_prompt_embeds, with ftfy's text repair as Wan runs it.
    assert is_ftfy_available()
    expected = tok(
        [prompt_clean(p) for p in PROMPTS],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="np",
    )
    ids, mask = tokenizers.t5_token_ids(folder, PROMPTS, max_length=max_length)
    assert ids.dtype == mask.dtype == np.int32
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])
    assert [tokenizers.t5_prompt_clean(p) for p in PROMPTS] == [prompt_clean(p) for p in PROMPTS]
    assert tokenizers.t5_prompt_clean(PROMPTS[3]) == "mojibake: café à la carte"
    assert mask[2].all() and ids[2, -1] == 1  # truncated row still ends with </s>
    assert not mask[1].all() and (ids[1][mask[1] == 0] == 0).all()  # padded with <pad>
    again, _ = tokenizers.t5_token_ids(str(folder), PROMPTS[:1], max_length=max_length)
    np.testing.assert_array_equal(again[0], ids[0])
