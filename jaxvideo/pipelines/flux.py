"""Flux.1 (dev, schnell, Kontext): CLIP pooled text + T5 tokens -> flow sampler over the
packed-token transformer -> 16-channel VAE. Matches diffusers' FluxPipeline,
FluxImg2ImgPipeline, FluxInpaintPipeline and FluxKontextPipeline from the same noise.

Guidance comes in two kinds: the distilled guidance scale dev and Kontext models embed
(`distilled_guidance`, one forward per step) and true classifier-free guidance with a
negative prompt (`guidance_scale` > 1, two forwards; diffusers' `true_cfg_scale`). schnell
has neither by default. Kontext reference images are encoded and appended to the image
tokens at their own positions (`reference_positions`); only the target's tokens are denoised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvideo.cost import NetworkCall, Shape, spec
from jaxvideo.errors import InvalidRequest
from jaxvideo.media import resize_image
from jaxvideo.models.flux import flux_rope
from jaxvideo.pipelines.base import Plan
from jaxvideo.pipelines.flow_image import LATENT_SCALE, FlowImagePipeline, flow_timestep
from jaxvideo.request import GenerationRequest
from jaxvideo.sharding import constrain
from jaxvideo.tokenizers import load_tokenizer, t5_token_ids
from jaxvideo.weights import load_component

# diffusers' FluxPipeline default max_sequence_length (T5 tokens); a folder may set its own.
TEXT_LENGTH = 512
# FluxPipeline's `calculate_shift` defaults, used where the scheduler config has none.
SHIFT_DEFAULTS = {
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}
# FluxKontextPipeline's PREFERRED_KONTEXT_RESOLUTIONS (width, height): what the model was
# trained at; `auto_resize_ref_image` picks the one closest in aspect ratio.
KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248),
    (880, 1184), (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832),
    (1328, 800), (1392, 752), (1456, 720), (1504, 688), (1568, 672),
)  # fmt: skip


def pack(latents: jax.Array) -> jax.Array:
    """(B, h, w, C) -> (B, h/2 * w/2, 4C) tokens of 2x2 patches, channels (C, dy, dx) as
    diffusers' `_pack_latents`."""
    b, h, w, c = latents.shape
    x = latents.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack(tokens: jax.Array, h: int, w: int) -> jax.Array:
    """The inverse of `pack` for an (h, w) latent."""
    b, _, channels = tokens.shape
    c = channels // 4
    x = tokens.reshape(b, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h, w, c)


def image_positions(rows: int, cols: int, index: int = 0, offset=(0, 0)) -> np.ndarray:
    """(rows * cols, 3) token positions (index, row, column) of a packed latent."""
    ids = np.zeros((rows, cols, 3), np.float32)
    ids[..., 0] = index
    ids[..., 1] = np.arange(rows)[:, None] + offset[0]
    ids[..., 2] = np.arange(cols)[None, :] + offset[1]
    return ids.reshape(-1, 3)


def reference_positions(
    sizes: Sequence[tuple[int, int]], increase_ref_index: bool
) -> list[np.ndarray]:
    """Positions of reference images' tokens; `sizes` are their latent (rows, cols).

    One reference sits at index 1 (FluxKontextPipeline). Several follow stable-diffusion.cpp's
    `gen_refs_ids`: with `increase_ref_index` each gets the next index at offset 0; otherwise
    all share index 1 and each is placed below or to the right of the ones before it,
    whichever keeps the layout squarer. Its offsets count latent pixels, not tokens.
    """
    positions, h_used, w_used = [], 0, 0
    for i, (rows, cols) in enumerate(sizes):
        if increase_ref_index:
            positions.append(image_positions(rows // 2, cols // 2, 1 + i))
            continue
        offset = (0, w_used) if rows + h_used > cols + w_used else (h_used, 0)
        positions.append(image_positions(rows // 2, cols // 2, 1, offset))
        h_used = max(h_used, rows + offset[0])
        w_used = max(w_used, cols + offset[1])
    return positions


def kontext_size(width: int, height: int) -> tuple[int, int]:
    """The preferred Kontext resolution closest in aspect ratio to width x height."""
    aspect = width / height
    return min(KONTEXT_RESOLUTIONS, key=lambda wh: abs(aspect - wh[0] / wh[1]))


class FluxPipeline(FlowImagePipeline):
    """One loaded Flux.1 model: CLIP-L, T5-XXL, the transformer, the 16-channel VAE."""

    def __init__(self, model_dir: str | Path, dtype: str = "fp32"):
        super().__init__(model_dir, dtype)
        transformer = load_component(self.model_dir, "transformer", dtype=dtype)
        self.transformer_config = transformer.config
        self._dit_def, self._dit_state = nnx.split(transformer)
        self.dtype = jax.tree.leaves(self._dit_state)[0].dtype
        self.clip_tokenizer = load_tokenizer(str(self.model_dir / "tokenizer"))
        self._clip_def, self._clip_state = nnx.split(
            load_component(self.model_dir, "text_encoder", dtype=dtype)
        )
        self.t5_tokenizer = str(self.model_dir / "tokenizer_2")
        self._t5_def, self._t5_state = nnx.split(
            load_component(self.model_dir, "text_encoder_2", dtype=dtype)
        )
        self.text_length = int(self.index.get("max_sequence_length", TEXT_LENGTH))
        self.distilled = self.transformer_config.guidance_embeds
        self.kontext = "Kontext" in str(self.index.get("source_class") or "")
        own = self.index.get("defaults", {})
        if not self.distilled:
            # schnell: no distilled guidance, 4 steps (its published setting).
            self._defaults.pop("distilled_guidance", None)
            self._defaults["steps"] = own.get("steps", 4)
        elif self.kontext:
            self._defaults["distilled_guidance"] = own.get("distilled_guidance", 2.5)

    __hash__ = FlowImagePipeline.__hash__

    @classmethod
    def component_mismatches(cls, configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
        dit = configs.get("transformer", {})
        problems = []
        for name, key, want in (
            ("text_encoder", "hidden_size", dit.get("pooled_projection_dim")),
            ("text_encoder_2", "d_model", dit.get("joint_attention_dim")),
        ):
            have = configs.get(name, {}).get(key)
            if have is not None and want is not None and have != want:
                problems.append(f"{name} is {have} wide, the transformer expects {want}")
        channels = configs.get("vae", {}).get("latent_channels")
        if channels is not None and dit.get("in_channels") not in (None, 4 * channels):
            problems.append(
                f"the VAE has {channels} latent channels, the transformer takes "
                f"{dit.get('in_channels')} (4 per channel: 2x2 patches)"
            )
        return problems

    @classmethod
    def network_calls(
        cls, configs: Mapping[str, Mapping[str, Any]], index: Mapping[str, Any], shape: Shape
    ) -> list[NetworkCall]:
        dit = configs["transformer"]
        rows = shape.copies
        text = int(index.get("max_sequence_length", TEXT_LENGTH))
        tokens = (shape.height // (2 * LATENT_SCALE)) * (shape.width // (2 * LATENT_SCALE))
        rope = spec((text + tokens, dit.get("attention_head_dim", 128) // 2))
        args = [
            spec((rows, tokens, dit.get("in_channels", 64))),
            spec((rows,)),
            spec((rows, text, dit.get("joint_attention_dim", 4096))),
            spec((rows, dit.get("pooled_projection_dim", 768))),
            (rope, rope),
        ]
        if dit.get("guidance_embeds"):
            args.append(spec((rows,)))
        denoiser = NetworkCall(
            "transformer", "denoiser", tuple(args), split=(("batch", rows), ("seq", None))
        )
        return [denoiser, cls.decoder_call(configs, shape)]

    # --- what the engine reports ---------------------------------------------------------------

    @property
    def features(self) -> Mapping[str, tuple[str, ...]]:
        features = ["init_image", "mask_image", "lora", "flow_shift"]
        if self.distilled:
            features.append("distilled_guidance")
        if self.kontext:
            features.append("ref_images")
        return {"img_gen": tuple(features)}

    # --- schedule ------------------------------------------------------------------------------

    def default_shift(self, req: GenerationRequest) -> float:
        """dev/Kontext: diffusers' resolution-dependent shift exp(mu) (its exponential time
        shift with mu is this linear one with s = e^mu); schnell: the config's fixed shift."""
        config = self.scheduler_config
        if not config.get("use_dynamic_shifting", False):
            return float(config.get("shift", 1.0))
        c = {key: float(config.get(key, value)) for key, value in SHIFT_DEFAULTS.items()}
        tokens = (req.height // (2 * LATENT_SCALE)) * (req.width // (2 * LATENT_SCALE))
        slope = (c["max_shift"] - c["base_shift"]) / (
            c["max_image_seq_len"] - c["base_image_seq_len"]
        )
        mu = c["base_shift"] + slope * (tokens - c["base_image_seq_len"])
        return math.exp(mu)

    def flow_times(self, steps: int, shift: float) -> np.ndarray:
        # FluxPipeline: np.linspace(1.0, 1 / steps, steps), shifted by the scheduler.
        return np.linspace(1.0, 1.0 / steps, steps)

    # --- requests ------------------------------------------------------------------------------

    def validate(self, req: GenerationRequest) -> Plan:
        plan = self.validate_common(req)
        if req.distilled_guidance is not None and not self.distilled:
            raise InvalidRequest(
                "this Flux model has no distilled guidance (schnell); use guidance_scale",
                "distilled_guidance",
            )
        if req.ref_images and not self.kontext:
            raise InvalidRequest("reference images need a Flux Kontext model", "ref_images")
        if req.clip_skip not in (-1, 0, 1):
            raise InvalidRequest("clip_skip does not apply to Flux models", "clip_skip")
        return plan

    # --- compiled pieces -----------------------------------------------------------------------

    @partial(jax.jit, static_argnums=(0,))
    def _encode_text(self, clip_state, t5_state, clip_ids, t5_ids):
        """CLIP's pooled output (B, 768) and T5's tokens (B, L, 4096); diffusers passes T5
        no attention mask, so padding tokens are attended to as they are in training."""
        _, pooled = nnx.merge(self._clip_def, clip_state)(clip_ids)
        hidden = nnx.merge(self._t5_def, t5_state)(t5_ids, jnp.ones_like(t5_ids))
        return hidden.astype(jnp.float32), pooled.astype(jnp.float32)

    @partial(jax.jit, static_argnums=(0, 10))
    def _velocity(self, state, x, t, context, pooled, rope, guidance, refs, cfg_scale, use_cfg):
        """Velocity of latents (B, h, w, C) at transformer timestep `t`, with true CFG when
        `use_cfg` ([negative, positive] halves of `context` and `pooled`)."""
        model = nnx.merge(self._dit_def, state)
        b, h, w, _ = x.shape
        tokens = pack(x)
        if refs is not None:
            tokens = jnp.concatenate([tokens, refs], axis=1)
        tokens = constrain(tokens.astype(self.dtype), "batch", "seq", None)
        copies = 2 if use_cfg else 1
        tokens = jnp.concatenate([tokens] * copies)
        times = jnp.full((copies * b,), t, jnp.float32)
        g = None if guidance is None else jnp.full((copies * b,), guidance, jnp.float32)
        v = model(tokens, times, context, pooled, rope, g).astype(jnp.float32)
        v = v[:, : (h // 2) * (w // 2)]
        if use_cfg:
            negative, positive = jnp.split(v, 2)
            v = negative + cfg_scale * (positive - negative)
        return unpack(v, h, w)

    # --- sampling ------------------------------------------------------------------------------

    def text_conditioning(self, req: GenerationRequest, states, use_cfg: bool):
        """(context (n, L, D), pooled (n, P)): the prompt, or [negative, prompt] under CFG."""
        prompts = [req.negative_prompt, req.prompt] if use_cfg else [req.prompt]
        clip_ids = self.clip_tokenizer(prompts)
        t5_ids, _ = t5_token_ids(self.t5_tokenizer, prompts, self.text_length, clean=False)
        return self._encode_text(
            states["text_encoder"],
            states["text_encoder_2"],
            jnp.asarray(clip_ids),
            jnp.asarray(t5_ids),
        )

    def reference_tokens(
        self, req: GenerationRequest, keys: jax.Array
    ) -> tuple[jax.Array | None, list[np.ndarray]]:
        """Kontext: packed reference latents (B, S_ref, 4C) and their positions."""
        if not req.ref_images:
            return None, []
        encoded, sizes = [], []
        for i, image in enumerate(req.ref_images):
            height, width = image.shape[:2]
            if req.auto_resize_ref_image:
                width, height = kontext_size(width, height)
            multiple = 2 * LATENT_SCALE
            width, height = (width // multiple) * multiple, (height // multiple) * multiple
            if width < multiple or height < multiple:
                raise InvalidRequest(f"reference image {i} is smaller than {multiple} px")
            # FluxKontextPipeline encodes references to the posterior mean ("argmax").
            latents = self.encode_mean(resize_image(image, width, height))
            encoded.append(jnp.repeat(pack(latents), keys.shape[0], axis=0))
            sizes.append((height // LATENT_SCALE, width // LATENT_SCALE))
        positions = reference_positions(sizes, req.increase_ref_index)
        return jnp.concatenate(encoded, axis=1), positions

    def velocity_model(self, req: GenerationRequest, batch: int, states, keys, sigmas):
        use_cfg = req.guidance_scale > 1.0
        context, pooled = self.text_conditioning(req, states, use_cfg)
        context = jnp.repeat(context, batch, axis=0).astype(self.dtype)
        pooled = jnp.repeat(pooled, batch, axis=0).astype(self.dtype)
        refs, ref_positions = self.reference_tokens(req, keys)
        rows, cols = req.height // (2 * LATENT_SCALE), req.width // (2 * LATENT_SCALE)
        positions = np.concatenate(
            [np.zeros((context.shape[1], 3), np.float32), image_positions(rows, cols)]
            + ref_positions
        )
        rope = tuple(jnp.asarray(a) for a in flux_rope(positions, self.transformer_config))
        guidance = None
        if self.distilled:
            scale = req.distilled_guidance
            default = self.defaults.get("distilled_guidance", 3.5)
            guidance = jnp.float32(default if scale is None else scale)

        def velocity(x: jax.Array, sigma: float) -> jax.Array:
            # diffusers feeds (sigma * 1000 in float32) / 1000; the network scales it back.
            t = np.float32(flow_timestep(sigma)) / np.float32(1000)
            return self._velocity(
                states["transformer"],
                x,
                jnp.float32(t),
                context,
                pooled,
                rope,
                guidance,
                refs,
                jnp.float32(req.guidance_scale),
                use_cfg,
            )

        return velocity

    def lora_components(self) -> dict[str, nnx.State]:
        return {
            "transformer": self._dit_state,
            "text_encoder": self._clip_state,
            "text_encoder_2": self._t5_state,
        }
