"""Text conditioning of the SD families: prompts -> cross-attention context (+ SDXL extras).

SD 1.x/2.x use one CLIP text encoder; SDXL concatenates the penultimate layers of two encoders
and adds the second encoder's projected pooled output and the size/crop `time_ids` to the UNet's
time embedding. Each conditioner returns [negative, positive] stacked on the batch axis; each
family row names its conditioner (`FamilySpec.conditioner`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvideo.prompts import pad_chunk_counts
from jaxvideo.tokenizers import load_tokenizer
from jaxvideo.weights import load_component


@dataclass(frozen=True)
class Conditioning:
    """`context` (2, L, D); `added` = (text_embeds (2, P), time_ids (2, 6)) for SDXL, else None."""

    context: jax.Array
    added: tuple[jax.Array, jax.Array] | None = None


class _Encoder:
    """One tokenizer + text encoder pair with a jit-compiled forward."""

    def __init__(self, model_dir: Path, tokenizer: str, encoder: str, dtype: str):
        self.tokenizer = load_tokenizer(str(model_dir / tokenizer))
        module = load_component(model_dir, encoder, dtype=dtype)
        self.num_layers = module.config.num_hidden_layers
        self._def, self._state = nnx.split(module)

    def __hash__(self) -> int:
        return id(self)

    @partial(jax.jit, static_argnums=(0, 3, 4))
    def _forward(self, state, ids, skip_layers: int, final_norm: bool):
        return nnx.merge(self._def, state)(ids, skip_layers=skip_layers, final_norm=final_norm)

    @property
    def state(self) -> nnx.State:
        return self._state

    def __call__(self, prompts: list[str], skip_layers: int, final_norm: bool, state=None):
        """Encodes [negative, positive] -> hidden (2, 77 * chunks, D), pooled (2, P).

        Prompts are split into 77-token chunks with A1111 emphasis weights; both prompts get
        the same number of chunks so they batch together under CFG. Pooled output comes from
        each prompt's first chunk.
        """
        negative, positive = (self.tokenizer.chunks(p) for p in prompts)
        pad_chunk_counts(negative, positive, self.tokenizer.chunks(""))
        count = len(negative.ids)
        ids = jnp.asarray(negative.ids + positive.ids, dtype=jnp.int32)
        hidden, pooled = self._forward(
            self._state if state is None else state, ids, skip_layers, final_norm
        )
        weights = np.asarray(negative.weights + positive.weights, dtype=np.float32)
        if not np.all(weights == 1.0):
            hidden = _apply_emphasis(hidden, jnp.asarray(weights))
        hidden = hidden.reshape(2, count * hidden.shape[1], hidden.shape[2])
        return hidden, pooled[jnp.asarray([0, count])]


def _apply_emphasis(hidden: jax.Array, weights: jax.Array) -> jax.Array:
    """Scales each token's embedding by its weight, then restores each chunk's mean (A1111)."""
    original_mean = hidden.mean(axis=(1, 2), keepdims=True)
    weighted = hidden * weights[:, :, None]
    return weighted * (original_mean / weighted.mean(axis=(1, 2), keepdims=True))


class TextConditioner:
    """Loads the family's encoders (component -> tokenizer folder in `ENCODERS`) and encodes
    [negative, positive] with optional LoRA-merged weights by component name."""

    ENCODERS: dict[str, str] = {}

    def __init__(self, model_dir: Path, dtype: str):
        self.encoders = {
            name: _Encoder(model_dir, tokenizer, name, dtype)
            for name, tokenizer in self.ENCODERS.items()
        }

    @property
    def max_clip_skip(self) -> int:
        """The deepest A1111 clip skip the encoders have layers for (N: the N-th from last)."""
        return min(encoder.num_layers for encoder in self.encoders.values())

    def states(self) -> dict[str, nnx.State]:
        """Text encoder weights by component name (what LoRAs patch)."""
        return {name: encoder.state for name, encoder in self.encoders.items()}

    def __call__(
        self,
        prompt: str,
        negative_prompt: str,
        clip_skip: int,
        width: int,
        height: int,
        states: dict[str, nnx.State] | None = None,
    ) -> Conditioning:
        states = states or {}

        def encode(name: str, skip_layers: int, final_norm: bool):
            return self.encoders[name](
                [negative_prompt, prompt], skip_layers, final_norm, states.get(name)
            )

        return self.condition(encode, negative_prompt, clip_skip, width, height)

    def condition(self, encode, negative_prompt, clip_skip, width, height) -> Conditioning:
        raise NotImplementedError


class ClipConditioner(TextConditioner):
    """SD 1.x / 2.x: the final-norm hidden states of one CLIP encoder (A1111 clip skip)."""

    ENCODERS = {"text_encoder": "tokenizer"}

    def condition(self, encode, negative_prompt, clip_skip, width, height) -> Conditioning:
        # A1111 clip skip: 1 (or <= 0: default) is the last layer, 2 the penultimate, ...
        hidden, _ = encode("text_encoder", max(clip_skip, 1) - 1, True)
        return Conditioning(hidden)


class SDXLConditioner(TextConditioner):
    """SDXL: both encoders' penultimate layers (no final norm), pooled text_embeds, time_ids."""

    ENCODERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}

    def condition(self, encode, negative_prompt, clip_skip, width, height) -> Conditioning:
        # SDXL always reads the penultimate layer; A1111 clip skip N > 2 goes further back.
        skip_layers = max(clip_skip, 2) - 1
        hidden_1, _ = encode("text_encoder", skip_layers, False)
        hidden_2, pooled = encode("text_encoder_2", skip_layers, False)
        context = jnp.concatenate([hidden_1, hidden_2], axis=-1)
        if not negative_prompt:
            # diffusers' force_zeros_for_empty_prompt: no negative prompt means zero conditioning.
            context = context.at[0].set(0.0)
            pooled = pooled.at[0].set(0.0)
        # (original size, crop top-left, target size), the same for both halves.
        time_ids = jnp.asarray([[height, width, 0, 0, height, width]] * 2, jnp.float32)
        return Conditioning(context, (pooled, time_ids))


class SDXLRefinerConditioner(TextConditioner):
    """The SDXL refiner: only the second (OpenCLIP bigG) encoder, and an aesthetic score in
    place of the crop/target-size time ids. Empty negative prompts are encoded, not zeroed
    (the refiner's force_zeros_for_empty_prompt is false)."""

    ENCODERS = {"text_encoder_2": "tokenizer_2"}
    AESTHETIC_SCORE = 6.0
    NEGATIVE_AESTHETIC_SCORE = 2.5

    def condition(self, encode, negative_prompt, clip_skip, width, height) -> Conditioning:
        hidden, pooled = encode("text_encoder_2", max(clip_skip, 2) - 1, False)
        time_ids = jnp.asarray(
            [
                [height, width, 0, 0, self.NEGATIVE_AESTHETIC_SCORE],
                [height, width, 0, 0, self.AESTHETIC_SCORE],
            ],
            jnp.float32,
        )
        return Conditioning(hidden, (pooled, time_ids))
