"""Whole SD3.5 pipelines converted by the real CLI match diffusers' StableDiffusion3Pipeline,
StableDiffusion3Img2ImgPipeline and StableDiffusion3InpaintPipeline from the same noise,
images within one 8-bit level: CFG with a negative prompt, without T5, skip-layer guidance,
img2img and inpainting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusion3Pipeline,
)
from PIL import Image

from jaxvideo.pipelines.sd3 import StableDiffusion3Pipeline as JaxSD3
from jaxvideo.request import SkipLayerGuidance, build_request
from tests.support import tiny_dit

SIZE = 64


def _converted(tmp_path_factory, name: str, cls=StableDiffusion3Pipeline, t5: bool = True):
    root = tmp_path_factory.mktemp(name)
    parts = tiny_dit.sd3_components(root, t5=t5)
    if cls is not StableDiffusion3Pipeline:
        tiny_dit.deterministic_posterior(parts["vae"])
    pipe = cls(**parts)
    return pipe, JaxSD3(tiny_dit.save_and_convert(pipe, root))


@pytest.fixture(scope="module")
def sd35(tmp_path_factory):
    return _converted(tmp_path_factory, "sd35")


def _request(ours: JaxSD3, **fields):
    base = {
        "prompt": "a red circle",
        "negative_prompt": "blurry",
        "seed": 5,
        "width": SIZE,
        "height": SIZE,
        "steps": 4,
        "guidance_scale": 5.0,
    }
    return build_request({**base, **fields}, None, ours.defaults)


def _reference(pipe, req, ours: JaxSD3, **kw) -> np.ndarray:
    with torch.no_grad():
        images = pipe(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            height=req.height,
            width=req.width,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale,
            max_sequence_length=ours.text_length,
            output_type="np",
            **kw,
        ).images
    return np.round(images * 255).astype(np.int32)


def _nchw(noise) -> torch.Tensor:
    return torch.from_numpy(np.array(noise)).permute(0, 3, 1, 2).contiguous()


def test_cfg_matches_diffusers(sd35):
    pipe, ours = sd35
    req = _request(ours)
    noise, _ = ours.initial_noise(req)
    tiny_dit.assert_close_u8(
        np.stack(ours.generate(req).images), _reference(pipe, req, ours, latents=_nchw(noise))
    )


def test_skip_layer_guidance_matches_diffusers(sd35):
    pipe, ours = sd35
    # 10 steps: the window (0.01, 0.2) x 10 covers step 1 only, as in diffusers' loop.
    slg = SkipLayerGuidance(layers=(1, 2), layer_start=0.01, layer_end=0.2, scale=2.8)
    req = _request(ours, steps=10, slg=slg)
    noise, _ = ours.initial_noise(req)
    images = np.stack(ours.generate(req).images)
    ref = _reference(
        pipe,
        req,
        ours,
        latents=_nchw(noise),
        skip_guidance_layers=list(slg.layers),
        skip_layer_guidance_scale=slg.scale,
        skip_layer_guidance_start=slg.layer_start,
        skip_layer_guidance_stop=slg.layer_end,
    )
    tiny_dit.assert_close_u8(images, ref)
    plain = np.stack(ours.generate(_request(ours, steps=10)).images)
    assert np.abs(plain.astype(int) - images).max() > 2  # the guidance changes the image


def test_without_t5_matches_diffusers(tmp_path_factory):
    pipe, ours = _converted(tmp_path_factory, "no-t5", t5=False)
    req = _request(ours)
    noise, _ = ours.initial_noise(req)
    tiny_dit.assert_close_u8(
        np.stack(ours.generate(req).images), _reference(pipe, req, ours, latents=_nchw(noise))
    )


@pytest.mark.parametrize("inpaint", [False, True], ids=["img2img", "inpaint"])
def test_img2img_and_inpainting_match_diffusers(tmp_path_factory, inpaint):
    cls = StableDiffusion3InpaintPipeline if inpaint else StableDiffusion3Img2ImgPipeline
    pipe, ours = _converted(tmp_path_factory, "img2img", cls)
    image = tiny_dit.gradient_image(SIZE)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:40, 24:56] = 255
    fields = {"init_image": image, "strength": 0.7, "steps": 5}
    if inpaint:
        fields["mask_image"] = mask
    req = _request(ours, **fields)
    # diffusers draws the posterior sample, then the noise, from one generator.
    gen = torch.Generator().manual_seed(13)
    shape = (1, 16, SIZE // 8, SIZE // 8)
    torch.randn(shape, generator=gen)
    noise = torch.randn(shape, generator=gen)
    _, keys = ours.initial_noise(req)
    latents = ours.sample_latents(noise.permute(0, 2, 3, 1).numpy(), keys, req, ours.validate(req))
    kw = {"mask_image": Image.fromarray(mask)} if inpaint else {}
    with torch.no_grad():
        ref = pipe(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            height=req.height,
            width=req.width,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale,
            max_sequence_length=ours.text_length,
            image=Image.fromarray(image),
            strength=req.strength,
            generator=torch.Generator().manual_seed(13),
            output_type="latent",
            **kw,
        ).images
        # Decoded here: diffusers 0.42's SD3 inpainting decode leaves out the VAE's
        # shift_factor (its img2img and text-to-image pipelines apply it).
        config = pipe.vae.config
        pixels = pipe.vae.decode(ref / config.scaling_factor + config.shift_factor).sample
    np.testing.assert_allclose(np.asarray(latents), ref.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    tiny_dit.assert_close_u8(ours.decode(latents), np.round(pixels * 255).astype(np.int32))
