"""numrnn.cpu.blas: holding the BLAS libraries (SciPy's under Numba's np.dot, NumPy's) to one
thread, and restoring them."""
import numpy as np
import pytest

from numrnn.cpu import blas
from tests.tolerance import assert_close


def test_single_threaded_sets_and_restores():
    if not blas.can_limit_threads():
        pytest.skip("the BLAS under Numba's np.dot cannot be controlled here")
    libraries = ["scipy"] + (["numpy"] if blas.numpy_blas_controlled() else [])
    before = [blas.num_threads(lib) for lib in libraries]
    with blas.single_threaded():
        assert [blas.num_threads(lib) for lib in libraries] == [1] * len(libraries)
        with blas.single_threaded():  # re-entrant
            assert [blas.num_threads(lib) for lib in libraries] == [1] * len(libraries)
        assert [blas.num_threads(lib) for lib in libraries] == [1] * len(libraries)
    assert [blas.num_threads(lib) for lib in libraries] == before


def test_restores_after_an_exception():
    before = blas.num_threads()
    with pytest.raises(RuntimeError):
        with blas.single_threaded():
            raise RuntimeError("boom")
    assert blas.num_threads() == before


@pytest.mark.parametrize("numpy_blas", [True, False], ids=["numpy-blas", "numba-dot"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_matrix_products_equal_numpy(rng, monkeypatch, dtype, numpy_blas):
    from numrnn import config
    from numrnn.cpu import threads

    if numpy_blas and not blas.numpy_blas_controlled():
        pytest.skip("NumPy's BLAS cannot be controlled here")
    monkeypatch.setattr(blas, "numpy_blas_controlled", lambda: numpy_blas)
    monkeypatch.setattr(config, "NUM_THREADS", 3)
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 3)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 1)
    a = rng.standard_normal((50, 7)).astype(dtype)
    b = rng.standard_normal((7, 5)).astype(dtype)
    c = rng.standard_normal((50, 5)).astype(dtype)
    assert threads.pieces(50, 10**9) == 3
    out = threads.matmul(a, b)
    assert out.dtype == dtype
    assert_close(out, a.astype(np.float64) @ b, rtol=1e-5 if dtype == np.float32 else 1e-14)
    out = threads.matmul_tn(a, c)
    assert_close(out, a.T.astype(np.float64) @ c, rtol=1e-5 if dtype == np.float32 else 1e-14)
    np.testing.assert_array_equal(threads.matmul_tn(a, c), out)  # fixed summation order
    empty = threads.matmul_tn(a[:0], c[:0])
    assert empty.dtype == dtype
    np.testing.assert_array_equal(empty, np.zeros((7, 5)))


def test_thread_pool_propagates_errors():
    from numrnn.cpu import threads

    def fn(start, stop):
        if start > 0:
            raise RuntimeError("piece failed")

    with pytest.raises(RuntimeError, match="piece failed"):
        threads.run(fn, 10, 2)
