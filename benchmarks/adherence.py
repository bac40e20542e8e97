#!/usr/bin/env python
"""Prompt adherence of a trained demo model, and the README's grid of its pictures.

Runs the fixed evaluation prompts (`jaxvideo.demo_data.eval_prompts`: every colour and shape)
through the engine, judges each picture with `jaxvideo.adherence.check` and prints one JSON
line: the adherence, the settings, the seconds, and every failure with what the checker found.
`--grid` also writes the pictures as one captioned PNG.

    python benchmarks/adherence.py                                  # demo:sd1-shapes, defaults
    python benchmarks/adherence.py --steps 20 --sampler euler --cfg 5 --prompts 48
    python benchmarks/adherence.py --prompts 12 --grid docs/demo_grid.png   # the README grid
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

from jaxvideo import adherence, demo_data

CAPTION_H = 28  # pixels of caption under each picture in the grid


def evaluate(
    model: str,
    prompts: int,
    seed: int = 0,
    fields: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """(report, [(prompt, image)]) of the evaluation prompts on `model` (folder or demo:)."""
    from jaxvideo.config import config_from_dict
    from jaxvideo.engine import Engine
    from jaxvideo.families import demo_builder
    from jaxvideo.request import build_request

    family = (
        demo_builder(model.removeprefix("demo:"))[0].name if model.startswith("demo:") else "sd1"
    )
    config = config_from_dict({"models": [{"name": "demo", "family": family, "path": model}]})
    engine = Engine(config)
    defaults = engine.model_info("demo").defaults
    pictures, verdicts = [], []
    started = time.monotonic()
    for prompt, prompt_seed in demo_data.eval_prompts("image", prompts, seed):
        request = build_request(
            {"prompt": prompt, "seed": prompt_seed, **(fields or {})}, {}, defaults
        )
        (image,) = engine.generate(replace(request, model="demo")).images
        pictures.append((prompt, image))
        verdicts.append(adherence.check(prompt, image))
    report = {
        "model": model,
        "prompts": prompts,
        "fields": fields or {},
        "adherence": round(adherence.adherence(verdicts), 4),
        "seconds": round(time.monotonic() - started, 1),
        "failures": [str(v) for v in verdicts if not v.passed],
    }
    return report, pictures


def grid(pictures: list[tuple[str, np.ndarray]], columns: int) -> Image.Image:
    """The pictures in rows of `columns`, each with its prompt (shortened) under it."""
    height, width = pictures[0][1].shape[:2]
    rows = -(-len(pictures) // columns)
    sheet = Image.new("RGB", (columns * width, rows * (height + CAPTION_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (prompt, image) in enumerate(pictures):
        x, y = (i % columns) * width, (i // columns) * (height + CAPTION_H)
        sheet.paste(Image.fromarray(image), (x, y))
        spec = demo_data.parse_prompt(prompt)
        lines = (f"{spec.color} {spec.shape}", f"on {spec.background}")
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
