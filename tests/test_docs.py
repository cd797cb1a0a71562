"""Every Examples block of numrnn's docstrings runs and prints what it shows (CPU modules; the
GPU modules' examples need numba-cuda and run under the simulator suite's own process)."""
import doctest
import importlib
import pkgutil

import numpy as np
import pytest

import numrnn

MODULES = sorted(m.name for m in pkgutil.walk_packages(numrnn.__path__, "numrnn.")
                 if not m.name.startswith("numrnn.gpu") and m.name != "numrnn.__main__")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    with np.printoptions(legacy=False):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                                 raise_on_error=False, report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
