"""`jaxvideo generate` writes real images from the demo model, without the server;
`jaxvideo convert` is the installed weight converter."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# The console script `pip install` put next to this interpreter (setup.cfg's entry point).
JAXVIDEO = Path(sys.executable).parent / "jaxvideo"


def run_cli(tmp_path, *args):
    # The session's demo-model and compilation caches come through the environment.
    return subprocess.run(
        [sys.executable, "-m", "jaxvideo.cli", "generate", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_generate_writes_pngs_of_the_requested_size_and_seed(tmp_path):
    out = tmp_path / "fox.png"
    result = run_cli(
        tmp_path,
        "a fox",
        "--size",
        "64x48",
        "--steps",
        "2",
        "--seed",
        "7",
        "--batch-count",
        "2",
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    first, second = tmp_path / "fox-1.png", tmp_path / "fox-2.png"
    assert Image.open(first).size == (64, 48)
    assert "seed 7" in result.stdout and "seed 8" in result.stdout
    assert '"seed": 7' in Image.open(first).info["parameters"]
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))

    # img2img from the first image, same seed: a different picture of the same size
    again = run_cli(
        tmp_path,
        "a fox",
        "--init-image",
        str(first),
        "--strength",
        "0.5",
        "--steps",
        "2",
        "--seed",
        "7",
        "-o",
        str(tmp_path / "i2i.png"),
    )
    assert again.returncode == 0, again.stderr
    assert Image.open(tmp_path / "i2i.png").size == (64, 48)


def test_generate_reports_bad_input_without_a_traceback(tmp_path):
    result = run_cli(tmp_path, "a fox", "--size", "65x64", "--steps", "1")
    assert result.returncode == 2
    assert "multiples of 8" in result.stderr and "Traceback" not in result.stderr
    assert "step/s" not in result.stderr  # refused before the progress bar started
    unknown = run_cli(tmp_path, "a fox", "--sampler", "nope", "-o", str(tmp_path / "x.png"))
    assert unknown.returncode == 2 and "sampler" in unknown.stderr
    assert "step/s" not in unknown.stderr


def test_generate_writes_what_the_extension_names_and_refuses_others(tmp_path):
    for name in ("fox.gif", "fox.bmp", "fox"):
        result = run_cli(tmp_path, "a fox", "--steps", "1", "-o", str(tmp_path / name))
        assert result.returncode == 2 and "unknown extension" in result.stderr, result.stderr
        assert not (tmp_path / name).exists()
    missing = run_cli(tmp_path, "a fox", "--steps", "1", "-o", str(tmp_path / "no" / "fox.png"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    args = ("a fox", "--size", "64x64", "--steps", "1", "--seed", "3")
    for name, fmt in (("fox.jpg", "JPEG"), ("fox.webp", "WEBP")):
        result = run_cli(tmp_path, *args, "-o", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        assert Image.open(tmp_path / name).format == fmt


def test_generate_takes_the_family_from_the_model_itself(tmp_path):
    # demo:wan-tiny is a Wan 2.1 model: no --family needed (it used to default to sd1).
    out = tmp_path / "frame.png"
    args = ("waves", "--model", "demo:wan-tiny", "--size", "64x64", "--steps", "1")
    result = run_cli(tmp_path, *args, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (64, 64)
    wrong = run_cli(tmp_path, *args, "--family", "sd1", "-o", str(out))
    assert wrong.returncode == 2 and "wan21" in wrong.stderr


def test_generate_writes_a_video_and_fills_the_configured_compilation_cache(tmp_path):
    import imageio_ffmpeg

    xla = tmp_path / "xla"
    config = tmp_path / "serve.yaml"
    config.write_text(
        "models:\n  - {name: wan, family: wan21, path: 'demo:wan-tiny'}\n"
        f"server:\n  compilation_cache_dir: {xla}\n"
    )
    out = tmp_path / "clip.mp4"
    args = ["waves", "--config", str(config), "--size", "64x64", "--frames", "6", "--fps", "8"]
    result = run_cli(tmp_path, *args, "--steps", "2", "--seed", "3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "5 frames 64x64 at 8 fps" in result.stdout  # 6 frames round down to 4n + 1
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    frames = list(reader)
    assert meta["size"] == (64, 64) and meta["fps"] == 8 and len(frames) == 5
    assert any(xla.iterdir())  # compiled programs were persisted for the next start


def run_installed(*args):
    return subprocess.run([str(JAXVIDEO), *args], capture_output=True, text=True, timeout=300)


def test_installed_command_lists_convert_and_its_options():
    assert "convert" in run_installed("--help").stdout
    result = run_installed("convert", "--help")
    assert result.returncode == 0, result.stderr
    for word in ("SRC", "DST", "--dtype", "--tokenizer", "--tokenizer-2", "--base"):
        assert word in result.stdout, word


def test_installed_convert_reports_a_missing_source_without_a_traceback(tmp_path):
    result = run_installed("convert", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert result.returncode != 0
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
