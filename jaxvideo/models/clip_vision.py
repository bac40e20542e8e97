"""CLIP vision tower (transformers `CLIPVisionModel` / `CLIPVisionModelWithProjection`) in Flax NNX.

Wan 2.1 image-to-video conditions on `hidden_states[-2]` of CLIP ViT-H/14: the output of the
penultimate encoder layer, before `post_layernorm`. `__call__(pixels, output_layer=-2)` returns
exactly that and skips the last layer; `encode` gives the pooled (or projected) features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from jaxvideo.convert.core import Rule
from jaxvideo.models.clip import _ACTIVATIONS, CLIPEncoder, _layer_norm, clip_encoder_rules
from jaxvideo.models.registry import ComponentSpec

# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (CLIPImageProcessor's defaults).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


@dataclass(frozen=True)
class CLIPVisionConfig:
    """The subset of transformers' `CLIPVisionConfig` the vision tower needs.

    Defaults mirror transformers' so a config.json that omits a key behaves the same.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> CLIPVisionConfig:
        """Reads a transformers config.json dict; unknown keys are ignored."""
        names = cls.__dataclass_fields__
        config = cls(**{k: v for k, v in d.items() if k in names and v is not None})
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
        if not isinstance(config.image_size, int) or not isinstance(config.patch_size, int):
            raise ValueError("only square int image_size and patch_size are supported")
        if config.image_size % config.patch_size:
            raise ValueError(
                f"image_size {config.image_size} is not a multiple of patch_size "
                f"{config.patch_size}"
            )
        return config

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


class CLIPVisionEmbeddings(nnx.Module):
    """Patch embedding (conv, no bias) with a learned class token and absolute positions."""

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        self.image_size = config.image_size
        self.class_embedding = nnx.Param(
            jax.random.normal(rngs.params(), (config.hidden_size,), param_dtype)
        )
        self.patch_embedding = nnx.Conv(
            config.num_channels,
            config.hidden_size,
            (config.patch_size, config.patch_size),
            strides=config.patch_size,
            padding="VALID",
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.position_embedding = nnx.Embed(
            config.num_positions,
            config.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.dtype = dtype

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        batch, height, width, _ = pixel_values.shape
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"input image size {height}x{width} does not match the model's "
                f"{self.image_size}x{self.image_size}"
            )
        patches = self.patch_embedding(pixel_values)
        # Row-major patch order, as torch's flatten(2) of the NCHW conv output.
        patches = patches.reshape(batch, -1, patches.shape[-1])
        cls = jnp.broadcast_to(
            self.class_embedding[...].astype(self.dtype), (batch, 1, patches.shape[-1])
        )
        positions = self.position_embedding.embedding[...].astype(self.dtype)
        return jnp.concatenate([cls, patches], axis=1) + positions[None]


class CLIPVisionModel(nnx.Module):
    """transformers' `CLIPVisionModel` on NHWC pixels already resized and normalised."""

    def __init__(
        self,
        config: CLIPVisionConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        self.config = config
        kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype}
        self.embeddings = CLIPVisionEmbeddings(config, **kw)
        self.pre_layrnorm = _layer_norm(config, **kw)
        self.encoder = CLIPEncoder(config, causal=False, **kw)
        self.post_layernorm = _layer_norm(config, **kw)

    def __call__(self, pixel_values: jax.Array, *, output_layer: int = -1) -> jax.Array:
        """transformers' `hidden_states[output_layer]` for (B, H, W, C) `pixel_values`.

        `hidden_states[0]` is the pre-layernormed embedding and `hidden_states[i]` the output
        of encoder layer i (so -1 is `last_hidden_state`, -2 what Wan uses); layers after the
        requested one are not run. No `post_layernorm` is applied.
        """
        count = len(self.encoder.layers) + 1
        if not -count <= output_layer < count:
            raise ValueError(f"output_layer must be in [{-count}, {count}), got {output_layer}")
        x = self.pre_layrnorm(self.embeddings(jnp.asarray(pixel_values)))
        for layer in self.encoder.layers[: output_layer % count]:
            x = layer(x)
        return x

    def encode(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(`last_hidden_state`, `pooler_output` = post_layernorm of the class token)."""
        last = self(pixel_values)
        return last, self.post_layernorm(last[:, 0])


class CLIPVisionModelWithProjection(CLIPVisionModel):
    """transformers' `CLIPVisionModelWithProjection`: `encode` returns `image_embeds`."""

    def __init__(
        self,
        config: CLIPVisionConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        super().__init__(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.visual_projection = nnx.Linear(
            config.hidden_size,
            config.projection_dim,
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def encode(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(`last_hidden_state`, `image_embeds` = visual_projection(pooler_output))."""
        last, pooled = super().encode(pixel_values)
        return last, self.visual_projection(pooled)


def clip_preprocess(image: np.ndarray, size: int = 224) -> np.ndarray:
    """`CLIPImageProcessor()` defaults on one uint8 (H, W, 3) image -> float32 (size, size, 3).

    Shortest side resized to `size` (PIL bicubic), centre crop, scale to [0, 1], OpenAI CLIP
    mean/std normalisation.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    # transformers truncates the long side (int(), not round()).
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    resized = np.asarray(
        Image.fromarray(image).resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top : top + size, left : left + size]
    scaled = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    return (scaled - CLIP_MEAN) / CLIP_STD


# transformers 5 saves a bare `CLIPVisionModel` without the `vision_model.` prefix that
# transformers 4 (every published Wan checkpoint) and `CLIPVisionModelWithProjection` use.
_P = r"(?:vision_model\.)?"

CLIP_VISION_RULES: tuple[Rule, ...] = (
    Rule(_P + r"embeddings\.class_embedding", "embeddings.class_embedding"),
    Rule(
        _P + r"embeddings\.patch_embedding\.weight",
        "embeddings.patch_embedding.kernel",
        "conv2d",
    ),
    Rule(
        _P + r"embeddings\.position_embedding\.weight",
        "embeddings.position_embedding.embedding",
    ),
    Rule(_P + r"(pre_layrnorm|post_layernorm)\.weight", r"\1.scale"),
    Rule(_P + r"(pre_layrnorm|post_layernorm)\.bias", r"\1.bias"),
    *clip_encoder_rules(_P),
)

CLIP_VISION_PROJ_RULES: tuple[Rule, ...] = CLIP_VISION_RULES + (
    Rule(r"visual_projection\.weight", "visual_projection.kernel", "linear"),
)

# Non-parameter buffers older transformers serialised.
CLIP_VISION_IGNORE: tuple[str, ...] = (_P + r"embeddings\.position_ids",)

CLIP_VISION_SPEC = ComponentSpec(
    config_from_hf=CLIPVisionConfig.from_hf,
    build=CLIPVisionModel,
    rules=CLIP_VISION_RULES,
    ignore=CLIP_VISION_IGNORE,
)

CLIP_VISION_PROJ_SPEC = ComponentSpec(
    config_from_hf=CLIPVisionConfig.from_hf,
    build=CLIPVisionModelWithProjection,
    rules=CLIP_VISION_PROJ_RULES,
    ignore=CLIP_VISION_IGNORE,
)
