"""`jaxvideo train-demo NAME OUT`: trains a demo model from scratch on the synthetic shapes
(deterministic from `--seed`) and writes its converted model folder. The shipped demo models
are this command's output (`--dtype fp16` halves the files); see README, "Demo models"."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

SUMMARY = "train a demo model on the synthetic shapes (no downloads)"
# Demo name -> its trainer (module:function taking out_dir, seed, budget, dtype) and budget.
TRAINERS = {
    "sd1-shapes": ("jaxvideo.train.sd_shapes", "train_sd_shapes", "Budget"),
    "wan-shapes": ("jaxvideo.train.wan_shapes", "train_wan_shapes", "Budget"),
}


# A budget field's annotation (a string under postponed annotations) -> how to read it.
_TYPES = {"int": int, "float": float, "str": str}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(TRAINERS), help="which demo model")
    parser.add_argument("out", type=Path, help="folder to write the trained model into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="fp16", choices=("fp32", "fp16"), help="on disk")
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training budget field (e.g. unet_steps=200); repeatable",
    )


def run(args: argparse.Namespace) -> int:
    import importlib

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    module_name, function, budget_class = TRAINERS[args.name]
    module = importlib.import_module(module_name)
    budget = getattr(module, budget_class)()
    fields = {f.name: f.type for f in dataclasses.fields(budget)}
    changes = {}
    for item in args.budget:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--budget {item}: unknown field (one of {', '.join(fields)})")
        changes[key] = _TYPES[str(fields[key])](value)
    budget = dataclasses.replace(budget, **changes)
    out = getattr(module, function)(args.out, seed=args.seed, budget=budget, dtype=args.dtype)
    print(json.dumps(json.loads((out / "training.json").read_text()), indent=2))
    return 0
