#!/usr/bin/env python
"""End-to-end HTTP throughput with request batching on and off.

For each `max_batch_size` setting this starts the real server (`python -m gunicorn webapp:app`,
as tests/web/conftest.py does) on one model and waits until it is healthy. Then, in `--rounds`
rounds that alternate between the servers (so load drifts on a shared machine hit every
setting alike), it fires `--requests` synchronous A1111 txt2img calls (each its own prompt and
seed) from `--clients` concurrent client threads. Reported per setting: images/s (median over
the rounds), p50/p99 request latency (all rounds pooled), the sizes of the batches the worker
ran (from its log), the worker's peak RSS (VmHWM), the 1-minute load average seen, and the
throughput relative to `max_batch_size` 1. Start-up compiles every batch size a run can meet
(`warmup` entries of batch_count 1..N: a batch of k one-image jobs has the shapes of one
k-image request) and an untimed round of `--clients` requests goes first, so compile time
stays out of the figures. Prints one JSON line.

    PYTHONPATH=. python benchmarks/http_throughput.py --requests 16 --clients 4 \\
        --size 256x256 --steps 8 --batch-sizes 4,1 [--workers webapp.worker.JaxvideoWorker,gthread]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from jaxvideo.families import FAMILY_NAMES, SD1

REPO = Path(__file__).resolve().parents[1]
BATCH_LOG = re.compile(r"running (\d+) jobs as one batch")


def server_config(args: argparse.Namespace, batch_size: int, cache: Path) -> str:
    width, height = args.width, args.height
    warmup = "".join(
        f"  - {{model: bench, width: {width}, height: {height}, steps: {args.steps}, "
        f"batch_count: {k}}}\n"
        for k in range(1, batch_size + 1)
    )
    return (
        f"models:\n  - {{name: bench, family: {args.family}, path: '{args.model}'}}\n"
        "server:\n"
        f"  max_batch_size: {batch_size}\n"
        f"  max_queue_size: {max(args.requests, 4)}\n"
        f"  max_width: {max(width, 512)}\n  max_height: {max(height, 512)}\n"
        f"  max_batch_count: {max(batch_size, 8)}\n"
        f"  compilation_cache_dir: {cache}\n"
        f"warmup:\n{warmup}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    config: Path, log: Path, threads: int, worker: str
) -> tuple[subprocess.Popen, str]:
    url = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAXVIDEO_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
    env["JAXVIDEO_STATE_DIR"] = str(log.with_suffix(".state"))  # a fresh job store per run
    env.pop("JAXVIDEO_API_KEY", None)
    cmd = [sys.executable, "-m", "gunicorn", "webapp:app", "-b", url, "--threads", str(threads)]
    cmd += ["-k", worker]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    session = requests.Session()
    session.trust_env = False
    deadline = time.monotonic() + 1800  # cold start: builds the demo model, compiles warm-ups
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server died on start:\n{log.read_text()[-3000:]}")
        try:
            if session.get(f"http://{url}/health", timeout=5).status_code == 200:
                return process, f"http://{url}"
        except requests.RequestException:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("server not healthy in time")


def worker_peak_rss_mb(arbiter: int) -> float | None:
    """VmHWM of gunicorn's worker (the arbiter's child that loaded the models), in MB."""
    try:
        children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
        for line in Path(f"/proc/{children[0]}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, IndexError):
        pass
    return None


def fire(url: str, args: argparse.Namespace, count: int) -> tuple[float, list[float]]:
    """`count` requests from `args.clients` threads: (wall seconds, per-request latencies)."""
    session = requests.Session()
    session.trust_env = False

    def one(i: int) -> float:
        body = {
            "prompt": f"benchmark picture number {i}",
            "seed": 1000 + i,
            "width": args.width,
            "height": args.height,
            "steps": args.steps,
        }
        started = time.perf_counter()
        response = session.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=3600)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise SystemExit(f"request {i}: {response.status_code} {response.text[:300]}")
        return elapsed

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        latencies = list(pool.map(one, range(count)))
    return time.perf_counter() - started, latencies


@dataclass
class Setting:
    """One running server and what was measured against it."""

    batch_size: int
    worker: str
    process: subprocess.Popen
    url: str
    log: Path
    walls: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    logged_before: int = 0

    def batch_lines(self) -> list[str]:
        return BATCH_LOG.findall(self.log.read_text(errors="replace"))

    def summary(self, requests_per_round: int) -> dict:
        batches = Counter(int(n) for n in self.batch_lines()[self.logged_before :])
        total = requests_per_round * len(self.walls)
        singles = total - sum(size * count for size, count in batches.items())
        rates = [requests_per_round / wall for wall in self.walls]
        return {
            "max_batch_size": self.batch_size,
            "worker": self.worker,
            "images_per_s": round(float(np.median(rates)), 3),  # median over the rounds
            "images_per_s_rounds": [round(rate, 3) for rate in rates],
            "latency_p50_s": round(float(np.percentile(self.latencies, 50)), 3),
            "latency_p99_s": round(float(np.percentile(self.latencies, 99)), 3),
            # batch size -> how many calls of that size the worker ran in the timed rounds
            "batches": {str(k): v for k, v in sorted({**batches, 1: singles}.items()) if v},
            "worker_peak_rss_mb": worker_peak_rss_mb(self.process.pid),
            "load_avg_1m": [round(min(self.loads), 2), round(max(self.loads), 2)],
        }


def start_setting(args: argparse.Namespace, batch_size: int, worker: str, root: Path) -> Setting:
    name = f"{batch_size}-{worker.rsplit('.', 1)[-1]}"
    config = root / f"serve-{name}.yaml"
    config.write_text(server_config(args, batch_size, root / "xla"))
    log = root / f"server-{name}.log"
    process, url = start_server(config, log, threads=max(8, args.clients + 2), worker=worker)
    setting = Setting(batch_size, worker, process, url, log)
    fire(url, args, args.clients)  # untimed: first-request costs of every client thread
    setting.logged_before = len(setting.batch_lines())
    return setting


def run_round(setting: Setting, args: argparse.Namespace) -> None:
    setting.loads.append(os.getloadavg()[0])
    wall, latencies = fire(setting.url, args, args.requests)
    setting.walls.append(wall)
    setting.latencies += latencies
    setting.loads.append(os.getloadavg()[0])


def stop(setting: Setting) -> None:
    setting.process.send_signal(signal.SIGTERM)
    try:
        setting.process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        setting.process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo:sd1-tiny")
    parser.add_argument("--family", choices=FAMILY_NAMES, default=SD1.name)
    parser.add_argument("--requests", type=int, default=16, help="requests per round")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per setting")
    parser.add_argument("--size", default="256x256", help="WIDTHxHEIGHT")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-sizes", default="4,1", help="max_batch_size settings to compare")
    parser.add_argument(
        "--workers",
        default="webapp.worker.JaxvideoWorker",
        help="gunicorn worker classes to compare (e.g. add gthread, gunicorn's own)",
    )
    args = parser.parse_args()
    args.width, args.height = (int(v) for v in args.size.split("x"))
    settings: list[Setting] = []
    with tempfile.TemporaryDirectory(prefix="jaxvideo-http-bench-") as tmp:
        try:
            for worker in args.workers.split(","):
                for batch_size in (int(v) for v in args.batch_sizes.split(",")):
                    settings.append(start_setting(args, batch_size, worker, Path(tmp)))
            # Interleaved rounds: on a shared machine, load drifts hit every setting alike.
            for _ in range(args.rounds):
                for setting in settings:
                    run_round(setting, args)
            runs = [setting.summary(args.requests) for setting in settings]
        finally:
            for setting in settings:
                stop(setting)
    result = {
        "benchmark": "http_throughput",
        "model": args.model,
        "size": args.size,
        "steps": args.steps,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "clients": args.clients,
        "cpu_count": os.cpu_count(),
        "runs": runs,
    }
    for run in runs:
        same_worker = [other for other in runs if other["worker"] == run["worker"]]
        off = next((other for other in same_worker if other["max_batch_size"] == 1), None)
        if off is not None:
            run["throughput_vs_off"] = round(run["images_per_s"] / off["images_per_s"], 3)
        first = next(o for o in runs if o["max_batch_size"] == run["max_batch_size"])
        run["throughput_vs_first_worker"] = round(run["images_per_s"] / first["images_per_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
