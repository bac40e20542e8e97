"""benchmarks/accelerator.py --tiny: one JSON line per figure with the agreed fields, FLOPs
that match the networks' own counts, no MFU on CPU, and the HTTP figure's batching on and off.

The run is a real one (subprocesses, a gunicorn server per batching setting) on the figures
that exercise each code path: a UNet with keyword inputs (SDXL), a DiT (Flux), the Wan VAE's
whole-video decode and the HTTP figure; ~80 s on the 2-core machine.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaxvideo.cost import Shape, abstract_component, xla_flops
from jaxvideo.demo import resolve_demo
from jaxvideo.memory_plan import ModelPlan

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accelerator.py"
FIGURES = ("sdxl_unet_1024", "flux_dev_1024", "vae_wan_480p81", "http_batching")
NETWORK_FIELDS = (
    "figure",
    "model",
    "shape",
    "dtype",
    "seconds",
    "compile_s",
    "tflops",
    "tflops_per_s",
    "mfu",
    "device",
    "attention",
)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_accelerator", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def _run(*args: str, timeout: float = 600) -> tuple[list[dict], subprocess.CompletedProcess]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=SCRIPT.parents[1],
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return lines, done


@pytest.fixture(scope="module")
def lines() -> dict[str, dict]:
    out, done = _run("--tiny", "--only", ",".join(FIGURES), "--budget-s", "400")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line["figure"] for line in out] == list(FIGURES)
    for line in out:
        assert "error" not in line and "skipped" not in line, line
    return {line["figure"]: line for line in out}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("name", FIGURES)
def test_every_line_has_the_fields_and_no_mfu_on_cpu(lines, name):
    line = lines[name]
    for field in NETWORK_FIELDS:
        assert field in line, field
    assert line["seconds"] > 0 and line["compile_s"] > 0
    assert line["tflops"] > 0
    assert _rel(line["tflops_per_s"], line["tflops"] / line["seconds"]) < 1e-3
    assert line["mfu"] is None  # no peak figure for a CPU
    assert line["device"]["kind"] == "cpu" and line["device"]["count"] == 1
    assert line["dtype"] == "fp32"
    assert {"width", "height", "frames", "batch"} <= set(line["shape"])
    if name != "http_batching":
        assert line["attention"] and all(n > 0 for n in line["attention"].values())
        assert set(line["attention"]) <= {"chunked", "xla"}  # the CPU kernels


def test_denoiser_flops_are_the_planners_and_within_xla_count(bench, lines):
    """Flux: exactly what the memory planner counts for one step (the same pipeline call);
    SDXL (whose call has keyword inputs): 0.85-1.0 of XLA's own count of the program, which
    adds the elementwise work."""
    flux = bench.FIGURES[bench.FIGURE_NAMES.index("flux_dev_1024")].setup(True)
    plan = ModelPlan("", "fp32", {}, flux.configs, flux.index)
    assert flux.shape == Shape(512, 512, cfg=False)
    assert _rel(lines["flux_dev_1024"]["tflops"], plan.flops(flux.shape)["denoiser"] / 1e12) < 1e-5
    assert lines["flux_dev_1024"]["shape"]["batch"] == 1  # guidance-distilled: no CFG pair

    sdxl = bench.FIGURES[bench.FIGURE_NAMES.index("sdxl_unet_1024")].setup(True)
    call = bench.the_call(sdxl)
    xla = xla_flops(abstract_component(sdxl.configs["unet"], "fp32"), call) / 1e12
    assert 0.85 <= lines["sdxl_unet_1024"]["tflops"] / xla <= 1.0
    assert lines["sdxl_unet_1024"]["shape"]["batch"] == 2  # the CFG pair


def test_wan_decode_counts_every_latent_frame(bench, lines):
    """The whole 17-frame video (5 latent frames): the first frame's decode plus four later
    ones, so a little under the planner's five later-frame decodes."""
    wan = bench.FIGURES[bench.FIGURE_NAMES.index("vae_wan_480p81")].setup(True)
    plan = ModelPlan("", "fp32", {}, wan.configs, wan.index)
    per_video = plan.flops(wan.shape)["decoder"] / 1e12
    line = lines["vae_wan_480p81"]
    assert line["shape"]["input"] == [1, 5, 16, 16, 16]
    assert 0.7 * per_video <= line["tflops"] <= per_video


def test_http_figure_has_batching_on_and_off(lines):
    line = lines["http_batching"]
    on, off = line["batching"]["on"], line["batching"]["off"]
    assert on["max_batch_size"] == 4 and off["max_batch_size"] == 1
    assert on["images_per_s"] > 0 and off["images_per_s"] > 0
    assert set(off["batches"]) == {"1"}  # batching off: every call runs one image
    assert line["images_per_s"] == {"on": on["images_per_s"], "off": off["images_per_s"]}
    assert _rel(line["seconds"], 1 / on["images_per_s"]) < 1e-3
    # Model FLOPs of one image: one CFG UNet call per step and one VAE decode.
    flops = ModelPlan(resolve_demo("demo:sd1-tiny"), "fp32", {}).flops(Shape(64, 64))
    per_image = (line["steps"] * flops["denoiser"] + flops["decoder"]) / 1e12
    assert _rel(line["tflops"], per_image) < 1e-5


def test_budget_skips_what_does_not_fit_and_only_rejects_unknown_names(bench):
    out, done = _run("--tiny", "--budget-s", "0", timeout=60)
    assert done.returncode == 0
    assert [line["figure"] for line in out] == list(bench.FIGURE_NAMES)
    assert all("budget" in line["skipped"] for line in out)

    out, done = _run("--tiny", "--only", "vae", "--budget-s", "0", timeout=60)
    assert [line["figure"] for line in out] == [
        "vae_sd15_512",
        "vae_sdxl_1024",
        "vae_wan_480p81",
        "vae_flux_1024",
    ]
    _, done = _run("--only", "no_such_figure", timeout=60)
    assert done.returncode != 0 and "unknown figures" in done.stderr
