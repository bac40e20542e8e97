"""GenerationRequest survives the trip to JSON and arrays and back (what the durable job store
keeps of an accepted request), every kind of field included."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from jaxvideo.continuation import wan_state
from jaxvideo.errors import InvalidRequest
from jaxvideo.hires import HiresFix
from jaxvideo.lora import LoraSpec
from jaxvideo.request import GenerationRequest, HighNoiseParams, SkipLayerGuidance
from jaxvideo.request_codec import decode_request, encode_request
from jaxvideo.tiling import VaeTiling


def test_every_field_round_trips_through_json():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    request = GenerationRequest(
        prompt="a fox",
        negative_prompt="fog",
        model="sd",
        width=64,
        height=48,
        seed=7,
        eta=0.3,
        init_image=frame,
        mask_image=frame[:, :, 0],
        strength=0.4,
        loras=(LoraSpec("/loras/ink.safetensors", 0.8), LoraSpec("/loras/hn.pt", 1.0, True)),
        vae_tiling=VaeTiling(16, 24, 0.25),
        custom_sigmas=(14.6, 3.0, 0.0),
        hires=HiresFix(128, 96, steps=4, strength=0.5, upscaler="lanczos"),
        high_noise=HighNoiseParams(sampler="euler", steps=3, guidance_scale=2.0),
        continuation=wan_state(0, "wan", frame, 16),
        end_image=frame,
        return_state=True,
        distilled_guidance=2.5,
        slg=SkipLayerGuidance(layers=(7, 9), layer_start=0.05, layer_end=0.3, scale=2.8),
        ref_images=(frame, frame[:8]),
        auto_resize_ref_image=False,
        increase_ref_index=True,
    )
    data, arrays = encode_request(request)
    data = json.loads(json.dumps(data))  # nothing but JSON in the fields
    assert set(arrays) == {"init_image", "mask_image", "end_image", "ref_images.0", "ref_images.1"}
    again = decode_request(data, arrays)
    assert again == request  # the dataclass equality skips the arrays ...
    for name in ("init_image", "mask_image", "end_image"):  # ... which come back exactly
        np.testing.assert_array_equal(getattr(again, name), getattr(request, name))
    assert len(again.ref_images) == 2
    for ours, theirs in zip(again.ref_images, request.ref_images, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert again.slg.layers == (7, 9)
    assert again.continuation.to_json() == request.continuation.to_json()
    assert again.loras[1].is_high_noise and again.hires.upscaler == "lanczos"


def test_a_plain_request_has_no_arrays_and_decoding_checks_ranges():
    data, arrays = encode_request(GenerationRequest(prompt="x"))
    assert arrays == {} and "init_image" not in data
    assert decode_request(data) == GenerationRequest(prompt="x")
    with pytest.raises(InvalidRequest, match="strength"):
        decode_request({**data, "strength": 3.0})
    assert decode_request(encode_request(replace(GenerationRequest(), seed=5))[0]).seed == 5
