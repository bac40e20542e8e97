#!/usr/bin/env python
"""How well each sampler samples, at equal steps, on a trained demo model.

For every sampler the model offers (or `--samplers`), with its default schedule (or
`--scheduler`), the fixed evaluation prompts run at `--steps`; each output is compared with a
converged reference of the same prompt and seed (`--reference`, default euler at 100 steps:
the probability-flow ODE the deterministic samplers all approximate). One JSON line per
sampler: adherence (`jaxvideo.adherence`), PSNR and SSIM to the reference, seconds.
Ancestral and SDE samplers land elsewhere than the ODE by design, so their distance says
little; their adherence still says whether they sample well.

    python benchmarks/sampler_quality.py                       # demo:sd1-shapes, 20 steps
    python benchmarks/sampler_quality.py --steps 10 --samplers euler dpm++2m lcm
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxvideo import adherence, demo_data, quality

_spec = importlib.util.spec_from_file_location(
    "step_cache_bench", Path(__file__).with_name("step_cache.py")
)
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo:sd1-shapes", help="folder or demo:<name>")
    parser.add_argument("--samplers", nargs="*", help="default: every sampler of the model")
    parser.add_argument("--scheduler")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--reference", default="euler:100", help="sampler:steps")
    args = parser.parse_args(argv)
    engine = _bench._engine(args.model)
    info = engine.model_info("m")
    kind = "video" if "vid_gen" in info.modes else "image"
    prompts = demo_data.eval_prompts(kind, args.prompts, 0)
    texts = [prompt for prompt, _ in prompts]
    ref_sampler, ref_steps = args.reference.split(":")
    common = {"scheduler": args.scheduler} if args.scheduler else {}
    reference, _, _ = _bench.run_prompts(
        engine, prompts, {**common, "sampler": ref_sampler, "steps": int(ref_steps)}
    )
    reports = []
    for sampler in args.samplers or info.samplers:
        fields = {**common, "sampler": sampler, "steps": args.steps}
        _bench.run_prompts(engine, prompts[:1], fields)  # compile outside the timing
        outputs, _, seconds = _bench.run_prompts(engine, prompts, fields)
        pairs = list(zip(reference, outputs, strict=True))
        reports.append(
            {
                "sampler": sampler,
                "steps": args.steps,
                "adherence": round(adherence.adherence(map(adherence.check, texts, outputs)), 4),
                "psnr": round(float(np.mean([quality.psnr(a, b) for a, b in pairs])), 2),
                "ssim": round(float(np.mean([quality.ssim(a, b) for a, b in pairs])), 4),
                "seconds": round(seconds, 2),
            }
        )
        print(json.dumps(reports[-1]), flush=True)
    return reports


if __name__ == "__main__":
    main()
