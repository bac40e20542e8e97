#!/usr/bin/env python
"""Prompt adherence of a trained demo model, and the README's grid of its pictures.

Runs the fixed evaluation prompts (`jaxvideo.demo_data.eval_prompts`: every colour and shape,
and for a video model every direction of motion) through the engine, judges each picture or
video with `jaxvideo.adherence.check` and prints one JSON line: the adherence, the settings,
the seconds, and every failure with what the checker found. `--grid` also writes the pictures
as one captioned PNG (of a video: its first, middle and last frames side by side).

    python benchmarks/adherence.py                                  # demo:sd1-shapes, defaults
    python benchmarks/adherence.py --steps 20 --sampler euler --cfg 5 --prompts 48
    python benchmarks/adherence.py --prompts 12 --grid docs/demo_grid.png   # the README grid
    python benchmarks/adherence.py --model demo:wan-shapes --cfg 4  # text to video
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from jaxvideo import adherence, demo_data, families
from jaxvideo.config import family_of

CAPTION_H = 28  # pixels of caption under each picture in the grid


def evaluate(
    model: str,
    prompts: int,
    seed: int = 0,
    fields: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """(report, [(prompt, picture)]) of the evaluation prompts on `model` (folder or demo:):
    a picture is an image, or the (T, H, W, 3) frames of a video model's video."""
    from jaxvideo.config import config_from_dict
    from jaxvideo.engine import Engine
    from jaxvideo.request import build_request

    family = families.family(family_of(model))
    config = config_from_dict({"models": [{"name": "demo", "family": family.name, "path": model}]})
    engine = Engine(config)
    defaults = engine.model_info("demo").defaults
    kind = "video" if family.video else "image"
    mode = {"mode": "vid_gen"} if family.video else {}
    pictures, verdicts = [], []
    started = time.monotonic()
    for prompt, prompt_seed in demo_data.eval_prompts(kind, prompts, seed):
        request = build_request(
            {"prompt": prompt, "seed": prompt_seed, **mode, **(fields or {})}, {}, defaults
        )
        result = engine.generate(replace(request, model="demo"))
        (picture,) = result.videos if family.video else result.images
        pictures.append((prompt, picture))
        verdicts.append(adherence.check(prompt, picture))
    report = {
        "model": model,
        "kind": kind,
        "prompts": prompts,
        "fields": fields or {},
        "adherence": round(adherence.adherence(verdicts), 4),
        # Each attribute alone: what a model gets right before it follows whole prompts.
        "by_attribute": {
            check.name: round(adherence.attribute_adherence(verdicts, [check.name]), 4)
            for check in verdicts[0].checks
        },
        "seconds": round(time.monotonic() - started, 1),
        "failures": [str(v) for v in verdicts if not v.passed],
    }
    return report, pictures


def _still(picture: np.ndarray) -> np.ndarray:
    """An image as it is; a video's first, middle and last frames side by side."""
    if picture.ndim == 3:
        return picture
    return np.concatenate([picture[0], picture[len(picture) // 2], picture[-1]], axis=1)


def grid(pictures: list[tuple[str, np.ndarray]], columns: int) -> Image.Image:
    """The pictures in rows of `columns`, each with its prompt (shortened) under it; a video
    shows its first, middle and last frames."""
    pictures = [(prompt, _still(picture)) for prompt, picture in pictures]
    height, width = pictures[0][1].shape[:2]
    rows = -(-len(pictures) // columns)
    sheet = Image.new("RGB", (columns * width, rows * (height + CAPTION_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (prompt, image) in enumerate(pictures):
        x, y = (i % columns) * width, (i // columns) * (height + CAPTION_H)
        sheet.paste(Image.fromarray(image), (x, y))
        spec = demo_data.parse_prompt(prompt)
        motion = f" {spec.direction}" if spec.direction else ""
        lines = (f"{spec.color} {spec.shape}{motion}", f"on {spec.background}")
        for j, line in enumerate(lines):
            draw.text((x + 3, y + height + 2 + 12 * j), line, fill="black")
    return sheet


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo:sd1-shapes", help="folder or demo:<name>")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="of the evaluation set")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--sampler")
    parser.add_argument("--scheduler")
    parser.add_argument("--cfg", type=float, dest="guidance_scale")
    parser.add_argument("--grid", type=Path, help="also write the pictures as one PNG")
    parser.add_argument("--columns", type=int, default=6)
    args = parser.parse_args(argv)
    names = ("steps", "sampler", "scheduler", "guidance_scale")
    fields = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    report, pictures = evaluate(args.model, args.prompts, args.seed, fields)
    if args.grid is not None:
        grid(pictures, args.columns).save(args.grid, optimize=True)
        report["grid"] = str(args.grid)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
