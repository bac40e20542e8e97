"""Logical axis rules, mesh construction, and shard-by-shard parameter placement."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxvideo.sharding import build_mesh, logical_spec, param_axes

SIZES = {"data": 2, "fsdp": 2, "tensor": 4, "context": 1}


@pytest.mark.parametrize(
    ("path", "ndim", "axes"),
    [
        (
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.kernel",
            2,
            ("embed", "heads"),
        ),
        ("blocks.3.attn2.to_out.kernel", 2, ("heads", "embed")),
        ("blocks.3.attn2.to_k.bias", 1, ("heads",)),
        ("blocks.0.ffn.proj.kernel", 2, ("embed", "mlp")),
        ("blocks.0.ffn.out.kernel", 2, ("mlp", "embed")),
        ("encoder.block.0.layer.0.SelfAttention.o.kernel", 2, ("heads", "embed")),
        ("encoder.block.0.layer.1.DenseReluDense.wi_0.kernel", 2, ("embed", "mlp")),
        ("text_model.encoder.layers.0.mlp.fc2.kernel", 2, ("mlp", "embed")),
        ("conv_in.kernel", 4, (None, None, None, "embed")),  # unmatched: fsdp on the last axis
        ("norm1.scale", 1, (None,)),
        ("blocks.0.attn1.to_out.bias", 1, (None,)),  # summed after the row-parallel matmul
    ],
)
def test_parameter_paths_map_to_logical_axes(path, ndim, axes):
    assert param_axes(path, ndim) == axes


def test_logical_specs_drop_axes_of_size_one_and_dimensions_that_do_not_divide():
    assert logical_spec(("batch", "seq", None), SIZES) == P("data", None, None)
    assert logical_spec(("embed", "heads"), SIZES, (320, 320)) == P("fsdp", "tensor")
    assert logical_spec(("embed", "heads"), SIZES, (321, 322)) == P(None, None)
    assert logical_spec((None, "rows"), SIZES) == P(None, ("data", "fsdp", "tensor"))


def test_build_mesh_needs_enough_devices():
    assert build_mesh({}) is None and build_mesh({"data": 1, "tensor": 1}) is None
    with pytest.raises(ValueError, match=r"needs 16 devices; JAX sees 1"):
        build_mesh({"data": 4, "tensor": 4}, devices=jax.devices()[:1])


PLACEMENT = """
import jax, numpy as np
from jaxvideo.demo import resolve_demo
from jaxvideo.sharding import activate, build_mesh
from jaxvideo.weights import load_component
from flax import nnx
mesh = build_mesh({"fsdp": 2, "tensor": 4})
with activate(mesh):
    unet = load_component(resolve_demo("demo:sd1-tiny"), "unet")
block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
q = block.attn1.to_q.kernel[...]
print(q.shape, q.sharding.spec, {s.data.shape for s in q.addressable_shards})
print(len({s.device for s in q.addressable_shards}))
"""


def test_parameters_are_placed_shard_by_shard_on_eight_devices():
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PLACEMENT)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    )
    assert result.returncode == 0, result.stderr
    shape_line, devices_line = result.stdout.strip().splitlines()[-2:]
    # The demo's first block is 32 wide: 32x32 split 2 (fsdp) x 4 (tensor) -> 16x8 blocks.
    assert shape_line == "(32, 32) P('fsdp', 'tensor') {(16, 8)}"
    assert devices_line == "8"
