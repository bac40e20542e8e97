#!/usr/bin/env python
"""What each step-cache mode saves and costs on a trained demo model.

For every mode the model supports (or `--modes`), the fixed evaluation prompts run once
without a cache and once with it, same seeds and settings. One JSON line per mode: the
denoiser calls made and computed (the call ratio is the speedup the network sees), the wall
time ratio (after a warm-up run, so compiles are not counted), PSNR and SSIM of the cached
outputs against the uncached ones, and the adherence of both (`jaxvideo.adherence`).

    python benchmarks/step_cache.py                                     # demo:sd1-shapes
    python benchmarks/step_cache.py --model demo:wan-shapes --prompts 8
    python benchmarks/step_cache.py --modes ucache --option threshold=2 --sampler euler --cfg 2
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np

from jaxvideo import adherence, demo_data, quality


def _engine(model: str):
    from jaxvideo.config import config_from_dict, family_of
    from jaxvideo.engine import Engine

    family = family_of(model)
    return Engine(config_from_dict({"models": [{"name": "m", "family": family, "path": model}]}))


def run_prompts(engine, prompts, fields: dict[str, Any]) -> tuple[list[np.ndarray], list, float]:
    """(outputs, step_cache infos, seconds) of the prompts with `fields`."""
    from jaxvideo.request import build_request

    info = engine.model_info("m")
    outputs, infos, started = [], [], time.monotonic()
    for prompt, seed in prompts:
        request = build_request({"prompt": prompt, "seed": seed, **fields}, {}, info.defaults)
        result = engine.generate(replace(request, model="m"))
        outputs.append(result.videos[0] if result.videos else result.images[0])
        infos.append(result.info.get("step_cache"))
    return outputs, infos, time.monotonic() - started


def compare(engine, prompts, fields, cache, base) -> dict[str, Any]:
    """One mode's figures against the uncached `base` (outputs, seconds)."""
    outputs, infos, seconds = run_prompts(engine, prompts, {**fields, "step_cache": cache})
    calls = sum(i["denoiser_calls"] for i in infos)
    computed = sum(i["computed"] for i in infos)
    verdicts = [adherence.check(p, o) for (p, _), o in zip(prompts, outputs, strict=True)]
    pairs = list(zip(base[0], outputs, strict=True))
    return {
        "mode": cache.mode,
        "options": dict(cache.options),
        "calls": calls,
        "computed": computed,
        "call_ratio": round(calls / max(computed, 1), 3),
        "time_ratio": round(base[1] / seconds, 3),
        "psnr": round(float(np.mean([quality.psnr(a, b) for a, b in pairs])), 2),
        "ssim": round(float(np.mean([quality.ssim(a, b) for a, b in pairs])), 4),
        "ssim_min": round(float(min(quality.ssim(a, b) for a, b in pairs)), 4),
        "adherence": round(adherence.adherence(verdicts), 4),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from jaxvideo.sampling import cache_modes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo:sd1-shapes", help="folder or demo:<name>")
    parser.add_argument("--modes", nargs="*", help="default: every mode the model supports")
    parser.add_argument("--option", default="", help="cache_option for every mode")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--sampler")
    parser.add_argument("--cfg", type=float, dest="guidance_scale")
    args = parser.parse_args(argv)
    engine = _engine(args.model)
    info = engine.model_info("m")
    kind = "video" if "vid_gen" in info.modes else "image"
    prompts = demo_data.eval_prompts(kind, args.prompts, 0)
    given = (
        ("steps", args.steps),
        ("sampler", args.sampler),
        ("guidance_scale", args.guidance_scale),
    )
    fields = {k: v for k, v in given if v is not None}  # cfg 0 and steps 0 are values too
    run_prompts(engine, prompts[:1], fields)  # compile outside the timings
    outputs, _, seconds = run_prompts(engine, prompts, fields)
    verdicts = [adherence.check(p, o) for (p, _), o in zip(prompts, outputs, strict=True)]
    print(json.dumps({"model": args.model, "mode": "none", "fields": fields,
                      "seconds": round(seconds, 2),
                      "adherence": round(adherence.adherence(verdicts), 4)}))  # fmt: skip
    reports = []
    for mode in args.modes or info.cache_modes:
        cache = cache_modes.parse(mode, args.option)
        run_prompts(engine, prompts[:1], {**fields, "step_cache": cache})  # its small programs
        reports.append(compare(engine, prompts, fields, cache, (outputs, seconds)))
        print(json.dumps(reports[-1]), flush=True)
    return reports


if __name__ == "__main__":
    main()
