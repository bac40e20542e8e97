"""The original Wan release text encoder (`models_t5_umt5-xxl-enc-bf16.pth`) -> transformers names.

The Wan code's `T5Encoder` is umt5-xxl's encoder under its own names: `token_embedding`,
`blocks.N.{norm1, attn.{q,k,v,o}, norm2, ffn.{gate.0, fc1, fc2}, pos_embedding.embedding}`,
`norm`. It computes what transformers' `UMT5EncoderModel` does (RMS norms, unscaled attention
with a per-layer bidirectional relative position bias of 32 buckets up to distance 128, a
tanh-GELU gated FFN: `fc1(x) * gelu(gate(x))` is `wi_1(x) * gelu_new(wi_0(x))`), so renaming the
keys is the whole conversion; the config is read from the tensor shapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.ldm.keys import KeyRule, Plan, build_plan

_BLOCK = r"blocks\.(?P<n>\d+)\."
_LAYER = "encoder.block.{n}.layer."


def _rule(pattern: str, target: str) -> KeyRule:
    return KeyRule(pattern, (target,))


WAN_T5_ORIGINAL_KEY_RULES: tuple[KeyRule, ...] = (
    _rule(r"token_embedding\.weight", "shared.weight"),
    _rule(rf"{_BLOCK}norm1\.weight", _LAYER + "0.layer_norm.weight"),
    _rule(rf"{_BLOCK}attn\.(?P<x>[qkvo])\.weight", _LAYER + "0.SelfAttention.{x}.weight"),
    _rule(
        rf"{_BLOCK}pos_embedding\.embedding\.weight",
        _LAYER + "0.SelfAttention.relative_attention_bias.weight",
    ),
    _rule(rf"{_BLOCK}norm2\.weight", _LAYER + "1.layer_norm.weight"),
    _rule(rf"{_BLOCK}ffn\.gate\.0\.weight", _LAYER + "1.DenseReluDense.wi_0.weight"),
    _rule(rf"{_BLOCK}ffn\.fc1\.weight", _LAYER + "1.DenseReluDense.wi_1.weight"),
    _rule(rf"{_BLOCK}ffn\.fc2\.weight", _LAYER + "1.DenseReluDense.wo.weight"),
    _rule(r"norm\.weight", "encoder.final_layer_norm.weight"),
)

# The Wan code's `T5RelativeEmbedding` default, and its T5LayerNorm epsilon.
MAX_DISTANCE = 128
EPS = 1e-6


def is_wan_t5_original(keys: Iterable[str]) -> bool:
    """Whether a file holds the Wan code's T5 encoder (per-layer position embeddings: umt5)."""
    return any(k == "blocks.0.pos_embedding.embedding.weight" for k in keys)


def wan_t5_original_plan(keys: Iterable[str], *, what: str = "checkpoint") -> Plan:
    """{transformers key: Source(file key)} for every key of the Wan release's T5 encoder."""
    return build_plan(keys, "", WAN_T5_ORIGINAL_KEY_RULES, what=what)


def wan_t5_original_config(
    keys: Iterable[str], shape: Callable[[str], tuple[int, ...]]
) -> dict[str, Any]:
    """A transformers `UMT5EncoderModel` config.json dict, from the tensor shapes."""
    layers = {int(m[1]) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layers:
        raise ConversionError("the T5 encoder file has no blocks.N layers")
    vocab, dim = shape("token_embedding.weight")
    buckets, heads = shape("blocks.0.pos_embedding.embedding.weight")
    return {
        "architectures": ["UMT5EncoderModel"],
        "model_type": "umt5",
        "vocab_size": vocab,
        "d_model": dim,
        "d_kv": shape("blocks.0.attn.q.weight")[0] // heads,
        "d_ff": shape("blocks.0.ffn.fc1.weight")[0],
        "num_layers": max(layers) + 1,
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
        "relative_attention_max_distance": MAX_DISTANCE,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": EPS,
    }
