"""benchmarks/memory_plan.py: the per-chip memory table, run on Wan's toy-width configs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from jaxvideo.cost import Shape
from jaxvideo.demo_wan import wan_tiny_configs
from jaxvideo.memory_plan import GIB, usable

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_plan.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("benchmarks_memory_plan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def _tiny(table, **shapes):
    return table.Model("wan-toy", wan_tiny_configs(256), {"family": "wan21"}, shapes)


def _bigger(small: dict, large: dict) -> bool:
    """`large` divides at least as many ways on every axis, and more on some."""
    axes = set(small) | set(large)
    return all(large.get(a, 1) >= small.get(a, 1) for a in axes) and small != large


def test_main_prints_a_markdown_table_and_a_json_line_per_row(table, monkeypatch, capsys):
    model = _tiny(table, small=Shape(64, 64, frames=5), wide=Shape(128, 64, frames=9))
    monkeypatch.setitem(table.MODELS, model.name, model)
    rows = table.main(["--models", model.name])
    out = capsys.readouterr().out

    assert len(rows) == 2 * len(table.MESHES)
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model | size | mesh"))
    body = lines[header + 2 : header + 2 + len(rows)]
    assert all(line.startswith("| wan-toy | ") and line.endswith(" |") for line in body)
    assert any(line.startswith("| model | size | denoiser call (TFLOP)") for line in lines)

    printed = [json.loads(line) for line in lines if line.startswith("{")]
    assert printed == rows
    chips = set(table.CHIPS)
    for row in printed:
        assert row["model"] == "wan-toy" and row["dtype"] == "bf16" and row["cfg"] is True
        assert row["total_bytes"] == row["weights_bytes"] + row["activations_bytes"]
        assert row["weights_bytes"] > 0 and row["activations_bytes"] > 0
        assert row["peak_call"] in {"transformer", "vae"}
        assert set(row["fits"]) == chips
        for chip, fits in row["fits"].items():
            assert fits == (row["total_bytes"] <= usable(int(table.CHIPS[chip] * GIB)))
    # FLOPs are the mesh's together: the same on every mesh, larger for the larger request.
    flops = {(r["size"], r["denoiser_tflop"], r["decode_tflop"]) for r in printed}
    assert len(flops) == 2

    assert table.main(["--models", model.name, "--json-only"]) == rows
    assert all(line.startswith("{") for line in capsys.readouterr().out.splitlines())


MESHES = (
    {},
    {"fsdp": 2},
    {"fsdp": 4},
    {"fsdp": 8},
    {"context": 2},
    {"context": 8},
    {"data": 2},
    {"fsdp": 2, "tensor": 2},
    {"fsdp": 4, "tensor": 2},
    {"fsdp": 2, "context": 4},
    {"fsdp": 4, "context": 2},
    {"data": 2, "fsdp": 4},
    {"data": 2, "context": 4},
)


def test_a_bigger_mesh_never_needs_more_per_chip(table):
    # 64 px: 8 latent rows, which every mesh here divides.
    rows = list(table.rows(_tiny(table, small=Shape(64, 64, frames=5)), meshes=MESHES))
    total = {json.dumps(r["mesh"], sort_keys=True): r["total_bytes"] for r in rows}
    pairs = [(a, b) for a in MESHES for b in MESHES if _bigger(a, b)]
    assert len(pairs) > 20
    for small, large in pairs:
        key = (json.dumps(small, sort_keys=True), json.dumps(large, sort_keys=True))
        assert total[key[1]] <= total[key[0]], f"{large} needs more per chip than {small}"
    assert total["{}"] > total[json.dumps({"fsdp": 8})]


def test_a_bigger_mesh_never_needs_more_per_chip_when_rows_do_not_divide(table):
    model = _tiny(table, **{"480p": Shape(832, 480, frames=5)})
    four, eight = table.rows(model, meshes=({"fsdp": 4}, {"fsdp": 4, "context": 2}))
    assert eight["total_bytes"] <= four["total_bytes"]
