"""SD 2.x (v-prediction), SDXL, img2img and inpainting match diffusers' own pipelines.

Each tiny random pipeline is converted with tools/convert_weights.py; both sides start from the
same noise, and images must agree to within one 8-bit level.
"""

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from jaxvideo.pipelines.sd import StableDiffusionPipeline as JaxPipeline
from jaxvideo.request import build_request
from tests.support import tiny_sd

SIZE = 64


def request(**kw):
    fields = dict(
        prompt="a red fox in the snow",
        width=SIZE,
        height=SIZE,
        steps=5,
        guidance_scale=5.0,
        sampler="euler",
        scheduler="discrete",
        seed=3,
    )
    fields.update(kw)
    return build_request(fields)


def nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous()


def assert_close_u8(ours: np.ndarray, ref: np.ndarray) -> None:
    ref_u8 = np.round(ref * 255).astype(np.int32)
    assert ours.shape == ref_u8.shape
    assert np.abs(ours.astype(np.int32) - ref_u8).max() <= 1
    assert ours.std() > 1


def test_sd2_v_prediction_matches_diffusers(tmp_path):
    pipe = StableDiffusionPipeline(
        **tiny_sd.components(tmp_path, "sd2"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ours = JaxPipeline(tiny_sd.save_and_convert(pipe, tmp_path))
    assert ours.family.name == "sd2" and ours.schedule.prediction_type == "v_prediction"
    req = request(negative_prompt="blurry")
    noise, keys = ours.initial_noise(req)
    pixels = ours.sample(noise, keys, req)
    ref = pipe(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        height=SIZE,
        width=SIZE,
        num_inference_steps=5,
        guidance_scale=5.0,
        latents=nchw(noise),
        output_type="np",
    ).images
    assert_close_u8(pixels, ref)


@pytest.mark.parametrize("negative_prompt", ["", "blurry"])
def test_sdxl_matches_diffusers(tmp_path, negative_prompt):
    pipe = StableDiffusionXLPipeline(**tiny_sd.components(tmp_path, "sdxl"), add_watermarker=False)
    ours = JaxPipeline(tiny_sd.save_and_convert(pipe, tmp_path))
    assert ours.family.name == "sdxl"
    req = request(negative_prompt=negative_prompt)
    noise, keys = ours.initial_noise(req)
    pixels = ours.sample(noise, keys, req)
    ref = pipe(
        prompt=req.prompt,
        negative_prompt=negative_prompt or None,
        height=SIZE,
        width=SIZE,
        num_inference_steps=5,
        guidance_scale=5.0,
        latents=nchw(noise),
        output_type="np",
    ).images
    assert_close_u8(pixels, ref)


def init_image() -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([x * 4, y * 4, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)


def deterministic_posterior(vae) -> None:
    """Pushes the VAE's log-variance to its clamp so an encode draws (almost) the mean."""
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.latent_channels :] = -100.0


def test_img2img_matches_diffusers(tmp_path):
    parts = tiny_sd.components(tmp_path, "sd1")
    deterministic_posterior(parts["vae"])
    pipe = StableDiffusionImg2ImgPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    ours = JaxPipeline(tiny_sd.save_and_convert(pipe, tmp_path))
    image = init_image()
    req = request(init_image=image, strength=0.6, steps=10)
    # diffusers draws the posterior sample, then the noise, from one generator.
    gen = torch.Generator().manual_seed(11)
    torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=gen)
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=gen)
    _, keys = ours.initial_noise(req)
    pixels = ours.sample(noise.permute(0, 2, 3, 1).numpy(), keys, req)
    ref = pipe(
        prompt=req.prompt,
        image=torch.from_numpy(image).permute(2, 0, 1)[None] / 255.0,
        strength=0.6,
        num_inference_steps=10,
        guidance_scale=5.0,
        output_type="np",
        generator=torch.Generator().manual_seed(11),
    ).images
    assert_close_u8(pixels, ref)


def test_inpainting_unet_matches_diffusers(tmp_path):
    parts = tiny_sd.components(tmp_path, "inpaint")
    deterministic_posterior(parts["vae"])
    pipe = StableDiffusionInpaintPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    ours = JaxPipeline(tiny_sd.save_and_convert(pipe, tmp_path))
    assert ours.is_inpainting
    image, mask = init_image(), np.zeros((SIZE, SIZE), np.uint8)
    mask[:, : SIZE // 2] = 255
    req = request(init_image=image, mask_image=mask, strength=1.0)
    noise, keys = ours.initial_noise(req)
    pixels = ours.sample(noise, keys, req)
    ref = pipe(
        prompt=req.prompt,
        image=torch.from_numpy(image).permute(2, 0, 1)[None] / 255.0,
        mask_image=torch.from_numpy(mask)[None, None] / 255.0,
        height=SIZE,
        width=SIZE,
        strength=1.0,
        num_inference_steps=5,
        guidance_scale=5.0,
        latents=nchw(noise),
        output_type="np",
    ).images
    assert_close_u8(pixels, ref)


def test_mask_blending_keeps_the_unmasked_region(tmp_path):
    """An ordinary UNet repaints only the masked latents; the rest stay the init image's."""
    parts = tiny_sd.components(tmp_path, "sd1")
    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    ours = JaxPipeline(tiny_sd.save_and_convert(pipe, tmp_path))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, : SIZE // 2] = 255  # repaint the left half
    req = request(init_image=init_image(), mask_image=mask, strength=1.0)
    noise, keys = ours.initial_noise(req)
    latents = np.asarray(ours.sample_latents(noise, keys, req))
    init_latents = np.asarray(ours._image_inputs(req, keys)[0])
    half = SIZE // 16
    np.testing.assert_allclose(latents[:, :, half:], init_latents[:, :, half:], atol=1e-6)
    assert np.abs(latents[:, :, :half] - init_latents[:, :, :half]).mean() > 0.1


def test_sdxl_base_then_refiner_matches_diffusers_ensemble_of_experts(tmp_path):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    base = StableDiffusionXLPipeline(
        **tiny_sd.components(tmp_path / "base", "sdxl"), add_watermarker=False
    )
    parts = tiny_sd.components(tmp_path / "refiner", "sdxl")
    unet = tiny_sd.unet(
        cross_attention_dim=32,  # text_encoder_2 alone
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=5 * 8 + 24,  # 5 time ids incl. aesthetic score
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
    )
    tiny_sd.perturb(unet)
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=parts["vae"],
        text_encoder=None,
        text_encoder_2=parts["text_encoder_2"],
        tokenizer=None,
        tokenizer_2=parts["tokenizer_2"],
        unet=unet,
        scheduler=parts["scheduler"],
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    ours_base = JaxPipeline(tiny_sd.save_and_convert(base, tmp_path / "base"))
    ours_refiner = JaxPipeline(tiny_sd.save_and_convert(refiner, tmp_path / "refiner"))
    assert ours_refiner.family.name == "sdxl_refiner"

    req = request(steps=10, refiner="refiner", refiner_switch=0.6)
    noise, _ = ours_base.initial_noise(req)
    ours = ours_base.generate(req, refiner=ours_refiner).images[0]
    latents = base(
        prompt=req.prompt,
        height=SIZE,
        width=SIZE,
        num_inference_steps=10,
        guidance_scale=5.0,
        latents=nchw(noise),
        denoising_end=0.6,
        output_type="latent",
    ).images
    ref = refiner(
        prompt=req.prompt,
        image=latents,
        num_inference_steps=10,
        denoising_start=0.6,
        guidance_scale=5.0,
        output_type="np",
    ).images
    assert_close_u8(ours[None], ref)
