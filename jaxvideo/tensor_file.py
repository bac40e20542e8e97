"""Reading a safetensors file tensor by tensor with plain reads, never mapping it whole.

safetensors' own reader memory-maps the file: every page a load touches stays resident in the
process until the file is closed, so loading a model held its file *and* its device copy
(SD 1.5 fp32: 3.97 GB of weights peaked at 7.17 GB). Here each tensor (or the rows of one
shard of it) is read into a fresh buffer that lives only until it is on the device, so the peak
is the weights plus the largest tensor in flight.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

# safetensors dtype names -> numpy (bfloat16 through ml_dtypes, which JAX ships).
_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
HEADER_LIMIT = 100 * 2**20  # safetensors' own bound on the JSON header


def _numpy_dtype(name: str) -> np.dtype:
    if name == "BF16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(_DTYPES[name])
    except KeyError:
        raise ValueError(f"unsupported safetensors dtype {name}") from None


class TensorFile:
    """An open safetensors file: `shape(key)`, `read(key)`, `read_block(key, index)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            (length,) = struct.unpack("<Q", os.pread(self._fd, 8, 0))
            if length > HEADER_LIMIT:
                raise ValueError(f"{self.path}: safetensors header of {length} bytes")
            header: dict[str, Any] = json.loads(os.pread(self._fd, length, 8))
        except Exception:
            os.close(self._fd)
            raise
        header.pop("__metadata__", None)
        self._start = 8 + length
        self._entries = header

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def _read_bytes(self, begin: int, count: int) -> bytearray:
        out = bytearray(count)
        view, done = memoryview(out), 0
        while done < count:
            got = os.preadv(self._fd, [view[done:]], self._start + begin + done)
            if got == 0:
                raise ValueError(f"{self.path}: truncated")
            done += got
        return out

    def read(self, key: str) -> np.ndarray:
        """The whole tensor, in a buffer of its own."""
        return self.read_rows(key, 0, self.shape(key)[0] if self.shape(key) else 1)

    def read_rows(self, key: str, first: int, stop: int) -> np.ndarray:
        """Rows [first, stop) of the tensor's leading dimension (one contiguous read)."""
        entry = self._entries[key]
        dtype, shape = _numpy_dtype(entry["dtype"]), tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        if not shape:
            return np.frombuffer(self._read_bytes(begin, end - begin), dtype).reshape(())
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        data = self._read_bytes(begin + first * row, (stop - first) * row)
        return np.frombuffer(data, dtype).reshape((stop - first, *shape[1:]))

    def read_block(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
        """One shard's block: the rows it spans are read, the rest of the index is applied."""
        shape = self.shape(key)
        if not shape:
            return self.read(key)
        first, stop, _ = index[0].indices(shape[0])
        return self.read_rows(key, first, stop)[(slice(None), *index[1:])]
