"""Every family row is complete and consistent with the pipeline contract, and a pipeline is
usable on its own as the README shows."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

import jaxvideo.pipelines
from jaxvideo.demo import resolve_demo
from jaxvideo.families import FAMILIES, SD1
from jaxvideo.lazy import load
from jaxvideo.pipelines.base import Pipeline
from jaxvideo.request import REQUEST_FIELDS, build_request, check_ranges
from jaxvideo.sampling import resolve_schedule, sampler_names


@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES)
def test_each_family_row_names_a_pipeline_and_valid_defaults(family):
    pipeline = family.load_pipeline()
    assert issubclass(pipeline, Pipeline)
    assert getattr(jaxvideo.pipelines, pipeline.__name__) is pipeline
    assert set(family.defaults) <= REQUEST_FIELDS
    check_ranges(family.defaults)
    sampler = family.defaults["sampler"]
    assert sampler in sampler_names(family.flow)
    resolve_schedule(family.defaults["scheduler"], sampler, family.flow, "discrete")
    assert set(family.optional) <= set(family.components)
    assert family.refines is None or family.refines in FAMILIES
    if family.conditioner is not None:
        assert callable(load(family.conditioner))
    for builder in family.demos.values():
        assert callable(load(builder))


def test_a_folder_missing_a_component_of_its_family_is_refused_by_name(tmp_path):
    from jaxvideo.pipelines import StableDiffusionPipeline, WanPipeline

    folder = tmp_path / "sd"
    shutil.copytree(resolve_demo("demo:sd1-tiny"), folder)
    shutil.rmtree(folder / "unet")
    with pytest.raises(ValueError, match="needs unet, which the folder lacks"):
        StableDiffusionPipeline(folder)
    with pytest.raises(ValueError, match="not served by jaxvideo.pipelines.wan:WanPipeline"):
        WanPipeline(resolve_demo("demo:sd1-tiny"))


def test_components_that_disagree_refuse_to_load_naming_the_model(tmp_path):
    """A text encoder narrower than the UNet's cross-attention served /health and failed every
    request with a 500; now the model refuses to load, and the engine names it."""
    from jaxvideo.config import config_from_dict
    from jaxvideo.engine import Engine

    folder = tmp_path / "sd"
    shutil.copytree(resolve_demo("demo:sd1-tiny"), folder)
    config_path = folder / "unet" / "config.json"
    unet = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**unet, "cross_attention_dim": 48, "out_channels": 16}))
    models = [{"name": "mismatched", "family": "sd1", "path": str(folder)}]
    with pytest.raises(ValueError) as info:
        Engine(config_from_dict({"models": models}))
    message = str(info.value)
    assert message.startswith("model 'mismatched': ")
    assert "32-wide context, the UNet's cross_attention_dim is 48" in message
    assert "4 latent channels, the UNet predicts 16" in message


@pytest.mark.parametrize("demo", ["demo:sd1-tiny", "demo:wan-tiny", "demo:wan22-tiny"])
def test_the_demo_models_components_agree(demo):
    folder = resolve_demo(demo)
    index = json.loads((folder / "model_index.json").read_text())
    family = FAMILIES[index["family"]]
    configs = {
        name: json.loads((folder / name / "config.json").read_text())
        for name in family.components
        if (folder / name / "config.json").is_file()
    }
    assert family.load_pipeline().component_mismatches(configs) == []
    text = configs["text_encoder"]
    wide = {**text, "hidden_size": 99, "d_model": 99}
    assert family.load_pipeline().component_mismatches({**configs, "text_encoder": wide})


def test_unknown_pipeline_names_are_attribute_errors():
    with pytest.raises(AttributeError):
        jaxvideo.pipelines.HunyuanVideoPipeline  # noqa: B018 (not a family)


def test_a_pipeline_runs_on_its_own_as_the_readme_shows():
    from jaxvideo.pipelines import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(resolve_demo("demo:sd1-tiny"))
    assert pipeline.family is SD1 and pipeline.defaults["sampler"] == "euler_a"
    fields = {"prompt": "a lighthouse", "steps": 2, "seed": 42, "width": 64, "height": 64}
    request = build_request(fields, None, pipeline.defaults)
    images = pipeline.generate(request).images
    assert len(images) == 1 and images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8
    # The same request, validated first as the engine does, gives the same image.
    plan = pipeline.validate(request)
    again = pipeline.generate(dataclasses.replace(request), plan).images[0]
    np.testing.assert_array_equal(again, images[0])
