"""Products of a few vectors with a matrix: out = a @ m.T for a (k, n) with k small.

Each step of a Lyapunov, covariant-vector or tangent loop multiplies k tangent vectors by the
recurrent matrix, (k, n) @ (n, m).  OpenBLAS runs these skinny products far below the core's
speed: at n = m = 200 in float64 (one thread) a product of 2 to 16 rows took about as long as
one of 16, several times its matrix-vector product's time.  :func:`times_transpose` instead
forms each entry of out as a dot product of a row of ``a`` with a row of ``m`` (both
contiguous), four rows of ``a`` against two rows of ``m`` at a time (eight running sums in
vector registers: each loaded element feeds two or four multiply-adds), then pairs and single
rows of ``a`` against four rows of ``m``.  The figures are in benchmarks/README.md
("Skinny products and frame QRs compiled").

:func:`reflect_rows` applies a Householder reflector to the rows of a frame-major matrix the
same way (the dot products of four rows with the reflector in one pass, then their updates in
one pass), for the compiled QR of numrnn.cpu.jacobians.

Reassociation and contraction are allowed in these loops alone (``REDUCTION_FLAGS``): the
compiler may split each dot product into vector-wide partial sums and fuse multiply-adds, which
is what the BLAS does to the same sums.  Neither flag lets it assume finite values, so NaN and
inf propagate as in IEEE arithmetic (``config.FASTMATH`` still governs the rest of numrnn).  The
bits of an entry depend on the loop its row of ``a`` falls in (a group of four, a pair or a
single row), so on k; never on threads.  Every loop indexes from a non-negative offset
(``max(., 0)``): where LLVM cannot see that an index is not negative, Numba's wraparound check
keeps the loop scalar.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

#: Rows of ``a`` up to which :func:`product_t` runs the compiled loops rather than the BLAS
#: (float64 only): the two were level at 32 rows (benchmarks/bench_products.py).
SMALL_ROWS = 16

#: The fastmath flags of these loops (see the module's docstring).
REDUCTION_FLAGS = frozenset({"reassoc", "contract"})
_JIT = dict(cache=True, nogil=True, fastmath=set(REDUCTION_FLAGS))


@njit(**_JIT)
def _four(a, c, m, out):
    """out[c:c+4] = a[c:c+4] @ m.T, two rows of m at a time."""
    a0, a1, a2, a3 = a[c], a[c + 1], a[c + 2], a[c + 3]
    o0, o1, o2, o3 = out[c], out[c + 1], out[c + 2], out[c + 3]
    n = a.shape[1]
    n_out = m.shape[0]
    i = 0
    while i + 1 < n_out:
        u, v = m[i], m[i + 1]
        s0 = s1 = s2 = s3 = 0.0
        t0 = t1 = t2 = t3 = 0.0
        for j in range(n):
            s0 += u[j] * a0[j]
            s1 += u[j] * a1[j]
            s2 += u[j] * a2[j]
            s3 += u[j] * a3[j]
            t0 += v[j] * a0[j]
            t1 += v[j] * a1[j]
            t2 += v[j] * a2[j]
            t3 += v[j] * a3[j]
        o0[i], o1[i], o2[i], o3[i] = s0, s1, s2, s3
        o0[i + 1], o1[i + 1], o2[i + 1], o3[i + 1] = t0, t1, t2, t3
        i += 2
    if i < n_out:
        u = m[i]
        s0 = s1 = s2 = s3 = 0.0
        for j in range(n):
            s0 += u[j] * a0[j]
            s1 += u[j] * a1[j]
            s2 += u[j] * a2[j]
            s3 += u[j] * a3[j]
        o0[i], o1[i], o2[i], o3[i] = s0, s1, s2, s3


@njit(**_JIT)
def _two(a, c, m, out):
    """out[c:c+2] = a[c:c+2] @ m.T, four rows of m at a time."""
    a0, a1 = a[c], a[c + 1]
    o0, o1 = out[c], out[c + 1]
    n = a.shape[1]
    n_out = m.shape[0]
    i = 0
    while i + 3 < n_out:
        u0, u1, u2, u3 = m[i], m[i + 1], m[i + 2], m[i + 3]
        s0 = s1 = s2 = s3 = 0.0
        t0 = t1 = t2 = t3 = 0.0
        for j in range(n):
            s0 += u0[j] * a0[j]
            s1 += u1[j] * a0[j]
            s2 += u2[j] * a0[j]
            s3 += u3[j] * a0[j]
            t0 += u0[j] * a1[j]
            t1 += u1[j] * a1[j]
            t2 += u2[j] * a1[j]
            t3 += u3[j] * a1[j]
        o0[i], o0[i + 1], o0[i + 2], o0[i + 3] = s0, s1, s2, s3
        o1[i], o1[i + 1], o1[i + 2], o1[i + 3] = t0, t1, t2, t3
        i += 4
    while i < n_out:
        u = m[i]
        s0 = s1 = 0.0
        for j in range(n):
            s0 += u[j] * a0[j]
            s1 += u[j] * a1[j]
        o0[i], o1[i] = s0, s1
        i += 1


@njit(**_JIT)
def _one(a, c, m, out):
    """out[c] = m @ a[c], four rows of m at a time."""
    a0 = a[c]
    o0 = out[c]
    n = a.shape[1]
    n_out = m.shape[0]
    i = 0
    while i + 3 < n_out:
        u0, u1, u2, u3 = m[i], m[i + 1], m[i + 2], m[i + 3]
        s0 = s1 = s2 = s3 = 0.0
        for j in range(n):
            x = a0[j]
            s0 += u0[j] * x
            s1 += u1[j] * x
            s2 += u2[j] * x
            s3 += u3[j] * x
        o0[i], o0[i + 1], o0[i + 2], o0[i + 3] = s0, s1, s2, s3
        i += 4
    while i < n_out:
        u = m[i]
        s0 = 0.0
        for j in range(n):
            s0 += u[j] * a0[j]
        o0[i] = s0
        i += 1


@njit(**_JIT)
def times_transpose(a, m, out):
    """out = a @ m.T by compiled loops: a (k, n), m (n_out, n), out (k, n_out), float64,
    C-contiguous rows; out distinct from both."""
    k = a.shape[0]
    c = 0
    while k - c >= 4:
        _four(a, c, m, out)
        c += 4
    if k - c >= 2:
        _two(a, c, m, out)
        c += 2
    if k - c == 1:
        _one(a, c, m, out)


def product_t(a, m, m_t, out):
    """out = a @ m.T, given m (n_out, n), C-contiguous, and its transpose m_t (n, n_out), a copy
    or a view: :func:`times_transpose` where a, m and out are float64 and a has at most
    SMALL_ROWS rows, else the BLAS (np.dot(a, m_t, out)).  Called from compiled code (the dtype
    test is made when it compiles)."""
    if a.dtype == np.float64 and a.shape[0] <= SMALL_ROWS:
        times_transpose(a, m, out)
    else:
        np.dot(a, m_t, out)


@overload(product_t, jit_options=dict(nogil=True))
def _product_t(a, m, m_t, out):
    if a.dtype == m.dtype == out.dtype == types.float64:
        def small_or_blas(a, m, m_t, out):
            if a.shape[0] <= SMALL_ROWS:
                times_transpose(a, m, out)
            else:
                np.dot(a, m_t, out)
        return small_or_blas

    def blas(a, m, m_t, out):
        np.dot(a, m_t, out)
    return blas


@njit(**_JIT)
def dot_tail(u, x, i0):
    """sum over i >= i0 of u[i] * x[i] (u, x 1-D, contiguous, of one length; i0 >= 0)."""
    i0 = max(i0, 0)
    s = 0.0
    for j in range(u.shape[0] - i0):
        s += u[i0 + j] * x[i0 + j]
    return s


@njit(**_JIT)
def reflect_rows(w, c, t, c0):
    """Apply the Householder reflector H = I - t v v^T, v = (1, w[c, c+1:]) (LAPACK's dlarf, v's
    leading 1 implicit), to the rows c0 .. k-1 of w (k, S) over their entries c .. S-1: each
    row x there becomes x - t (v . x) v.  Rows of w are the columns of the (S, k) matrix in
    Fortran order; c0 > c."""
    K, S = w.shape
    i0 = max(c + 1, 0)  # (max: LLVM then knows the indices below are not negative)
    n = S - i0
    u = w[c]
    r = c0
    while r + 3 < K:
        x0, x1, x2, x3 = w[r], w[r + 1], w[r + 2], w[r + 3]
        s0 = s1 = s2 = s3 = 0.0
        for j in range(n):
            uj = u[i0 + j]
            s0 += uj * x0[i0 + j]
            s1 += uj * x1[i0 + j]
            s2 += uj * x2[i0 + j]
            s3 += uj * x3[i0 + j]
        s0 = t * (x0[c] + s0)
        s1 = t * (x1[c] + s1)
        s2 = t * (x2[c] + s2)
        s3 = t * (x3[c] + s3)
        x0[c] -= s0
        x1[c] -= s1
        x2[c] -= s2
        x3[c] -= s3
        for j in range(n):
            uj = u[i0 + j]
            x0[i0 + j] -= s0 * uj
            x1[i0 + j] -= s1 * uj
            x2[i0 + j] -= s2 * uj
            x3[i0 + j] -= s3 * uj
        r += 4
    while r < K:
        x0 = w[r]
        s0 = 0.0
        for j in range(n):
            s0 += u[i0 + j] * x0[i0 + j]
        s0 = t * (x0[c] + s0)
        x0[c] -= s0
        for j in range(n):
            x0[i0 + j] -= s0 * u[i0 + j]
        r += 1
