"""The plain-read safetensors reader gives exactly what safetensors' own reader gives: whole
tensors of every dtype the converted folders use, scalars, and one shard's block."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxvideo.tensor_file import TensorFile


@pytest.fixture
def weights(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "unet.conv.kernel": rng.standard_normal((3, 3, 4, 8)).astype(np.float32),
        "half": rng.standard_normal((5, 7)).astype(np.float16),
        "brain": rng.standard_normal((6, 4)).astype(ml_dtypes.bfloat16),
        "scalar": np.asarray(2.5, np.float32),
        "ids": np.arange(10, dtype=np.int64),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "jaxvideo-flax"})
    return path, tensors


def test_whole_tensors_and_shapes_equal_safetensors(weights):
    path, tensors = weights
    with TensorFile(path) as ours, safe_open(str(path), framework="numpy") as theirs:
        assert sorted(ours.keys()) == sorted(theirs.keys())
        for key, value in tensors.items():
            got = ours.read(key)
            assert ours.shape(key) == value.shape and got.dtype == value.dtype
            np.testing.assert_array_equal(got, theirs.get_tensor(key))
            got[...] = 0  # a buffer of its own: writable, nothing else changes
        np.testing.assert_array_equal(ours.read("half"), tensors["half"])


def test_a_shard_block_reads_only_its_rows(weights):
    path, tensors = weights
    index = (slice(1, 3), slice(0, 3), slice(None), slice(4, 8))
    with TensorFile(path) as f:
        np.testing.assert_array_equal(
            f.read_block("unet.conv.kernel", index), tensors["unet.conv.kernel"][index]
        )
        assert f.read_rows("ids", 3, 7).tolist() == [3, 4, 5, 6]


def test_a_truncated_file_is_an_error(weights, tmp_path):
    path, _ = weights
    cut = tmp_path / "cut.safetensors"
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    cut.write_bytes(data[: header + 10])  # the header, and 10 bytes of tensor data
    with TensorFile(cut) as f, pytest.raises(ValueError, match="truncated"):
        for key in sorted(f.keys()):
            f.read(key)
