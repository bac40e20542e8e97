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
from jaxvideo.tokenizers import (
    PromptTokenizer,
    _load_t5_tokenizer,
    write_tiny_clip_tokenizer,
    write_tiny_t5_tokenizer,
)

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


def test_the_t5_tokenizer_makes_each_caption_word_one_token(tmp_path):
    size = write_tiny_t5_tokenizer(tmp_path / "words", words=demo_data.VOCABULARY)
    plain = write_tiny_t5_tokenizer(tmp_path / "plain")
    assert size == plain + len(set(demo_data.VOCABULARY)) - 1  # "a" is a piece already
    tokenizer = _load_t5_tokenizer(str(tmp_path / "words"))
    caption = "a purple triangle moving left on a yellow background"
    assert tokenizer.tokenize(caption) == ["\u2581" + word for word in caption.split()]
    assert tokenizer.tokenize("a cat") == ["\u2581a", "\u2581c", "at"]
    # Without words it is the tokenizer the random demos ship, piece for piece.
    plain_tokenizer = _load_t5_tokenizer(str(tmp_path / "plain"))
    assert len(plain_tokenizer.tokenize("red")) > 1
    assert (tmp_path / "plain" / "tokenizer.json").read_bytes() != (
        tmp_path / "words" / "tokenizer.json"
    ).read_bytes()


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


def test_the_short_training_context_gives_the_pipelines_outputs(tmp_path):
    # The Wan trainer feeds the transformer 16 context rows standing for the pipeline's 512.
    import jax
    import jax.numpy as jnp

    from jaxvideo.demo import save_random_component
    from jaxvideo.pipelines.wan import TEXT_LENGTH
    from jaxvideo.tokenizers import t5_token_ids
    from jaxvideo.train import wan_shapes
    from jaxvideo.weights import load_component

    tokenizer = tmp_path / "tokenizer"
    configs = wan_shapes.configs(write_tiny_t5_tokenizer(tokenizer, words=demo_data.VOCABULARY))
    save_random_component(tmp_path / "transformer", configs["transformer"], 0)
    rows = wan_shapes.CAPTION_TOKENS
    context = jax.random.normal(jax.random.key(0), (2, TEXT_LENGTH, 64))
    context = context.at[0, 10:].set(0.0).at[1, 1:].set(0.0)  # a caption, the empty prompt
    x = jax.random.normal(jax.random.key(1), (2, 5, 8, 8, 16))
    t = jnp.asarray([999.0, 250.0])
    full = load_component(tmp_path, "transformer")(x, t, context)
    short = wan_shapes.short_context_model(load_component(tmp_path, "transformer"), rows)
    np.testing.assert_allclose(short(x, t, context[:, :rows]), full, atol=2e-5)
    # The trainer's captions fit in those rows, as the pipeline tokenizes them.
    caption = "a purple triangle moving left on a yellow background"
    ids, mask = t5_token_ids(tokenizer, [caption], rows)
    assert mask[0].sum() == len(caption.split()) + 1 < rows  # the words and </s>


def test_the_wan_trainers_text_encoder_starts_knowing_word_order(tmp_path):
    # At a random start UMT5's relative-position tables are near zero: a bag of words, where
    # the rows of "a red circle ... on a blue background" and of the caption with the colours
    # swapped differ only at the colour words. The trainer's local heads tell them apart.
    import jax.numpy as jnp

    from jaxvideo.train import wan_shapes
    from jaxvideo.train.common import random_start
    from jaxvideo.train.loop import Trainable
    from jaxvideo.weights import load_component

    tokenizer = tmp_path / "tokenizer"
    configs = wan_shapes.configs(write_tiny_t5_tokenizer(tokenizer, words=demo_data.VOCABULARY))
    random_start(tmp_path, {"text_encoder": configs["text_encoder"]}, 0)
    text = Trainable.of(load_component(tmp_path, "text_encoder"))
    captions = [
        "a red circle moving left on a blue background",
        "a blue circle moving left on a red background",
    ]
    ids, mask = wan_shapes._token_ids(tokenizer, captions)
    ids, mask = jnp.asarray(ids[:2]), jnp.asarray(mask[:2])

    def circle_rows_apart(params) -> float:
        rows = np.asarray(text.module(params)(ids, mask))
        circle = rows[:, 2]  # "a red circle": the shape's row
        return float(np.linalg.norm(circle[0] - circle[1]) / np.linalg.norm(circle[0]))

    bag, local = (
        circle_rows_apart(text.params),
        circle_rows_apart(wan_shapes._text_encoder_start(text.params, configs["text_encoder"])),
    )
    assert local > 0.3 and local > 10 * bag, (bag, local)


def test_the_wan_trainers_transformer_starts_as_adaln_zero(tmp_path):
    import jax
    import jax.numpy as jnp

    from jaxvideo.train import wan_shapes
    from jaxvideo.train.common import random_start
    from jaxvideo.train.loop import Trainable
    from jaxvideo.weights import load_component

    random_start(tmp_path, {"transformer": wan_shapes.configs(100)["transformer"]}, 0)
    dit = Trainable.of(load_component(tmp_path, "transformer"))
    x = jax.random.normal(jax.random.key(1), (1, 2, 8, 8, 16))
    t, context = jnp.asarray([500.0]), jax.random.normal(jax.random.key(2), (1, 12, 64))
    start = wan_shapes._transformer_start(wan_shapes._initialised(dit.params, 0))
    assert np.abs(np.asarray(dit.module(dit.params)(x, t, context))).max() > 0.1
    assert not np.asarray(dit.module(start)(x, t, context)).any()  # the first prediction: 0
    gains = start["blocks"][0]["attn2"]["norm_k"]["scale"][...]
    assert np.all(np.asarray(gains) == wan_shapes.CROSS_ATTENTION_GAIN)


def test_the_inflated_wan_vae_is_the_image_vae_frame_by_frame(tmp_path):
    """Before any training, the video VAE started by `_inflated` encodes latent frame k as the
    image latent of frame 4k and decodes it to 4 copies of that frame's image decode."""
    import jax.numpy as jnp

    from jaxvideo.train import wan_shapes
    from jaxvideo.train.common import random_start
    from jaxvideo.train.loop import Trainable
    from jaxvideo.weights import load_component

    random_start(tmp_path, {"vae": wan_shapes.configs(100)["vae"]}, 0)
    vae = Trainable.of(load_component(tmp_path, "vae"))
    model = vae.module(wan_shapes._inflated(wan_shapes._initialised(vae.params, 0)))
    clip = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 9, 16, 16, 3)), jnp.float32)
    latents = model.encode(clip, True)[0]
    decoded = model.decode(latents, True, clip=False)
    for k in range(latents.shape[1]):
        image_latent = model.encode(clip[:, 4 * k : 4 * k + 1], True)[0]
        np.testing.assert_allclose(latents[:, k : k + 1], image_latent, atol=1e-5)
        image = model.decode(latents[:, k : k + 1], True, clip=False)[:, 0]
        for t in range(max(0, 4 * k - 3), 4 * k + 1):
            np.testing.assert_allclose(decoded[:, t], image, atol=1e-5)
    # A random start is not: its time taps mix neighbouring frames.
    plain = vae.module(wan_shapes._initialised(vae.params, 0))
    mixed = plain.encode(clip, True)[0][:, 1:2]
    assert not np.allclose(mixed, plain.encode(clip[:, 4:5], True)[0], atol=1e-3)


def test_a_few_wan_training_steps_write_a_folder_the_pipeline_runs(tmp_path):
    from jaxvideo.train.wan_shapes import FRAMES, Budget, train_wan_shapes

    budget = Budget(
        vae_image_steps=2,
        vae_image_batch=2,
        vae_steps=2,
        vae_batch=1,
        vae_frames=5,
        vae_crop=16,
        vae_check=0,
        latent_pool=2,
        dit_steps=2,
        dit_batch=2,
    )
    folder = train_wan_shapes(tmp_path / "model", seed=1, budget=budget, dtype="fp16")
    report = json.loads((folder / "training.json").read_text())
    vae = report["vae"]
    assert vae["images"]["steps"] == vae["clips"]["steps"] == report["transformer"]["steps"] == 2
    losses = [vae["images"]["final_loss"], vae["clips"]["final_loss"]]
    assert np.isfinite([*losses, report["transformer"]["final_loss"]]).all()
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    assert len(vae_config["latents_std"]) == 16 and min(vae_config["latents_std"]) > 0
    index = json.loads((folder / "model_index.json").read_text())
    assert index["family"] == "wan21" and index["dtype"] == "fp16"
    assert index["defaults"]["num_frames"] == FRAMES
    # The text encoder is saved as it started (frozen: trained, it erased the direction words).
    from jaxvideo.train import wan_shapes
    from jaxvideo.train.common import random_start
    from jaxvideo.train.loop import Trainable, flat_params
    from jaxvideo.weights import load_component

    text_config = json.loads((folder / "text_encoder" / "config.json").read_text())
    random_start(tmp_path / "start", {"text_encoder": text_config}, 1)
    start = Trainable.of(load_component(tmp_path / "start", "text_encoder"))
    start = flat_params(wan_shapes._text_encoder_start(start.params, text_config))
    saved = flat_params(Trainable.of(load_component(folder, "text_encoder")).params)
    assert saved.keys() == start.keys()
    for name, value in start.items():
        np.testing.assert_allclose(saved[name], value.astype(np.float16), err_msg=name)

    from jaxvideo.config import config_from_dict
    from jaxvideo.engine import Engine
    from jaxvideo.request import build_request

    config = config_from_dict(
        {"models": [{"name": "shapes", "family": "wan21", "path": str(folder), "dtype": "fp32"}]}
    )
    engine = Engine(config)
    request = build_request(
        {"prompt": "a red circle moving left on a blue background", "mode": "vid_gen", "steps": 2},
        config.default_request,
        engine.model_info("shapes").defaults,
    )
    (video,) = engine.generate(request).videos
    assert video.shape == (FRAMES, 64, 64, 3) and video.dtype == np.uint8


def test_a_stale_cached_copy_of_a_shipped_demo_is_replaced(tmp_path, monkeypatch):
    from jaxvideo.demo import resolve_demo

    monkeypatch.setenv("JAXVIDEO_CACHE_DIR", str(tmp_path))
    target = resolve_demo("demo:sd1-shapes")
    shipped = json.loads((target / "model_index.json").read_text())
    (target / "model_index.json").write_text("{}")  # as a previous release's copy would differ
    again = resolve_demo("demo:sd1-shapes")
    assert json.loads((again / "model_index.json").read_text()) == shipped
