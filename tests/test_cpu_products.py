"""The compiled skinny products (numrnn.cpu.products): out = a @ m.T for a few rows of a."""
import numpy as np
import pytest
from numba import njit, types

from numrnn.cpu import products, threads
from .tolerance import assert_close


@njit
def _product_t(a, m, m_t, out):
    products.product_t(a, m, m_t, out)


@njit
def _packed(a, m, out):
    """The packed product as gemm_nt calls it (an A-ordered out: one compiled specialisation)."""
    products._packed(a, m, out[:, :])


@njit
def _packed_tn(a, b, out, r0, r1, accumulate):
    """The weight gradients' packed product as gemm_tn calls it."""
    products._packed_tn(a, b, out[:, :], np.int64(r0), np.int64(r1), bool(accumulate))


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
    (np.float64, products.SMALL_ROWS + 1, products.WIDE),
    (np.float32, 4, products.WIDE)])
def test_product_t_takes_the_compiled_loops_for_few_float64_rows(dtype, k, compiled, rng):
    """Up to SMALL_ROWS float64 rows, or any where the compiler targets AVX-512: the compiled
    loops' bits; else the BLAS's (NumPy's np.dot on the transpose, the same library call)."""
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


@pytest.mark.parametrize("k, c, c0", [(2, 0, 1), (6, 0, 1), (9, 2, 3), (9, 1, 5), (12, 3, 4)])
def test_reflect_rows_applies_the_reflector(k, c, c0, rng):
    """Rows c0.. of a frame-major w become (I - t v v^T) x over their entries c.., v = (1,
    w[c, c+1:]) (LAPACK's dlarf); their entries before c, and rows before c0, are left as they
    are (groups of four rows and single rows, sums reassociated: 1e-14)."""
    S = 37
    w = rng.standard_normal((k, S))
    t = 1.3
    before = w.copy()
    products.reflect_rows(w, c, t, c0)
    v = np.concatenate([[1.0], before[c, c + 1:]])
    expected = before.copy()
    for r in range(c0, k):
        x = before[r, c:]
        expected[r, c:] = x - t * (v @ x) * v
    assert np.array_equal(w[:c0], before[:c0])
    assert np.array_equal(w[:, :c], before[:, :c])
    assert_close(w, expected, rtol=1e-14)


def test_dot_tail_sums_from_its_start(rng):
    """sum_{i >= i0} u_i x_i, for starts inside and at the end of the rows."""
    u, x = rng.standard_normal(45), rng.standard_normal(45)
    for i0 in (0, 1, 7, 44, 45):
        assert_close(products.dot_tail(u, x, i0), float(u[i0:] @ x[i0:]), rtol=1e-14)


@pytest.mark.parametrize("K, M, P", [(1, 1, 1), (7, 5, 3), (200, 37, 29), (513, 9, 130),
                                     (1100, 130, 66), (0, 6, 4), (600, 37, 300), (257, 13, 256),
                                     (0, 8, 260)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_tn_is_the_product_over_any_rows(K, M, P, dtype, rng):
    """out[r0:r1] = a[:, r0:r1].T @ b for row ranges inside and across the packed row blocks,
    depths across the packed K-blocks (each padded to whole vectors with zeros) and none (K =
    0: zeros); rows outside r0..r1 untouched.  Sums in another order than NumPy's: to rounding
    (1e-14 float64, 1e-5 float32, relative to the largest entry, sums of up to 1100 terms)."""
    a = rng.standard_normal((K, M)).astype(dtype)
    b = rng.standard_normal((K, P)).astype(dtype)
    expected = a.T.astype(np.float64) @ b
    scale = max(np.abs(expected).max(initial=0.0), 1.0)
    tol = 1e-14 if dtype == np.float64 else 1e-5
    for r0, r1 in ((0, M), (M // 3, M), (1, max(M - 1, 1))):
        out = np.full((M, P), np.nan, dtype)
        products.gemm_tn(a, b, out, r0, r1, False)
        assert np.isnan(out[:r0]).all() and np.isnan(out[r1:]).all()
        assert_close(out[r0:r1] / scale, expected[r0:r1] / scale, atol=tol, rtol=0)


@pytest.mark.parametrize("K, M, P", [(1, 6, 1), (600, 37, 300), (257, 13, 33), (5, 7, 64)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_tn_adds_the_product_to_the_rows_asked(K, M, P, dtype, rng):
    """The weight gradients' packed products: out[r0:r1] += a[:, r0:r1].T @ b (or =), rows
    outside r0..r1 untouched, whole and short tiles, panels and blocks of the depth; to
    rounding (1e-14 float64, 1e-5 float32, relative to the largest entry)."""
    a = rng.standard_normal((K, M)).astype(dtype)
    b = rng.standard_normal((K, P)).astype(dtype)
    start = rng.standard_normal((M, P)).astype(dtype)
    product = a.T.astype(np.float64) @ b
    tol = 1e-14 if dtype == np.float64 else 1e-5
    for r0, r1 in ((0, M), (1, M), (M // 2, M)):
        for accumulate in (False, True):
            out = start.copy()
            _packed_tn(a, b, out, r0, r1, accumulate)
            expected = product[r0:r1] + (start[r0:r1] if accumulate else 0)
            scale = max(np.abs(expected).max(initial=0.0), 1.0)
            assert np.array_equal(out[:r0], start[:r0]) and np.array_equal(out[r1:], start[r1:])
            assert_close(out[r0:r1] / scale, expected / scale, atol=tol, rtol=0)


@pytest.mark.parametrize("P", [21, 300])
def test_gemm_tn_propagates_nan_and_inf(P, rng):
    """No finite-math assumption, and the zero padding adds nothing: a NaN in a column of a is
    NaN in that row of out and nowhere else, an inf is +-inf (NaN where it meets a zero); the
    dot products and (300 columns, with AVX-512) the packed products."""
    K, M = 530, 9
    a = rng.standard_normal((K, M))
    b = rng.standard_normal((K, P))
    b[:, 3] = 0.0
    a[100, 1] = np.nan
    a[520, 4] = np.inf
    out = np.empty((M, P))
    products.gemm_tn(a, b, out, 0, M, False)
    with np.errstate(invalid="ignore"):
        expected = a.T @ b
    assert np.array_equal(np.isnan(out), np.isnan(expected))
    assert np.array_equal(np.isinf(out), np.isinf(expected))
    assert np.array_equal(np.sign(out[4]), np.sign(expected[4]), equal_nan=True)
    finite = np.isfinite(expected)
    assert_close(out[finite], expected[finite], rtol=1e-13)


@pytest.mark.parametrize("M, K, P", [(1, 1, 1), (6, 256, 32), (8, 256, 32), (16, 512, 64),
                                     (11, 255, 33), (515, 257, 31),
                                     (13, 600, 1030), (7, 3, 513), (5, 0, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_product_is_the_product(M, K, P, dtype, rng):
    """out = a @ m.T by register tiles, on shapes that fill the tiles and blocks and shapes
    that leave short ones (rows of a past a tile, columns past a panel and past a block of
    columns, depths past a block of the depth; K = 0: zeros).  Sums in another order than
    NumPy's: to rounding (1e-14 float64, 1e-5 float32, relative to the largest entry)."""
    a = rng.standard_normal((M, K)).astype(dtype)
    m = rng.standard_normal((P, K)).astype(dtype)
    out = np.full((M, P), np.nan, dtype)
    _packed(a, m, out)
    expected = a.astype(np.float64) @ m.T.astype(np.float64)
    scale = max(np.abs(expected).max(initial=0.0), 1.0)
    tol = 1e-14 if dtype == np.float64 else 1e-5
    assert_close(out / scale, expected / scale, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_product_bits_do_not_depend_on_the_rows_it_is_given(dtype, rng):
    """An entry is its sums in order of k, block after block of the depth, whichever tile, block
    of rows or call computes it: rows multiplied on their own (a thread's share, a segment's
    block of steps) give the bits of the whole product."""
    a = rng.standard_normal((1100, 300)).astype(dtype)
    m = rng.standard_normal((70, 300)).astype(dtype)
    whole = np.empty((1100, 70), dtype)
    _packed(a, m, whole)
    for r0, r1 in ((0, 517), (517, 1100), (3, 10), (1099, 1100)):
        part = np.empty((r1 - r0, 70), dtype)
        _packed(a[r0:r1], m, part)
        assert np.array_equal(part, whole[r0:r1])


def test_packed_product_propagates_nan_and_inf(rng):
    """No finite-math assumption, and the zero padding of short tiles adds nothing: a NaN in a
    row of a is NaN in that row of out and nowhere else, an inf is +-inf (NaN where it meets a
    zero), an inf in a row of m reaches its column only."""
    M, K, P = 517, 300, 45
    a = rng.standard_normal((M, K))
    m = rng.standard_normal((P, K))
    m[3] = 0.0
    a[100, 1] = np.nan
    a[515, 4] = np.inf
    m[40, 260] = -np.inf
    out = np.empty((M, P))
    _packed(a, m, out)
    with np.errstate(invalid="ignore"):
        expected = a @ m.T
    assert np.array_equal(np.isnan(out), np.isnan(expected))
    assert np.array_equal(np.isinf(out), np.isinf(expected))
    assert np.array_equal(np.sign(out[515]), np.sign(expected[515]), equal_nan=True)
    finite = np.isfinite(expected)
    assert_close(out[finite], expected[finite], rtol=1e-13)


def test_gemm_nt_takes_the_packed_products_for_many_rows_with_avx512(rng):
    """With AVX-512, from PACKED_MIN_ROWS rows of a (the threshold its callers pass) the
    product is the packed one (its bits); below, the dot products'."""
    @njit
    def gemm_nt(a, m, out):
        products.gemm_nt(a, m, out, products.PACKED_MIN_ROWS)

    m = rng.standard_normal((40, 64))
    for rows in (products.PACKED_MIN_ROWS - 1, products.PACKED_MIN_ROWS):
        a = rng.standard_normal((rows, 64))
        out, packed = np.empty((rows, 40)), np.empty((rows, 40))
        gemm_nt(a, m, out)
        _packed(a, m, packed)
        assert np.array_equal(out, packed) == (products.WIDE
                                               and rows >= products.PACKED_MIN_ROWS)


def test_dot_products_take_sums_deep_enough(monkeypatch):
    """The size rules of the step's product and the products over all steps (measured where
    their constants are): four AVX-512 vectors deep for a step, eight over all steps; "on"
    takes them at every size, "off" at none, "auto" only where Numba compiles for AVX-512."""
    from numrnn import config

    monkeypatch.setattr(products, "blas_wide", lambda: False)
    assert products.times_transpose_pays(np.float32, 64)
    assert not products.times_transpose_pays(np.float32, 32)
    assert products.times_transpose_pays(np.float64, 32)
    assert products.gemm_nt_pays(np.float32, 128) and products.gemm_nt_pays(np.float64, 64)
    assert not products.gemm_nt_pays(np.float32, 96)
    assert not products.gemm_nt_pays(np.float64, 3)
    for use, wide, pays, expected in (("on", False, False, True), ("off", True, True, False),
                                      ("auto", True, True, True), ("auto", True, False, False),
                                      ("auto", False, True, False)):
        monkeypatch.setattr(config, "DOT_PRODUCTS", use)
        monkeypatch.setattr(products, "WIDE", wide)
        assert products.use_dot_products(pays) is expected


def test_gemm_tn_takes_float64_and_the_large_float32_products(monkeypatch):
    """The size rule of the weight gradients' compiled form (measured in its docstring),
    against OpenBLAS's AVX2 kernels."""
    monkeypatch.setattr(products, "blas_wide", lambda: False)
    assert products.gemm_tn_pays(np.float64, 1, 1, 1)
    assert products.gemm_tn_pays(np.float64, 6400, 2048, 512)
    assert products.gemm_tn_pays(np.float32, 6400, 2048, 512)
    assert products.gemm_tn_pays(np.float32, 512, 512, 128)
    assert not products.gemm_tn_pays(np.float32, 200, 2048, 512)
    assert not products.gemm_tn_pays(np.float32, 6400, 128, 128)


def test_products_over_time_go_to_a_blas_with_avx512_kernels(monkeypatch):
    """Against OpenBLAS's AVX-512 kernels the input projection's products never pay compiled,
    nor float32's weight gradients; float64's weight gradients only narrower than the packed
    products' columns (measured in the rules' docstrings)."""
    monkeypatch.setattr(products, "blas_wide", lambda: True)
    for dtype, depth in ((np.float32, 128), (np.float32, 2048), (np.float64, 64)):
        assert not products.gemm_nt_pays(dtype, depth)
    assert not products.gemm_tn_pays(np.float32, 6400, 2048, 512)
    assert not products.gemm_tn_pays(np.float32, 6400, 128, 32)
    assert not products.gemm_tn_pays(np.float64, 6400, 2048, products.PACKED_TN_MIN_COLUMNS)
    assert products.gemm_tn_pays(np.float64, 6400, 512, products.PACKED_TN_MIN_COLUMNS - 1)
    assert products.gemm_tn_pays(np.float64, 200, 384, 128)


def test_blas_wide_is_probed_once(monkeypatch):
    """The rule's input is the kernels of both OpenBLAS libraries, read once per process."""
    calls = []
    monkeypatch.setattr(products, "_BLAS_WIDE", [])
    monkeypatch.setattr(products.blas, "wide_kernels", lambda: calls.append(1) or True)
    assert products.blas_wide() and products.blas_wide()
    assert calls == [1]


@njit
def _call_with_constants(a, m, out, b, tn_out):
    """The products called as kernels call them: constant offsets and flags (each a type of its
    own to Numba), a loop counter starting from a constant, C-ordered outputs."""
    products.times_transpose(a, m, out)
    products.gemm_nt(a, m, out, 0)
    products.gemm_tn(a, b, tn_out, 0, 2, False)
    c = 0
    while c < 2:
        products.gemm_tn(a, b, tn_out, c, 2, c > 0)
        c += 1


@njit
def _step_packed(a, pb, out):
    """A step's packed product as the recurrence kernels make it (A-ordered views)."""
    pa, tile = products.scratch(a)
    products.times_packed(a[:, :], pb[0], out.shape[1], out[:, :], pa, tile)


def _no_literal(sig):
    return not any(isinstance(t, types.Literal) or isinstance(t, types.Omitted) for t in sig)


def test_product_loops_compile_once_per_dtype(rng):
    """The loops of the products take one set of argument types per dtype whatever their callers
    pass (each specialisation took 1-3 s to compile, and kernels met four of each): int64 and
    bool variables, never constants, and an A-ordered ``out``; the weight gradients' one-block
    kernel is always called with its flag (an omitted one is a type of its own)."""
    for dtype in (np.float32, np.float64):
        a = rng.standard_normal((3, 5)).astype(dtype)
        m = rng.standard_normal((4, 5)).astype(dtype)
        b = rng.standard_normal((3, 6)).astype(dtype)
        out = np.empty((3, 4), dtype)
        tn_out = np.empty((5, 6), dtype)
        _call_with_constants(a, m, out, b, tn_out)
        assert_close(out, a @ m.T, rtol=1e-5)
        _step_packed(a, products.pack_matrix(m), out)
        assert_close(out, a @ m.T, rtol=1e-5)
        threads.matmul_tn(np.ascontiguousarray(a[:, :4]), b, out=np.empty((4, 6), dtype))
        threads.matmul_tn_add(a, b, tn_out)
    # (function, the position of its out)
    for fn, at in ((products._blocked, 2), (products._gemm_tn, 2), (products._packed, 2),
                   (products._packed_tn, 2), (products._tiles, 6), (products.times_packed, 3),
                   (products._four, 7),
                   (products._two, 7), (products._one, 7)):
        sigs = fn.signatures
        assert all(_no_literal(sig) and sig[at].layout == "A" for sig in sigs), (fn, sigs)
        assert len({sig[0].dtype for sig in sigs}) == len(sigs), (fn, sigs)
    assert all(_no_literal(sig) for sig in threads._tn_dot_into.signatures)
