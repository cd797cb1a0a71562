"""The QR of the QR loops (numrnn.cpu.jacobians): the compiled Householder QR and the direct
LAPACK calls against numpy.linalg.qr, on random and on badly conditioned frames."""
import numpy as np
import pytest
from numba import njit

from numrnn.cpu import jacobians as _k

from .tolerance import assert_close

EPS = np.finfo(np.float64).eps
#: Both routes of the QR: the compiled Householder QR for every width, and LAPACK for every
#: width but one (k = 1 is a normalisation on either route).
ROUTES = {"householder": 10**6, "lapack": 0}


def frames(rng):
    """(name, a) pairs: random, graded column scales (1e150 .. 1e-150: the scaled norms),
    tiny entries (1e-300: squares underflow), a subnormal column (its norm scaled up before
    its reflector, as dlarfg does), nearly parallel columns, an ill-conditioned
    mixture (singular values 1 .. 1e-8), a zero column and a column with nothing below its
    diagonal entry, for a few shapes."""
    for S, K in [(200, 3), (64, 2), (3, 3), (50, 10), (30, 1)]:
        yield "random", rng.standard_normal((S, K))
        a = rng.standard_normal((S, K))
        yield "graded", a * np.logspace(150, -150, K)
        yield "tiny", rng.standard_normal((S, K)) * 1e-300
        a = rng.standard_normal((S, K))
        a[:, 0] *= 1e-310
        yield "subnormal column", a
        if K > 1:
            a = rng.standard_normal((S, K))
            a[:, 1] = a[:, 0] + 1e-6 * rng.standard_normal(S)
            yield "parallel", a
            u, _ = np.linalg.qr(rng.standard_normal((S, K)))
            v, _ = np.linalg.qr(rng.standard_normal((K, K)))
            yield "kappa 1e8", u @ np.diag(np.logspace(0, -8, K)) @ v.T
            a = rng.standard_normal((S, K))
            a[:, 0] = 0.0
            yield "zero column", a
        a = rng.standard_normal((S, K))
        a[1:, 0] = 0.0
        yield "triangular column", a


def test_frame_qr_rejects_bad_input():
    with pytest.raises(ValueError, match=r"a: expected an \(S, k\) matrix with 1 <= k <= S"):
        _k.frame_qr(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"a: expected an \(S, k\) matrix"):
        _k.frame_qr(np.zeros(3))
    with pytest.raises(ValueError, match="a: expected finite values"):
        _k.frame_qr(np.full((3, 2), np.nan))


@pytest.mark.parametrize("route", ROUTES)
def test_frame_qr_is_lapacks(route, rng):
    """Q R = A with Q^T Q = I to 1e-14, R upper triangular with LAPACK's signs, and ln|R_ii|
    as numpy.linalg.qr's (LAPACK's dgeqrf) gives them.  Two Householder QRs differ only in the
    order of their sums: R_ii agrees to about eps / s relative, s the smallest of s_j = |R_jj| /
    ||R[:j+1, j]|| over j <= i (the sine of the angle between column j and the columns before
    it: the reflectors before column i carry the rounding of those angles), so ln|R_ii| to
    1e-12 where the columns are well apart, and to 100 eps / s where they are not (the frames
    of ill-conditioned mixtures and nearly parallel columns: s down to 1e-8).  The LAPACK route
    is numpy's own call: the same bits."""
    for name, a in frames(rng):
        S, K = a.shape
        q, r, log_r, log_col, _ = _k.frame_qr(a, ROUTES[route])
        qq, rr = np.linalg.qr(a)
        what = f"{name} ({S}x{K})"
        assert np.all(np.tril(r, -1) == 0.0), what
        assert_close(q.T @ q, np.eye(K), atol=1e-14, what=f"Q^T Q, {what}")
        assert_close(q @ r, a, rtol=1e-14, what=f"Q R, {what}")
        d, dd = np.diag(r), np.diag(rr)
        assert np.array_equal(np.sign(d), np.sign(dd)), what
        with np.errstate(divide="ignore", invalid="ignore"):  # (a zero column)
            want = np.log(np.abs(dd))
            top = np.maximum(np.abs(rr).max(axis=0), 1e-300)
            sine = np.abs(dd) / top / np.linalg.norm(np.triu(rr) / top, axis=0)
        assert np.array_equal(log_r == -np.inf, want == -np.inf), what
        live = np.isfinite(want)
        tol = np.maximum(1e-12, 100 * EPS / np.minimum.accumulate(np.where(live, sine, 1.0)))
        assert np.all(np.abs(log_r[live] - want[live]) <= tol[live]), (what, log_r, want)
        scale = np.maximum(np.abs(a).max(axis=0), 1e-300)  # (numpy's norm squares underflow)
        assert_close(np.exp(log_col - np.log(scale)), np.linalg.norm(a / scale, axis=0),
                     rtol=1e-12, what=what)
        if route == "lapack" and K > 1:
            assert np.array_equal(q, qq) and np.array_equal(r, rr), what


@pytest.mark.parametrize("route", list(ROUTES))
def test_frame_qr_rounds_a_float32_q_once(route, rng):
    """A float32 frame is factored in float64 and its Q rounded to float32 once: the float64
    QR's Q, rounded (on either route)."""
    for name, a in frames(rng):
        if np.abs(a).max() > np.finfo(np.float32).max:
            continue  # (the graded frames overflow float32)
        a32 = a.astype(np.float32)
        q32 = _k.frame_qr(a32, ROUTES[route])[0]
        q64 = _k.frame_qr(a32.astype(np.float64), ROUTES[route])[0]
        assert q32.dtype == np.float32, name
        assert np.array_equal(q32, q64.astype(np.float32)), name


@njit
def _factor_and_form(a, lo_hi):
    """The compiled Householder QR of the frame a (k, S); Q formed in place of the factored
    frame, and by the row blocks lo_hi[i] .. lo_hi[i + 1] into another array from a factored
    copy; that copy after and before."""
    w = a.copy()
    tau = np.empty(a.shape[0])
    _k._householder_qr(w, tau)
    factored, before = w.copy(), w.copy()
    _k._householder_q_rows(w, tau, w, 0, a.shape[0])
    rows = np.empty_like(a)
    for i in range(lo_hi.shape[0] - 1):
        _k._householder_q_rows(factored, tau, rows, lo_hi[i], lo_hi[i + 1])
    return w, rows, factored, before


@pytest.mark.parametrize("edges", [(0, 10), (0, 7, 10), (0, 3, 4, 9, 10), (0, 5, 10)])
def test_q_formed_by_row_blocks_is_q(edges, rng):
    """Q's rows (the frame's vectors) formed by blocks from the factored frame, which they only
    read: Q to rounding (its bits where one block holds every row), orthonormal, each row
    numpy's Q's up to its sign."""
    a = rng.standard_normal((10, 37))
    whole, rows, factored, before = _factor_and_form(a, np.array(edges, np.int64))
    assert np.array_equal(factored, before)
    if edges == (0, 10):
        assert np.array_equal(rows, whole)
    assert_close(rows, whole, atol=1e-15)
    assert_close(rows @ rows.T, np.eye(10), atol=1e-14)
    q = np.linalg.qr(a.T)[0].T
    assert_close(np.abs(np.einsum("ks,ks->k", rows, q)), np.ones(10), rtol=1e-14)


def test_frame_qr_measures_the_angle():
    """The smallest sine |R_ii| / ||R[:i+1, i]|| and its column, as the strict loops check it:
    a column at angle 1e-9 from the one before it gives s ~ 1e-9 there."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 4))
    a[:, 2] = a[:, 1] + 1e-9 * rng.standard_normal(40)
    for cut in ROUTES.values():
        _, _, _, _, (s, at) = _k.frame_qr(a, cut)
        assert at == 2 and 1e-11 < s < 1e-8


@pytest.mark.parametrize("k", [1, 2, 3, 4, 10])
def test_both_routes_give_one_spectrum(k, rng):
    """lyapunov_from_jacobians on the same matrices through either QR route: the exponents
    agree to rounding (the frames differ by the order of sums only)."""
    import numrnn

    J = rng.standard_normal((300, 12, 12)) / np.sqrt(12)
    res = {}
    for route, cut in ROUTES.items():
        old = _k.HOUSEHOLDER_MAX_K
        _k.HOUSEHOLDER_MAX_K = cut
        try:
            res[route] = numrnn.lyapunov_from_jacobians(J, k=k, seed=0).exponents
        finally:
            _k.HOUSEHOLDER_MAX_K = old
    assert_close(res["householder"], res["lapack"], rtol=1e-11)


@pytest.mark.parametrize("S, nb, n_blocks", [(200, 24, 2), (200, 24, 3), (60, 4, 3),
                                             (100, 8, 4), (50, 24, 2)])
def test_update_columns_cover_each_panel_step_once(S, nb, n_blocks, monkeypatch):
    """The factored QR's column blocks (jacobians.update_columns): one row per panel step
    before the last 2 nb columns, each row's blocks tile the columns from the next panel on,
    block 0 holds that whole panel and takes FACTOR_SHARE panels' columns fewer than an even
    share where there is room, the others share the rest evenly."""
    monkeypatch.setattr(_k, "FACTOR_SHARE", 3)
    cols = _k.update_columns(S, nb, n_blocks)
    steps = [lo for lo in range(nb, S, nb) if S - lo > 2 * nb]
    assert cols.dtype == np.int64 and cols.shape == (max(1, len(steps)), n_blocks + 1)
    if not steps:
        assert not cols.any()
    for row, lo in zip(cols, steps):
        rest = S - lo
        assert row[0] == lo and row[-1] == S and np.all(np.diff(row) >= 0)
        assert row[1] - lo == max(nb, (rest - 3 * nb) // n_blocks)
        others = np.diff(row[1:])
        assert others.max() - others.min() <= 1


@pytest.mark.parametrize("S, n_blocks", [(200, 2), (200, 3), (256, 2), (128, 8), (64, 8),
                                         (100, 2), (12, 3), (9, 2), (200, 1)])
def test_factored_rows_keep_blocks_off_each_others_cache_lines(S, n_blocks):
    """The factored route's row blocks (jacobians.factored_rows) tile the S rows.  Where S is
    a multiple of 8 with 8 rows or more a block, every edge is a multiple of 8 (a cache line of
    float64) and each block is within 8 rows of an even share; else the edges are S i // n."""
    edges = _k.factored_rows(S, n_blocks)
    assert edges.dtype == np.int64 and len(edges) == n_blocks + 1
    assert edges[0] == 0 and edges[-1] == S and np.all(np.diff(edges) > 0)
    if S % 8 == 0 and S >= 8 * n_blocks:
        assert np.all(edges % 8 == 0)
        assert np.all(np.abs(np.diff(edges) - S / n_blocks) < 8)
    else:
        assert edges.tolist() == [S * i // n_blocks for i in range(n_blocks + 1)]
    assert _k.factored_rows(200, 2).tolist() == [0, 96, 200]


@pytest.mark.parametrize("S", [128, 200, 256])
def test_factored_workspace_starts_each_column_on_a_cache_line(S, monkeypatch):
    """Both of the factored route's C (S x S, stored by columns) start on a 64-byte line, so
    with S a multiple of 8 every column does, and the row blocks' edges fall between lines."""
    monkeypatch.setattr(_k.threads, "num_blocks", lambda: 2)
    for _ in range(5):  # (np.empty would put a fresh array 16 bytes off a line, most times)
        fw = _k.factored_workspace(S, S, False)
        bufs = fw[1]
        assert bufs.shape == (2, S, S) and bufs.dtype == np.float64
        assert bufs.flags.c_contiguous
        assert bufs[0].ctypes.data % 64 == 0 and bufs[1].ctypes.data % 64 == 0
        assert fw[6].tolist() == _k.factored_rows(S, 2).tolist()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_frame_workspace_rows_start_on_cache_lines(dtype):
    """The QR loops' scratch (jacobians._frame_workspace): r, up, y, z and tmp in the frame's
    dtype, one row a vector, each array on a 64-byte line (the split loop's threads write
    blocks of rows); up starts at zero."""
    q = np.zeros((2, 10, 2, 1, 32), dtype)
    w_hh = np.zeros((2, 96, 64), dtype)
    for _ in range(5):
        r, up, y, z, tmp, log_r, log_col, no_r = _k._frame_workspace(q, w_hh)
        assert [a.shape for a in (r, up, y, z, tmp)] == [(10, 64), (10, 32), (10, 96),
                                                         (10, 96), (10, 2, 1, 32)]
        for a in (r, up, y, z, tmp):
            assert a.dtype == dtype and a.flags.c_contiguous and a.ctypes.data % 64 == 0
        assert not up.any()
        assert log_r.shape == log_col.shape == (10,) and no_r.shape == (0, 0)


@pytest.mark.parametrize("K, householder_max_k", [(10, None), (10, 4), (3, None)])
def test_split_workspace_gives_each_participant_its_own_lines(K, householder_max_k,
                                                             monkeypatch):
    """The split loop's scratch (jacobians._split_workspace): the products' scratch and two
    moved frames shared, and per participant a QR workspace, Q, logs and a status row whose
    rows start on their own 64-byte lines (the participants write them at once)."""
    if householder_max_k is not None:
        monkeypatch.setattr(_k, "HOUSEHOLDER_MAX_K", householder_max_k)
    q = np.zeros((1, K, 1, 1, 200))
    w_hh = np.zeros((1, 200, 200))
    (r, up, y, z, moved), parts = _k._split_workspace(q, w_hh, 3)
    w, tau, work, ints, use_lapack, own, logs, status = parts
    assert use_lapack == (K > _k.HOUSEHOLDER_MAX_K)
    assert [a.shape for a in (r, up, y, z)] == [(K, 200)] * 4 and not up.any()
    assert moved.shape == (2, K, 1, 1, 200)
    assert w.shape == own.shape == (3, K, 200) and status.shape == (3, 8)
    assert tau.shape[0] == work.shape[0] == ints.shape[0] == logs.shape[0] == 3
    assert tau.shape[1] >= K and logs.shape[1:] == (2, tau.shape[1])
    assert work.shape[1] >= _k.qr_workspace(K, 200)[2].shape[0] and ints.shape[1] >= 6
    for a in (r, up, y, z, moved[0], moved[1], *w, *own, *tau, *work, *ints, *status,
              *logs[:, 0], *logs[:, 1]):
        assert a.flags.c_contiguous and a.ctypes.data % 64 == 0


def test_update_columns_one_block_and_an_even_split(monkeypatch):
    """One block: no panel steps (the QR is one dgeqrt).  FACTOR_SHARE 0: halves, as an even
    split gives them."""
    assert _k.update_columns(200, 24, 1).tolist() == [[0, 0]]
    monkeypatch.setattr(_k, "FACTOR_SHARE", 0)
    cols = _k.update_columns(200, 24, 2)
    assert [r[1] - r[0] for r in cols] == [(200 - lo) // 2 for lo in range(24, 152, 24)]
