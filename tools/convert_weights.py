#!/usr/bin/env python
"""Convert a PyTorch Stable Diffusion model into a jaxvideo (Flax) model folder.

    python tools/convert_weights.py SRC DST [--dtype fp32|fp16|bf16]
    python tools/convert_weights.py MODEL.safetensors DST --tokenizer DIR [--tokenizer-2 DIR]
        [--prediction-type epsilon|v_prediction] [--config-override unet.KEY=VALUE ...]

SRC is either a diffusers pipeline folder (model_index.json + text_encoder/, unet/, vae/,
tokenizer/, scheduler/; weights as .safetensors or .bin), or a single-file checkpoint in the
original LDM / A1111 layout (.safetensors, or .ckpt opened with torch's weights_only=True) of
SD 1.x, SD 2.x or SDXL base. Single files carry no tokenizer: --tokenizer (and --tokenizer-2 for
SDXL) name local tokenizer folders, e.g. those of the matching diffusers model; nothing is
downloaded. Every tensor's shape is checked against the Flax model before anything is written;
a missing, unexpected or mis-shaped key fails naming it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.diffusers_folder import convert_diffusers_folder, count_tensors
from jaxvideo.convert.ldm_layouts import PREDICTION_TYPES
from jaxvideo.convert.single_file import SingleFileCheckpoint, is_single_file


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "src", type=Path, help="diffusers model folder, or a .safetensors/.ckpt single file"
    )
    parser.add_argument("dst", type=Path, help="output jaxvideo model folder")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="dtype of the written weights (default fp32)",
    )
    parser.add_argument("--tokenizer", type=Path, help="single files: local tokenizer folder")
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
        help="single files: replace an inferred config field, e.g. unet.attention_head_dim=8",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if is_single_file(args.src):
            ckpt = SingleFileCheckpoint(
                args.src,
                tokenizer=args.tokenizer,
                tokenizer_2=args.tokenizer_2,
                prediction_type=args.prediction_type,
                config_overrides=parse_overrides(args.config_override),
            )
            total, convert = ckpt.num_tensors, ckpt.convert
        else:
            if args.tokenizer or args.tokenizer_2 or args.prediction_type or args.config_override:
                raise ValueError(
                    "--tokenizer, --tokenizer-2, --prediction-type and --config-override apply "
                    "to single-file checkpoints; a diffusers folder has its own"
                )
            total = count_tensors(args.src)

            def convert(dst, dtype, on_tensor):
                return convert_diffusers_folder(args.src, dst, dtype, on_tensor=on_tensor)

        with tqdm(total=total, unit="tensor", disable=args.quiet, desc="converting") as bar:
            index = convert(args.dst, args.dtype, lambda _key: bar.update(1))
    except (ConversionError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst} ({index['family']}, {args.dtype}): {', '.join(index['components'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
