"""The SD two-pass recipes, as methods of the SD pipeline (`StableDiffusionPipeline` mixes them
in): the hires fix (A1111's "Hires. fix": generate, upscale, refine with img2img at the larger
size) and SDXL's ensemble of experts (the base model denoises the high-noise part of the
schedule, a refiner model finishes it from the same latents: diffusers' denoising_end/start).

They use the pipeline's own pieces (`initial_noise`, `sigmas`, `sample_latents`, `decode`,
`_encode`), which is why they are methods rather than functions taking a pipeline.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvideo.errors import InvalidRequest
from jaxvideo.media import resize_image
from jaxvideo.pipelines.base import CancelledFn, Plan, ProgressFn, image_result
from jaxvideo.request import GenerationRequest
from jaxvideo.results import GenerationResult
from jaxvideo.tiling import LATENT_SCALE


class TwoPasses:
    """Hires fix and refiner handoff for the SD pipeline (see the module docstring)."""

    # --- hires fix ---------------------------------------------------------------------------

    def generate_hires(
        self,
        req: GenerationRequest,
        plan: Plan,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> GenerationResult:
        hires = req.hires
        second = dataclasses.replace(
            req,
            width=hires.width,
            height=hires.height,
            steps=hires.steps or req.steps,
            strength=hires.strength,
            init_image=None,
            mask_image=None,
            hires=None,
        )
        second_sigmas = self.sigmas(second, plan.scheduler)
        steps2 = len(second_sigmas) - 1
        start = steps2 - max(1, min(int(steps2 * hires.strength), steps2))
        second_sigmas = second_sigmas[start:]
        total = req.steps + len(second_sigmas) - 1

        def report_from(offset: int) -> ProgressFn:
            # Each pass counts its own steps; clients see one run of `total` steps.
            def report(step: int, _: int) -> None:
                if progress is not None:
                    progress(offset + step, total)

            return report

        noise, keys = self.initial_noise(req)
        latents = self.sample_latents(noise, keys, req, report_from(0), cancelled, plan=plan)
        latents = self._upscale(latents, hires, keys)
        # Fresh noise for the second pass, one stream per image seed.
        noise2 = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 4), latents.shape[1:]))(
            keys
        )
        latents = self.sample_latents(
            noise2,
            jax.vmap(lambda k: jax.random.fold_in(k, 5))(keys),
            second,
            report_from(req.steps),
            cancelled,
            plan=plan,
            sigmas=second_sigmas,
            start=latents + noise2 * second_sigmas[0],
        )
        pixels = self.decode(latents, req.vae_tiling)
        return image_result(req, pixels, plan, hires=dataclasses.asdict(hires))

    def _upscale(self, latents: jax.Array, hires: Any, keys: jax.Array) -> jax.Array:
        h, w = hires.height // LATENT_SCALE, hires.width // LATENT_SCALE
        if hires.upscaler == "lanczos":
            # In pixel space: decode, Lanczos-resize each image, encode again (its own
            # posterior draw per image key).
            pixels = self.decode(latents)
            out = []
            for i in range(pixels.shape[0]):
                big = resize_image(pixels[i], hires.width, hires.height)
                key = jax.random.fold_in(keys[i], 3)[None]
                out.append(self._encode(self._vae_state, jnp.asarray(big)[None], key))
            return jnp.concatenate(out)
        method = "nearest" if hires.upscaler == "latent-nearest" else "bilinear"
        return jax.image.resize(latents, (latents.shape[0], h, w, latents.shape[3]), method)

    # --- refiner -----------------------------------------------------------------------------

    def switch_index(self, sigmas: np.ndarray, switch: float) -> int:
        """How many steps the base model runs: those whose timestep is at or above the cutoff
        `round((1 - switch) * num_train_timesteps)`, exactly as diffusers' denoising_end
        counts."""
        cutoff = round(self.schedule.num_train_timesteps * (1.0 - switch))
        timesteps = self.schedule.sigma_to_t(sigmas[:-1].astype(np.float64))
        return int(np.sum(timesteps >= cutoff))

    def generate_refined(
        self,
        refiner: Any,
        req: GenerationRequest,
        plan: Plan,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> GenerationResult:
        """This model up to `req.refiner_switch` of the schedule, then `refiner` (another SD
        pipeline sharing the latent space); one image set."""
        if refiner.latent_channels != self.latent_channels:
            raise InvalidRequest("the refiner's latent space does not match the base model's")
        sigmas = self.sigmas(req, plan.scheduler)
        total = len(sigmas) - 1
        split = self.switch_index(sigmas, req.refiner_switch)
        noise, keys = self.initial_noise(req)
        latents = self.sample_latents(
            noise, keys, req, progress, cancelled, plan=plan, sigmas=sigmas[: split + 1]
        )
        if split < total:

            def refiner_progress(step: int, _: int) -> None:
                if progress is not None:
                    progress(split + step, total)

            latents = refiner.sample_latents(
                noise, keys, req, refiner_progress, cancelled,
                plan=plan, sigmas=sigmas[split:], start=latents,
            )  # fmt: skip
        pixels = refiner.decode(latents, req.vae_tiling)
        return image_result(req, pixels, plan, steps=total, refiner_steps=total - split)
