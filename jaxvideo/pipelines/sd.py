"""Stable Diffusion text-to-image: prompt -> CLIP -> sampler over the UNet -> VAE -> uint8.

Each network runs as a jit-compiled XLA function over its (graphdef, state) split, so weights
are arguments rather than constants baked into the program, and one compiled function serves
every request of the same shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvideo.errors import Cancelled, InvalidRequest
from jaxvideo.request import GenerationRequest
from jaxvideo.results import GenerationResult
from jaxvideo.sampling import (
    SAMPLER_FNS,
    SCHEDULE_FNS,
    SCHEDULER_ALIASES,
    TrainingSchedule,
    make_sigmas,
)
from jaxvideo.tokenizers import load_tokenizer
from jaxvideo.weights import load_component, read_config

ProgressFn = Callable[[int, int], None]
CancelledFn = Callable[[], bool]

LATENT_SCALE = 8  # VAE downsampling factor of every SD family

FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd1": {
        "width": 512,
        "height": 512,
        "steps": 20,
        "guidance_scale": 7.0,
        "sampler": "euler_a",
        "scheduler": "discrete",
        "clip_skip": -1,
    },
}


def _to_uint8(images: jax.Array) -> jax.Array:
    # [-1, 1] -> [0, 255] on device, so only bytes travel back to the host.
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


class StableDiffusionPipeline:
    """One loaded SD model: tokenizer, text encoder, UNet, VAE and its training schedule."""

    def __init__(self, model_dir: str | Path, dtype: str = "fp32"):
        self.model_dir = Path(model_dir)
        index = json.loads((self.model_dir / "model_index.json").read_text())
        self.family = index.get("family", "sd1")
        if self.family not in FAMILY_DEFAULTS:
            raise ValueError(f"{model_dir}: family {self.family!r} is not supported yet")
        self.tokenizer = load_tokenizer(str(self.model_dir / "tokenizer"))
        vae_config = read_config(self.model_dir / "vae")
        self.vae_scaling = float(vae_config.get("scaling_factor") or 0.18215)
        self.vae_shift = float(vae_config.get("shift_factor") or 0.0)
        scheduler_path = self.model_dir / "scheduler" / "scheduler_config.json"
        scheduler_cfg = json.loads(scheduler_path.read_text()) if scheduler_path.is_file() else {}
        self.schedule = TrainingSchedule.from_scheduler_config(scheduler_cfg)
        if self.schedule.prediction_type != "epsilon":
            raise ValueError(f"{model_dir}: prediction_type {self.schedule.prediction_type!r}")

        text_encoder = load_component(self.model_dir, "text_encoder", dtype=dtype)
        unet = load_component(self.model_dir, "unet", dtype=dtype)
        vae = load_component(self.model_dir, "vae", dtype=dtype)
        self.latent_channels = int(vae_config.get("latent_channels", 4))
        self._text_def, self._text_state = nnx.split(text_encoder)
        self._unet_def, self._unet_state = nnx.split(unet)
        self._vae_def, self._vae_state = nnx.split(vae)
        self.dtype = jax.tree.leaves(self._unet_state)[0].dtype

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(FAMILY_DEFAULTS[self.family])

    # --- compiled pieces -------------------------------------------------------------------

    @partial(jax.jit, static_argnums=(0, 3))
    def _encode_text(self, state, ids: jax.Array, skip_layers: int) -> jax.Array:
        model = nnx.merge(self._text_def, state)
        hidden, _ = model(ids, skip_layers=skip_layers)
        return hidden

    @partial(jax.jit, static_argnums=(0, 7))
    def _denoise(self, state, x, sigma, t, context, guidance, use_cfg: bool) -> jax.Array:
        """k-diffusion denoiser around an epsilon-prediction UNet, with classifier-free guidance."""
        unet = nnx.merge(self._unet_def, state)
        c_in = 1.0 / jnp.sqrt(sigma**2 + 1.0)
        x_in = (x * c_in).astype(self.dtype)
        if use_cfg:
            x_in = jnp.concatenate([x_in, x_in])
        timesteps = jnp.full((x_in.shape[0],), t, dtype=jnp.float32)
        eps = unet(x_in, timesteps, context).astype(jnp.float32)
        if use_cfg:
            eps_uncond, eps_cond = jnp.split(eps, 2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        return x - sigma * eps

    @partial(jax.jit, static_argnums=(0,))
    def _decode(self, state, latents: jax.Array) -> jax.Array:
        vae = nnx.merge(self._vae_def, state)
        z = latents / self.vae_scaling + self.vae_shift
        return _to_uint8(vae.decode(z.astype(self.dtype)).astype(jnp.float32))

    # jax.jit on methods hashes `self`; pipelines are long-lived singletons, so identity hashing
    # is exactly right.
    def __hash__(self) -> int:
        return id(self)

    # --- generation ------------------------------------------------------------------------

    def validate(self, req: GenerationRequest) -> tuple[str, str]:
        """Checks what only the model knows; returns the resolved (sampler, scheduler)."""
        if req.width % LATENT_SCALE or req.height % LATENT_SCALE:
            raise InvalidRequest(f"width and height must be multiples of {LATENT_SCALE}")
        sampler = req.sampler if req.sampler not in ("", "default") else self.defaults["sampler"]
        if sampler not in SAMPLER_FNS:
            raise InvalidRequest(
                f"unknown sampler {req.sampler!r}; one of {', '.join(SAMPLER_FNS)}"
            )
        scheduler = SCHEDULER_ALIASES.get(req.scheduler.lower(), req.scheduler.lower())
        scheduler = scheduler or self.defaults["scheduler"]
        if scheduler not in SCHEDULE_FNS:
            raise InvalidRequest(
                f"unknown scheduler {req.scheduler!r}; one of {', '.join(SCHEDULE_FNS)}"
            )
        if req.steps < 1:
            raise InvalidRequest("steps must be at least 1")
        return sampler, scheduler

    def encode_prompts(self, prompt: str, negative_prompt: str, clip_skip: int) -> jax.Array:
        """(2, 77, D) [negative; positive] text embeddings; clip_skip in the A1111 sense."""
        skip_layers = max(clip_skip, 1) - 1  # clip_skip <= 1 (or -1: default) uses the last layer
        ids = jnp.asarray(self.tokenizer([negative_prompt, prompt]))
        return self._encode_text(self._text_state, ids, skip_layers)

    def initial_noise(self, req: GenerationRequest) -> tuple[jax.Array, jax.Array]:
        """Unit-variance latent noise and per-image sampler keys, one stream per image seed."""
        keys = jax.vmap(jax.random.key)(jnp.asarray(req.seeds(), dtype=jnp.uint32))
        noise_keys, sampler_keys = jax.vmap(lambda k: tuple(jax.random.split(k)))(keys)
        shape = (req.height // LATENT_SCALE, req.width // LATENT_SCALE, self.latent_channels)
        noise = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(noise_keys)
        return noise, sampler_keys

    def sample(
        self,
        noise: jax.Array,
        sampler_keys: jax.Array,
        req: GenerationRequest,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> np.ndarray:
        """Runs the sampler from unit `noise` (B, h, w, c) and decodes: (B, H, W, 3) uint8."""
        sampler, scheduler = self.validate(req)
        if cancelled is not None and cancelled():
            raise Cancelled()
        batch = noise.shape[0]
        use_cfg = req.guidance_scale != 1.0
        embeds = self.encode_prompts(req.prompt, req.negative_prompt, req.clip_skip)
        uncond = jnp.repeat(embeds[:1], batch, axis=0)
        cond = jnp.repeat(embeds[1:], batch, axis=0)
        context = jnp.concatenate([uncond, cond]) if use_cfg else cond
        guidance = jnp.float32(req.guidance_scale)
        sigmas = make_sigmas(self.schedule, scheduler, req.steps)

        def model(x: jax.Array, sigma: float) -> jax.Array:
            t = float(self.schedule.sigma_to_t(np.float64(sigma)))
            denoised = self._denoise(
                self._unet_state, x, jnp.float32(sigma), jnp.float32(t), context, guidance, use_cfg
            )
            # Block so progress reports finished steps, not steps merely dispatched.
            return denoised.block_until_ready()

        def on_step(step: int, total: int) -> None:
            if progress is not None:
                progress(step, total)
            if cancelled is not None and cancelled() and step < total:
                raise Cancelled()

        latents = noise * sigmas[0]
        latents = SAMPLER_FNS[sampler](model, latents, sigmas, sampler_keys, on_step, req.eta)
        return np.asarray(self._decode(self._vae_state, latents))

    def generate(
        self,
        req: GenerationRequest,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> GenerationResult:
        sampler, scheduler = self.validate(req)
        noise, sampler_keys = self.initial_noise(req)
        pixels = self.sample(noise, sampler_keys, req, progress, cancelled)
        return GenerationResult(
            images=[pixels[i] for i in range(pixels.shape[0])],
            seeds=req.seeds(),
            info={"sampler": sampler, "scheduler": scheduler, "steps": req.steps},
        )
