"""Tiled matrix products and small data-movement kernels for the GPU backend.

The non-sequential work of a layer: the input projection of all T steps before the recurrence
(``X W_ih^T + b_ih``, one product), and after the BPTT sweep the weight gradients
(``dxp^T X``, ``dhp^T R``), the bias gradients (column sums) and the input gradient (``dxp W_ih``).
Every sum runs in a fixed order (no atomics): the same inputs give the same bits on every run.

The product kernel is a classic shared-memory tiling: a block computes a (4 TD) x (4 TD) tile of
C, each thread a 4 x 4 register tile of it (explicit accumulators: Numba does not promote a
run-time-indexed local array to registers), stepping through K in slabs of 16.
"""
import numba
import numpy as np

from .. import config
from . import _cuda
from ._cuda import cuda

_FASTMATH = config.FASTMATH
#: Threads per tile side: the GPU uses 16 x 16 threads on 64 x 64 tiles; the simulator, whose
#: threads are Python threads, 4 x 4 threads on 16 x 16 tiles.
TD = 4 if _cuda.SIMULATOR else 16
TK = 16


@cuda.jit(device=True)
def _store(c, row, col, val, m, p, accum, bias, has_bias):
    if row < m and col < p:
        if has_bias:
            val += bias[col]
        if accum:
            val += c[row, col]
        c[row, col] = val


def _make_gemm(dtype, scalar):
    tm = 4 * TD

    @cuda.jit(fastmath=_FASTMATH)
    def gemm(a, b, c3, ta, tb, accum, bias, has_bias, kslice):
        """c3[z] = [c3[z] +] op(a) @ op(b) [+ bias] over K slice z (blockIdx.z) of length kslice.

        op(a) = a.T if ta, op(b) = b.T if tb.  With one slice c3 is the output itself."""
        c = c3[cuda.blockIdx.z]
        m = c.shape[0]
        p = c.shape[1]
        kfull = a.shape[0] if ta else a.shape[1]
        kbeg = cuda.blockIdx.z * kslice
        kdim = min(kfull, kbeg + kslice)
        # the two (TK, tm) tiles, row-major, in dynamic shared memory (2 * TK * tm elements,
        # :func:`matmul`'s launch): the simulator allocates a static shared array when a thread
        # first reaches its line, unlocked, so two threads may each get their own copy
        smem = cuda.shared.array(0, dtype)
        a_s = smem[0:TK * tm]
        b_s = smem[TK * tm:2 * TK * tm]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TD + tx
        nthr = TD * TD
        i0 = cuda.blockIdx.y * tm
        j0 = cuda.blockIdx.x * tm
        zero = scalar(0)
        c00 = zero
        c01 = zero
        c02 = zero
        c03 = zero
        c10 = zero
        c11 = zero
        c12 = zero
        c13 = zero
        c20 = zero
        c21 = zero
        c22 = zero
        c23 = zero
        c30 = zero
        c31 = zero
        c32 = zero
        c33 = zero
        for k0 in range(kbeg, kdim, TK):
            for e in range(tid, TK * tm, nthr):
                if ta:  # a is (K, M): consecutive threads read consecutive i
                    kk = e // tm
                    ii = e - kk * tm
                else:  # a is (M, K): consecutive threads read consecutive k
                    ii = e // TK
                    kk = e - ii * TK
                i = i0 + ii
                k = k0 + kk
                v = zero
                if i < m and k < kdim:
                    v = a[k, i] if ta else a[i, k]
                a_s[kk * tm + ii] = v
                if tb:  # b is (P, K)
                    jj = e // TK
                    kk = e - jj * TK
                else:  # b is (K, P)
                    kk = e // tm
                    jj = e - kk * tm
                j = j0 + jj
                k = k0 + kk
                v = zero
                if j < p and k < kdim:
                    v = b[j, k] if tb else b[k, j]
                b_s[kk * tm + jj] = v
            cuda.syncthreads()
            for kk in range(TK):
                ka = kk * tm + ty
                kb = kk * tm + tx
                x0 = a_s[ka]
                x1 = a_s[ka + TD]
                x2 = a_s[ka + 2 * TD]
                x3 = a_s[ka + 3 * TD]
                y0 = b_s[kb]
                y1 = b_s[kb + TD]
                y2 = b_s[kb + 2 * TD]
                y3 = b_s[kb + 3 * TD]
                c00 += x0 * y0
                c01 += x0 * y1
                c02 += x0 * y2
                c03 += x0 * y3
                c10 += x1 * y0
                c11 += x1 * y1
                c12 += x1 * y2
                c13 += x1 * y3
                c20 += x2 * y0
                c21 += x2 * y1
                c22 += x2 * y2
                c23 += x2 * y3
                c30 += x3 * y0
                c31 += x3 * y1
                c32 += x3 * y2
                c33 += x3 * y3
            cuda.syncthreads()
        r = i0 + ty
        q = j0 + tx
        _store(c, r, q, c00, m, p, accum, bias, has_bias)
        _store(c, r, q + TD, c01, m, p, accum, bias, has_bias)
        _store(c, r, q + 2 * TD, c02, m, p, accum, bias, has_bias)
        _store(c, r, q + 3 * TD, c03, m, p, accum, bias, has_bias)
        r += TD
        _store(c, r, q, c10, m, p, accum, bias, has_bias)
        _store(c, r, q + TD, c11, m, p, accum, bias, has_bias)
        _store(c, r, q + 2 * TD, c12, m, p, accum, bias, has_bias)
        _store(c, r, q + 3 * TD, c13, m, p, accum, bias, has_bias)
        r += TD
        _store(c, r, q, c20, m, p, accum, bias, has_bias)
        _store(c, r, q + TD, c21, m, p, accum, bias, has_bias)
        _store(c, r, q + 2 * TD, c22, m, p, accum, bias, has_bias)
        _store(c, r, q + 3 * TD, c23, m, p, accum, bias, has_bias)
        r += TD
        _store(c, r, q, c30, m, p, accum, bias, has_bias)
        _store(c, r, q + TD, c31, m, p, accum, bias, has_bias)
        _store(c, r, q + 2 * TD, c32, m, p, accum, bias, has_bias)
        _store(c, r, q + 3 * TD, c33, m, p, accum, bias, has_bias)
    return gemm


_gemms = {}


def matmul(a, b, ta=False, tb=False, out=None, accumulate=False, bias=None):
    """``op(a) @ op(b)`` (+ ``bias``) on the device, into ``out`` (added to it if ``accumulate``).

    Parameters
    ----------
    a : device array, shape (M, K), or (K, M) if ``ta``
    b : device array, shape (K, P), or (P, K) if ``tb``
    out : device array, shape (M, P), optional
    bias : device array, shape (P,), optional

    Returns
    -------
    out : device array, shape (M, P)
    """
    m = a.shape[1] if ta else a.shape[0]
    p = b.shape[0] if tb else b.shape[1]
    dtype = np.dtype(a.dtype)
    if out is None:
        out = _cuda.empty((m, p), dtype)
    if dtype not in _gemms:
        _gemms[dtype] = _make_gemm(numba.from_dtype(dtype), dtype.type)
    tm = 4 * TD
    kdim = a.shape[0] if ta else a.shape[1]
    gp, gm = max(1, -(-p // tm)), max(1, -(-m // tm))
    # Split K when the output alone gives too few blocks (the weight gradients: K = T*B); the
    # slices' partial products are then summed in slice order, not with atomics.
    splits = max(1, min(-(-SPLIT_TARGET_BLOCKS // (gp * gm)), kdim // SPLIT_MIN_K))
    kslice = -(-kdim // splits)
    kslice = -(-kslice // TK) * TK
    splits = -(-kdim // kslice)
    has_bias = bias is not None
    if bias is None:
        bias = _cuda.empty((1,), dtype)
    smem = 2 * TK * tm * dtype.itemsize
    if splits == 1:
        _gemms[dtype][(gp, gm, 1), (TD, TD), 0, smem](a, b, out.reshape(1, m, p), bool(ta),
                                                      bool(tb), bool(accumulate), bias, has_bias,
                                                      kslice)
        return out
    part = _cuda.empty((splits, m, p), dtype)
    _gemms[dtype][(gp, gm, splits), (TD, TD), 0, smem](a, b, part, bool(ta), bool(tb), False,
                                                       bias, False, kslice)
    n = m * p
    _sum_slices[max(1, -(-n // 128)), 128](part.reshape(splits, n), out.reshape(n),
                                           bool(accumulate), bias, has_bias, p)
    return out


#: Split K until the product has about this many blocks ...
SPLIT_TARGET_BLOCKS = 2 if _cuda.SIMULATOR else 264
#: ... with at least this much of K per slice.
SPLIT_MIN_K = 16 if _cuda.SIMULATOR else 512


@cuda.jit(fastmath=_FASTMATH)
def _sum_slices(part, out, accum, bias, has_bias, p):
    i = cuda.grid(1)
    if i < out.shape[0]:
        acc = part[0, i]
        for z in range(1, part.shape[0]):
            acc += part[z, i]
        if has_bias:
            acc += bias[i % p]
        if accum:
            acc += out[i]
        out[i] = acc


# --- reductions and data movement -----------------------------------------------------------

_CHUNK = 256


@cuda.jit(fastmath=_FASTMATH)
def _colsum_partial(a, part):
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    c = cuda.blockIdx.y
    m, p = a.shape
    if j < p:
        r0 = c * _CHUNK
        acc = a[r0, j]
        for r in range(r0 + 1, min(m, r0 + _CHUNK)):
            acc += a[r, j]
        part[c, j] = acc


@cuda.jit(fastmath=_FASTMATH)
def _colsum_final(part, out):
    j = cuda.grid(1)
    if j < out.shape[0]:
        acc = part[0, j]
        for c in range(1, part.shape[0]):
            acc += part[c, j]
        out[j] = acc


def colsum(a):
    """Column sums of a (M, P) device array, in a fixed order: shape (P,)."""
    m, p = a.shape
    chunks = max(1, -(-m // _CHUNK))
    part = _cuda.empty((chunks, p), a.dtype)
    out = _cuda.empty((p,), a.dtype)
    if m == 0:  # pragma: no cover - T, B >= 1 always
        raise ValueError("colsum of an empty matrix")
    threads = 128
    _colsum_partial[(-(-p // threads), chunks), threads](a, part)
    _colsum_final[-(-p // threads), threads](part, out)
    return out


@cuda.jit
def _transpose_kernel(a, out):
    i = cuda.grid(1)
    m, p = a.shape
    if i < m * p:
        r = i // p
        q = i - r * p
        out[q, r] = a[r, q]


def transpose2d(a):
    """A C-contiguous copy of ``a.T`` for a 2-D device array."""
    m, p = a.shape
    out = _cuda.empty((p, m), a.dtype)
    threads = 128
    _transpose_kernel[max(1, -(-m * p // threads)), threads](a, out)
    return out


@cuda.jit
def _swap01_kernel(a, out):
    i = cuda.grid(1)
    d0, d1, d2 = a.shape
    if i < d0 * d1 * d2:
        x = i // (d1 * d2)
        rem = i - x * d1 * d2
        y = rem // d2
        z = rem - y * d2
        out[y, x, z] = a[x, y, z]


def swap01(a):
    """A C-contiguous copy of ``a.transpose(1, 0, 2)`` for a 3-D device array."""
    d0, d1, d2 = a.shape
    out = _cuda.empty((d1, d0, d2), a.dtype)
    threads = 128
    _swap01_kernel[max(1, -(-d0 * d1 * d2 // threads)), threads](a, out)
    return out


@cuda.jit
def _copy3_kernel(a, out):
    i = cuda.grid(1)
    d0, d1, d2 = a.shape
    if i < d0 * d1 * d2:
        x = i // (d1 * d2)
        rem = i - x * d1 * d2
        y = rem // d2
        z = rem - y * d2
        out[x, y, z] = a[x, y, z]


def contiguous3(a):
    """A C-contiguous copy of a (possibly strided) 3-D device array."""
    out = _cuda.empty(a.shape, a.dtype)
    threads = 128
    n = a.shape[0] * a.shape[1] * a.shape[2]
    _copy3_kernel[max(1, -(-n // threads)), threads](a, out)
    return out
