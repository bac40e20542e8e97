"""Convert a PyTorch Stable Diffusion or Wan model into a jaxvideo (Flax) model folder.

    jaxvideo convert SRC DST [--dtype fp32|fp16|bf16]
    jaxvideo convert MODEL.safetensors DST --tokenizer DIR [--tokenizer-2 DIR]
        [--prediction-type epsilon|v_prediction] [--config-override unet.KEY=VALUE ...]
    jaxvideo convert WAN_RELEASE_DIR|WAN_TRANSFORMER.safetensors DST
        [--vae FILE] [--text-encoder FILE] [--tokenizer DIR] [--base DIR]
        [--transformer-2 FILE] [--transformer-only] [--config-override COMPONENT.KEY=VALUE ...]

`python tools/convert_weights.py SRC DST ...` is the same program.

SRC is either a diffusers pipeline folder (model_index.json + text_encoder/, unet/ or
transformer/, vae/, tokenizer/, scheduler/; weights as .safetensors or .bin), or a single-file
checkpoint in the original LDM / A1111 layout (.safetensors, or .ckpt opened with torch's
weights_only=True) of SD 1.x, SD 2.x or SDXL base. Single files carry no tokenizer: --tokenizer
(and --tokenizer-2 for SDXL) name local tokenizer folders, e.g. those of the matching diffusers
model; nothing is downloaded.

SRC may also be an original Wan release (Wan-AI/Wan2.1, Wan2.2 layout: the Wan code's
config.json and diffusion_pytorch_model*.safetensors, or Wan 2.2 A14B's high_noise_model/ and
low_noise_model/) or one transformer file under the Wan code's names (ComfyUI repacks included;
config.json next to it, else read from shapes). The release's Wan2.1_VAE.pth,
models_t5_umt5-xxl-enc-bf16.pth and google/umt5-xxl tokenizer are converted when found in the
release folder or named by --vae, --text-encoder, --tokenizer; --base DIR (a diffusers Wan folder
or a converted one) gives the rest, e.g. Wan 2.1 I2V's CLIP image encoder. What is missing is
listed before anything is written. --transformer-only writes just DST/transformer/.

SRC may also be an original Flux.1 (Black Forest Labs: dev, schnell, Kontext) or SD3 / SD3.5
(Stability AI) single file, ComfyUI repacks and fp8 / scaled-fp8 files included: with
--transformer-only, DST/transformer/ is written, its config read from the tensor shapes.

Every tensor's shape is checked against the Flax model before anything is written; a missing,
unexpected or mis-shaped key fails naming it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

# Light imports only: `--help` must not load torch or JAX (the converters import both).
from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.ldm.layouts import PREDICTION_TYPES

SUMMARY, _, DETAILS = __doc__.partition("\n\n")


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """`component.key=value` strings (value as JSON, else a string) -> nested overrides."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, raw = item.partition("=")
        component, dot, key = target.partition(".")
        if not (sep and dot and component and key):
            raise ValueError(f"--config-override {item!r}: expected COMPONENT.KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(component, {})[key] = value
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Gives `parser` the converter's help text and options (the script and `jaxvideo convert`)."""
    parser.description = SUMMARY
    parser.epilog = DETAILS
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "src",
        metavar="SRC",
        type=Path,
        help="diffusers model folder, a .safetensors/.ckpt single file, or an original Wan "
        "release folder / transformer file",
    )
    parser.add_argument("dst", metavar="DST", type=Path, help="output jaxvideo model folder")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="dtype of the written weights (default fp32)",
    )
    parser.add_argument(
        "--tokenizer", type=Path, help="single files, Wan releases: local tokenizer folder"
    )
    parser.add_argument(
        "--tokenizer-2", type=Path, help="SDXL single files: local tokenizer_2 folder"
    )
    parser.add_argument(
        "--prediction-type",
        choices=PREDICTION_TYPES,
        help="single files: what the UNet predicts (default: epsilon; v_prediction for SD2 "
        "except inpainting, or when the file has a v_pred marker)",
    )
    parser.add_argument(
        "--config-override",
        action="append",
        default=[],
        metavar="COMPONENT.KEY=VALUE",
        help="single files, Wan releases: replace an inferred config field, e.g. "
        "unet.attention_head_dim=8, scheduler.flow_shift=5.0",
    )
    wan = parser.add_argument_group("original Wan releases")
    wan.add_argument("--vae", type=Path, help="the release's Wan2.1_VAE.pth")
    wan.add_argument(
        "--text-encoder", type=Path, help="the release's models_t5_umt5-xxl-enc-bf16.pth"
    )
    wan.add_argument(
        "--base",
        type=Path,
        help="diffusers (or converted) Wan folder lending the components the original files lack",
    )
    wan.add_argument(
        "--transformer-2",
        type=Path,
        help="Wan 2.2 A14B as two files: the low-noise expert (SRC is the high-noise one)",
    )
    wan.add_argument(
        "--transformer-only",
        action="store_true",
        help="write DST/transformer/ (and transformer_2/) alone: no model_index.json",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser)
    return parser


Convert = Callable[[Path, str, Callable[[str], None]], dict[str, Any]]


def _converter(args: argparse.Namespace) -> tuple[int, Convert]:
    """(tensor count, convert function) for SRC's format; refuses options of other formats."""
    # The converters import torch and JAX: only now that there is something to convert.
    from jaxvideo.convert.diffusers_folder import convert_diffusers_folder, count_tensors
    from jaxvideo.convert.dit_release.checkpoint import DiTSingleFile, is_dit_single_file
    from jaxvideo.convert.ldm.checkpoint import SingleFileCheckpoint, is_single_file
    from jaxvideo.convert.wan_release.checkpoint import WanOriginalCheckpoint, is_wan_original

    wan_flags = {
        "--vae": args.vae,
        "--text-encoder": args.text_encoder,
        "--base": args.base,
        "--transformer-2": args.transformer_2,
        "--transformer-only": args.transformer_only,
    }
    if is_wan_original(args.src):
        if args.tokenizer_2 or args.prediction_type:
            raise ValueError("--tokenizer-2 and --prediction-type do not apply to Wan models")
        ckpt = WanOriginalCheckpoint(
            args.src,
            transformer_2=args.transformer_2,
            vae=args.vae,
            text_encoder=args.text_encoder,
            tokenizer=args.tokenizer,
            base=args.base,
            config_overrides=parse_overrides(args.config_override),
            transformer_only=args.transformer_only,
        )
        return ckpt.num_tensors, ckpt.convert
    if is_dit_single_file(args.src):
        others = {**wan_flags, "--transformer-only": False, "--tokenizer": args.tokenizer}
        others |= {"--tokenizer-2": args.tokenizer_2, "--prediction-type": args.prediction_type}
        given = ", ".join(flag for flag, value in others.items() if value)
        if given:
            raise ValueError(f"{given}: not for original Flux.1 / SD3 single files")
        dit = DiTSingleFile(
            args.src,
            config_overrides=parse_overrides(args.config_override),
            transformer_only=True,
        )
        if not args.transformer_only:
            raise ConversionError(dit.refusal())
        return dit.num_tensors, dit.convert
    if any(wan_flags.values()):
        given = ", ".join(flag for flag, value in wan_flags.items() if value)
        raise ValueError(f"{given}: only for original Wan checkpoints, which {args.src} is not")
    if is_single_file(args.src):
        single = SingleFileCheckpoint(
            args.src,
            tokenizer=args.tokenizer,
            tokenizer_2=args.tokenizer_2,
            prediction_type=args.prediction_type,
            config_overrides=parse_overrides(args.config_override),
        )
        return single.num_tensors, single.convert
    if args.tokenizer or args.tokenizer_2 or args.prediction_type or args.config_override:
        raise ValueError(
            "--tokenizer, --tokenizer-2, --prediction-type and --config-override apply "
            "to single-file checkpoints; a diffusers folder has its own"
        )

    def convert(dst: Path, dtype: str, on_tensor: Callable[[str], None]) -> dict[str, Any]:
        return convert_diffusers_folder(args.src, dst, dtype, on_tensor=on_tensor)

    return count_tensors(args.src), convert


def run(args: argparse.Namespace) -> int:
    """Converts `args.src` to `args.dst` as parsed by `add_arguments`; the exit status."""
    try:
        total, convert = _converter(args)
        with tqdm(total=total, unit="tensor", disable=args.quiet, desc="converting") as bar:
            index = convert(args.dst, args.dtype, lambda _key: bar.update(1))
    except (ConversionError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    written = ", ".join(index["components"])
    if args.transformer_only:
        print(f"wrote {written} to {args.dst} (no model_index.json: not a servable folder)")
    else:
        print(f"wrote {args.dst} ({index['family']}, {args.dtype}): {written}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
