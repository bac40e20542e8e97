"""Ulysses context parallelism on 8 fake CPU devices: sequence-split self-attention equals the
one-device result (lengths and head counts that do not divide included), and the compiled
program moves data with all-to-all, never gathering the whole keys/values (GSPMD's way, which
the `gspmd` mode still shows: one all-gather per operand)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = r"""
import json, re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxvideo.models.attention import dot_product_attention
from jaxvideo.models.context_parallel import token_stream
from jaxvideo.sharding import activate, build_mesh

def reference(q, k, v):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    scores -= scores.max(-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)

results = {}
rng = np.random.default_rng(0)
# (mesh, batch, tokens, heads): 30 tokens over 4 and 6 heads over 4 need padding; 1024
# tokens with 4 heads over {data 2, context 4} take the CPU kernel per device.
for name, sizes, b, s, h in (
    ("ctx4-pad", {"context": 4, "data": 2}, 2, 30, 6),
    ("ctx8", {"context": 8}, 1, 64, 8),
    ("ctx4-tensor2", {"context": 4, "tensor": 2}, 1, 40, 4),
    ("ctx4-long", {"context": 4, "data": 2}, 2, 1024, 4),
):
    q, k, v = (rng.standard_normal((b, s, h, 16)).astype(np.float32) for _ in range(3))
    mesh = build_mesh(sizes)
    for mode in ("ulysses", "gspmd"):
        with activate(mesh, mode):
            spec = P("data" if sizes.get("data", 1) > 1 else None, "context",
                     "tensor" if sizes.get("tensor", 1) > 1 else None, None)
            shard = NamedSharding(mesh, spec)

            # Split inside the program, as the models pin their token sequences (uneven
            # lengths are padded by the partitioner there).
            def attend(q, k, v):
                q, k, v = (jax.lax.with_sharding_constraint(x, shard) for x in (q, k, v))
                with token_stream():  # as the DiTs mark their block stacks
                    out = dot_product_attention(q, k, v)
                return jax.lax.with_sharding_constraint(out, shard)

            args = [jnp.asarray(x) for x in (q, k, v)]
            compiled = jax.jit(attend).lower(*args).compile()
            out = np.asarray(compiled(*args))
        hlo = compiled.as_text()
        # All-gathers whose result holds the whole sequence of keys/values.
        gathers = re.findall(r"all-gather\(", hlo)
        results[f"{name}/{mode}"] = {
            "err": float(np.abs(out - reference(q, k, v)).max()),
            "all_to_all": hlo.count("all-to-all("),
            "all_gather": len(gathers),
        }
print(json.dumps(results))
"""


def test_ulysses_equals_one_device_and_uses_all_to_all_not_gathers():
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=1))
    for name, got in results.items():
        assert got["err"] < 1e-5, (name, got)
        if name.endswith("/ulysses"):
            # One all-to-all per operand in, one back; keys and values are never gathered.
            # A length that does not divide costs one re-layout of the (padded) output.
            gathers = 1 if name.startswith("ctx4-pad") else 0
            assert got["all_to_all"] >= 4 and got["all_gather"] <= gathers, (name, got)
        else:
            assert got["all_to_all"] == 0 and got["all_gather"] >= 1, (name, got)
