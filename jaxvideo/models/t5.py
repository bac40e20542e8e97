"""T5 / UMT5 text encoders (transformers `T5EncoderModel` / `UMT5EncoderModel`) in Flax NNX.

Wan conditions on UMT5-XXL's `last_hidden_state`. The two families differ only in where the
relative position bias lives: T5 learns one table (in layer 0) shared by every layer, UMT5 learns
one per layer.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvideo.convert.core import Rule
from jaxvideo.models.attention import dot_product_attention
from jaxvideo.models.registry import ComponentSpec


def _gelu_tanh(x: jax.Array) -> jax.Array:
    # transformers' "gelu_new": the tanh approximation ("gated-gelu" means gelu_new gating).
    return jax.nn.gelu(x, approximate=True)


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


_ACTIVATIONS = {"relu": jax.nn.relu, "gelu_new": _gelu_tanh, "gelu": _gelu}

# transformers' defaults where `UMT5Config` differs from `T5Config`, for keys a config omits.
_UMT5_DEFAULTS: dict[str, Any] = {
    "vocab_size": 250112,
    "d_ff": 1024,
    "num_layers": 8,
    "num_heads": 6,
    "feed_forward_proj": "gated-gelu",
}


def _is_umt5(d: dict[str, Any]) -> bool:
    architectures = d.get("architectures") or []
    return d.get("model_type") == "umt5" or any(a.startswith("UMT5") for a in architectures)


@dataclass(frozen=True)
class T5EncoderConfig:
    """The subset of transformers' `T5Config` / `UMT5Config` the encoder needs.

    `per_layer_position_bias` is UMT5's layout (one relative-attention table per layer).
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    per_layer_position_bias: bool = False

    @classmethod
    def from_hf(cls, d: dict[str, Any], *, umt5: bool | None = None) -> T5EncoderConfig:
        """Reads a transformers config.json dict; unknown keys are ignored.

        `umt5` selects the family (the registry passes it from the class name); None infers it
        from `model_type` / `architectures`. Omitted keys take that family's defaults.
        """
        umt5 = _is_umt5(d) if umt5 is None else umt5
        names = cls.__dataclass_fields__
        kwargs = dict(_UMT5_DEFAULTS) if umt5 else {}
        kwargs.update({k: v for k, v in d.items() if k in names and v is not None})
        kwargs["per_layer_position_bias"] = umt5
        config = cls(**kwargs)
        _activation_name(config.feed_forward_proj)
        # Bidirectional buckets: half per direction, half of those exact, the rest log-spaced
        # up to max_distance, which must therefore lie beyond the exact range.
        buckets = config.relative_attention_num_buckets
        distance = config.relative_attention_max_distance
        if buckets < 4 or distance <= buckets // 4:
            raise ValueError(
                "need relative_attention_num_buckets >= 4 and relative_attention_max_distance > "
                f"num_buckets // 4, got {buckets} and {distance}"
            )
        return config

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        return _activation_name(self.feed_forward_proj)


def _activation_name(feed_forward_proj: str) -> str:
    """transformers' `dense_act_fn` for `feed_forward_proj` ("gated-gelu" -> "gelu_new")."""
    parts = feed_forward_proj.split("-")
    valid = len(parts) == 1 or (len(parts) == 2 and parts[0] == "gated")
    name = "gelu_new" if feed_forward_proj == "gated-gelu" else parts[-1]
    if not valid or name not in _ACTIVATIONS:
        raise ValueError(
            f"unsupported T5 feed_forward_proj {feed_forward_proj!r}; expected "
            f"'ACT' or 'gated-ACT' with ACT in {', '.join(sorted(_ACTIVATIONS))}"
        )
    return name


@functools.lru_cache(maxsize=32)
def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 bucket of (key - query) for every (query, key) pair: int32 (L, L).

    Mirrors transformers' `_relative_position_bucket` step by step in float32 (the truncation
    of the log-spaced buckets must land on the same integers).
    """
    positions = np.arange(length, dtype=np.int64)
    relative = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int64) * half
    distance = np.abs(relative)
    max_exact = half // 2
    is_small = distance < max_exact
    with np.errstate(divide="ignore"):  # log(0) lands in the masked-out "small" branch
        log_ratio = np.log(distance.astype(np.float32) / np.float32(max_exact))
    log_ratio = log_ratio / np.float32(math.log(max_distance / max_exact))
    log_ratio = log_ratio * np.float32(half - max_exact)
    large = max_exact + np.where(is_small, 0, log_ratio).astype(np.int64)
    large = np.minimum(large, half - 1)
    buckets = (buckets + np.where(is_small, distance, large)).astype(np.int32)
    buckets.flags.writeable = False  # shared through the cache
    return buckets


class T5LayerNorm(nnx.Module):
    """RMS norm without mean subtraction or bias; statistics in float32 for half inputs."""

    def __init__(self, dim: int, eps: float, *, dtype: Any, param_dtype: Any):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(variance + self.eps)).astype(self.dtype)
        return self.scale[...].astype(self.dtype) * normed


def _linear(d_in: int, d_out: int, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class T5Attention(nnx.Module):
    """Self-attention with no 1/sqrt(d) scaling (T5 folds it into the init) plus a position bias.

    `relative_attention_bias` exists only where the layer owns a bias table (every UMT5 layer,
    T5's layer 0); other layers receive the shared bias.
    """

    def __init__(
        self,
        config: T5EncoderConfig,
        has_position_bias: bool,
        *,
        rngs: nnx.Rngs,
        dtype: Any,
        param_dtype: Any,
    ):
        self.num_heads = config.num_heads
        self.head_dim = config.d_kv
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        inner = config.num_heads * config.d_kv
        kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype}
        self.q = _linear(config.d_model, inner, **kw)
        self.k = _linear(config.d_model, inner, **kw)
        self.v = _linear(config.d_model, inner, **kw)
        self.o = _linear(inner, config.d_model, **kw)
        self.relative_attention_bias = (
            nnx.Embed(self.num_buckets, config.num_heads, param_dtype=param_dtype, rngs=rngs)
            if has_position_bias
            else None
        )

    def position_bias(self, length: int) -> jax.Array:
        """float32 (1, heads, L, L) bias from this layer's table."""
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance)
        table = self.relative_attention_bias.embedding[...].astype(jnp.float32)
        return table[jnp.asarray(buckets)].transpose(2, 0, 1)[None]

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """`bias`: float32 (B, heads, L, L), the position bias plus the padding mask."""
        batch, length, _ = x.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q = self.q(x).reshape(shape)
        k = self.k(x).reshape(shape)
        v = self.v(x).reshape(shape)
        out = dot_product_attention(q, k, v, bias=bias, scale=1.0)
        return self.o(out.reshape(batch, length, -1))


class T5FeedForward(nnx.Module):
    """wo(act(wi(x))) or, gated, wo(act(wi_0(x)) * wi_1(x))."""

    def __init__(self, config: T5EncoderConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype}
        self.act = _ACTIVATIONS[config.activation]
        if config.is_gated:
            self.wi_0 = _linear(config.d_model, config.d_ff, **kw)
            self.wi_1 = _linear(config.d_model, config.d_ff, **kw)
        else:
            self.wi = _linear(config.d_model, config.d_ff, **kw)
        self.wo = _linear(config.d_ff, config.d_model, **kw)
        self.gated = config.is_gated

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.gated:
            return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))
        return self.wo(self.act(self.wi(x)))


def _clamp_fp16(x: jax.Array) -> jax.Array:
    # transformers clamps fp16 activations after each sublayer so T5's large activations
    # saturate instead of overflowing to inf (and NaN after the next norm).
    if x.dtype != jnp.float16:
        return x
    top = jnp.finfo(jnp.float16).max
    limit = jnp.where(jnp.isinf(x).any(), top - 1000, top).astype(x.dtype)
    return jnp.clip(x, -limit, limit)


class T5SelfAttentionLayer(nnx.Module):
    """`layer.0`: x + attn(norm(x))."""

    def __init__(
        self,
        config: T5EncoderConfig,
        has_position_bias: bool,
        *,
        rngs: nnx.Rngs,
        dtype: Any,
        param_dtype: Any,
    ):
        kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype}
        self.SelfAttention = T5Attention(config, has_position_bias, **kw)
        self.layer_norm = T5LayerNorm(
            config.d_model, config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype
        )

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5FeedForwardLayer(nnx.Module):
    """`layer.1`: x + ff(norm(x))."""

    def __init__(self, config: T5EncoderConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        self.DenseReluDense = T5FeedForward(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.layer_norm = T5LayerNorm(
            config.d_model, config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nnx.Module):
    """One encoder block; `layer` mirrors transformers' (self-attention, feed-forward) list."""

    def __init__(
        self,
        config: T5EncoderConfig,
        has_position_bias: bool,
        *,
        rngs: nnx.Rngs,
        dtype: Any,
        param_dtype: Any,
    ):
        kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype}
        self.layer = nnx.List(
            [
                T5SelfAttentionLayer(config, has_position_bias, **kw),
                T5FeedForwardLayer(config, **kw),
            ]
        )

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        x = _clamp_fp16(self.layer[0](x, bias))
        return _clamp_fp16(self.layer[1](x))


class T5Stack(nnx.Module):
    """transformers' `encoder`: the blocks and the final norm."""

    def __init__(self, config: T5EncoderConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype}
        self.block = nnx.List(
            [
                T5Block(config, config.per_layer_position_bias or i == 0, **kw)
                for i in range(config.num_layers)
            ]
        )
        self.final_layer_norm = T5LayerNorm(
            config.d_model, config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype
        )


def _padding_bias(attention_mask: jax.Array) -> jax.Array:
    """float32 (B, 1, 1, L): 0 for kept keys, float32 min for padded ones (hidden from every
    query), added to the position bias as transformers does, so attention takes one bias."""
    keep = jnp.asarray(attention_mask) > 0
    return jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]


class T5Encoder(nnx.Module):
    """transformers' `T5EncoderModel` / `UMT5EncoderModel`, returning `last_hidden_state`."""

    def __init__(
        self,
        config: T5EncoderConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        self.config = config
        self.shared = nnx.Embed(
            config.vocab_size, config.d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.encoder = T5Stack(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """int32 `input_ids` (B, L) and `attention_mask` (B, L; 1 keep, 0 pad) -> (B, L, d_model).

        Padded positions still get (meaningless) outputs, as in transformers; Wan zeroes them.
        """
        input_ids = jnp.asarray(input_ids, dtype=jnp.int32)
        length = input_ids.shape[1]
        x = self.shared(input_ids)
        mask_bias = _padding_bias(attention_mask)
        bias = None
        for block in self.encoder.block:
            attention = block.layer[0].SelfAttention
            if attention.relative_attention_bias is not None:
                bias = attention.position_bias(length) + mask_bias
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)


_BLOCK = r"encoder\.block\.(\d+)\.layer\."

T5_RULES: tuple[Rule, ...] = (
    Rule(r"shared\.weight", "shared.embedding"),
    Rule(
        _BLOCK + r"0\.SelfAttention\.(q|k|v|o)\.weight",
        r"encoder.block.\1.layer.0.SelfAttention.\2.kernel",
        "linear",
    ),
    Rule(
        _BLOCK + r"0\.SelfAttention\.relative_attention_bias\.weight",
        r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.embedding",
    ),
    Rule(
        _BLOCK + r"1\.DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight",
        r"encoder.block.\1.layer.1.DenseReluDense.\2.kernel",
        "linear",
    ),
    Rule(_BLOCK + r"(0|1)\.layer_norm\.weight", r"encoder.block.\1.layer.\2.layer_norm.scale"),
    Rule(r"encoder\.final_layer_norm\.weight", "encoder.final_layer_norm.scale"),
)

# The encoder's embedding is tied to `shared` (transformers forces the tie for the T5 family);
# checkpoints written by older transformers store the copy too.
T5_IGNORE: tuple[str, ...] = (r"encoder\.embed_tokens\.weight",)

UMT5_SPEC = ComponentSpec(
    config_from_hf=functools.partial(T5EncoderConfig.from_hf, umt5=True),
    build=T5Encoder,
    rules=T5_RULES,
    ignore=T5_IGNORE,
)

T5_SPEC = ComponentSpec(
    config_from_hf=functools.partial(T5EncoderConfig.from_hf, umt5=False),
    build=T5Encoder,
    rules=T5_RULES,
    ignore=T5_IGNORE,
)
