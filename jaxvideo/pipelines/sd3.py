"""Stable Diffusion 3 / 3.5: CLIP-L + CLIP-G (+ T5) text -> flow sampler with classifier-free
and skip-layer guidance over the MMDiT -> 16-channel VAE. Matches diffusers'
StableDiffusion3Pipeline, StableDiffusion3Img2ImgPipeline and StableDiffusion3InpaintPipeline
from the same noise.

The context is both CLIP encoders' penultimate layers side by side, zero-padded to T5's width,
followed by T5's tokens (zeros when the folder has no T5, as diffusers allows). Skip-layer
guidance (SD3.5) runs a third forward without some blocks between two fractions of the steps
and pushes the prediction away from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvideo.cost import NetworkCall, Shape, spec
from jaxvideo.errors import InvalidRequest
from jaxvideo.pipelines.base import Plan
from jaxvideo.pipelines.flow_image import LATENT_SCALE, FlowImagePipeline, flow_timestep, step_index
from jaxvideo.pipelines.sd_conditioning import Conditioning, TextConditioner
from jaxvideo.request import GenerationRequest
from jaxvideo.sampling.flow_schedules import NUM_TRAIN_TIMESTEPS, time_shift
from jaxvideo.tokenizers import t5_token_ids
from jaxvideo.weights import load_component

# StableDiffusion3Pipeline's default max_sequence_length (T5 tokens); a folder may set its own.
TEXT_LENGTH = 256
CLIP_TOKENS = 77  # CLIP-L/G tokens ahead of T5's in the joint context


class SD3Conditioner(TextConditioner):
    """Both CLIP encoders' penultimate layers (no final norm) side by side, and their pooled
    projections concatenated. Empty negative prompts are encoded, not zeroed."""

    ENCODERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}

    def condition(self, encode, negative_prompt, clip_skip, width, height) -> Conditioning:
        # diffusers' clip_skip k reads hidden_states[-(k + 2)]; A1111's N is the N-th from last.
        skip_layers = max(clip_skip, 2) - 1
        hidden_1, pooled_1 = encode("text_encoder", skip_layers, False)
        hidden_2, pooled_2 = encode("text_encoder_2", skip_layers, False)
        context = jnp.concatenate([hidden_1, hidden_2], axis=-1)
        return Conditioning(context, (jnp.concatenate([pooled_1, pooled_2], axis=-1),))


class StableDiffusion3Pipeline(FlowImagePipeline):
    """One loaded SD3 / SD3.5 model: CLIP-L, CLIP-G, optional T5-XXL, the MMDiT, the VAE."""

    def __init__(self, model_dir: str | Path, dtype: str = "fp32"):
        super().__init__(model_dir, dtype)
        transformer = load_component(self.model_dir, "transformer", dtype=dtype)
        self.transformer_config = transformer.config
        self._dit_def, self._dit_state = nnx.split(transformer)
        self.dtype = jax.tree.leaves(self._dit_state)[0].dtype
        self.conditioner = SD3Conditioner(self.model_dir, dtype)
        self.t5_tokenizer = str(self.model_dir / "tokenizer_3")
        self._t5 = None
        if (self.model_dir / "text_encoder_3").is_dir():
            self._t5 = nnx.split(load_component(self.model_dir, "text_encoder_3", dtype=dtype))
        self.text_length = int(self.index.get("max_sequence_length", TEXT_LENGTH))

    __hash__ = FlowImagePipeline.__hash__

    @classmethod
    def component_mismatches(cls, configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
        dit = configs.get("transformer", {})
        problems = []
        pooled = sum(
            int(configs.get(name, {}).get("projection_dim", 0))
            for name in ("text_encoder", "text_encoder_2")
        )
        if dit.get("pooled_projection_dim") not in (None, pooled):
            problems.append(
                f"the CLIP encoders project to {pooled} together, the transformer expects "
                f"{dit.get('pooled_projection_dim')}"
            )
        clip = sum(
            int(configs.get(name, {}).get("hidden_size", 0))
            for name in ("text_encoder", "text_encoder_2")
        )
        if dit.get("joint_attention_dim") is not None and clip > dit["joint_attention_dim"]:
            problems.append(
                f"the CLIP encoders are {clip} wide together, more than the transformer's "
                f"joint_attention_dim {dit['joint_attention_dim']}"
            )
        t5 = configs.get("text_encoder_3", {}).get("d_model")
        if t5 is not None and dit.get("joint_attention_dim") not in (None, t5):
            problems.append(
                f"text_encoder_3 is {t5} wide, the transformer expects "
                f"{dit.get('joint_attention_dim')}"
            )
        channels = configs.get("vae", {}).get("latent_channels")
        if channels is not None and dit.get("in_channels") not in (None, channels):
            problems.append(
                f"the VAE has {channels} latent channels, the transformer takes "
                f"{dit.get('in_channels')}"
            )
        return problems

    @classmethod
    def network_calls(
        cls, configs: Mapping[str, Mapping[str, Any]], index: Mapping[str, Any], shape: Shape
    ) -> list[NetworkCall]:
        dit = configs["transformer"]
        rows, h, w = shape.copies, shape.height // LATENT_SCALE, shape.width // LATENT_SCALE
        text = CLIP_TOKENS + int(index.get("max_sequence_length", TEXT_LENGTH))
        args = (
            spec((rows, h, w, dit.get("in_channels", 16))),
            spec((rows,)),
            spec((rows, text, dit.get("joint_attention_dim", 4096))),
            spec((rows, dit.get("pooled_projection_dim", 2048))),
        )
        denoiser = NetworkCall(
            "transformer", "denoiser", args, split=(("batch", rows), ("seq", None))
        )
        return [denoiser, cls.decoder_call(configs, shape)]

    # --- what the engine reports ---------------------------------------------------------------

    @property
    def features(self) -> Mapping[str, tuple[str, ...]]:
        return {"img_gen": ("init_image", "mask_image", "lora", "clip_skip", "slg", "flow_shift")}

    # --- schedule ------------------------------------------------------------------------------

    def default_shift(self, req: GenerationRequest) -> float:
        return float(self.scheduler_config.get("shift", 3.0))

    def flow_times(self, steps: int, shift: float) -> np.ndarray:
        """FlowMatchEuler without given sigmas: evenly spaced timesteps from its largest to its
        smallest training sigma (t = 1 / 1000, already shifted), then shifted again."""
        return np.linspace(1.0, float(time_shift(1 / NUM_TRAIN_TIMESTEPS, shift)), steps)

    # --- requests ------------------------------------------------------------------------------

    def validate(self, req: GenerationRequest) -> Plan:
        plan = self.validate_common(req)
        if req.distilled_guidance is not None:
            raise InvalidRequest(
                "SD3 models have no distilled guidance; use guidance_scale", "distilled_guidance"
            )
        if req.ref_images:
            raise InvalidRequest("SD3 models take no reference images", "ref_images")
        if req.clip_skip > self.conditioner.max_clip_skip:
            depth = self.conditioner.max_clip_skip
            raise InvalidRequest(
                f"clip_skip must be at most {depth}: the text encoders have {depth} layers",
                "clip_skip",
            )
        slg = req.slg
        if slg is not None and slg.scale:
            layers = self.transformer_config.num_layers
            bad = [i for i in slg.layers if not 0 <= i < layers]
            if bad or not slg.layers:
                raise InvalidRequest(
                    f"slg.layers must be block indices within [0, {layers - 1}], got "
                    f"{list(slg.layers)}",
                    "slg",
                )
            if not 0 <= slg.layer_start <= slg.layer_end <= 1:
                raise InvalidRequest(
                    "slg.layer_start and slg.layer_end must satisfy 0 <= start <= end <= 1",
                    "slg",
                )
        return plan

    # --- compiled pieces -----------------------------------------------------------------------

    @partial(jax.jit, static_argnums=(0,))
    def _encode_t5(self, state, ids: jax.Array) -> jax.Array:
        # diffusers passes T5 no attention mask.
        return nnx.merge(self._t5[0], state)(ids, jnp.ones_like(ids)).astype(jnp.float32)

    @partial(jax.jit, static_argnums=(0, 8, 9))
    def _velocity(self, state, x, t, context, pooled, cfg_scale, slg_scale, use_cfg, skip):
        """Velocity with CFG ([negative, positive] halves of `context`) and, when `skip`
        names blocks, skip-layer guidance away from the positive prediction without them."""
        model = nnx.merge(self._dit_def, state)
        b = x.shape[0]
        copies = 2 if use_cfg else 1
        x_in = jnp.concatenate([x.astype(self.dtype)] * copies)
        v = model(x_in, jnp.full((copies * b,), t, jnp.float32), context, pooled)
        v = v.astype(jnp.float32)
        if not use_cfg:
            return v
        negative, positive = jnp.split(v, 2)
        out = negative + cfg_scale * (positive - negative)
        if skip:
            skipped = model(
                x.astype(self.dtype), jnp.full((b,), t, jnp.float32), context[b:], pooled[b:], skip
            )
            out = out + slg_scale * (positive - skipped.astype(jnp.float32))
        return out

    # --- sampling ------------------------------------------------------------------------------

    def text_conditioning(self, req: GenerationRequest, states) -> tuple[jax.Array, jax.Array]:
        """[negative, positive] context (2, 77k + T5 tokens, joint dim) and pooled (2, P)."""
        cond = self.conditioner(
            req.prompt, req.negative_prompt, req.clip_skip, req.width, req.height, states
        )
        width = self.transformer_config.joint_attention_dim
        prompts = [req.negative_prompt, req.prompt]
        if self._t5 is None:
            t5 = jnp.zeros((2, self.text_length, width), jnp.float32)
        else:
            ids, _ = t5_token_ids(self.t5_tokenizer, prompts, self.text_length, clean=False)
            t5 = self._encode_t5(states["text_encoder_3"], jnp.asarray(ids))
        clip = cond.context.astype(jnp.float32)
        clip = jnp.pad(clip, ((0, 0), (0, 0), (0, width - clip.shape[-1])))
        return jnp.concatenate([clip, t5], axis=1), cond.added[0].astype(jnp.float32)

    def velocity_model(self, req: GenerationRequest, batch: int, states, keys, sigmas):
        use_cfg = req.guidance_scale > 1.0
        context, pooled = self.text_conditioning(req, states)
        halves = [0, 1] if use_cfg else [1]

        def rows(x: jax.Array) -> jax.Array:
            return jnp.concatenate([jnp.repeat(x[i : i + 1], batch, axis=0) for i in halves])

        context, pooled = rows(context).astype(self.dtype), rows(pooled).astype(self.dtype)
        slg = req.slg
        skip_layers = tuple(slg.layers) if slg is not None and slg.scale and use_cfg else ()
        steps = len(sigmas) - 1

        def velocity(x: jax.Array, sigma: float) -> jax.Array:
            i = step_index(sigmas, sigma)
            # diffusers: skip-layer guidance strictly between the two fractions of the steps.
            in_window = skip_layers and slg.layer_start * steps < i < slg.layer_end * steps
            return self._velocity(
                states["transformer"],
                x,
                jnp.float32(flow_timestep(sigma)),
                context,
                pooled,
                jnp.float32(req.guidance_scale),
                jnp.float32(slg.scale if slg is not None else 0.0),
                use_cfg,
                skip_layers if in_window else (),
            )

        return velocity

    def lora_components(self) -> dict[str, nnx.State]:
        base = {"transformer": self._dit_state, **self.conditioner.states()}
        if self._t5 is not None:
            base["text_encoder_3"] = self._t5[1]
        return base
