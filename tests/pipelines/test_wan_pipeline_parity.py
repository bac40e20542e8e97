"""Whole Wan pipelines converted by tools/convert_weights.py match diffusers' pipelines.

Tiny random diffusers Wan pipelines are saved as users download them, converted with the real
CLI, then both sides run UMT5 encoding, UniPC flow sampling with CFG over the transformer(s)
and the causal VAE decode from the same initial noise; the frames must agree to within one
8-bit level. Covers Wan 2.1 text-to-video, Wan 2.1 first/last-frame (CLIP image tokens), and
Wan 2.2's two experts with text and with image conditioning.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline as TorchI2V
from diffusers import WanPipeline as TorchT2V
from PIL import Image

from jaxvideo.pipelines.wan import WanPipeline, frame_count
from jaxvideo.request import build_request
from tests.support import tiny_wan

SIZE = 32
FRAMES = 9


def _converted(tmp_path_factory, variant: str):
    root = tmp_path_factory.mktemp(variant)
    parts = tiny_wan.components(root, variant)
    image_model = variant in ("flf2v", "i2v22")
    pipe = (TorchI2V if image_model else TorchT2V)(**parts)
    dst = tiny_wan.save_and_convert(pipe, root)
    return pipe, WanPipeline(dst)


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    return _converted(tmp_path_factory, "t2v")


def _frames(pipe, req, ours: WanPipeline, frames: int, **images):
    noise, _ = ours.initial_noise(req, frames)
    latents = torch.from_numpy(np.asarray(noise)).permute(0, 4, 1, 2, 3).contiguous()
    with torch.no_grad():
        out = pipe(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            height=req.height,
            width=req.width,
            num_frames=frames,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale,
            latents=latents,
            output_type="np",
            **images,
        ).frames
    return np.round(np.asarray(out) * 255).astype(np.int16)


def _request(**fields):
    base = {
        "prompt": "a fox running through snow",
        "negative_prompt": "blurry",
        "mode": "vid_gen",
        "width": SIZE,
        "height": SIZE,
        "num_frames": FRAMES,
        "steps": 4,
        "guidance_scale": 5.0,
        "sampler": "unipc",
        "scheduler": "discrete",
        "seed": 3,
    }
    return build_request({**base, **fields})


def _assert_close(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    diff = np.abs(ours.astype(np.int16) - reference)
    assert diff.max() <= 1, f"max diff {diff.max()} levels, mean {diff.mean():.3f}"


def _picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def test_cli_writes_a_wan_folder(t2v):
    _, ours = t2v
    index = json.loads((ours.model_dir / "model_index.json").read_text())
    assert index["family"] == "wan21"
    assert index["components"]["transformer"] == "WanTransformer3DModel"
    assert index["components"]["vae"] == "AutoencoderKLWan"
    assert index["components"]["text_encoder"] == "UMT5EncoderModel"
    assert ours.flow_shift == 3.0


def test_text_to_video_matches_diffusers(t2v):
    pipe, ours = t2v
    req = _request()
    result = ours.generate(req)
    assert result.info["frame_count"] == FRAMES
    _assert_close(np.stack(result.videos), _frames(pipe, req, ours, FRAMES))


def test_single_frame_image_matches_diffusers(t2v):
    pipe, ours = t2v
    req = _request(mode="img_gen", num_frames=1, guidance_scale=1.0)
    result = ours.generate(req)
    reference = _frames(pipe, req, ours, 1)[:, 0]
    _assert_close(np.stack(result.images), reference)


def test_frame_count_rounds_down_to_4n_plus_1():
    assert [frame_count(n) for n in (1, 2, 5, 32, 33, 34, 81)] == [1, 1, 5, 29, 33, 33, 81]


def test_two_experts_switch_at_the_boundary_like_diffusers(tmp_path_factory):
    pipe, ours = _converted(tmp_path_factory, "moe")
    assert ours.family.name == "wan22" and ours.boundary_ratio == 0.875
    req = _request(steps=6, guidance_scale=4.0, guidance_scale_2=3.0)
    result = ours.generate(req)
    reference = _frames(pipe, req, ours, FRAMES, guidance_scale_2=3.0)
    _assert_close(np.stack(result.videos), reference)


def test_first_last_frame_with_clip_tokens_matches_diffusers(tmp_path_factory):
    pipe, ours = _converted(tmp_path_factory, "flf2v")
    first, last = _picture(1), _picture(2)
    req = _request(init_image=first, end_image=last)
    result = ours.generate(req)
    images = {"image": Image.fromarray(first), "last_image": Image.fromarray(last)}
    _assert_close(np.stack(result.videos), _frames(pipe, req, ours, FRAMES, **images))


def test_wan22_image_to_video_matches_diffusers(tmp_path_factory):
    pipe, ours = _converted(tmp_path_factory, "i2v22")
    first = _picture(4)
    req = _request(init_image=first, steps=5)
    result = ours.generate(req)
    reference = _frames(pipe, req, ours, FRAMES, image=Image.fromarray(first))
    _assert_close(np.stack(result.videos), reference)
