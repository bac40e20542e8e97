#!/usr/bin/env python
"""Cold vs warm start: time to the first result of a fresh process, with an empty and then a
filled persistent XLA compilation cache (`server.compilation_cache_dir`).

Each phase runs `jaxvideo generate` in a new process (import, model load, compile, one
generation), as a server restart would; the warm phase finds the programs the cold one wrote.
Prints one JSON line.

    PYTHONPATH=. python benchmarks/start_time.py --model demo:wan-tiny --family wan21 \\
        --size 128x128 --frames 17 --steps 8 --output clip.mp4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxvideo.families import FAMILY_NAMES, SD1


def run_once(config: Path, args: argparse.Namespace, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    cmd = [sys.executable, "-m", "jaxvideo.cli", "generate", "a benchmark", "--config"]
    cmd += [str(config), "--size", args.size, "--steps", str(args.steps), "--seed", "1"]
    if args.frames:
        cmd += ["--frames", str(args.frames)]
    started = time.perf_counter()
    done = subprocess.run(cmd + ["-o", str(out)], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo:sd1-tiny")
    parser.add_argument("--family", choices=FAMILY_NAMES, default=SD1.name)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--frames", type=int, default=0, help="video frames (Wan)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--output", default="out.png", help="suffix picks image or video")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = root / "xla"
        config = root / "serve.yaml"
        config.write_text(
            f"models:\n  - {{name: bench, family: {args.family}, path: '{args.model}'}}\n"
            f"server:\n  compilation_cache_dir: {cache}\n"
        )
        out = root / args.output
        run_once(config, args, out)  # builds the demo model (cached) outside the timings
        shutil.rmtree(cache)
        cold = run_once(config, args, out)
        files = [f for f in cache.rglob("*") if f.is_file()]
        warm = run_once(config, args, out)
        print(
            json.dumps(
                {
                    "benchmark": "start_time",
                    "model": args.model,
                    "size": args.size,
                    "frames": args.frames,
                    "steps": args.steps,
                    "cold_start_s": round(cold, 2),
                    "warm_start_s": round(warm, 2),
                    "warm_over_cold": round(warm / cold, 3),
                    "cache_entries": len(files),
                    "cache_mb": round(sum(f.stat().st_size for f in files) / 2**20, 1),
                    "cpu_count": os.cpu_count(),
                }
            )
        )


if __name__ == "__main__":
    main()
