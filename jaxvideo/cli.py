"""The `jaxvideo` command: `generate` images and videos, `convert` PyTorch weights.

`jaxvideo generate`: text-to-image (img2img, inpainting) and text/image-to-video from the
command line. Runs the same engine the server runs, without HTTP:

    jaxvideo generate "a lighthouse at dusk" --model /models/sd15-jax --size 512x512 \
        --steps 25 --sampler euler_a --seed 42 -o lighthouse.png
    jaxvideo generate "waves at dusk" --model demo:wan-tiny --frames 17 -o waves.mp4

`--model` takes a converted model folder or `demo:sd1-tiny`; `--config` takes a serve YAML
(its first model, or the one named by `--model-name`, and its `default_request`).

`jaxvideo convert SRC DST`: a PyTorch model into a jaxvideo model folder (jaxvideo.convert.cli).
`jaxvideo train-demo NAME OUT`: a demo model trained on synthetic shapes (jaxvideo.train.cli).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from jaxvideo.config import DEMO_PREFIX, ConfigError, config_from_dict, family_of, load_config
from jaxvideo.convert import cli as convert_cli
from jaxvideo.errors import InvalidRequest
from jaxvideo.families import FAMILY_NAMES
from jaxvideo.media import encode_image, encode_video
from jaxvideo.request import build_request
from jaxvideo.train import cli as train_cli

# Output suffixes and the format each writes; the video ones make a video (animated WebP stays
# an image suffix: .webp is a picture).
IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
VIDEO_SUFFIXES = {".mp4": "mp4", ".webm": "webm", ".avi": "avi"}


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxvideo", description="jaxvideo command line")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate images from a prompt")
    gen.add_argument("prompt")
    source = gen.add_mutually_exclusive_group()
    source.add_argument("--model", help="converted model folder or demo:<name> (default: demo)")
    source.add_argument("--config", help="serve YAML; uses its first model and default_request")
    gen.add_argument("--model-name", help="with --config: which configured model to use")
    gen.add_argument(
        "--family",
        choices=FAMILY_NAMES,
        help="with --model: its model family (default: what the folder or demo says it is)",
    )
    gen.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    gen.add_argument("-n", "--negative-prompt")
    gen.add_argument("--size", type=_size, help="WIDTHxHEIGHT (default: the family's)")
    gen.add_argument("--steps", type=int)
    gen.add_argument("--cfg-scale", type=float, dest="guidance_scale")
    gen.add_argument("--sampler")
    gen.add_argument("--scheduler")
    gen.add_argument("--seed", type=int, default=-1, help="-1 draws a random seed (printed)")
    gen.add_argument("--batch-count", type=int, dest="batch_count")
    gen.add_argument("--clip-skip", type=int, dest="clip_skip")
    gen.add_argument("--init-image", type=Path, help="img2img: start from this image")
    gen.add_argument("--mask", type=Path, help="inpainting: white = repaint")
    gen.add_argument("--strength", type=float, help="img2img strength in [0, 1]")
    video = gen.add_argument_group("video (Wan models; an .mp4/.webm/.avi output makes a video)")
    video.add_argument("--frames", type=int, dest="num_frames", help="rounded down to 4n+1")
    video.add_argument("--fps", type=int)
    video.add_argument("--end-image", type=Path, help="last frame (first/last-frame models)")
    video.add_argument("--flow-shift", type=float, dest="flow_shift")
    gen.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("output.png"),
        help="output file: .png .jpg .webp (images) or .mp4 .webm .avi (a video); batches add "
        "-1, -2, ... before the suffix",
    )
    convert = commands.add_parser("convert", help=convert_cli.SUMMARY)
    convert_cli.add_arguments(convert)
    train = commands.add_parser("train-demo", help=train_cli.SUMMARY)
    train_cli.add_arguments(train)
    return parser


def _serve_config(args: argparse.Namespace):
    if args.config:
        return load_config(args.config)
    model = args.model or f"{DEMO_PREFIX}sd1-tiny"
    family = args.family or family_of(model)
    raw = {"models": [{"name": "cli", "family": family, "path": model, "dtype": args.dtype}]}
    return config_from_dict(raw, base_dir=Path.cwd(), source="command line")


def _check_output(output: Path) -> None:
    """Refuses, before any model loads, an output the run could not write."""
    suffixes = {**IMAGE_SUFFIXES, **VIDEO_SUFFIXES}
    if output.suffix.lower() not in suffixes:
        raise ValueError(
            f"-o {output}: unknown extension {output.suffix or '(none)'!r}; "
            f"use one of {' '.join(suffixes)}"
        )
    if not output.parent.is_dir():
        raise FileNotFoundError(f"-o {output}: folder {output.parent} does not exist")


def _client_fields(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"prompt": args.prompt, "model": model_name, "seed": args.seed}
    for key in (
        "negative_prompt",
        "steps",
        "guidance_scale",
        "sampler",
        "scheduler",
        "batch_count",
        "clip_skip",
        "strength",
        "num_frames",
        "fps",
        "flow_shift",
    ):
        value = getattr(args, key, None)
        if value is not None:
            fields[key] = value
    if args.size:
        fields["width"], fields["height"] = args.size
    if args.init_image:
        fields["init_image"] = np.asarray(Image.open(args.init_image).convert("RGB"))
        if not args.size:
            h, w = fields["init_image"].shape[:2]
            fields["width"], fields["height"] = w // 8 * 8, h // 8 * 8
    if args.mask:
        fields["mask_image"] = np.asarray(Image.open(args.mask).convert("L"))
    if getattr(args, "end_image", None):
        fields["end_image"] = np.asarray(Image.open(args.end_image).convert("RGB"))
    if _video_format(args.output) is not None:
        fields["mode"] = "vid_gen"
    return fields


def _video_format(output: Path) -> str | None:
    return VIDEO_SUFFIXES.get(output.suffix.lower())


def _output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i + 1}{output.suffix}") for i in range(count)]


def generate(args: argparse.Namespace) -> int:
    from jaxvideo.engine import Engine  # JAX loads only when there is work to do

    _check_output(args.output)
    config = _serve_config(args)
    engine = Engine(config)
    model = engine.model_info(args.model_name)
    request = build_request(
        _client_fields(args, model.name), config.default_request, model.defaults
    )
    prepared = engine.prepare(request)  # a bad size or sampler fails here, before any step
    bar = tqdm(total=request.steps, unit="step", desc=f"{model.name} seed {request.seed}")

    def progress(step: int, total: int) -> None:
        bar.total = total
        bar.n = step
        bar.refresh()

    result = engine.generate(prepared, progress=progress)
    bar.close()
    if result.videos:
        return _write_videos(args.output, result, request)
    fmt = IMAGE_SUFFIXES[args.output.suffix.lower()]
    for path, pixels, seed in zip(
        _output_paths(args.output, len(result.images)), result.images, result.seeds, strict=True
    ):
        meta = {
            "parameters": json.dumps(
                {
                    "prompt": request.prompt,
                    "seed": seed,
                    "steps": request.steps,
                    "model": model.name,
                }
            )
        }
        path.write_bytes(encode_image(pixels, fmt, 95, meta))
        print(f"wrote {path} ({pixels.shape[1]}x{pixels.shape[0]}, seed {seed})")
    return 0


def _write_videos(output: Path, result, request) -> int:
    fmt = _video_format(output) or "mp4"
    fps = result.fps or request.fps
    for path, frames, seed in zip(
        _output_paths(output, len(result.videos)), result.videos, result.seeds, strict=True
    ):
        path.write_bytes(encode_video(frames, fps, fmt))
        height, width = frames.shape[1:3]
        print(f"wrote {path} ({len(frames)} frames {width}x{height} at {fps} fps, seed {seed})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "convert":
        return convert_cli.run(args)
    if args.command == "train-demo":
        return train_cli.run(args)
    try:
        return generate(args)
    except (ConfigError, InvalidRequest, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
