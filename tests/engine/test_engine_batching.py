"""Engine.generate_batch: one sampler run over several requests gives each request exactly
what Engine.generate gives it alone (the real demo SD model, 64x64, 2 steps)."""

from dataclasses import replace

import numpy as np
import pytest

from jaxvideo.config import parse_config
from jaxvideo.engine import Engine
from jaxvideo.errors import Cancelled, InvalidRequest
from jaxvideo.hires import HiresFix
from jaxvideo.request import GenerationRequest
from jaxvideo.tiling import VaeTiling

CONFIG = """
models:
  - {name: sd, family: sd1, path: "demo:sd1-tiny"}
"""
BASE = GenerationRequest(model="sd", width=64, height=64, steps=2, guidance_scale=5.0)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(parse_config(CONFIG))


def requests_for(sampler: str) -> list[GenerationRequest]:
    base = replace(BASE, sampler=sampler)
    return [
        replace(base, prompt="a red fox", seed=11),
        replace(base, prompt="a blue lake", negative_prompt="fog", seed=7, batch_count=2),
        replace(base, prompt="an old tower at night", seed=11),  # same seed, other prompt
    ]


# euler_a draws fresh per-image noise at every step; euler is deterministic given the start.
@pytest.mark.parametrize("sampler", ["euler_a", "euler"])
def test_batched_images_equal_the_images_of_each_request_alone(engine, sampler):
    requests = requests_for(sampler)
    assert len({engine.batch_key(r) for r in requests}) == 1
    steps = []
    batched = engine.generate_batch(requests, progress=lambda s, t: steps.append((s, t)))
    assert steps[-1] == (2, 2)
    for request, result in zip(requests, batched, strict=True):
        alone = engine.generate(request)
        assert result.seeds == alone.seeds == request.seeds()
        assert len(result.images) == request.batch_count
        # Not bit-exact: XLA's CPU kernels block fp32 convolutions and matmuls by batch size,
        # so a sample's sums round differently in the last bit, which flips a handful of
        # pixels (< 0.1%) across a uint8 rounding boundary, never by more than one level.
        for ours, reference in zip(result.images, alone.images, strict=True):
            diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
            assert diff.max() <= 1 and np.count_nonzero(diff) < 0.001 * diff.size
    # Different prompts really made different images (the split is not one image repeated).
    assert not np.array_equal(batched[0].images[0], batched[2].images[0])


def test_a_request_cancelled_inside_a_batch_gets_cancelled_and_the_others_their_images(engine):
    requests = requests_for("euler")
    flags = [lambda: False, lambda: True, lambda: False]
    results = engine.generate_batch(requests, cancelled=flags)
    assert isinstance(results[1], Cancelled)
    assert [len(results[i].images) for i in (0, 2)] == [1, 1]
    with pytest.raises(Cancelled):  # every request cancelled: the run stops
        engine.generate_batch(requests, cancelled=[lambda: True] * 3)


def test_batch_keys_separate_what_cannot_share_a_run(engine):
    key = engine.batch_key(BASE)
    assert key is not None
    assert engine.batch_key(replace(BASE, prompt="x", negative_prompt="y", seed=3)) == key
    assert engine.batch_key(replace(BASE, batch_count=3)) == key
    for other in (
        replace(BASE, steps=3),
        replace(BASE, width=72),
        replace(BASE, sampler="euler"),
        replace(BASE, guidance_scale=1.0),
        # The demo tokenizer is per character: 80 characters need a second 77-token chunk,
        # so the text context is longer and cannot stack with one-chunk prompts.
        replace(BASE, prompt="x" * 80),
    ):
        assert engine.batch_key(other) not in (None, key)
    pixels = np.zeros((64, 64, 3), np.uint8)
    for alone in (
        replace(BASE, init_image=pixels),
        replace(BASE, hires=HiresFix(width=128, height=128)),
        replace(BASE, vae_tiling=VaeTiling()),
        replace(BASE, model="nope"),
    ):
        assert engine.batch_key(alone) is None
    with pytest.raises(InvalidRequest, match="cannot run as one batch"):
        engine.generate_batch([BASE, replace(BASE, steps=3)])


def test_sdxl_batches_keep_each_request_s_pooled_embeds_and_empty_negative(tmp_path):
    """SDXL adds pooled text embeds and time ids, and zeroes an empty negative prompt's
    conditioning: both must stay per request inside a batch."""
    from diffusers import StableDiffusionXLPipeline

    from jaxvideo.pipelines.sd import StableDiffusionPipeline
    from tests.support import tiny_sd

    pipe = StableDiffusionXLPipeline(**tiny_sd.components(tmp_path, "sdxl"), add_watermarker=False)
    ours = StableDiffusionPipeline(tiny_sd.save_and_convert(pipe, tmp_path))
    base = replace(BASE, model=None, sampler="euler")
    requests = [
        replace(base, prompt="a red fox", seed=1),
        replace(base, prompt="a blue lake", negative_prompt="fog", seed=2),
    ]
    assert ours.batch_key(requests[0]) == ours.batch_key(requests[1])
    batched = ours.generate_batch(requests)
    for request, result in zip(requests, batched, strict=True):
        diff = np.abs(result.images[0].astype(np.int16) - ours.generate(request).images[0])
        assert diff.max() <= 1 and np.count_nonzero(diff) < 0.001 * diff.size
