"""XLA:CPU settings that make diffusion networks faster on CPU, applied before JAX starts.

Measured on the project's 2-core AVX-512 machine (docs/PERFORMANCE.md): with XLA's default
CPU kernels (YNNPACK fusions for dots and convolutions) the SD 1.5 UNet step at 512 px takes
16.8 s; handing dots and convolutions to oneDNN instead, and keeping YNNPACK for reductions
(the softmax rows of attention), takes 12.8 s. Convolutions with many channels at 16x16 and
32x32 gain most (55 -> 170 GFLOP/s).

The flags go into `XLA_FLAGS` when `jaxvideo` is imported, so they only take effect if no JAX
computation ran before. A flag the environment already names is left as the operator set it;
`JAXVIDEO_XLA_CPU_DEFAULTS=0` adds none. They only concern the CPU backend.
"""

from __future__ import annotations

import os

CPU_FLAGS = (
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_experimental_ynn_fusion_type=reduce",
)


def apply_cpu_flags(environ: dict[str, str] | os._Environ = os.environ) -> str:
    """Adds the CPU flags the environment does not set itself; returns the new XLA_FLAGS."""
    current = environ.get("XLA_FLAGS", "")
    if environ.get("JAXVIDEO_XLA_CPU_DEFAULTS", "1") == "0":
        return current
    named = {flag.split("=")[0] for flag in current.split()}
    added = [flag for flag in CPU_FLAGS if flag.split("=")[0] not in named]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return environ.get("XLA_FLAGS", "")
