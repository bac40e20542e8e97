"""Wan 2.1 / 2.2 video: prompt -> UMT5 context -> flow-matching sampler over the transformer(s)
-> causal video VAE decoded latent frame by latent frame.

Variants, told apart by the converted folder: text-to-video (transformer input = latents);
image-to-video and first/last-frame (Wan 2.1 I2V/FLF2V, Wan 2.2 I2V: input = latents + frame
mask + VAE latents of the conditioning video, and for Wan 2.1 CLIP image tokens); Wan 2.2's two
experts (`transformer` above the noise boundary, `transformer_2` below it); Wan 2.2 TI2V
(`expand_timesteps`: the first latent frame is pinned to the image and gets timestep 0).

A text-to-video model given a first frame (sd.cpp `init_image`, or a continuation) pins the
first latent frame to the image's latents, as inpainting does over time: the VAE is causal, so
that latent frame encodes exactly one picture.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvideo.cost import NetworkCall, Shape, spec
from jaxvideo.errors import InvalidRequest
from jaxvideo.lora import LoraCache
from jaxvideo.media import resize_image
from jaxvideo.pipelines.base import (
    CancelledFn,
    Pipeline,
    Plan,
    ProgressFn,
    image_result,
    result_info,
    seeded_noise,
    step_reporter,
    stop_if_cancelled,
    to_uint8,
)
from jaxvideo.request import GenerationRequest, HighNoiseParams
from jaxvideo.results import GenerationResult, round_frames
from jaxvideo.sampling import DEFAULT_NAMES, flow_sigmas, resolve_sampler, sampler_function
from jaxvideo.sampling.cache_modes import DIT_MODES, TEACACHE
from jaxvideo.sharding import constrain, to_host
from jaxvideo.tokenizers import t5_token_ids
from jaxvideo.weights import load_component, read_config

TEMPORAL_SCALE = 4  # the Wan VAE's frame compression: 4n + 1 frames -> n + 1 latent frames
SPATIAL_SCALE = 8
CLIP_IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224 px: 16 x 16 patches + the class token
TEXT_LENGTH = 512  # diffusers' max_sequence_length for Wan


@dataclass(frozen=True)
class WanPlan(Plan):
    """A Wan request's plan: also the high-noise stage's sampler, when it has one of its own."""

    high_sampler: str | None = None


def frame_count(requested: int) -> int:
    """The largest 4n + 1 not above `requested` (34 -> 33, 32 -> 29); at least 1."""
    return round_frames(requested, TEMPORAL_SCALE)


class WanPipeline(Pipeline):
    """One loaded Wan model: UMT5 encoder, one or two transformers, video VAE, [CLIP vision]."""

    frame_multiple = TEMPORAL_SCALE
    cache_modes = (*DIT_MODES, TEACACHE)

    def __init__(self, model_dir: str | Path, dtype: str = "fp32"):
        super().__init__(model_dir, dtype)
        self.boundary_ratio = self.index.get("boundary_ratio")
        self.expand_timesteps = bool(self.index.get("expand_timesteps", False))

        scheduler_path = self.model_dir / "scheduler" / "scheduler_config.json"
        scheduler = json.loads(scheduler_path.read_text()) if scheduler_path.is_file() else {}
        self.flow_shift = float(scheduler.get("flow_shift") or scheduler.get("shift") or 3.0)
        self.num_train_timesteps = int(scheduler.get("num_train_timesteps", 1000))

        self.tokenizer_dir = str(self.model_dir / "tokenizer")
        self._text_def, self._text_state = nnx.split(
            load_component(self.model_dir, "text_encoder", dtype=dtype)
        )
        vae_config = read_config(self.model_dir / "vae")
        self.z_dim = int(vae_config.get("z_dim", 16))
        self.latents_mean = jnp.asarray(vae_config["latents_mean"], jnp.float32)
        self.latents_std = jnp.asarray(vae_config["latents_std"], jnp.float32)
        self._vae_def, self._vae_state = nnx.split(
            load_component(self.model_dir, "vae", dtype=dtype)
        )
        self._experts: dict[str, tuple[nnx.GraphDef, nnx.State]] = {}
        for name in ("transformer", "transformer_2"):
            if (self.model_dir / name).is_dir():
                self._experts[name] = nnx.split(load_component(self.model_dir, name, dtype=dtype))
        if "transformer" not in self._experts:
            raise ValueError(f"{model_dir}: no transformer component")
        if "transformer_2" in self._experts and self.boundary_ratio is None:
            raise ValueError(f"{model_dir}: two transformers but no boundary_ratio")
        transformer_config = read_config(self.model_dir / "transformer")
        self.in_channels = int(transformer_config["in_channels"])
        self.patch_size = tuple(transformer_config.get("patch_size", (1, 2, 2)))
        # Image conditioning through the input channels: latents + 4 mask + z_dim image latents.
        self.is_i2v = self.in_channels == 2 * self.z_dim + TEMPORAL_SCALE
        self.image_tokens = transformer_config.get("image_dim") is not None
        self._image_encoder = None
        self.clip_size = _clip_crop_size(self.model_dir / "image_processor")
        if self.image_tokens:
            self._image_encoder = nnx.split(
                load_component(self.model_dir, "image_encoder", dtype=dtype)
            )
        self.dtype = jax.tree.leaves(self._experts["transformer"][1])[0].dtype
        self._loras = LoraCache(max_entries=4, merge_fn=self._merge_loras)

    @classmethod
    def network_calls(
        cls, configs: Mapping[str, Mapping[str, Any]], index: Mapping[str, Any], shape: Shape
    ) -> list[NetworkCall]:
        dit, vae = configs["transformer"], configs["vae"]
        rows, batch = shape.copies, shape.batch
        latent = (frame_count(shape.frames) - 1) // TEMPORAL_SCALE + 1
        h, w = shape.height // SPATIAL_SCALE, shape.width // SPATIAL_SCALE
        kwargs = {}
        if dit.get("image_dim") is not None:  # CLIP image tokens (Wan 2.1 I2V / FLF2V)
            kwargs["image_context"] = spec((rows, CLIP_IMAGE_TOKENS, dit["image_dim"]))
        args = (
            spec((rows, latent, h, w, dit["in_channels"])),
            spec((rows,)),
            spec((rows, TEXT_LENGTH, dit["text_dim"])),
        )
        denoiser = NetworkCall(
            "transformer", "denoiser", args, kwargs, split=(("batch", rows), ("seq", None))
        )

        def decode_frame(model, z):  # one latent frame against the running feature cache
            return model.decode_next(z, model.init_decode_cache(batch, h, w))

        decoder = NetworkCall(
            "vae",
            "decoder",
            (spec((batch, 1, h, w, vae.get("z_dim", 16))),),
            method=decode_frame,
            count=latent,
            split=(("rows", None),),
        )
        return [denoiser, decoder]

    # --- what the engine reports ---------------------------------------------------------------

    @property
    def modes(self) -> tuple[str, ...]:
        # An image-to-video model needs a first frame; a one-frame "image" from it is that frame.
        return ("vid_gen",) if self.is_i2v else ("img_gen", "vid_gen")

    @property
    def size_multiple(self) -> int:
        return SPATIAL_SCALE * self.patch_size[1]

    @property
    def needs_init_image(self) -> bool:
        return self.is_i2v or self.image_tokens

    @classmethod
    def component_mismatches(cls, configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
        text_width = configs["text_encoder"].get("d_model")
        z_dim = int(configs["vae"].get("z_dim", 16))
        image = configs.get("image_encoder")
        problems = []
        for name in ("transformer", "transformer_2"):
            dit = configs.get(name, {})
            if dit and dit.get("text_dim") != text_width:
                problems.append(
                    f"the text encoder is {text_width} wide, {name} expects {dit.get('text_dim')}"
                )
            if dit and dit.get("out_channels") != z_dim:
                problems.append(
                    f"the VAE has {z_dim} latent channels, {name} predicts "
                    f"{dit.get('out_channels')}"
                )
            # Image-to-video experts also take the frame mask and the image latents.
            if dit and dit.get("in_channels") not in (z_dim, 2 * z_dim + TEMPORAL_SCALE):
                problems.append(
                    f"{name} takes {dit.get('in_channels')} channels, not {z_dim} latents "
                    f"(or {2 * z_dim + TEMPORAL_SCALE} for image-to-video)"
                )
            image_dim = dit.get("image_dim")
            if (
                image_dim is not None
                and image is not None
                and image.get("hidden_size") != image_dim
            ):
                problems.append(
                    f"the image encoder is {image.get('hidden_size')} wide, {name} expects "
                    f"{image_dim}"
                )
        return problems

    @property
    def features(self) -> Mapping[str, tuple[str, ...]]:
        video = ["init_image", "lora", "flow_shift"]
        if self.is_i2v or self.image_tokens:
            video.append("end_image")
        if "transformer_2" in self._experts:
            video.append("high_noise_sample_params")
        return {"vid_gen": tuple(video), "img_gen": ("lora", "flow_shift")}

    __hash__ = Pipeline.__hash__  # jit hashes `self` (see Pipeline)

    # --- compiled pieces -----------------------------------------------------------------------

    @partial(jax.jit, static_argnums=(0,))
    def _encode_text(self, state, ids: jax.Array, mask: jax.Array) -> jax.Array:
        encoder = nnx.merge(self._text_def, state)
        hidden = encoder(ids, mask).astype(jnp.float32)
        # diffusers trims each prompt to its real length and pads with zeros.
        return hidden * mask[..., None].astype(jnp.float32)

    @partial(jax.jit, static_argnums=(0,))
    def _encode_image_tokens(self, state, pixels: jax.Array) -> jax.Array:
        encoder = nnx.merge(self._image_encoder[0], state)
        return encoder(pixels, output_layer=-2).astype(jnp.float32)

    @partial(jax.jit, static_argnums=(0, 1, 10))
    def _denoise(
        self,
        expert: str,
        state,
        x,
        sigma,
        timestep,
        context,
        image_context,
        condition,
        guidance,
        use_cfg,
    ):
        """Flow denoiser with CFG: x0 = x - sigma * v, v from the (guided) transformer.

        `condition` is the I2V channel input (mask + image latents), or for TI2V the pinned
        first-frame latents with their mask; `context` holds [negative, positive] under CFG.
        """
        model = nnx.merge(self._experts[expert][0], state)
        x_in = x
        batch = x.shape[0]
        if self.expand_timesteps and condition is not None:
            pinned, keep = condition  # keep: (1, F, h, w, 1), 0 on the pinned first frame
            x_in = (1.0 - keep) * pinned + keep * x
            patch_t, patch_h, patch_w = self.patch_size
            token_mask = keep[0, ::patch_t, ::patch_h, ::patch_w, 0].reshape(-1)
            t_in = jnp.broadcast_to(token_mask * timestep, (batch, token_mask.shape[0]))
        else:
            if condition is not None:
                x_in = jnp.concatenate([x, condition], axis=-1)
            t_in = jnp.full((batch,), timestep, jnp.float32)
        x_in = x_in.astype(self.dtype)
        if use_cfg:
            x_in = jnp.concatenate([x_in, x_in])
            t_in = jnp.concatenate([t_in, t_in])
            if image_context is not None:
                image_context = jnp.concatenate([image_context, image_context])
        x_in = constrain(x_in, "batch", None, None, None, None)  # CFG halves over `data`
        v = model(x_in, t_in, context.astype(self.dtype), image_context).astype(jnp.float32)
        if use_cfg:
            v_uncond, v_cond = jnp.split(v, 2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        return x - sigma * v

    @partial(jax.jit, static_argnums=(0,))
    def _encode_video(self, state, video: jax.Array) -> jax.Array:
        """(1, F, H, W, 3) in [-1, 1] -> normalised latent means (1, T, h, w, z) (diffusers'
        `sample_mode="argmax"`)."""
        vae = nnx.merge(self._vae_def, state)
        mean, _ = vae.encode(video.astype(self.dtype))
        return (mean.astype(jnp.float32) - self.latents_mean) / self.latents_std

    def timestep(self, sigma: float) -> float:
        """The transformer's timestep: diffusers and the Wan release truncate sigma * 1000 to
        an integer (their schedulers keep timesteps as int64)."""
        return float(np.floor(np.float64(sigma) * self.num_train_timesteps))

    def _denormalise(self, latents: jax.Array) -> jax.Array:
        return (latents * self.latents_std + self.latents_mean).astype(self.dtype)

    @partial(jax.jit, static_argnums=(0,))
    def _decode_first(self, state, z, cache):
        vae = nnx.merge(self._vae_def, state)
        frames, cache = vae.decode_first(self._denormalise(_rows_split(z)), cache)
        return to_uint8(frames), cache

    @partial(jax.jit, static_argnums=(0,))
    def _decode_next(self, state, z, cache):
        vae = nnx.merge(self._vae_def, state)
        frames, cache = vae.decode_next(self._denormalise(_rows_split(z)), cache)
        return to_uint8(frames), cache

    def decode(self, latents: jax.Array) -> np.ndarray:
        """Latents (B, T, h, w, z) -> (B, 1 + 4 (T - 1), H, W, 3) uint8, one latent frame at a
        time, so device memory holds one chunk of frames however long the video is."""
        vae = nnx.merge(self._vae_def, self._vae_state)
        batch, count, h, w, _ = latents.shape
        cache = vae.init_decode_cache(batch, h, w)
        chunks = []
        for i in range(count):
            step = self._decode_first if i == 0 else self._decode_next
            frames, cache = step(self._vae_state, latents[:, i : i + 1], cache)
            chunks.append(to_host(frames))
        return np.concatenate(chunks, axis=1)

    # --- request handling ----------------------------------------------------------------------

    def validate(self, req: GenerationRequest) -> WanPlan:
        """Checks what only the model knows; returns the resolved sampling plan."""
        multiple = self.size_multiple
        if req.width % multiple or req.height % multiple:
            field = "width" if req.width % multiple else "height"
            raise InvalidRequest(f"width and height must be multiples of {multiple} for Wan", field)
        plan = self.resolve_sampling(req.sampler, req.scheduler)
        if req.steps < 1:
            raise InvalidRequest("steps must be at least 1", "steps")
        # A continuation starts from the last frame of the video it continues.
        if self.needs_init_image and req.init_image is None and req.continuation is None:
            raise InvalidRequest(
                "this is an image-to-video model: send a first frame (init_image)", "init_image"
            )
        if req.end_image is not None and "end_image" not in self.features["vid_gen"]:
            raise InvalidRequest(
                "this model has no last-frame conditioning (end_image)", "end_image"
            )
        if req.custom_sigmas:
            raise InvalidRequest(
                "custom_sigmas are not supported for Wan models yet", "custom_sigmas"
            )
        if req.shifted_timestep:
            raise InvalidRequest(
                "shifted_timestep applies to SD epsilon models only", "shifted_timestep"
            )
        # A schedule this many steps cannot have is refused now, not in the job.
        self._schedule(req, plan.scheduler, req.flow_shift or self.flow_shift)
        high = req.high_noise
        if high is None:
            return WanPlan(plan.sampler, plan.scheduler)
        if "transformer_2" not in self._experts:
            raise InvalidRequest(
                "high_noise_sample_params need a two-expert (Wan 2.2) model", "high_noise"
            )
        # One noise schedule spans both stages (sd.cpp): the high-noise stage has its own
        # sampler, guidance, eta and step count, not its own schedule or shift.
        own_schedule = (high.scheduler or "").strip().lower() not in DEFAULT_NAMES
        if own_schedule and self.resolve_sampling(plan.sampler, high.scheduler) != plan:
            raise InvalidRequest(
                "the high-noise scheduler must equal the main scheduler", "high_noise"
            )
        if high.flow_shift is not None and high.flow_shift != (req.flow_shift or self.flow_shift):
            raise InvalidRequest(
                "the high-noise flow_shift must equal the main flow_shift", "high_noise"
            )
        try:
            high_sampler = resolve_sampler(high.sampler, True, plan.sampler)
        except ValueError as exc:
            raise InvalidRequest(str(exc), "high_noise") from exc
        return WanPlan(plan.sampler, plan.scheduler, high_sampler)

    def _text_context(self, req: GenerationRequest, states) -> jax.Array:
        ids, mask = t5_token_ids(self.tokenizer_dir, [req.negative_prompt, req.prompt], TEXT_LENGTH)
        return self._encode_text(states["text_encoder"], jnp.asarray(ids), jnp.asarray(mask))

    def _image_tokens(self, first: np.ndarray, last: np.ndarray | None) -> jax.Array | None:
        """Wan 2.1 I2V's CLIP tokens: (1, 257, D), or (2, 257, D) for first + last frame."""
        if not self.image_tokens:
            return None
        from jaxvideo.models.clip_vision import clip_preprocess

        images = [first] if last is None else [first, last]
        pixels = jnp.asarray(np.stack([clip_preprocess(im, self.clip_size) for im in images]))
        return self._encode_image_tokens(self._image_encoder[1], pixels.astype(self.dtype))

    @staticmethod
    def _input_frames(req: GenerationRequest) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The request's first and last frames at the output size (None where not given)."""
        first, last = req.init_image, req.end_image
        if first is None:
            if last is not None:
                raise InvalidRequest("end_image needs an init_image (the first frame)")
            return None, None
        first = resize_image(first, req.width, req.height)
        last = None if last is None else resize_image(last, req.width, req.height)
        return first, last

    def _conditioning(self, first, last, req: GenerationRequest, frames: int, latent_shape):
        """(condition, pinned) for the denoiser from the resized first/last frames: the I2V
        channel input, or the TI2V / pinned first-frame latents; (None, None) for plain
        text-to-video."""
        if first is None:
            return None, None
        t_latent, h, w, _ = latent_shape
        if self.is_i2v:
            # diffusers' conditioning video: the given frame(s), zeros (mid-grey) elsewhere.
            video = np.zeros((1, frames, req.height, req.width, 3), np.float32)
            video[0, 0] = _to_unit(first)
            if last is not None:
                video[0, -1] = _to_unit(last)
            latents = self._encode_video(self._vae_state, jnp.asarray(video))
            mask = np.zeros((frames, h, w), np.float32)
            mask[0] = 1.0
            if last is not None:
                mask[-1] = 1.0
            # The first frame's mask is repeated 4x so every latent frame gets 4 mask channels.
            mask = np.concatenate([np.repeat(mask[:1], TEMPORAL_SCALE, 0), mask[1:]])
            mask = mask.reshape(t_latent, TEMPORAL_SCALE, h, w).transpose(0, 2, 3, 1)
            condition = jnp.concatenate([jnp.asarray(mask)[None], latents], axis=-1)
            return condition, None
        if last is not None:
            raise InvalidRequest("this model has no last-frame conditioning (end_image)")
        first_latent = self._encode_video(self._vae_state, jnp.asarray(_to_unit(first))[None, None])
        keep = np.ones((1, t_latent, h, w, 1), np.float32)
        keep[:, 0] = 0.0
        pinned = jnp.zeros((1, *latent_shape), jnp.float32).at[:, :1].set(first_latent)
        return None, (pinned, jnp.asarray(keep))

    def _schedule(self, req: GenerationRequest, scheduler: str, shift: float) -> np.ndarray:
        try:
            return flow_sigmas(scheduler, req.steps, shift)
        except ValueError as exc:  # a schedule that repeats sigmas at this many steps
            raise InvalidRequest(str(exc), "steps") from exc

    def _stages(self, req: GenerationRequest, plan: WanPlan):
        """[(expert or None, sampler, sigmas, guidance, eta)] run in order.

        One stage with per-step expert switching (expert None) is exactly diffusers' two-expert
        loop; explicit high-noise settings split the schedule into two sampler runs (sd.cpp).
        """
        sampler, scheduler = plan.sampler, plan.scheduler
        shift = req.flow_shift or self.flow_shift
        sigmas = self._schedule(req, scheduler, shift)
        if "transformer_2" not in self._experts:
            return [("transformer", sampler, sigmas, req.guidance_scale, req.eta)]
        # None means "the same as guidance_scale" (diffusers); the family's own default for it
        # reaches requests through the defaults layer of build_request.
        low_guidance = req.guidance_scale_2
        if low_guidance is None:
            low_guidance = req.guidance_scale
        boundary = req.moe_boundary if req.moe_boundary is not None else self.boundary_ratio
        high: HighNoiseParams | None = req.high_noise
        if high is None:
            switch = (req.guidance_scale, low_guidance, boundary)
            return [(None, sampler, sigmas, switch, req.eta)]
        # Either the high-noise stage's own step count, or the boundary's share of the steps.
        if high.steps < 0:
            split = int(np.sum(sigmas[:-1] >= boundary))
        else:
            split = high.steps
            sigmas = self._schedule(replace(req, steps=high.steps + req.steps), scheduler, shift)
        high_sigmas, low_sigmas = sigmas[: split + 1], sigmas[split:]
        high_guidance = req.guidance_scale if high.guidance_scale is None else high.guidance_scale
        high_eta = req.eta if high.eta is None else high.eta
        stages = []
        if len(high_sigmas) > 1:
            stages.append(("transformer", plan.high_sampler, high_sigmas, high_guidance, high_eta))
        if len(low_sigmas) > 1:
            stages.append(("transformer_2", sampler, low_sigmas, low_guidance, req.eta))
        return stages

    def sample_latents(
        self,
        noise: jax.Array,
        keys: jax.Array,
        req: GenerationRequest,
        frames: int,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
        *,
        plan: WanPlan | None = None,
    ) -> jax.Array:
        """Unit `noise` (B, T, h, w, z) -> final normalised latents (`plan`: what `validate`
        resolved; validated here when None)."""
        plan = plan or self.validate(req)
        stop_if_cancelled(cancelled)
        states = self._lora_states(req)
        context = self._text_context(req, states)
        first, last = self._input_frames(req)
        condition, pinned = self._conditioning(first, last, req, frames, noise.shape[1:])
        # validate() refused image-token models without a first frame.
        image_context = None if first is None else self._image_tokens(first, last)
        if self.expand_timesteps:
            condition, pinned = pinned, None
        batch = noise.shape[0]
        stages = self._stages(req, plan)
        total = sum(len(s[2]) - 1 for s in stages)
        done = 0
        latents = noise
        for expert, stage_sampler, sigmas, guidance, eta in stages:
            model = self._model_fn(
                expert, states, batch, context, image_context, condition, pinned, guidance, noise
            )
            on_step = step_reporter(progress, cancelled, offset=done, total=total)
            run = sampler_function(stage_sampler, flow=True)
            latents = run(model, latents, sigmas, keys, on_step, eta, cache=req.step_cache)
            done += len(sigmas) - 1
        if pinned is not None:
            latents = _pin(latents, pinned, 0.0, noise)
        if self.expand_timesteps and condition is not None:
            first, keep = condition
            latents = (1.0 - keep) * first + keep * latents
        return latents

    # LoRA files name the denoiser "transformer"; on a two-expert model that is the low-noise
    # expert (sd.cpp's main model), and `is_high_noise` LoRAs go to the high-noise one.
    def _lora_names(self) -> dict[str, str]:
        """LoRA component name -> our component name."""
        if "transformer_2" in self._experts:
            return {"transformer": "transformer_2", "transformer_high": "transformer"}
        return {"transformer": "transformer"}

    def _lora_states(self, req: GenerationRequest) -> dict[str, nnx.State]:
        names = self._lora_names()
        base = {lora: self._experts[ours][1] for lora, ours in names.items()}
        base["text_encoder"] = self._text_state
        merged = self._loras.get_or_merge(base, list(req.loras))
        states = {ours: merged[lora] for lora, ours in names.items()}
        states["text_encoder"] = merged["text_encoder"]
        return states

    def _merge_loras(self, base: dict[str, nnx.State], loras: list) -> dict[str, nnx.State]:
        from jaxvideo.lora.merge import merge_loras
        from jaxvideo.models.t5 import UMT5_SPEC
        from jaxvideo.models.wan import WAN_TRANSFORMER_SPEC

        rules = {name: WAN_TRANSFORMER_SPEC.rules for name in self._lora_names()}
        rules["text_encoder"] = UMT5_SPEC.rules
        high = "transformer_high" if "transformer_2" in self._experts else None
        return merge_loras(base, loras, rules=rules, high_noise_component=high)

    def _model_fn(
        self, expert, states, batch, context, image_context, condition, pinned, guidance, noise
    ):
        """The sampler's `model(x, sigma) -> x0`, choosing the expert per sigma when asked."""
        use_cfg = _use_cfg(guidance)
        batched_context = _batch_context(context, batch, use_cfg)
        if image_context is not None:
            image_context = jnp.repeat(image_context[None], batch, 0).reshape(
                -1, *image_context.shape[1:]
            )
        if condition is not None and not self.expand_timesteps:
            condition = jnp.repeat(condition, batch, 0)

        def model(x: jax.Array, sigma: float) -> jax.Array:
            name, scale = expert, guidance
            if name is None:  # diffusers' switch: high-noise expert while t >= boundary
                high = sigma >= guidance[2]
                name = "transformer" if high else "transformer_2"
                scale = guidance[0] if high else guidance[1]
            if pinned is not None:
                x = _pin(x, pinned, sigma, noise)
            out = self._denoise(
                name,
                states[name],
                x,
                jnp.float32(sigma),
                jnp.float32(self.timestep(sigma)),
                batched_context,
                image_context,
                condition,
                jnp.float32(scale),
                use_cfg,
            )
            if pinned is not None:
                out = _pin(out, pinned, 0.0, noise)
            jax.block_until_ready(out)  # progress reports finished steps
            return out

        return model

    def initial_noise(self, req: GenerationRequest, frames: int) -> tuple[jax.Array, jax.Array]:
        """Unit latent noise (B, T, h, w, z) and per-video keys, one stream per seed."""
        shape = (
            (frames - 1) // TEMPORAL_SCALE + 1,
            req.height // SPATIAL_SCALE,
            req.width // SPATIAL_SCALE,
            self.z_dim,
        )
        return seeded_noise(req.seeds(), shape)

    def generate(
        self,
        req: GenerationRequest,
        plan: Plan | None = None,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
        refiner: Pipeline | None = None,
    ) -> GenerationResult:
        if refiner is not None:
            raise InvalidRequest("Wan models have no refiner stage", "refiner")
        plan = plan or self.validate(req)
        video = req.mode == "vid_gen"
        frames = frame_count(req.num_frames) if video else 1
        noise, keys = self.initial_noise(req, frames)
        latents = self.sample_latents(noise, keys, req, frames, progress, cancelled, plan=plan)
        pixels = self.decode(latents)
        if not video:
            return image_result(req, pixels[:, 0], plan)
        info = result_info(req, plan, frame_count=int(pixels.shape[1]))
        return GenerationResult([], req.seeds(), info, videos=list(pixels), fps=req.fps)


def _rows_split(z: jax.Array) -> jax.Array:
    """The VAE decode is split spatially, over latent rows, across the whole mesh."""
    return constrain(z, None, None, "rows", None, None)


def _to_unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], as diffusers' image processor scales pictures."""
    return pixels.astype(np.float32) / 127.5 - 1.0


def _pin(x: jax.Array, pinned, sigma: float, noise: jax.Array) -> jax.Array:
    """Puts the known first latent frame back on its flow path at `sigma` (0 = clean)."""
    known, keep = pinned
    on_path = (1.0 - sigma) * known + sigma * noise
    return keep * x + (1.0 - keep) * on_path


def _use_cfg(guidance) -> bool:
    # A per-step expert switch carries (high scale, low scale, boundary).
    scales = guidance[:2] if isinstance(guidance, tuple) else (guidance,)
    return any(s > 1.0 for s in scales)  # diffusers: CFG only when guidance_scale > 1


def _batch_context(context: jax.Array, batch: int, use_cfg: bool) -> jax.Array:
    """[negative, positive] (2, L, D) -> (2B, L, D) with CFG (negatives first), else (B, L, D)."""
    halves = [jnp.repeat(context[i : i + 1], batch, axis=0) for i in (0, 1)]
    return jnp.concatenate(halves) if use_cfg else halves[1]


def _clip_crop_size(folder: Path) -> int:
    """The CLIP input size from the copied image processor config (224 for Wan 2.1 I2V)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return 224
    crop = json.loads(path.read_text()).get("crop_size", 224)
    return int(crop["height"] if isinstance(crop, dict) else crop)
