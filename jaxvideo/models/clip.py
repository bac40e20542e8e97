"""CLIP text encoder (transformers `CLIPTextModel` / `CLIPTextModelWithProjection`) in Flax NNX."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvideo.convert.core import Rule
from jaxvideo.models.attention import dot_product_attention
from jaxvideo.models.registry import ComponentSpec

# transformers' config.json id (`eos_token_id == 2`) that selects the pre-PR #24773 pooling rule.
_LEGACY_EOS_TOKEN_ID = 2


@dataclass(frozen=True)
class CLIPTextConfig:
    """The subset of transformers' `CLIPTextConfig` the text encoder needs.

    Defaults mirror transformers' so a config.json that omits a key behaves the same.
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    projection_dim: int = 512

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> CLIPTextConfig:
        """Reads a transformers config.json dict; unknown keys are ignored."""
        names = cls.__dataclass_fields__
        kwargs = {k: v for k, v in d.items() if k in names and v is not None}
        config = cls(**kwargs)
        if config.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"unsupported CLIP hidden_act {config.hidden_act!r}; "
                f"supported: {', '.join(sorted(_ACTIVATIONS))}"
            )
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not divisible by "
                f"num_attention_heads {config.num_attention_heads}"
            )
        return config


def _quick_gelu(x: jax.Array) -> jax.Array:
    # OpenAI CLIP's sigmoid approximation of GELU (SD 1.x text encoders were trained with it).
    return x * jax.nn.sigmoid(1.702 * x)


def _gelu(x: jax.Array) -> jax.Array:
    # transformers' "gelu" is the exact erf form (OpenCLIP / SD 2.x), not the tanh approximation.
    return jax.nn.gelu(x, approximate=False)


_ACTIVATIONS = {"quick_gelu": _quick_gelu, "gelu": _gelu}


def _layer_norm(
    config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any
) -> nnx.LayerNorm:
    # Two-pass variance like torch's LayerNorm; the fast E[x^2]-E[x]^2 form loses precision.
    return nnx.LayerNorm(
        config.hidden_size,
        epsilon=config.layer_norm_eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class CLIPTextEmbeddings(nnx.Module):
    """Token embedding plus learned absolute position embedding."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        self.token_embedding = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.position_embedding = nnx.Embed(
            config.max_position_embeddings,
            config.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        length = input_ids.shape[-1]
        max_len = self.position_embedding.num_embeddings
        if length > max_len:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings {max_len}")
        positions = jnp.arange(length, dtype=jnp.int32)
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]


class CLIPAttention(nnx.Module):
    """Multi-head self-attention with separate q/k/v projections (transformers' layout).

    Causal for the text tower; the vision tower (clip_vision.py) lets every token see all.
    """

    def __init__(
        self,
        config: CLIPTextConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any,
        param_dtype: Any,
        causal: bool = True,
    ):
        self.causal = causal
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        width = config.hidden_size

        def linear() -> nnx.Linear:
            return nnx.Linear(width, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.q_proj = linear()
        self.k_proj = linear()
        self.v_proj = linear()
        self.out_proj = linear()

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, _ = x.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q = self.q_proj(x).reshape(shape)
        k = self.k_proj(x).reshape(shape)
        v = self.v_proj(x).reshape(shape)
        # SD pipelines pass no padding mask, so none here.
        out = dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(out.reshape(batch, length, -1))


class CLIPMLP(nnx.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        self.act = _ACTIVATIONS[config.hidden_act]
        self.fc1 = nnx.Linear(
            config.hidden_size,
            config.intermediate_size,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.fc2 = nnx.Linear(
            config.intermediate_size,
            config.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(
        self,
        config: CLIPTextConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any,
        param_dtype: Any,
        causal: bool = True,
    ):
        kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype}
        self.self_attn = CLIPAttention(config, causal=causal, **kw)
        self.layer_norm1 = _layer_norm(config, **kw)
        self.mlp = CLIPMLP(config, **kw)
        self.layer_norm2 = _layer_norm(config, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    """The stack of encoder layers (text and vision towers share it; see CLIPAttention)."""

    def __init__(
        self,
        config: CLIPTextConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any,
        param_dtype: Any,
        causal: bool = True,
    ):
        kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype, "causal": causal}
        self.layers = nnx.List(
            [CLIPEncoderLayer(config, **kw) for _ in range(config.num_hidden_layers)]
        )


class CLIPTextModel(nnx.Module):
    """transformers' `CLIPTextModel`: returns (hidden states, pooled EOS features)."""

    def __init__(
        self,
        config: CLIPTextConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        self.config = config
        kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype}
        self.embeddings = CLIPTextEmbeddings(config, **kw)
        self.encoder = CLIPEncoder(config, **kw)
        self.final_layer_norm = _layer_norm(config, **kw)

    def _eos_index(self, input_ids: jax.Array) -> jax.Array:
        if self.config.eos_token_id == _LEGACY_EOS_TOKEN_ID:
            # Old configs (SD 1.x/2.x) carry the wrong eos id 2; transformers then pools at the
            # highest token id, which is the EOT token for the original CLIP vocabulary.
            return jnp.argmax(input_ids, axis=-1)
        # First EOS position: padding may reuse the EOS id, so later matches are ignored.
        return jnp.argmax(input_ids == self.config.eos_token_id, axis=-1)

    def encode(
        self, input_ids: jax.Array, *, skip_layers: int = 0, final_norm: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """Hidden states and unprojected pooled output; see `__call__`."""
        num_layers = len(self.encoder.layers)
        if not 0 <= skip_layers < num_layers:
            raise ValueError(f"skip_layers must be in [0, {num_layers}), got {skip_layers}")
        input_ids = jnp.asarray(input_ids, dtype=jnp.int32)
        x = self.embeddings(input_ids)
        kept = x
        for i, layer in enumerate(self.encoder.layers):
            x = layer(x)
            if i == num_layers - 1 - skip_layers:
                kept = x
        last = self.final_layer_norm(x)
        if skip_layers == 0:
            hidden = last if final_norm else x
        else:
            hidden = self.final_layer_norm(kept) if final_norm else kept
        # Pooling always reads the last layer, whatever clip-skip picks for the hidden states.
        index = self._eos_index(input_ids)
        pooled = jnp.take_along_axis(last, index[:, None, None], axis=1)[:, 0]
        return hidden, pooled

    def __call__(
        self, input_ids: jax.Array, *, skip_layers: int = 0, final_norm: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """Encodes int32 `input_ids` (batch, length).

        `hidden` is the output of the first `num_layers - skip_layers` layers, passed through
        `final_layer_norm` when `final_norm` (A1111/diffusers clip-skip; SDXL uses
        `skip_layers=1, final_norm=False`, i.e. transformers' `hidden_states[-2]`). `pooled` is
        the final-layer-norm output of the last layer at the EOS position (`pooler_output`).
        """
        return self.encode(input_ids, skip_layers=skip_layers, final_norm=final_norm)


class CLIPTextModelWithProjection(CLIPTextModel):
    """transformers' `CLIPTextModelWithProjection` (SDXL's second encoder): pooled is projected."""

    def __init__(
        self,
        config: CLIPTextConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        super().__init__(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.text_projection = nnx.Linear(
            config.hidden_size,
            config.projection_dim,
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(
        self, input_ids: jax.Array, *, skip_layers: int = 0, final_norm: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """As `CLIPTextModel.__call__`, with `pooled` = `text_projection(pooler_output)`."""
        hidden, pooled = self.encode(input_ids, skip_layers=skip_layers, final_norm=final_norm)
        return hidden, self.text_projection(pooled)


# transformers < 5 (every published SD checkpoint) nests the text tower under `text_model.`;
# transformers 5 saves a bare `CLIPTextModel` without it. Accept both.
_P = r"(?:text_model\.)?"


def clip_encoder_rules(prefix: str) -> tuple[Rule, ...]:
    """The encoder-layer rules the text and vision towers share (`CLIPEncoder`), under the
    tower's optional key prefix (`text_model.`, `vision_model.`)."""
    layer = prefix + r"encoder\.layers\.(\d+)\."
    return (
        Rule(
            layer + r"self_attn\.(q_proj|k_proj|v_proj|out_proj)\.weight",
            r"encoder.layers.\1.self_attn.\2.kernel",
            "linear",
        ),
        Rule(
            layer + r"self_attn\.(q_proj|k_proj|v_proj|out_proj)\.bias",
            r"encoder.layers.\1.self_attn.\2.bias",
        ),
        Rule(layer + r"mlp\.(fc1|fc2)\.weight", r"encoder.layers.\1.mlp.\2.kernel", "linear"),
        Rule(layer + r"mlp\.(fc1|fc2)\.bias", r"encoder.layers.\1.mlp.\2.bias"),
        Rule(layer + r"(layer_norm1|layer_norm2)\.weight", r"encoder.layers.\1.\2.scale"),
        Rule(layer + r"(layer_norm1|layer_norm2)\.bias", r"encoder.layers.\1.\2.bias"),
    )


CLIP_TEXT_RULES: tuple[Rule, ...] = (
    Rule(
        _P + r"embeddings\.token_embedding\.weight",
        "embeddings.token_embedding.embedding",
    ),
    Rule(
        _P + r"embeddings\.position_embedding\.weight",
        "embeddings.position_embedding.embedding",
    ),
    *clip_encoder_rules(_P),
    Rule(_P + r"final_layer_norm\.weight", "final_layer_norm.scale"),
    Rule(_P + r"final_layer_norm\.bias", "final_layer_norm.bias"),
)

CLIP_TEXT_PROJ_RULES: tuple[Rule, ...] = CLIP_TEXT_RULES + (
    Rule(r"text_projection\.weight", "text_projection.kernel", "linear"),
)

# Non-parameter buffers some checkpoints serialise (older transformers kept position_ids).
CLIP_TEXT_IGNORE: tuple[str, ...] = (_P + r"embeddings\.position_ids",)

CLIP_TEXT_SPEC = ComponentSpec(
    config_from_hf=CLIPTextConfig.from_hf,
    build=CLIPTextModel,
    rules=CLIP_TEXT_RULES,
    ignore=CLIP_TEXT_IGNORE,
)

CLIP_TEXT_PROJ_SPEC = ComponentSpec(
    config_from_hf=CLIPTextConfig.from_hf,
    build=CLIPTextModelWithProjection,
    rules=CLIP_TEXT_PROJ_RULES,
    ignore=CLIP_TEXT_IGNORE,
)
