"""Stable Diffusion (1.x, 2.x, XL): prompt -> text conditioning -> sampler over the UNet -> VAE.

Covers text-to-image, img2img (`init_image` + `strength`) and inpainting (`mask_image`): with a
9-channel inpainting UNet the mask and masked-image latents are extra UNet inputs; with an
ordinary UNet the kept region is blended back at every step. The two-pass recipes (hires fix,
SDXL refiner) are in sd_passes.py; text conditioning per family in sd_conditioning.py.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvideo.cost import NetworkCall, Shape, spec
from jaxvideo.errors import InvalidRequest
from jaxvideo.lazy import load
from jaxvideo.lora import LoraCache
from jaxvideo.media import resize_image
from jaxvideo.pipelines.base import (
    CancelledFn,
    Pipeline,
    Plan,
    ProgressFn,
    image_result,
    seeded_noise,
    step_reporter,
    stop_if_cancelled,
    to_uint8,
)
from jaxvideo.pipelines.sd_conditioning import Conditioning
from jaxvideo.pipelines.sd_passes import TwoPasses
from jaxvideo.request import GenerationRequest
from jaxvideo.results import GenerationResult
from jaxvideo.sampling import (
    SAMPLER_SPECS,
    TrainingSchedule,
    custom_sigmas,
    make_sigmas,
    sampler_function,
    shifted_timestep,
)
from jaxvideo.sampling.cache_modes import UNET_MODES
from jaxvideo.sharding import constrain, to_host
from jaxvideo.tiling import LATENT_SCALE, tiled_decode
from jaxvideo.weights import load_component, read_config

PREDICTION_TYPES = ("epsilon", "v_prediction")
CLIP_TOKENS = 77  # one chunk of prompt tokens (longer prompts add chunks of 77)


class StableDiffusionPipeline(TwoPasses, Pipeline):
    """One loaded SD model: text conditioning, UNet, VAE and its training schedule."""

    cache_modes = UNET_MODES

    def __init__(self, model_dir: str | Path, dtype: str = "fp32"):
        super().__init__(model_dir, dtype)
        vae_config = read_config(self.model_dir / "vae")
        self.vae_scaling = float(vae_config.get("scaling_factor") or 0.18215)
        self.vae_shift = float(vae_config.get("shift_factor") or 0.0)
        self.latent_channels = int(vae_config.get("latent_channels", 4))
        scheduler_path = self.model_dir / "scheduler" / "scheduler_config.json"
        scheduler_cfg = json.loads(scheduler_path.read_text()) if scheduler_path.is_file() else {}
        self.schedule = TrainingSchedule.from_scheduler_config(scheduler_cfg)
        if self.schedule.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{model_dir}: prediction_type {self.schedule.prediction_type!r}")

        self.conditioner = load(self.family.conditioner)(self.model_dir, dtype)
        unet = load_component(self.model_dir, "unet", dtype=dtype)
        vae = load_component(self.model_dir, "vae", dtype=dtype)
        # Inpainting UNets take [latents, mask, masked-image latents] on the channel axis.
        self.is_inpainting = unet.config.in_channels == 2 * self.latent_channels + 1
        self._unet_def, self._unet_state = nnx.split(unet)
        self._vae_def, self._vae_state = nnx.split(vae)
        self.dtype = jax.tree.leaves(self._unet_state)[0].dtype
        self._loras = LoraCache(max_entries=4)

    @classmethod
    def network_calls(
        cls, configs: Mapping[str, Mapping[str, Any]], index: Mapping[str, Any], shape: Shape
    ) -> list[NetworkCall]:
        unet, vae = configs["unet"], configs["vae"]
        rows, h, w = shape.copies, shape.height // LATENT_SCALE, shape.width // LATENT_SCALE
        added = {}
        if unet.get("addition_embed_type") == "text_time":  # SDXL: pooled text + 6 size ids
            ids = 6 * int(unet["addition_time_embed_dim"])
            text = int(unet["projection_class_embeddings_input_dim"]) - ids
            added = {"added_cond": (spec((rows, text)), spec((rows, 6)))}
        denoiser = NetworkCall(
            "unet",
            "denoiser",
            (
                spec((rows, h, w, unet.get("in_channels", 4))),
                spec((rows,)),
                spec((rows, CLIP_TOKENS, unet["cross_attention_dim"])),
            ),
            added,
            split=(("batch", rows),),
        )
        decoder = NetworkCall(
            "vae",
            "decoder",
            (spec((shape.batch, h, w, vae.get("latent_channels", 4))),),
            method="decode",
            split=(("rows", None),),
        )
        return [denoiser, decoder]

    @property
    def features(self) -> Mapping[str, tuple[str, ...]]:
        return {"img_gen": ("init_image", "mask_image", "lora", "vae_tiling", "clip_skip")}

    @classmethod
    def component_mismatches(cls, configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
        unet, vae = configs["unet"], configs["vae"]
        texts = [configs[n] for n in ("text_encoder", "text_encoder_2") if n in configs]
        width = sum(int(text["hidden_size"]) for text in texts)  # SDXL concatenates the two
        cross = unet.get("cross_attention_dim", 1280)
        channels = int(vae.get("latent_channels", 4))
        takes, predicts = unet.get("in_channels", 4), unet.get("out_channels", 4)
        problems = []
        if any(int(dim) != width for dim in (cross if isinstance(cross, list) else [cross])):
            problems.append(
                f"the text encoders give {width}-wide context, the UNet's "
                f"cross_attention_dim is {cross}"
            )
        if predicts != channels:
            problems.append(f"the VAE has {channels} latent channels, the UNet predicts {predicts}")
        # Inpainting UNets also take the mask and the masked image's latents.
        if takes not in (channels, 2 * channels + 1):
            problems.append(
                f"the UNet takes {takes} channels, not {channels} latents "
                f"(or {2 * channels + 1} for inpainting)"
            )
        return problems

    __hash__ = Pipeline.__hash__  # jit hashes `self` (see Pipeline)

    # --- compiled pieces -------------------------------------------------------------------

    @partial(jax.jit, static_argnums=(0, 10, 11))
    def _denoise(
        self, state, x, sigma, t, c_out, context, added, extra, guidance, use_cfg, with_uncond
    ):
        """k-diffusion denoiser around an epsilon- or v-prediction UNet, with CFG.

        `extra` (B, h, w, 5) holds an inpainting UNet's mask + masked-image latents, else None.
        With `with_uncond` it returns (guided, unconditional) x0 predictions (CFG++ samplers).
        `c_out` is -sigma, except under a timestep shift, where x0 = c_skip * x + c_out * eps
        and the caller folds c_skip into `x` (see `shifted_timestep`).
        """
        unet = nnx.merge(self._unet_def, state)
        c_in = 1.0 / jnp.sqrt(sigma**2 + 1.0)
        x_in = x * c_in
        if extra is not None:
            x_in = jnp.concatenate([x_in, extra], axis=-1)
        x_in = x_in.astype(self.dtype)
        if use_cfg:
            x_in = jnp.concatenate([x_in, x_in])
        # Under a mesh, CFG halves and batched images are split over `data`.
        x_in = constrain(x_in, "batch", None, None, None)
        timesteps = jnp.full((x_in.shape[0],), t, dtype=jnp.float32)
        out = unet(x_in, timesteps, context, added_cond=added).astype(jnp.float32)
        out_uncond = None
        if use_cfg:
            out_uncond, out_cond = jnp.split(out, 2)
            out = out_uncond + guidance * (out_cond - out_uncond)
        if with_uncond:
            return self._to_x0(x, sigma, c_out, out), self._to_x0(x, sigma, c_out, out_uncond)
        return self._to_x0(x, sigma, c_out, out)

    def _to_x0(self, x: jax.Array, sigma: jax.Array, c_out, out: jax.Array) -> jax.Array:
        if self.schedule.prediction_type == "v_prediction":
            # x0 = c_skip * x + c_out * v with sigma_data = 1 (k-diffusion's VDenoiser).
            return x / (sigma**2 + 1.0) - out * sigma / jnp.sqrt(sigma**2 + 1.0)
        return x + c_out * out

    @partial(jax.jit, static_argnums=(0,))
    def _decode(self, state, latents: jax.Array) -> jax.Array:
        return to_uint8(self._decode_float(state, latents))

    @partial(jax.jit, static_argnums=(0,))
    def _decode_float(self, state, latents: jax.Array) -> jax.Array:
        vae = nnx.merge(self._vae_def, state)
        # Split spatially over latent rows across the whole mesh.
        z = constrain(latents / self.vae_scaling + self.vae_shift, None, "rows", None, None)
        return vae.decode(z.astype(self.dtype)).astype(jnp.float32)

    def decode(self, latents: jax.Array, tiling: Any = None) -> np.ndarray:
        """Scaled latents -> (B, H, W, 3) uint8, in tiles when `tiling` is given."""
        if tiling is None:
            return to_host(self._decode(self._vae_state, latents))
        images = tiled_decode(lambda z: self._decode_float(self._vae_state, z), latents, tiling)
        return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)

    @partial(jax.jit, static_argnums=(0,))
    def _encode(self, state, pixels: jax.Array, keys: jax.Array) -> jax.Array:
        """uint8 (1, H, W, 3) -> one posterior sample per key, scaled latents (B, h, w, c)."""
        vae = nnx.merge(self._vae_def, state)
        images = pixels.astype(jnp.float32) / 127.5 - 1.0
        mean, logvar = vae.encode(images.astype(self.dtype))
        mean, std = mean[0].astype(jnp.float32), jnp.exp(0.5 * logvar[0].astype(jnp.float32))
        draw = jax.vmap(lambda k: mean + std * jax.random.normal(k, mean.shape, jnp.float32))
        return (draw(keys) - self.vae_shift) * self.vae_scaling

    # --- request handling --------------------------------------------------------------------

    def validate(self, req: GenerationRequest) -> Plan:
        """Checks what only the model knows; returns the resolved sampler and schedule."""
        if req.width % LATENT_SCALE or req.height % LATENT_SCALE:
            field = "width" if req.width % LATENT_SCALE else "height"
            raise InvalidRequest(f"width and height must be multiples of {LATENT_SCALE}", field)
        plan = self.resolve_sampling(req.sampler, req.scheduler)
        if req.steps < 1:
            raise InvalidRequest("steps must be at least 1", "steps")
        if req.clip_skip > self.conditioner.max_clip_skip:
            depth = self.conditioner.max_clip_skip
            raise InvalidRequest(
                f"clip_skip must be at most {depth}: the text encoder has {depth} layers",
                "clip_skip",
            )
        if req.shifted_timestep and self.schedule.prediction_type != "epsilon":
            raise InvalidRequest(
                "shifted_timestep applies to epsilon-prediction models only", "shifted_timestep"
            )
        if req.shifted_timestep > self.schedule.num_train_timesteps:
            raise InvalidRequest(
                f"shifted_timestep must be within [0, {self.schedule.num_train_timesteps}]",
                "shifted_timestep",
            )
        if req.mask_image is not None and req.init_image is None:
            raise InvalidRequest("mask_image needs an init_image", "mask_image")
        if self.is_inpainting and req.init_image is None:
            raise InvalidRequest(
                "this inpainting model needs an init_image and a mask_image", "init_image"
            )
        self.sigmas(req, plan.scheduler)  # a schedule this many steps cannot have is refused now
        if req.refiner is not None:
            if req.hires is not None:
                raise InvalidRequest("hires fix and a refiner cannot be combined yet", "hires")
            if req.init_image is not None:
                raise InvalidRequest(
                    "a refiner stage is only supported for text-to-image", "refiner"
                )
        return plan

    def _timestep(self, sigma: float, shift: int) -> tuple[float, float, float]:
        """(t, c_skip, c_out) for the UNet at `sigma`; sd.cpp's shifted timestep when shift > 0.

        The shift reads the latent at sigma as one at the shifted sigma' = -c_out: the UNet
        still sees x / sqrt(sigma^2 + 1), and x0 = c_skip * x + c_out * eps. The denoiser gets
        x * c_skip at sigma', which gives exactly that input and that x0.
        """
        if shift <= 0:
            return float(self.schedule.sigma_to_t(np.float64(sigma))), 1.0, -float(sigma)
        shifted = shifted_timestep(self.schedule, float(sigma), shift)
        return shifted.t, shifted.c_skip, shifted.c_out

    def sigmas(self, req: GenerationRequest, scheduler: str) -> np.ndarray:
        """The full sigma schedule: the client's own, or `steps` from the named scheduler."""
        try:
            if req.custom_sigmas:
                return custom_sigmas(req.custom_sigmas).astype(np.float32)
            options = {"table": self.family.ays_table} if scheduler == "ays" else {}
            return make_sigmas(self.schedule, scheduler, req.steps, **options)
        except ValueError as exc:  # bad custom sigmas, the lcm schedule's 50-step ceiling, ...
            field = "custom_sigmas" if req.custom_sigmas else "steps"
            raise InvalidRequest(str(exc), field) from exc

    def initial_noise(self, req: GenerationRequest) -> tuple[jax.Array, jax.Array]:
        """Unit-variance latent noise and per-image keys, one random stream per image seed."""
        shape = (req.height // LATENT_SCALE, req.width // LATENT_SCALE, self.latent_channels)
        return seeded_noise(req.seeds(), shape)

    def _image_inputs(self, req: GenerationRequest, keys: jax.Array):
        """Init latents, latent-size mask (1 = repaint) and the inpainting UNet's extra input."""
        if req.init_image is None:
            return None, None, None
        pixels = resize_image(req.init_image, req.width, req.height)
        encode_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        init_latents = self._encode(self._vae_state, jnp.asarray(pixels)[None], encode_keys)
        if req.mask_image is None:
            if self.is_inpainting:  # repaint everything: an all-white mask
                mask_pixels = np.full((req.height, req.width), 255, np.uint8)
            else:
                return init_latents, None, None
        else:
            mask_pixels = resize_image(req.mask_image, req.width, req.height)
        h, w = req.height // LATENT_SCALE, req.width // LATENT_SCALE
        mask = (resize_image(mask_pixels, w, h) >= 128).astype(np.float32)[None, :, :, None]
        if not self.is_inpainting:
            return init_latents, jnp.asarray(mask), None
        # The inpainting UNet sees the image with the repaint region blanked out.
        keep = (mask_pixels < 128)[:, :, None]
        masked = np.where(keep, pixels, np.uint8(128)).astype(np.uint8)
        masked_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
        masked_latents = self._encode(self._vae_state, jnp.asarray(masked)[None], masked_keys)
        batch = masked_latents.shape[0]
        extra = jnp.concatenate([jnp.repeat(jnp.asarray(mask), batch, 0), masked_latents], -1)
        return init_latents, None, extra

    def sample(
        self,
        noise: jax.Array,
        keys: jax.Array,
        req: GenerationRequest,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
        *,
        plan: Plan | None = None,
    ) -> np.ndarray:
        """Runs the sampler from unit `noise` (B, h, w, c) and decodes: (B, H, W, 3) uint8."""
        latents = self.sample_latents(noise, keys, req, progress, cancelled, plan=plan)
        return self.decode(latents, req.vae_tiling)

    def sample_latents(
        self,
        noise: jax.Array,
        keys: jax.Array,
        req: GenerationRequest,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
        *,
        plan: Plan | None = None,
        sigmas: np.ndarray | None = None,
        start: jax.Array | None = None,
        prompts: Sequence[tuple[str, str, int]] | None = None,
    ) -> jax.Array:
        """The sampler alone: unit `noise` (B, h, w, c) -> final scaled latents.

        `plan` is what `validate` resolved (validated here when None). `sigmas` replaces the
        request's schedule (a stage of it); `start` gives latents already at `sigmas[0]` (a
        refiner continuing a base model's run) instead of noise or an image. `prompts`
        replaces the request's prompts with (prompt, negative prompt, image count) triples
        covering the batch in order (requests batched by `generate_batch`).
        """
        plan = plan or self.validate(req)
        stop_if_cancelled(cancelled)
        batch = noise.shape[0]
        # LoRA-merged weights (cached per LoRA set); the base states stay untouched.
        states = self._loras.get_or_merge(
            {"unet": self._unet_state, **self.conditioner.states()}, list(req.loras)
        )
        unet_state = states["unet"]
        prompts = prompts or [(req.prompt, req.negative_prompt, batch)]
        covered = sum(count for _, _, count in prompts)
        if covered != batch:
            raise ValueError(f"prompts cover {covered} images, the batch has {batch}")
        conds = [
            (self.conditioner(p, n, req.clip_skip, req.width, req.height, states), count)
            for p, n, count in prompts
        ]
        # CFG++ samplers need the unconditional prediction even at guidance 1.
        with_uncond = SAMPLER_SPECS[plan.sampler].needs_uncond
        use_cfg = req.guidance_scale != 1.0 or with_uncond
        context, added = _batch_conditioning(conds, use_cfg)
        guidance = jnp.float32(req.guidance_scale)

        sigmas = self.sigmas(req, plan.scheduler) if sigmas is None else sigmas
        init_latents, blend_mask, extra = (None, None, None)
        if start is None:
            init_latents, blend_mask, extra = self._image_inputs(req, keys)
        if start is not None:
            latents = start
        elif init_latents is not None and not (self.is_inpainting and req.strength >= 1.0):
            # img2img runs the last `strength` of the schedule from the noised init image.
            steps = len(sigmas) - 1
            start = steps - min(int(steps * req.strength), steps)
            sigmas = sigmas[start:]
            latents = init_latents + noise * sigmas[0]
        else:
            latents = noise * sigmas[0]
        if len(sigmas) < 2:  # strength 0: nothing to denoise
            return init_latents

        def keep_unmasked(denoised: jax.Array) -> jax.Array:
            if blend_mask is None:
                return denoised
            return denoised * blend_mask + init_latents * (1 - blend_mask)

        def model(x: jax.Array, sigma: float, return_uncond: bool = False):
            if blend_mask is not None:  # keep the unmasked region on the init image's path
                x = x * blend_mask + (init_latents + noise * sigma) * (1 - blend_mask)
            t, c_skip, c_out = self._timestep(sigma, req.shifted_timestep)
            out = self._denoise(
                unet_state,
                x * c_skip,
                jnp.float32(-c_out),
                jnp.float32(t),
                jnp.float32(c_out),
                context,
                added,
                extra,
                guidance,
                use_cfg,
                return_uncond,
            )
            # Block so progress reports finished steps, not steps merely dispatched.
            jax.block_until_ready(out)
            if return_uncond:
                return keep_unmasked(out[0]), keep_unmasked(out[1])
            return keep_unmasked(out)

        run = sampler_function(plan.sampler, flow=False)
        latents = run(
            model, latents, sigmas, keys, step_reporter(progress, cancelled), req.eta,
            cache=req.step_cache,
        )  # fmt: skip
        if blend_mask is not None:
            latents = latents * blend_mask + init_latents * (1 - blend_mask)
        return latents

    def generate(
        self,
        req: GenerationRequest,
        plan: Plan | None = None,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
        refiner: Pipeline | None = None,
    ) -> GenerationResult:
        plan = plan or self.validate(req)
        if refiner is not None:
            return self.generate_refined(refiner, req, plan, progress, cancelled)
        if req.hires is not None:
            return self.generate_hires(req, plan, progress, cancelled)
        noise, keys = self.initial_noise(req)
        pixels = self.sample(noise, keys, req, progress, cancelled, plan=plan)
        return image_result(req, pixels, plan)

    def batch_key(self, req: GenerationRequest) -> Hashable | None:
        """Requests with equal keys can share one sampler run (`generate_batch`): they differ
        only in prompts, seed and batch count, and their prompts encode to the same context
        length (77-token chunks per text encoder). None: `req` needs a run of its own."""
        if req.init_image is not None or req.mask_image is not None or req.vae_tiling is not None:
            return None
        texts = (req.prompt, req.negative_prompt)
        chunks = tuple(
            max(len(encoder.tokenizer.chunks(text).ids) for text in texts)
            for encoder in self.conditioner.encoders.values()
        )
        key = (replace(req, prompt="", negative_prompt="", seed=0, batch_count=1), chunks)
        try:
            hash(key)
        except TypeError:  # a field the request types leave open holds something unhashable
            return None
        return key

    def generate_batch(
        self,
        reqs: Sequence[GenerationRequest],
        plan: Plan | None = None,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> list[GenerationResult]:
        """Requests with equal `batch_key`s (so one `plan`) as one sampler run over all their
        images; each image keeps its own prompts and seed stream, so every request gets what
        `generate` makes for it alone."""
        first = reqs[0]
        plan = plan or self.validate(first)
        noise, keys = zip(*(self.initial_noise(req) for req in reqs), strict=True)
        prompts = [(req.prompt, req.negative_prompt, req.batch_count) for req in reqs]
        latents = self.sample_latents(
            jnp.concatenate(noise), jnp.concatenate(keys), first, progress, cancelled,
            plan=plan, prompts=prompts,
        )  # fmt: skip
        pixels = self.decode(latents, first.vae_tiling)
        ends = np.cumsum([req.batch_count for req in reqs])
        return [
            image_result(req, pixels[end - req.batch_count : end], plan)
            for req, end in zip(reqs, ends, strict=True)
        ]


def _batch_conditioning(conds: Sequence[tuple[Conditioning, int]], use_cfg: bool):
    """Repeats each prompt pair's [negative, positive] once per image it covers, negatives
    first: (2B, ...) with CFG (the denoiser splits the halves), else the positives (B, ...)."""

    def expand(parts: list[tuple[jax.Array, int]]) -> jax.Array:
        halves = [
            jnp.concatenate([jnp.repeat(x[i : i + 1], count, axis=0) for x, count in parts])
            for i in (0, 1)
        ]
        return jnp.concatenate(halves) if use_cfg else halves[1]

    context = expand([(cond.context, count) for cond, count in conds])
    if conds[0][0].added is None:
        return context, None
    added = tuple(
        expand([(cond.added[j], count) for cond, count in conds])
        for j in range(len(conds[0][0].added))
    )
    return context, added
