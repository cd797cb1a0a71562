"""Shared fixtures: a seeded ``rng`` (never global seeding) and the Hypothesis profiles.

Hypothesis profile from ``NUMRNN_HYPOTHESIS_PROFILE``: "ci" (default; deterministic, few examples)
or "thorough" (more examples, still deterministic), "random" (fresh examples each run).
"""
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=200, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("random", max_examples=50, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("NUMRNN_HYPOTHESIS_PROFILE", "ci"))


def _xdist_worker(config):
    """True in a pytest-xdist worker (``-n 2``): every worker collects every test, and only one
    of them will run a given file."""
    return hasattr(config, "workerinput")


def pytest_collection_modifyitems(session, config, items):
    """Under xdist, the CUDA-simulator suite's test goes first: the worker that takes its file
    starts the child at once and waits on it while the other worker runs the rest."""
    from tests import test_simulator_suite as sim

    if _xdist_worker(config):
        items.sort(key=lambda item: item.name != sim.TEST_NAME)  # stable: the rest keep order


def pytest_collection_finish(session):
    """Start the CUDA-simulator suite's child process now, beside the rest of the run, when its
    test is selected (see ``tests/test_simulator_suite.py``).  Not in an xdist worker, which
    cannot know whether it will run that test: there the test starts the child itself, first."""
    from tests import test_simulator_suite as sim

    if (not session.config.option.collectonly and not _xdist_worker(session.config)
            and any(item.name == sim.TEST_NAME for item in session.items)):
        sim.start()


def pytest_sessionfinish(session):
    from tests import test_simulator_suite as sim

    sim.stop()


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: reproducible, different per test."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def simulator_thread_switches():
    """For the GPU tests: the simulator runs each GPU thread as a Python thread, and its block
    manager polls them holding the GIL: at Python's default switch interval (5 ms) one
    ``syncthreads`` costs milliseconds.  Switching every 0.1 ms runs those tests 4-7x faster
    (2-core machine)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(before)


@pytest.fixture
def own_pool(monkeypatch):
    """An empty scratch pool (numrnn.cpu.scratch) of the test's own: the buffers other tests
    left (some still held by their tracebacks) set aside until it ends."""
    from numrnn.cpu import scratch

    monkeypatch.setattr(scratch, "_buffers", [])
    monkeypatch.setattr(scratch, "_offsets", [])
    monkeypatch.setattr(scratch, "_total", 0)
