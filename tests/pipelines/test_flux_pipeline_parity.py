"""Whole Flux.1 pipelines converted by the real CLI match diffusers' FluxPipeline,
FluxImg2ImgPipeline, FluxInpaintPipeline and FluxKontextPipeline from the same noise, images
within one 8-bit level: dev (distilled guidance, dynamic shift), schnell, true CFG with a
negative prompt, an explicit flow_shift, img2img, inpainting and Kontext reference images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxKontextPipeline,
    FluxPipeline,
)
from PIL import Image

from jaxvideo.pipelines.flux import FluxPipeline as JaxFlux
from jaxvideo.pipelines.flux import pack, reference_positions
from jaxvideo.request import build_request
from tests.support import tiny_dit
from tests.support.reference_numerics import correctly_rounded_timesteps  # noqa: F401

# The reference's sinusoids at guidance x 1000 need correctly rounded frequencies (see there).
pytestmark = pytest.mark.usefixtures("correctly_rounded_timesteps")
SIZE = 64
STEPS = 4


def _converted(tmp_path_factory, variant: str, cls=FluxPipeline):
    root = tmp_path_factory.mktemp(variant)
    pipe = cls(**tiny_dit.flux_components(root, variant))
    return pipe, JaxFlux(tiny_dit.save_and_convert(pipe, root))


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    return _converted(tmp_path_factory, "dev")


def _request(ours: JaxFlux, **fields):
    base = {"prompt": "a red circle", "seed": 3, "width": SIZE, "height": SIZE, "steps": STEPS}
    return build_request({**base, **fields}, None, ours.defaults)


def _packed(noise) -> torch.Tensor:
    return torch.from_numpy(np.asarray(pack(noise)))


def _reference(pipe, req, ours: JaxFlux, **kw) -> np.ndarray:
    with torch.no_grad():
        images = pipe(
            prompt=req.prompt,
            height=req.height,
            width=req.width,
            num_inference_steps=req.steps,
            max_sequence_length=ours.text_length,
            output_type="np",
            **kw,
        ).images
    return np.round(images * 255).astype(np.int32)


def _run(ours: JaxFlux, req) -> tuple[np.ndarray, object]:
    noise, _ = ours.initial_noise(req)
    return ours.generate(req).images, noise


@pytest.mark.parametrize(
    "fields",
    [
        {},  # distilled guidance 3.5 (the family default), dynamic shift
        {"distilled_guidance": 5.0, "flow_shift": 2.0},  # an explicit shift replaces exp(mu)
        {"guidance_scale": 3.0, "negative_prompt": "a blue square"},  # true CFG
    ],
    ids=["dev", "shift", "true-cfg"],
)
def test_dev_matches_diffusers(dev, fields):
    pipe, ours = dev
    req = _request(ours, **fields)
    images, noise = _run(ours, req)
    kw = {}
    if req.guidance_scale > 1:
        kw = {"negative_prompt": req.negative_prompt, "true_cfg_scale": req.guidance_scale}
    own = pipe.scheduler
    if req.flow_shift:  # diffusers: the same fixed shift through its scheduler
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=req.flow_shift)
    try:
        ref = _reference(
            pipe, req, ours, latents=_packed(noise), guidance_scale=req.distilled_guidance, **kw
        )
    finally:
        pipe.scheduler = own
    tiny_dit.assert_close_u8(np.stack(images), ref)


def test_schnell_matches_diffusers(tmp_path_factory):
    pipe, ours = _converted(tmp_path_factory, "schnell")
    assert ours.defaults["steps"] == 4 and "distilled_guidance" not in ours.defaults
    assert "distilled_guidance" not in ours.features["img_gen"]
    req = _request(ours)
    images, noise = _run(ours, req)
    ref = _reference(pipe, req, ours, latents=_packed(noise), guidance_scale=0.0)
    tiny_dit.assert_close_u8(np.stack(images), ref)


def _generator_noise(latent_channels: int) -> tuple[torch.Generator, torch.Tensor]:
    """diffusers draws the posterior sample, then the noise, from one generator."""
    gen = torch.Generator().manual_seed(11)
    shape = (1, latent_channels, SIZE // 8, SIZE // 8)
    torch.randn(shape, generator=gen)
    return torch.Generator().manual_seed(11), torch.randn(shape, generator=gen)


@pytest.mark.parametrize("inpaint", [False, True], ids=["img2img", "inpaint"])
def test_img2img_and_inpainting_match_diffusers(tmp_path_factory, inpaint):
    root = tmp_path_factory.mktemp("img2img")
    parts = tiny_dit.flux_components(root, "dev")
    tiny_dit.deterministic_posterior(parts["vae"])
    pipe = (FluxInpaintPipeline if inpaint else FluxImg2ImgPipeline)(**parts)
    ours = JaxFlux(tiny_dit.save_and_convert(pipe, root))
    image = tiny_dit.gradient_image(SIZE)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 8:40] = 255
    fields = {"init_image": image, "strength": 0.65, "steps": 6}
    if inpaint:
        fields["mask_image"] = mask
    req = _request(ours, **fields)
    gen, noise = _generator_noise(16)
    _, keys = ours.initial_noise(req)
    plan = ours.validate(req)
    latents = ours.sample_latents(noise.permute(0, 2, 3, 1).numpy(), keys, req, plan)
    images = ours.decode(latents)
    kw = {"mask_image": Image.fromarray(mask)} if inpaint else {}
    ref = _reference(
        pipe,
        req,
        ours,
        image=Image.fromarray(image),
        strength=req.strength,
        guidance_scale=req.distilled_guidance,
        generator=gen,
        **kw,
    )
    tiny_dit.assert_close_u8(images, ref)
    if inpaint:  # the unmasked region's latents are the init image's (the mean, here)
        keep = mask[::8, ::8] == 0
        init = np.asarray(ours.encode_mean(image))[0]
        np.testing.assert_allclose(np.asarray(latents)[0][keep], init[keep], atol=1e-4)


def test_kontext_reference_image_matches_diffusers(tmp_path_factory):
    pipe, ours = _converted(tmp_path_factory, "kontext", FluxKontextPipeline)
    assert ours.kontext and "ref_images" in ours.features["img_gen"]
    ref_image = tiny_dit.gradient_image(SIZE)[:48, :32]
    req = _request(ours, ref_images=(ref_image,), auto_resize_ref_image=False)
    images, noise = _run(ours, req)
    ref = _reference(
        pipe,
        req,
        ours,
        image=Image.fromarray(ref_image),
        latents=_packed(noise),
        guidance_scale=req.distilled_guidance,
        _auto_resize=False,
        max_area=SIZE * SIZE,  # Kontext scales the output to this area (1024^2 by default)
    )
    tiny_dit.assert_close_u8(np.stack(images), ref)
    # The reference reaches the denoiser: the same run without it ends elsewhere.
    _, keys = ours.initial_noise(req)
    plain = _request(ours)
    with_ref = ours.sample_latents(noise, keys, req, ours.validate(req))
    without = ours.sample_latents(noise, keys, plain, ours.validate(plain))
    assert np.abs(np.asarray(with_ref) - np.asarray(without)).max() > 1e-2


def test_reference_positions_follow_stable_diffusion_cpp():
    one = reference_positions([(6, 4)], increase_ref_index=False)
    assert (one[0][:, 0] == 1).all() and one[0][:, 1:].min() == 0  # Kontext's single reference
    # One index, laid out by latent pixels: a wide second image (4x8 latent) goes below the
    # first (6x4) at row 6; a tall one (8x2) to its right at column 4.
    _, below = reference_positions([(6, 4), (4, 8)], increase_ref_index=False)
    assert below[:, 0].min() == 1 and below[:, 1].min() == 6 and below[:, 2].min() == 0
    _, right = reference_positions([(6, 4), (8, 2)], increase_ref_index=False)
    assert right[:, 1].min() == 0 and right[:, 2].min() == 4
    first, second = reference_positions([(6, 4), (4, 8)], increase_ref_index=True)
    assert first[:, 0].max() == 1 and second[:, 0].min() == 2 and second[:, 1:].min() == 0


def test_two_reference_images_match_a_diffusers_loop(tmp_path_factory):
    """stable-diffusion.cpp's several references (diffusers' Kontext pipeline takes one):
    diffusers' own encoder, VAE, transformer and scheduler run with the references' tokens
    appended at stable-diffusion.cpp's positions, against ours."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    pipe, ours = _converted(tmp_path_factory, "kontext2", FluxKontextPipeline)
    image = tiny_dit.gradient_image(SIZE)
    refs = [image[:32, :48], image[16:48, 16:32]]
    req = _request(ours, ref_images=tuple(refs), auto_resize_ref_image=False)
    images, noise = _run(ours, req)

    with torch.no_grad():
        prompt, pooled, text_ids = pipe.encode_prompt(
            req.prompt, None, max_sequence_length=ours.text_length
        )
        latents = _packed(noise)
        ref_tokens, sizes = [], []
        for image in refs:
            pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
            mean = pipe.vae.encode(pixels).latent_dist.mode()
            mean = (mean - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
            ref_tokens.append(pipe._pack_latents(mean, 1, 16, *mean.shape[2:]))
            sizes.append(tuple(mean.shape[2:]))
        positions = reference_positions(sizes, req.increase_ref_index)
        img_ids = torch.cat(
            [pipe._prepare_latent_image_ids(1, SIZE // 16, SIZE // 16, "cpu", torch.float32)]
            + [torch.from_numpy(p) for p in positions]
        )
        sigmas = np.linspace(1.0, 1 / req.steps, req.steps)
        mu = calculate_shift(latents.shape[1])
        pipe.scheduler.set_timesteps(sigmas=sigmas, mu=mu)
        guidance = torch.full([1], req.distilled_guidance)
        for t in pipe.scheduler.timesteps:
            v = pipe.transformer(
                hidden_states=torch.cat([latents, *ref_tokens], dim=1),
                timestep=t.expand(1) / 1000,
                guidance=guidance,
                pooled_projections=pooled,
                encoder_hidden_states=prompt,
                txt_ids=text_ids,
                img_ids=img_ids,
            ).sample[:, : latents.shape[1]]
            latents = pipe.scheduler.step(v, t, latents).prev_sample
        latents = pipe._unpack_latents(latents, SIZE, SIZE, 8)
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        ref = pipe.vae.decode(latents).sample.permute(0, 2, 3, 1).numpy()
    tiny_dit.assert_close_u8(
        np.stack(images), np.round((ref / 2 + 0.5).clip(0, 1) * 255).astype(np.int32)
    )


def test_every_flow_sampler_and_schedule_runs_on_flux(dev):
    """What the capabilities advertise for a flow model works: each flow sampler (on the
    model's own schedule) and each flow schedule (with euler) makes a finite, distinct image."""
    from tests.support.sampling import FLOW_SAMPLERS, FLOW_SCHEDULES

    _, ours = dev
    seen = {}
    runs = [(s, "discrete") for s in FLOW_SAMPLERS] + [("euler", s) for s in FLOW_SCHEDULES]
    for sampler, scheduler in runs:
        req = _request(ours, steps=3, sampler=sampler, scheduler=scheduler)
        image = ours.generate(req).images[0]
        assert image.shape == (SIZE, SIZE, 3) and image.std() > 1, (sampler, scheduler)
        seen[(sampler, scheduler)] = image
    # Different samplers take different paths through the same model.
    assert not np.array_equal(seen[("euler", "discrete")], seen[("heun", "discrete")])
