"""The real server for end-to-end tests: `python -m gunicorn webapp:app` on a loopback port.

It serves the tiny demo models (two SD ones and a Wan 2.1 video one), built into a temporary
cache on first start (set JAXVIDEO_TEST_CACHE_DIR to reuse a cache between runs), with small
limits so queue and size errors are cheap to provoke, a LoRA folder holding one real LoRA for
the demo UNet (a second one lies next to the folder, where no request may reach it), and an
input folder holding one picture for `input_reference` paths. The operator defaults keep
videos at 5 frames, so every video test compiles the same small shapes.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import openai
import pytest
from PIL import Image
from safetensors.numpy import save_file

from jaxvideo.config import parse_config
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.serving import Server, serve

LORA_NAME = "tiny_style"  # <lora_dir>/tiny_style.safetensors
OUTSIDE_LORA = "outside.safetensors"  # next to lora_dir, never loadable

E2E_CONFIG = """\
models:
  - {{name: sd1-tiny-demo, family: sd1, path: "demo:sd1-tiny", dtype: fp32}}
  # A second real model (the same tiny weights) so model choice and switching are observable.
  - {{name: sd1-tiny-second, family: sd1, path: "demo:sd1-tiny", dtype: fp32}}
  - {{name: wan-tiny-demo, family: wan21, path: "demo:wan-tiny"}}
  # Wan 2.2's two image-to-video experts: first/last frame and the high-noise stage.
  - {{name: wan22-tiny-demo, family: wan22, path: "demo:wan22-tiny"}}
server:
  lora_dir: {lora_dir}
  input_dir: {input_dir}
  max_queue_size: 4
  job_retention_s: 600
  expired_retention_s: 600
  min_width: 64
  max_width: 512
  min_height: 64
  max_height: 512
  max_batch_count: 4
  max_steps: 100
  max_body_bytes: 1048576
default_request:
  steps: 2
  width: 64
  height: 64
  num_frames: 5
"""
INPUT_PICTURE = "first.png"  # <input_dir>/first.png, 64x64


def write_tiny_lora(path: Path, seed: int = 0, rank: int = 4) -> None:
    """A kohya-format LoRA for the demo UNet (jaxvideo.demo_sd.sd1_tiny_configs): every attention
    projection of the first down block's transformer, whose width is 32 (block_out_channels
    (32, 64)); cross-attention keys/values read the 32-wide text context. The updates are
    large on purpose, so a LoRA visibly changes even a 2-step image of random weights."""
    rng = np.random.default_rng(seed)
    block = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0"
    tensors: dict[str, np.ndarray] = {}
    for attn in ("attn1", "attn2"):
        for proj in ("to_q", "to_k", "to_v", "to_out_0"):
            key = f"{block}_{attn}_{proj}"
            tensors[f"{key}.lora_down.weight"] = rng.normal(0, 0.5, (rank, 32)).astype(np.float32)
            tensors[f"{key}.lora_up.weight"] = rng.normal(0, 0.5, (32, rank)).astype(np.float32)
            tensors[f"{key}.alpha"] = np.array(float(rank), np.float32)
    save_file(tensors, str(path))


@pytest.fixture(scope="session")
def e2e_cache_dir(tmp_path_factory) -> Path:
    shared = os.environ.get("JAXVIDEO_TEST_CACHE_DIR")
    return Path(shared) if shared else tmp_path_factory.mktemp("jaxvideo-cache")


@pytest.fixture(scope="session")
def server(tmp_path_factory, e2e_cache_dir) -> Server:
    root = tmp_path_factory.mktemp("server")
    lora_dir = root / "loras"
    lora_dir.mkdir()
    write_tiny_lora(lora_dir / f"{LORA_NAME}.safetensors")
    write_tiny_lora(root / OUTSIDE_LORA, seed=1)
    input_dir = root / "inputs"
    input_dir.mkdir()
    picture = np.zeros((64, 64, 3), np.uint8)
    picture[:, :, 0] = np.arange(64, dtype=np.uint8)[None, :] * 4
    Image.fromarray(picture).save(input_dir / INPUT_PICTURE)
    config = root / "serve.yaml"
    config.write_text(
        E2E_CONFIG.format(lora_dir=json.dumps(str(lora_dir)), input_dir=json.dumps(str(input_dir)))
    )
    env = dict(os.environ)
    env.pop("JAXVIDEO_API_KEY", None)
    env.update(
        JAXVIDEO_CONFIG=str(config),
        JAXVIDEO_CACHE_DIR=str(e2e_cache_dir),
        JAXVIDEO_OUTPUT_DIR=str(root / "outputs"),
        PYTHONUNBUFFERED="1",
    )
    with serve(config, root, env) as handle:
        handle.lora_dir, handle.input_dir = lora_dir, input_dir
        handle.output_dir = root / "outputs"
        yield handle


DEFAULT_SERVER_KEY = "demo-key"


@pytest.fixture(scope="session")
def default_server(tmp_path_factory, e2e_cache_dir) -> Server:
    """The server a fresh install starts: the packaged default config, untouched, with an API
    key (JAXVIDEO_API_KEY) so the web page's key prompt is exercised; its `http` session sends
    the key. Modules using it set SERVER_GROUP = "default-config" (one worker, one server)."""
    default = resources.files("jaxvideo").joinpath("configs/default.yaml")
    root = tmp_path_factory.mktemp("default")
    env = dict(os.environ)
    # The demo cache is the suite's (the tiny models are built once); outputs stay here.
    env.update(
        JAXVIDEO_CACHE_DIR=str(e2e_cache_dir),
        JAXVIDEO_OUTPUT_DIR=str(root / "outputs"),
        JAXVIDEO_API_KEY=DEFAULT_SERVER_KEY,
    )
    with serve(default, root, env) as handle:
        handle.http.headers["Authorization"] = f"Bearer {DEFAULT_SERVER_KEY}"
        yield handle


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (tests/support/browser.py), one per module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def read_video(data: bytes, suffix: str, folder: Path) -> tuple[dict, np.ndarray]:
    """Decodes a container with ffmpeg (imageio-ffmpeg): (metadata, (F, H, W, 3) uint8)."""
    path = folder / f"video.{suffix}"
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader]
    return meta, np.stack(frames)


@pytest.fixture
def decode_video(tmp_path):
    """`decode_video(data, suffix)` -> (ffmpeg metadata, (F, H, W, 3) uint8 frames)."""
    return lambda data, suffix="mp4": read_video(data, suffix, tmp_path)


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    """The official OpenAI SDK pointed at the test server (no retries, no proxies)."""
    return openai.OpenAI(
        base_url=f"{server.url}/v1",
        api_key="anything",
        http_client=openai.DefaultHttpxClient(trust_env=False),
        max_retries=0,
        timeout=300,
    )


@pytest.fixture(scope="module")
def auth_client(server, e2e_cache_dir, tmp_path_factory):
    """An app with `api_key` set, on the real engine; `server` built the demo model already."""
    previous = os.environ.get("JAXVIDEO_CACHE_DIR")
    os.environ["JAXVIDEO_CACHE_DIR"] = str(e2e_cache_dir)
    try:
        from webapp import create_app

        state = tmp_path_factory.mktemp("state")
        config = parse_config(
            "models: [{name: demo, family: sd1, path: 'demo:sd1-tiny'}]\n"
            "server: {api_key: s3cret, output_dir: /tmp, cors_origins: ['https://ui.example/'],"
            f" state_dir: '{state}'}}\n"
        )
        app = create_app(config)
        yield app.test_client()
        app.extensions["jaxvideo"].jobs.shutdown()
    finally:
        if previous is None:
            os.environ.pop("JAXVIDEO_CACHE_DIR", None)
        else:
            os.environ["JAXVIDEO_CACHE_DIR"] = previous
