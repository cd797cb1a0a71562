"""Runs the GPU test files under the CUDA simulator, in their own Python process.

The simulator must be switched on before numba is first imported, so ``python -m pytest`` (the one
test command) cannot run those tests in its own process; this test runs a child pytest with
``NUMBA_ENABLE_CUDASIM=1`` and requires it to pass.  The child's summary line is printed.

The child is started as soon as collection ends (:func:`start`, from ``conftest.py``) when this
test is among those selected, so it runs beside the rest of the suite rather than after it: the
simulator is one Python process bound by its interpreter lock, and the suite's own process spends
much of its time compiling on one core.  The test waits for it and reads its output.  Under
pytest-xdist (the README's ``-n 2``) no worker knows at collection whether it will run this test,
so it is sorted first instead (``conftest.py``) and starts the child when it runs.
"""
import ctypes
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GPU_TESTS = ["tests/test_gpu_recurrence.py", "tests/test_gpu_network.py"]
TIMEOUT_S = 1800
TEST_NAME = "test_gpu_kernels_pass_under_the_cuda_simulator"

_child = None  # (Popen, output file, start time) of the running child, or None


def _why_not():
    """Why the child cannot run here, or None."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "already inside the simulator process"
    if importlib.util.find_spec("numba_cuda") is None:
        return "numba-cuda is not installed (pip install -e '.[cuda]')"
    return None


def _die_with_parent():
    """For the child (None off Linux): a function it runs before pytest, so that it is killed
    when this process dies, even by a signal that skips :func:`stop` (a CI job cancelled with
    SIGTERM).  Resolved here: the child of a fork should import nothing."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None).prctl
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start():
    """Start the child pytest (once; a no-op where it cannot run).  Its output goes to a file,
    not a pipe, so that it never blocks on a full pipe while nobody reads."""
    global _child
    if _child is not None or _why_not() is not None:
        return
    out = tempfile.TemporaryFile(mode="w+", prefix="numrnn-cudasim-")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             *GPU_TESTS], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_die_with_parent())
    _child = (proc, out, time.monotonic())


def stop():
    """Kill the child if it still runs (the session ended before its test ran: ``-x``, ^C)."""
    global _child
    if _child is None:
        return
    proc, out, _ = _child
    _child = None
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    out.close()


@pytest.mark.slow
def test_gpu_kernels_pass_under_the_cuda_simulator():
    why = _why_not()
    if why is not None:
        pytest.skip(why)
    start()  # started at collection already, unless collection ran elsewhere
    proc, out, started = _child
    try:
        proc.wait(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        stop()
        pytest.fail(f"simulator suite still running after {TIMEOUT_S} s")
    out.seek(0)
    text = out.read()
    stop()
    tail = "\n".join(text.strip().splitlines()[-15:])
    print(tail)
    assert proc.returncode == 0, (f"simulator suite failed (status {proc.returncode}):\n"
                                  f"{text[-4000:]}")
    assert " passed" in tail and " failed" not in tail
