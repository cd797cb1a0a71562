"""Shared fixtures: a seeded ``rng`` (never global seeding) and the Hypothesis profiles.

Hypothesis profile from ``NUMRNN_HYPOTHESIS_PROFILE``: "ci" (default; deterministic, few examples)
or "thorough" (more examples, still deterministic), "random" (fresh examples each run).
"""
import os

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


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: reproducible, different per test."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)
