"""The CPU kernels of every instruction-set level on this one machine: the CPU tests again, in a
child process whose ATEN_CPU_CAPABILITY lowers ATen's level and with it ours (cpu_features.cpp).
On an AVX-512 machine that runs the AVX2 kernels (packed GEMM, recurrence, SIMD steps) and the
scalar fallback against the same oracles as the default run."""
import os
import subprocess
import sys

import pytest
import torch

import fused_rnn

HERE = os.path.dirname(os.path.abspath(__file__))
# The files whose tests take the CPU kernels' paths (packed GEMM, recurrence, SIMD steps).
CPU_TEST_FILES = ["test_cpu_recurrence.py", "test_linear.py", "test_cells.py", "test_modules.py",
                  "test_ops.py", "test_persistent.py"]
# ATEN_CPU_CAPABILITY value -> build_info()["cpu_simd"] it must give.
LEVELS = {"avx2": "avx2", "default": "scalar"}
# ATen's level here, and the levels below it that a child can be lowered to.
HOST_LEVEL = torch.backends.cpu.get_cpu_capability().lower()
LOWER = {"avx512": ["avx2", "default"], "avx2": ["default"]}.get(HOST_LEVEL, [])


def child_env(level, tmp_path):
    # Its own inductor cache: inductor's on-disk cache does not key on ATEN_CPU_CAPABILITY, so
    # kernels compiled at one level are loaded at another (torch 2.14: wrong results and heap
    # corruption in test_modules.py's torch.compile test).
    # No GPU for the child: these are the CPU kernels' runs (and a GPU machine's time is short).
    env = dict(os.environ, ATEN_CPU_CAPABILITY=level, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               CUDA_VISIBLE_DEVICES="")
    env.pop("PYTEST_ADDOPTS", None)
    return env


@pytest.mark.parametrize("level", list(LEVELS))
def test_cpu_tests_pass_at_a_lower_level(level, tmp_path):
    if level not in LOWER:
        pytest.skip(f"this CPU runs ATen at {HOST_LEVEL}; {level} is not below it")
    env = child_env(level, tmp_path)
    simd = subprocess.run([sys.executable, "-c", "import fused_rnn; print(fused_rnn.build_info()['cpu_simd'])"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert simd == LEVELS[level], (level, simd)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CPU_TEST_FILES],
                         cwd=HERE, env=env, capture_output=True, text=True)
    assert run.returncode == 0, f"ATEN_CPU_CAPABILITY={level}:\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"


def test_the_level_follows_aten():
    """Our SIMD level never exceeds ATen's (a lowered ATen lowers ours)."""
    simd = fused_rnn.build_info()["cpu_simd"]
    order = ["scalar", "avx2", "avx512"]
    aten = {"default": "scalar"}.get(HOST_LEVEL, HOST_LEVEL)
    if aten in order:
        assert order.index(simd) <= order.index(aten), (simd, aten)
