"""What the rectified-flow image families (Flux.1, SD3/SD3.5) share: a 16-channel
AutoencoderKL with a scaling and a shift factor, diffusers' FlowMatchEuler schedule, and
text-to-image, img2img and inpainting around one flow sampler run.

x = (1 - sigma) * x0 + sigma * noise. A family supplies its text conditioning and its
denoiser (`condition`, `velocity_model`), the shift its schedule uses (`default_shift`) and
how its own schedule spaces flow times (`flow_times`); the rest is here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
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
from jaxvideo.models.registry import class_name_of, spec_for
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
from jaxvideo.request import GenerationRequest
from jaxvideo.results import GenerationResult
from jaxvideo.sampling import flow_sigmas, sampler_function
from jaxvideo.sampling.cache_modes import DIT_MODES
from jaxvideo.sampling.flow_schedules import NUM_TRAIN_TIMESTEPS, time_shift
from jaxvideo.sampling.registry import native_schedule
from jaxvideo.sharding import constrain, to_host
from jaxvideo.weights import load_component, read_config

LATENT_SCALE = 8  # the VAE's spatial compression
# The schedule a model was released with ("default" and sd.cpp's "normal" mean it too).
OWN_SCHEDULE = "discrete"


class FlowImagePipeline(Pipeline):
    """A flow-matching image model: subclasses load their text encoders and denoiser."""

    size_multiple = 2 * LATENT_SCALE  # 2x2 latent patches
    cache_modes = DIT_MODES

    def __init__(self, model_dir: str | Path, dtype: str = "fp32"):
        super().__init__(model_dir, dtype)
        path = self.model_dir / "scheduler" / "scheduler_config.json"
        self.scheduler_config: dict[str, Any] = (
            json.loads(path.read_text()) if path.is_file() else {}
        )
        vae_config = read_config(self.model_dir / "vae")
        self.latent_channels = int(vae_config.get("latent_channels", 16))
        self.vae_scaling = float(vae_config.get("scaling_factor", 1.0))
        self.vae_shift = float(vae_config.get("shift_factor") or 0.0)
        vae = load_component(self.model_dir, "vae", dtype=dtype)
        self._vae_def, self._vae_state = nnx.split(vae)
        self.dtype = jax.tree.leaves(self._vae_state)[0].dtype
        self._loras = LoraCache(max_entries=4, merge_fn=self._merge_loras)

    __hash__ = Pipeline.__hash__  # jit hashes `self` (see Pipeline)

    @staticmethod
    def decoder_call(configs: Mapping[str, Mapping[str, Any]], shape: Shape) -> NetworkCall:
        """The VAE decode of one request's latents (B, h, w, C)."""
        h, w = shape.height // LATENT_SCALE, shape.width // LATENT_SCALE
        latents = spec((shape.batch, h, w, configs["vae"].get("latent_channels", 16)))
        return NetworkCall("vae", "decoder", (latents,), method="decode", split=(("rows", None),))

    # --- what a family supplies ----------------------------------------------------------------

    def default_shift(self, req: GenerationRequest) -> float:
        """The schedule's shift s (sigma = s u / (1 + (s - 1) u)) when the request sets none."""
        raise NotImplementedError

    def flow_times(self, steps: int, shift: float) -> np.ndarray:
        """The model's own schedule: `steps` flow times in (0, 1], before the shift."""
        raise NotImplementedError

    def velocity_model(
        self,
        req: GenerationRequest,
        batch: int,
        states: Mapping[str, nnx.State],
        keys: jax.Array,
        sigmas: np.ndarray,
    ) -> Callable[[jax.Array, float], jax.Array]:
        """The guided denoiser of this request: (latents (B, h, w, c), sigma) -> velocity.
        `keys` are the images' random streams (for any images it encodes); `sigmas` the
        schedule this run steps through."""
        raise NotImplementedError

    def lora_components(self) -> dict[str, nnx.State]:
        """The base weights LoRAs may patch, by component folder name."""
        raise NotImplementedError

    # --- LoRA ----------------------------------------------------------------------------------

    def lora_states(self, req: GenerationRequest) -> Mapping[str, nnx.State]:
        """The network states this request runs with, LoRA-merged (cached per LoRA set)."""
        return self._loras.get_or_merge(self.lora_components(), list(req.loras))

    def _merge_loras(self, base: dict[str, nnx.State], loras: list) -> dict[str, nnx.State]:
        from jaxvideo.lora.merge import merge_loras

        # Each component's key rules come from its reference class (models/registry.py).
        rules = {
            name: spec_for(class_name_of(read_config(self.model_dir / name))).rules for name in base
        }
        return merge_loras(base, loras, rules=rules)

    # --- schedule ------------------------------------------------------------------------------

    def shift(self, req: GenerationRequest) -> float:
        return req.flow_shift if req.flow_shift else self.default_shift(req)

    def sigmas(self, req: GenerationRequest, scheduler: str) -> np.ndarray:
        """`steps` descending sigmas and a final 0 (float32); the model's own schedule is
        diffusers' FlowMatchEulerDiscreteScheduler's, the others are the named flow schedules."""
        shift = self.shift(req)
        try:
            if native_schedule(scheduler) == OWN_SCHEDULE:
                if req.steps < 1:
                    raise ValueError("steps must be at least 1")
                sigmas = time_shift(self.flow_times(req.steps, shift), shift)
                return np.append(sigmas, 0.0).astype(np.float32)
            return flow_sigmas(scheduler, req.steps, shift)
        except ValueError as exc:
            raise InvalidRequest(str(exc), "steps") from exc

    def validate_common(self, req: GenerationRequest) -> Plan:
        """The checks every flow image model makes; families add their own."""
        multiple = self.size_multiple
        if req.width % multiple or req.height % multiple:
            field = "width" if req.width % multiple else "height"
            raise InvalidRequest(
                f"width and height must be multiples of {multiple} for {self.family.title}", field
            )
        plan = self.resolve_sampling(req.sampler, req.scheduler)
        if req.steps < 1:
            raise InvalidRequest("steps must be at least 1", "steps")
        if req.mask_image is not None and req.init_image is None:
            raise InvalidRequest("mask_image needs an init_image", "mask_image")
        for name in ("custom_sigmas", "shifted_timestep", "hires", "refiner"):
            if getattr(req, name):
                raise InvalidRequest(f"{name} is not supported for {self.family.title}", name)
        self.sigmas(req, plan.scheduler)  # a schedule this many steps cannot have is refused now
        return plan

    # --- VAE -----------------------------------------------------------------------------------

    @partial(jax.jit, static_argnums=(0,))
    def _decode(self, state, latents: jax.Array) -> jax.Array:
        vae = nnx.merge(self._vae_def, state)
        # Split spatially over latent rows across the whole mesh.
        z = constrain(latents / self.vae_scaling + self.vae_shift, None, "rows", None, None)
        return to_uint8(vae.decode(z.astype(self.dtype)))

    def decode(self, latents: jax.Array) -> np.ndarray:
        """Scaled latents (B, h, w, c) -> (B, H, W, 3) uint8."""
        return to_host(self._decode(self._vae_state, latents))

    @partial(jax.jit, static_argnums=(0,))
    def _encode(self, state, pixels: jax.Array, keys: jax.Array) -> jax.Array:
        """uint8 (1, H, W, 3) -> one posterior sample per key, scaled latents (B, h, w, c)
        (diffusers' `retrieve_latents` with a generator)."""
        vae = nnx.merge(self._vae_def, state)
        images = pixels.astype(jnp.float32) / 127.5 - 1.0
        mean, logvar = vae.encode(images.astype(self.dtype))
        mean, std = mean[0].astype(jnp.float32), jnp.exp(0.5 * logvar[0].astype(jnp.float32))
        draw = jax.vmap(lambda k: mean + std * jax.random.normal(k, mean.shape, jnp.float32))
        return (draw(keys) - self.vae_shift) * self.vae_scaling

    def encode_image(self, pixels: np.ndarray, keys: jax.Array) -> jax.Array:
        """uint8 (H, W, 3) -> one posterior sample per key: scaled latents (B, h, w, c)."""
        return self._encode(self._vae_state, jnp.asarray(pixels)[None], keys)

    @partial(jax.jit, static_argnums=(0,))
    def _encode_mean(self, state, pixels: jax.Array) -> jax.Array:
        vae = nnx.merge(self._vae_def, state)
        mean, _ = vae.encode((pixels.astype(jnp.float32) / 127.5 - 1.0).astype(self.dtype))
        return (mean.astype(jnp.float32) - self.vae_shift) * self.vae_scaling

    def encode_mean(self, pixels: np.ndarray) -> jax.Array:
        """uint8 (H, W, 3) -> the posterior mean's scaled latents (1, h, w, c)."""
        return self._encode_mean(self._vae_state, jnp.asarray(pixels)[None])

    # --- sampling ------------------------------------------------------------------------------

    def initial_noise(self, req: GenerationRequest) -> tuple[jax.Array, jax.Array]:
        """Unit latent noise (B, h, w, c) and per-image keys, one random stream per seed."""
        shape = (req.height // LATENT_SCALE, req.width // LATENT_SCALE, self.latent_channels)
        return seeded_noise(req.seeds(), shape)

    def _image_inputs(self, req: GenerationRequest, keys: jax.Array):
        """(init latents (B, h, w, c), latent-size mask (1, h, w, 1), 1 = repaint) or Nones."""
        if req.init_image is None:
            return None, None
        pixels = resize_image(req.init_image, req.width, req.height)
        encode_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        init_latents = self.encode_image(pixels, encode_keys)
        if req.mask_image is None:
            return init_latents, None
        # diffusers: the mask binarised at the pixel size, then nearest-resized to the latents.
        binary = (resize_image(req.mask_image, req.width, req.height) >= 128).astype(np.uint8)
        h, w = req.height // LATENT_SCALE, req.width // LATENT_SCALE
        rows = (np.arange(h) * req.height) // h
        cols = (np.arange(w) * req.width) // w
        mask = binary[rows][:, cols].astype(np.float32)[None, :, :, None]
        return init_latents, jnp.asarray(mask)

    def sample_latents(
        self,
        noise: jax.Array,
        keys: jax.Array,
        req: GenerationRequest,
        plan: Plan,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> jax.Array:
        """Unit `noise` (B, h, w, c) -> final scaled latents.

        img2img runs the last `strength` of the schedule from the init latents put on the flow
        path (diffusers' `scale_noise`); inpainting keeps the unmasked region on the init
        image's path at every step and clean at the end.
        """
        stop_if_cancelled(cancelled)
        states = self.lora_states(req)
        sigmas = self.sigmas(req, plan.scheduler)
        init_latents, mask = self._image_inputs(req, keys)
        if init_latents is not None:
            # diffusers' flow img2img: the first int(steps - steps * strength) steps are skipped.
            steps = len(sigmas) - 1
            sigmas = sigmas[int(max(steps - steps * req.strength, 0)) :]
            if len(sigmas) < 2:  # strength 0: nothing to denoise
                return init_latents
        latents = noise if init_latents is None else _on_path(init_latents, noise, sigmas[0])
        velocity = self.velocity_model(req, noise.shape[0], states, keys, sigmas)

        def keep(x: jax.Array, sigma: float) -> jax.Array:
            if mask is None:
                return x
            return mask * x + (1 - mask) * _on_path(init_latents, noise, sigma)

        def model(x: jax.Array, sigma: float) -> jax.Array:
            x = keep(x, sigma)
            x0 = keep(x - jnp.float32(sigma) * velocity(x, sigma), 0.0)
            jax.block_until_ready(x0)  # progress reports finished steps
            return x0

        run = sampler_function(plan.sampler, flow=True)
        latents = run(
            model, latents, sigmas, keys, step_reporter(progress, cancelled), req.eta,
            cache=req.step_cache,
        )  # fmt: skip
        return keep(latents, 0.0)

    def generate(
        self,
        req: GenerationRequest,
        plan: Plan | None = None,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
        refiner: Pipeline | None = None,
    ) -> GenerationResult:
        if refiner is not None:
            raise InvalidRequest(f"{self.family.title} models have no refiner stage", "refiner")
        plan = plan or self.validate(req)
        noise, keys = self.initial_noise(req)
        latents = self.sample_latents(noise, keys, req, plan, progress, cancelled)
        return image_result(req, self.decode(latents), plan)


def _on_path(x0: jax.Array, noise: jax.Array, sigma: float) -> jax.Array:
    """The flow path's point at `sigma`: (1 - sigma) x0 + sigma noise."""
    return (1.0 - sigma) * x0 + sigma * noise


def step_index(sigmas: np.ndarray, sigma: float) -> int:
    """Which step of the run `sigmas` a model call at `sigma` belongs to (a second call of a
    two-stage sampler counts towards the next step)."""
    return int(np.sum(sigmas[:-1] > np.float32(sigma)))


def flow_timestep(sigma: float) -> float:
    """The timestep diffusers' FlowMatchEuler gives a transformer at `sigma` (float32 t)."""
    return float(np.float32(np.float32(sigma) * NUM_TRAIN_TIMESTEPS))
