"""The hires fix: generate at the request's size, upscale, then refine with img2img at the
hires size — the two-pass recipe A1111 calls "Hires. fix"."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvideo.media import resize_image
from jaxvideo.pipelines.sd import LATENT_SCALE, StableDiffusionPipeline
from jaxvideo.request import GenerationRequest
from jaxvideo.results import GenerationResult


def _upscale(pipeline: StableDiffusionPipeline, latents, hires, keys) -> jax.Array:
    h, w = hires.height // LATENT_SCALE, hires.width // LATENT_SCALE
    if hires.upscaler == "lanczos":
        # In pixel space: decode, Lanczos-resize each image, encode again (its own posterior
        # draw per image key).
        pixels = pipeline.decode(latents)
        out = []
        for i in range(pixels.shape[0]):
            big = resize_image(pixels[i], hires.width, hires.height)
            key = jax.random.fold_in(keys[i], 3)[None]
            out.append(pipeline._encode(pipeline._vae_state, jnp.asarray(big)[None], key))
        return jnp.concatenate(out)
    method = "nearest" if hires.upscaler == "latent-nearest" else "bilinear"
    return jax.image.resize(latents, (latents.shape[0], h, w, latents.shape[3]), method)


def generate_with_hires(
    pipeline: StableDiffusionPipeline,
    req: GenerationRequest,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> GenerationResult:
    hires = req.hires
    sampler, _ = pipeline.validate(req)
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
    _, scheduler = pipeline.validate(second)
    second_sigmas = pipeline.sigmas(second, scheduler)
    steps2 = len(second_sigmas) - 1
    start = steps2 - max(1, min(int(steps2 * hires.strength), steps2))
    second_sigmas = second_sigmas[start:]
    total = req.steps + len(second_sigmas) - 1

    def report_from(offset: int) -> Callable[[int, int], None]:
        # Each pass counts its own steps; clients see one run of `total` steps.
        def report(step: int, _: int) -> None:
            if progress is not None:
                progress(offset + step, total)

        return report

    noise, keys = pipeline.initial_noise(req)
    latents = pipeline.sample_latents(noise, keys, req, report_from(0), cancelled)
    latents = _upscale(pipeline, latents, hires, keys)
    # Fresh noise for the second pass, one stream per image seed.
    noise2 = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 4), latents.shape[1:]))(
        keys
    )
    latents = pipeline.sample_latents(
        noise2,
        jax.vmap(lambda k: jax.random.fold_in(k, 5))(keys),
        second,
        report_from(req.steps),
        cancelled,
        sigmas=second_sigmas,
        start=latents + noise2 * second_sigmas[0],
    )
    pixels = pipeline.decode(latents, req.vae_tiling)
    return GenerationResult(
        images=[np.asarray(pixels[i]) for i in range(pixels.shape[0])],
        seeds=req.seeds(),
        info={
            "sampler": sampler,
            "scheduler": scheduler,
            "steps": req.steps,
            "hires": dataclasses.asdict(hires),
        },
    )
