"""Runs the GPU test files under the CUDA simulator, in their own Python process.

The simulator must be switched on before numba is first imported, so ``python -m pytest`` (the one
test command) cannot run those tests in its own process; this test starts a child pytest with
``NUMBA_ENABLE_CUDASIM=1`` and requires it to pass.  The child's summary line is printed.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GPU_TESTS = ["tests/test_gpu_recurrence.py", "tests/test_gpu_network.py"]


@pytest.mark.slow
def test_gpu_kernels_pass_under_the_cuda_simulator():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("already inside the simulator process")
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed (pip install -e '.[cuda]')")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *GPU_TESTS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
    print(tail)
    assert proc.returncode == 0, f"simulator suite failed:\n{tail}\n{proc.stderr[-2000:]}"
    assert " passed" in tail and " failed" not in tail
