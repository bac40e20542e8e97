"""Warm-up requests from the config compile their shapes while the engine starts."""

import pytest

from jaxvideo.config import ConfigError, parse_config
from jaxvideo.engine import Engine
from jaxvideo.pipelines.sd import StableDiffusionPipeline

CONFIG = """
models:
  - {name: sd, family: sd1, path: "demo:sd1-tiny"}
warmup:
  - {model: sd, width: 72, height: 56, steps: 1, guidance_scale: 3.0}
"""


def test_engine_compiles_the_configured_warmup_shapes_at_start():
    denoise = StableDiffusionPipeline._denoise
    before = denoise._cache_size()
    engine = Engine(parse_config(CONFIG))
    assert denoise._cache_size() == before + 1  # the 72x56 CFG denoiser exists now
    assert engine.config.warmup[0]["width"] == 72


def test_warmup_entries_are_validated_like_requests():
    bad_model = CONFIG.replace("{model: sd,", "{model: nope,")
    with pytest.raises(ConfigError, match=r"warmup\[0\]\.model: no served model named 'nope'"):
        parse_config(bad_model)
    with pytest.raises(ConfigError, match=r"warmup\[0\]\.init_image: not allowed here"):
        parse_config(CONFIG.replace("steps: 1,", "init_image: x,"))
    with pytest.raises(ConfigError, match=r"warmup\[0\]\.width: expected int"):
        parse_config(CONFIG.replace("width: 72", "width: wide"))
