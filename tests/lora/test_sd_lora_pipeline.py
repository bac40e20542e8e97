"""LoRAs change what the SD pipeline generates, without touching the base weights."""

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from safetensors.numpy import save_file

from jaxvideo.lora import LoraError, LoraSpec
from jaxvideo.pipelines.sd import StableDiffusionPipeline as JaxPipeline
from jaxvideo.request import build_request
from tests.support import tiny_sd


@pytest.fixture(scope="module")
def pipeline_and_lora(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    pipe = StableDiffusionPipeline(
        **tiny_sd.components(root, "sd1"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ours = JaxPipeline(tiny_sd.save_and_convert(pipe, root))
    rng = np.random.default_rng(0)
    tensors = {}
    for module in (
        "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v",
    ):
        key = f"lora_unet_{module}"
        tensors[f"{key}.lora_down.weight"] = rng.standard_normal((4, 32)).astype(np.float32)
        tensors[f"{key}.lora_up.weight"] = rng.standard_normal((32, 4)).astype(np.float32)
        tensors[f"{key}.alpha"] = np.array(4.0, np.float32)
    path = root / "style.safetensors"
    save_file(tensors, path)
    return ours, path


def generate(pipeline, loras=()):
    req = build_request(
        {
            "prompt": "a fox",
            "width": 64,
            "height": 64,
            "steps": 3,
            "sampler": "euler",
            "seed": 5,
            "loras": tuple(loras),
        }
    )
    return pipeline.generate(req).images[0].astype(np.int32)


def test_lora_changes_the_image_and_multiplier_zero_does_not(pipeline_and_lora):
    pipeline, path = pipeline_and_lora
    base = generate(pipeline)
    with_lora = generate(pipeline, [LoraSpec(path, 1.0)])
    assert np.abs(with_lora - base).mean() > 1
    np.testing.assert_array_equal(generate(pipeline, [LoraSpec(path, 0.0)]), base)
    # the base weights are untouched: without the LoRA the image comes back exactly
    np.testing.assert_array_equal(generate(pipeline), base)


def test_a_lora_for_another_model_is_refused(pipeline_and_lora, tmp_path):
    pipeline, _ = pipeline_and_lora
    wrong = tmp_path / "wrong.safetensors"
    save_file(
        {
            "lora_unet_nonexistent_block_to_q.lora_down.weight": np.ones((2, 8), np.float32),
            "lora_unet_nonexistent_block_to_q.lora_up.weight": np.ones((8, 2), np.float32),
        },
        wrong,
    )
    with pytest.raises(LoraError):
        generate(pipeline, [LoraSpec(wrong, 1.0)])


def conditioning(pipeline, prompt):
    return pipeline.conditioner(prompt, "", -1, 64, 64).context


def test_long_prompts_and_emphasis_reach_the_conditioning(pipeline_and_lora):
    pipeline, _ = pipeline_and_lora
    plain = conditioning(pipeline, "a fox")
    assert plain.shape[1] == 77
    long = conditioning(pipeline, ", ".join(["a red fox"] * 20))
    # several 77-token chunks; the (empty) negative prompt is padded to the same length
    assert long.shape[1] % 77 == 0 and long.shape[1] > 77
    np.testing.assert_allclose(conditioning(pipeline, "a (fox:1.0)"), plain, atol=1e-6)
    assert np.abs(np.asarray(conditioning(pipeline, "a (fox:1.6)") - plain)).max() > 1e-3
    req = build_request(
        {"prompt": ", ".join(["a red fox"] * 20), "width": 64, "height": 64, "steps": 2, "seed": 1}
    )
    assert pipeline.generate(req).images[0].shape == (64, 64, 3)
