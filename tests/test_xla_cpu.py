"""jaxvideo's XLA:CPU defaults join XLA_FLAGS without overriding what the operator set."""

import subprocess
import sys

from jaxvideo.xla_cpu import CPU_FLAGS, apply_cpu_flags


def test_defaults_are_added_once_and_operator_flags_win():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    flags = apply_cpu_flags(env)
    assert flags.split() == ["--xla_force_host_platform_device_count=8", *CPU_FLAGS]
    assert apply_cpu_flags(env) == flags  # idempotent
    own = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert "--xla_cpu_experimental_ynn_fusion_type=reduce" not in apply_cpu_flags(own)
    assert apply_cpu_flags({"JAXVIDEO_XLA_CPU_DEFAULTS": "0"}) == ""


def test_importing_jaxvideo_sets_them_before_jax_starts():
    code = (
        "import os, jaxvideo, jax; jax.numpy.ones(2).block_until_ready(); "
        "print(os.environ['XLA_FLAGS'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert all(flag in out.stdout for flag in CPU_FLAGS)
