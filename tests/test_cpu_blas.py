"""numrnn.cpu.blas: holding the BLAS under Numba's np.dot to one thread, and restoring it."""
import pytest

from numrnn.cpu import blas


def test_single_threaded_sets_and_restores():
    if not blas.can_limit_threads():
        pytest.skip("the BLAS under Numba's np.dot cannot be controlled here")
    before = blas.num_threads()
    with blas.single_threaded():
        assert blas.num_threads() == 1
        with blas.single_threaded():  # re-entrant
            assert blas.num_threads() == 1
        assert blas.num_threads() == 1
    assert blas.num_threads() == before


def test_restores_after_an_exception():
    before = blas.num_threads()
    with pytest.raises(RuntimeError):
        with blas.single_threaded():
            raise RuntimeError("boom")
    assert blas.num_threads() == before
