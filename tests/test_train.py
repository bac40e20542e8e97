"""Training the demo models (jaxvideo.train): the word-level demo tokenizer, the command line,
and a few-step run of the SD shapes trainer whose folder the real pipeline then loads and runs
(the full training takes ~25 min and is not part of the suite; its figures are in
docs/PERFORMANCE.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxvideo import demo_data
from jaxvideo.cli import build_parser, main
from jaxvideo.tokenizers import PromptTokenizer, write_tiny_clip_tokenizer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_each_caption_word_is_one_token_and_other_words_are_spelled(tmp_path):
    size = write_tiny_clip_tokenizer(tmp_path / "words", words=demo_data.VOCABULARY)
    plain = write_tiny_clip_tokenizer(tmp_path / "plain")
    assert size > plain
    tokenizer = PromptTokenizer(tmp_path / "words")._tok
    for word in demo_data.VOCABULARY:
        assert tokenizer.tokenize(word) == [f"{word}</w>"], word
    caption = "a purple triangle moving left on a yellow background"
    assert len(tokenizer.tokenize(caption)) == len(caption.split())
    assert tokenizer.tokenize("a cat") == ["a</w>", "c", "a", "t</w>"]
    # Without words the tokenizer is the character-level one the random demos ship.
    assert PromptTokenizer(tmp_path / "plain")._tok.tokenize("red") == ["r", "e", "d</w>"]


def test_train_demo_command_line_checks_its_budget_fields(tmp_path, capsys):
    args = build_parser().parse_args(["train-demo", "sd1-shapes", str(tmp_path), "--seed", "3"])
    assert (args.name, args.seed, args.dtype) == ("sd1-shapes", 3, "fp16")
    with pytest.raises(SystemExit, match="unknown field"):
        main(["train-demo", "sd1-shapes", str(tmp_path), "--budget", "epochs=3"])


def test_a_few_training_steps_write_a_folder_the_pipeline_runs(tmp_path):
    from jaxvideo.train.sd_shapes import Budget, train_sd_shapes

    budget = Budget(vae_steps=2, vae_batch=2, latent_pool=64, unet_steps=2, unet_batch=4)
    folder = train_sd_shapes(tmp_path / "model", seed=1, budget=budget, dtype="fp16")
    report = json.loads((folder / "training.json").read_text())
    assert report["vae"]["steps"] == report["unet"]["steps"] == 2
    assert np.isfinite([report["vae"]["final_loss"], report["unet"]["final_loss"]]).all()
    assert 0.0 < report["scaling_factor"] < 100.0
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == report["scaling_factor"]

    from jaxvideo.config import config_from_dict
    from jaxvideo.engine import Engine
    from jaxvideo.request import build_request

    config = config_from_dict(
        {"models": [{"name": "shapes", "family": "sd1", "path": str(folder), "dtype": "fp32"}]}
    )
    engine = Engine(config)
    request = build_request(
        {"prompt": "a red circle on a blue background", "width": 128, "height": 128, "steps": 2},
        config.default_request,
        engine.model_info("shapes").defaults,
    )
    (image,) = engine.generate(request).images
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8


def test_the_adherence_benchmark_reports_and_draws_its_grid(tmp_path):
    # On the random-weight demo, whose pictures are noise: the checker must fail them all.
    spec = importlib.util.spec_from_file_location("adherence_bench", BENCHMARKS / "adherence.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "grid.png"
    argv = ["--model", "demo:sd1-tiny", "--prompts", "8", "--steps", "1", "--columns", "4"]
    report = bench.main([*argv, "--grid", str(out)])
    assert report["prompts"] == 8 and report["fields"] == {"steps": 1}
    assert report["adherence"] == 0.0 and len(report["failures"]) == 8
    with Image.open(out) as sheet:  # 2 rows of 4, each picture with its caption strip
        assert sheet.size == (4 * 512, 2 * (512 + bench.CAPTION_H))
