"""SDXL's ensemble of experts: the base model denoises the high-noise part of the schedule and
a refiner model finishes it from the same latents (diffusers' denoising_end/denoising_start)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jaxvideo.errors import InvalidRequest
from jaxvideo.pipelines.sd import StableDiffusionPipeline
from jaxvideo.request import GenerationRequest
from jaxvideo.results import GenerationResult


def switch_index(pipeline: StableDiffusionPipeline, sigmas: np.ndarray, switch: float) -> int:
    """How many steps the base model runs: those whose timestep is at or above the cutoff
    `round((1 - switch) * num_train_timesteps)`, exactly as diffusers' denoising_end counts."""
    schedule = pipeline.schedule
    cutoff = round(schedule.num_train_timesteps * (1.0 - switch))
    timesteps = schedule.sigma_to_t(sigmas[:-1].astype(np.float64))
    return int(np.sum(timesteps >= cutoff))


def generate_with_refiner(
    base: StableDiffusionPipeline,
    refiner: StableDiffusionPipeline,
    req: GenerationRequest,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> GenerationResult:
    """Base model up to `req.refiner_switch` of the schedule, then the refiner; one image set."""
    if not 0.0 < req.refiner_switch < 1.0:
        raise InvalidRequest("refiner_switch must be between 0 and 1 (exclusive)")
    if req.init_image is not None:
        raise InvalidRequest("a refiner stage is only supported for text-to-image")
    if refiner.latent_channels != base.latent_channels:
        raise InvalidRequest("the refiner's latent space does not match the base model's")
    sampler, scheduler = base.validate(req)
    sigmas = base.sigmas(req, scheduler)
    total = len(sigmas) - 1
    split = switch_index(base, sigmas, req.refiner_switch)
    noise, keys = base.initial_noise(req)
    latents = base.sample_latents(noise, keys, req, progress, cancelled, sigmas=sigmas[: split + 1])
    if split < total:

        def refiner_progress(step: int, _: int) -> None:
            if progress is not None:
                progress(split + step, total)

        latents = refiner.sample_latents(
            noise, keys, req, refiner_progress, cancelled, sigmas=sigmas[split:], start=latents
        )
    pixels = refiner.decode(latents, req.vae_tiling)
    return GenerationResult(
        images=[pixels[i] for i in range(pixels.shape[0])],
        seeds=req.seeds(),
        info={
            "sampler": sampler,
            "scheduler": scheduler,
            "steps": total,
            "refiner_steps": total - split,
        },
    )
