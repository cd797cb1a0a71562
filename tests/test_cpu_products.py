"""The compiled skinny products (numrnn.cpu.products): out = a @ m.T for a few rows of a."""
import numpy as np
import pytest
from numba import njit

from numrnn.cpu import products
from .tolerance import assert_close


@njit
def _product_t(a, m, m_t, out):
    products.product_t(a, m, m_t, out)


@pytest.mark.parametrize("n, n_out", [(1, 1), (3, 5), (8, 8), (37, 29), (200, 200), (64, 130)])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7, 8, 11, 16])
def test_times_transpose_is_the_product(k, n, n_out, rng):
    """Every row count (groups of four, a pair, a single row, and their mixes) and shapes that
    are and are not multiples of the loops' blocks: the exact product to rounding (the sums run
    in another order than NumPy's, so not to the bit: 1e-14 relative for sums of at most 200
    terms)."""
    a = rng.standard_normal((k, n))
    m = rng.standard_normal((n_out, n))
    out = np.full((k, n_out), np.nan)
    products.times_transpose(a, m, out)
    expected = np.einsum("ci,ji->cj", a, m, optimize=False)
    assert_close(out, expected, rtol=1e-14)


def test_times_transpose_propagates_nan_and_inf(rng):
    """No finite-math assumption: a NaN in a row of a is NaN in that row of out and nowhere
    else, an inf is +-inf (or NaN where it meets a zero), as in the BLAS."""
    k, n, n_out = 7, 40, 9
    a = rng.standard_normal((k, n))
    m = rng.standard_normal((n_out, n))
    m[3] = 0.0
    a[1, 5] = np.nan
    a[4, 7] = np.inf
    out = np.empty((k, n_out))
    products.times_transpose(a, m, out)
    with np.errstate(invalid="ignore"):
        expected = a @ m.T
    assert np.array_equal(np.isnan(out), np.isnan(expected))
    assert np.array_equal(np.isinf(out), np.isinf(expected))
    assert np.array_equal(np.sign(out[4]), np.sign(expected[4]), equal_nan=True)
    finite = np.isfinite(expected)
    assert_close(out[finite], expected[finite], rtol=1e-14)


@pytest.mark.parametrize("dtype, k, compiled", [
    (np.float64, products.SMALL_ROWS, True),
    (np.float64, products.SMALL_ROWS + 1, False),
    (np.float32, 4, False)])
def test_product_t_takes_the_compiled_loops_for_few_float64_rows(dtype, k, compiled, rng):
    """Up to SMALL_ROWS float64 rows: the compiled loops' bits; more rows, or float32: the
    BLAS's (NumPy's np.dot on the transpose, the same library call)."""
    n = 50
    a = rng.standard_normal((k, n)).astype(dtype)
    m = rng.standard_normal((n + 3, n)).astype(dtype)
    m_t = np.ascontiguousarray(m.T)
    out = np.empty((k, n + 3), dtype)
    _product_t(a, m, m_t, out)
    loops = np.empty_like(out)
    products.times_transpose(a, m, loops)
    blas = np.empty_like(out)
    njit(lambda a, b, o: np.dot(a, b, o))(a, m_t, blas)
    assert np.array_equal(out, loops if compiled else blas)
    assert not np.array_equal(loops, blas)  # (else the test could not tell them apart)
