#!/usr/bin/env python
"""Convert a PyTorch diffusers-format model folder into a jaxvideo (Flax) model folder.

    python tools/convert_weights.py SRC DST [--dtype fp32|fp16|bf16]

SRC is a diffusers pipeline folder (model_index.json + text_encoder/, unet/, vae/, tokenizer/,
scheduler/; weights as .safetensors or .bin). Every tensor's shape is checked against the Flax
model before anything is written; a missing, unexpected or mis-shaped key fails naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.diffusers_folder import convert_diffusers_folder, count_tensors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="diffusers-format model folder")
    parser.add_argument("dst", type=Path, help="output jaxvideo model folder")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="dtype of the written weights (default fp32)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        total = count_tensors(args.src)
        with tqdm(total=total, unit="tensor", disable=args.quiet, desc="converting") as bar:
            index = convert_diffusers_folder(
                args.src, args.dst, args.dtype, on_tensor=lambda _key: bar.update(1)
            )
    except (ConversionError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst} ({index['family']}, {args.dtype}): {', '.join(index['components'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
