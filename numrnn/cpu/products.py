"""Products out = a @ m.T as compiled dot products of rows, for few rows of a and for many.

Each step of a Lyapunov, covariant-vector or tangent loop multiplies k tangent vectors by the
recurrent matrix, (k, n) @ (n, m).  OpenBLAS runs these skinny products far below the core's
speed: at n = m = 200 in float64 (one thread) a product of 2 to 16 rows took about as long as
one of 16, several times its matrix-vector product's time.  :func:`times_transpose` instead
forms each entry of out as a dot product of a row of ``a`` with a row of ``m`` (both
contiguous): four rows of ``a`` against four rows of ``m`` at a time where the compiler targets
AVX-512 (:data:`WIDE`: sixteen running sums in vector registers, each loaded element feeding
four multiply-adds), else against two (eight sums: AVX2 has sixteen registers); then pairs and
single rows of ``a`` against four rows of ``m``.  The figures are in benchmarks/README.md
("Skinny products and frame QRs compiled", "Compiled dot products with AVX-512").

With AVX-512 the same loops also beat OpenBLAS's AVX2 kernels (which it runs where
OPENBLAS_CORETYPE says so, :mod:`numrnn.cpu.blas`) on the recurrent product of each step of a
batch (:func:`numrnn.cpu.recurrence.product_mode`) and, in blocks that stay in a core's L2
(:func:`gemm_nt`), on the products over all steps (:func:`numrnn.cpu.threads.matmul`: the input
projection and the input's gradient; :func:`numrnn.cpu.threads.matmul_tn`: the weight gradients,
through blocks packed transposed, :func:`gemm_tn`).  Larger still, the packed products take
over: a register tile of outer products (:func:`_tile`, vector code emitted directly) with no
sums to reduce at the end, in :func:`gemm_nt` from :data:`PACKED_MIN_ROWS` rows of a
(:func:`_packed`), in :func:`gemm_tn` from :data:`PACKED_TN_MIN_COLUMNS` columns of out
(:func:`_packed_tn`), and for a step's product of a whole tile of rows with M packed once per
pass (:func:`pack_matrix`, :func:`times_packed`; ``recurrence.product_mode``'s mode 4).  ``config.DOT_PRODUCTS`` governs those uses
(:func:`use_dot_products`); :func:`product_t`, inside the compiled analysis loops, follows
:data:`WIDE` alone.

:func:`reflect_rows` applies a Householder reflector to the rows of a frame-major matrix the
same way (the dot products of four rows with the reflector in one pass, then their updates in
one pass), for the compiled QR of numrnn.cpu.jacobians.

Reassociation and contraction are allowed in these loops alone (``REDUCTION_FLAGS``): the
compiler may split each dot product into vector-wide partial sums and fuse multiply-adds, which
is what the BLAS does to the same sums.  Neither flag lets it assume finite values, so NaN and
inf propagate as in IEEE arithmetic (``config.FASTMATH`` still governs the rest of numrnn).  The
bits of an entry depend on the loop its rows fall in (a group of four rows of ``a``, a pair or a
single row; a group of rows of ``m`` or the last few), so on the shapes, the blocks and
:data:`WIDE`; never on threads.  Every loop indexes from a non-negative offset
(``max(., 0)``): where LLVM cannot see that an index is not negative, Numba's wraparound check
keeps the loop scalar.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core import config as numba_config
from numba.extending import intrinsic, overload, register_jitable

from .. import config
from . import blas

#: Rows of ``a`` up to which :func:`product_t` runs the compiled loops rather than the BLAS
#: (float64 only): the two were level at 32 rows (benchmarks/bench_products.py).
SMALL_ROWS = 16

#: The fastmath flags of these loops (see the module's docstring).
REDUCTION_FLAGS = frozenset({"reassoc", "contract"})
_JIT = dict(cache=True, nogil=True, fastmath=set(REDUCTION_FLAGS), error_model="numpy")

#: Bytes of the rows of m that one pass over the groups of rows of a reads (128 KiB: with a's
#: rows they stay in a core's L2 while every group of a passes over them).
CHUNK_BYTES = 1 << 17

#: The blocks of :func:`gemm_nt`: columns (the depth of the sums), rows of a, rows of m.  One
#: thread of a Zen 5 core, float64 and float32, a (3200, 512) times m (512 or 2048, 512) and
#: (3200, 2048) times (512, 2048): (512, 128, 64) ran at 66-84 and 126-177 GFLOP/s, (256, 128,
#: 64) at 46-75 and 118-142; OpenBLAS's AVX2 gemm at 55-57 and 106-114.
GEMM_BLOCKS = (512, 128, 64)

#: The blocks of :func:`gemm_tn` (depth, rows of out, columns of out), packed: half the rows of
#: :data:`GEMM_BLOCKS`, so a core's packed blocks (a 64 x 520 block of a and a 64-row chunk of
#: b's, 266 KiB each in float64) leave half its L2 free.  Two threads on the 2-core Zen 5 VM,
#: (2048, 2048, 512) float32: 248-259 GFLOP/s against 155 with 128 rows; float64 the same
#: within the noise (119-136).
TN_BLOCKS = (512, 64, 64)


def _target_has_avx512():
    """Whether Numba compiles for AVX-512 (NUMBA_CPU_FEATURES when set, else the host's)."""
    features = numba_config.CPU_FEATURES
    if features is None:
        return blas._cpu_has_avx512()
    return "+avx512f" in features.split(",")


#: Whether the compiler's target has AVX-512's 32 vector registers.  Then :func:`times_transpose`
#: takes four rows of m at a time against a group of four rows of a (sixteen running sums, four
#: vectors of each operand in registers: each loaded element feeds four multiply-adds), else two
#: (eight sums: sixteen AVX2 registers hold no more).  Measured one thread on a Zen 5 core,
#: float64 16 x 512 x 512: 91 us against 115 for two rows at a time and 211-222 for OpenBLAS's
#: AVX2 gemm; the same code compiled for AVX2 (NUMBA_CPU_FEATURES) took 283 us against 199 for
#: two rows at a time (benchmarks/README.md, "Skinny products with AVX-512").  A constant of
#: the compiled code, like the instruction set it is compiled for (Numba's cache keys on it).
WIDE = _target_has_avx512()


@register_jitable(inline="always")
def _put(row, i, value, add):
    """row[i] = value, or row[i] += value (the blocks of K after the first)."""
    if add:
        row[i] += value
    else:
        row[i] = value


@register_jitable(inline="always")
def _put4(row, i, v0, v1, v2, v3, add):
    """row[i:i+4] (+)= v0, v1, v2, v3."""
    _put(row, i, v0, add)
    _put(row, i + 1, v1, add)
    _put(row, i + 2, v2, add)
    _put(row, i + 3, v3, add)


@njit(**_JIT)
def _four(a, c, m, i0, i1, k0, k1, out, zero, add):
    """out[c:c+4, i0:i1] (+)= a[c:c+4, k0:k1] @ m[i0:i1, k0:k1].T: four rows of m at a time with
    AVX-512's registers (:data:`WIDE`), else two; then single rows."""
    a0, a1, a2, a3 = a[c], a[c + 1], a[c + 2], a[c + 3]
    o0, o1, o2, o3 = out[c], out[c + 1], out[c + 2], out[c + 3]
    k0 = max(k0, 0)
    n = k1 - k0
    i = i0
    if WIDE:
        while i + 3 < i1:
            u0, u1, u2, u3 = m[i], m[i + 1], m[i + 2], m[i + 3]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
            for jj in range(n):
                j = k0 + jj
                x0, x1, x2, x3 = a0[j], a1[j], a2[j], a3[j]
                y0, y1, y2, y3 = u0[j], u1[j], u2[j], u3[j]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
                s20 += x2 * y0
                s21 += x2 * y1
                s22 += x2 * y2
                s23 += x2 * y3
                s30 += x3 * y0
                s31 += x3 * y1
                s32 += x3 * y2
                s33 += x3 * y3
            _put4(o0, i, s00, s01, s02, s03, add)
            _put4(o1, i, s10, s11, s12, s13, add)
            _put4(o2, i, s20, s21, s22, s23, add)
            _put4(o3, i, s30, s31, s32, s33, add)
            i += 4
    else:
        while i + 1 < i1:
            u, v = m[i], m[i + 1]
            s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = zero
            for jj in range(n):
                j = k0 + jj
                s0 += u[j] * a0[j]
                s1 += u[j] * a1[j]
                s2 += u[j] * a2[j]
                s3 += u[j] * a3[j]
                t0 += v[j] * a0[j]
                t1 += v[j] * a1[j]
                t2 += v[j] * a2[j]
                t3 += v[j] * a3[j]
            _put(o0, i, s0, add)
            _put(o1, i, s1, add)
            _put(o2, i, s2, add)
            _put(o3, i, s3, add)
            _put(o0, i + 1, t0, add)
            _put(o1, i + 1, t1, add)
            _put(o2, i + 1, t2, add)
            _put(o3, i + 1, t3, add)
            i += 2
    while i < i1:
        u = m[i]
        s0 = s1 = s2 = s3 = zero
        for jj in range(n):
            j = k0 + jj
            s0 += u[j] * a0[j]
            s1 += u[j] * a1[j]
            s2 += u[j] * a2[j]
            s3 += u[j] * a3[j]
        _put(o0, i, s0, add)
        _put(o1, i, s1, add)
        _put(o2, i, s2, add)
        _put(o3, i, s3, add)
        i += 1


@njit(**_JIT)
def _two(a, c, m, i0, i1, k0, k1, out, zero, add):
    """out[c:c+2, i0:i1] (+)= a[c:c+2, k0:k1] @ m[i0:i1, k0:k1].T, four rows of m at a time."""
    a0, a1 = a[c], a[c + 1]
    o0, o1 = out[c], out[c + 1]
    k0 = max(k0, 0)
    n = k1 - k0
    i = i0
    while i + 3 < i1:
        u0, u1, u2, u3 = m[i], m[i + 1], m[i + 2], m[i + 3]
        s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = zero
        for jj in range(n):
            j = k0 + jj
            s0 += u0[j] * a0[j]
            s1 += u1[j] * a0[j]
            s2 += u2[j] * a0[j]
            s3 += u3[j] * a0[j]
            t0 += u0[j] * a1[j]
            t1 += u1[j] * a1[j]
            t2 += u2[j] * a1[j]
            t3 += u3[j] * a1[j]
        _put4(o0, i, s0, s1, s2, s3, add)
        _put4(o1, i, t0, t1, t2, t3, add)
        i += 4
    while i < i1:
        u = m[i]
        s0 = s1 = zero
        for jj in range(n):
            j = k0 + jj
            s0 += u[j] * a0[j]
            s1 += u[j] * a1[j]
        _put(o0, i, s0, add)
        _put(o1, i, s1, add)
        i += 1


@njit(**_JIT)
def _one(a, c, m, i0, i1, k0, k1, out, zero, add):
    """out[c, i0:i1] (+)= m[i0:i1, k0:k1] @ a[c, k0:k1], four rows of m at a time."""
    a0 = a[c]
    o0 = out[c]
    k0 = max(k0, 0)
    n = k1 - k0
    i = i0
    while i + 3 < i1:
        u0, u1, u2, u3 = m[i], m[i + 1], m[i + 2], m[i + 3]
        s0 = s1 = s2 = s3 = zero
        for jj in range(n):
            j = k0 + jj
            x = a0[j]
            s0 += u0[j] * x
            s1 += u1[j] * x
            s2 += u2[j] * x
            s3 += u3[j] * x
        _put4(o0, i, s0, s1, s2, s3, add)
        i += 4
    while i < i1:
        u = m[i]
        s0 = zero
        for jj in range(n):
            j = k0 + jj
            s0 += u[j] * a0[j]
        _put(o0, i, s0, add)
        i += 1


@register_jitable(inline="always")
def _row_groups(a, r0, r1, m, i0, i1, k0, k1, out, zero, add):
    """out[r0:r1, i0:i1] (+)= a[r0:r1, k0:k1] @ m[i0:i1, k0:k1].T: groups of four rows of a,
    then a pair, then a single row, each against the rows of m (:func:`_four`, :func:`_two`,
    :func:`_one`).  Inlined where it is called, so the loops see its callers' argument types."""
    c = r0
    while r1 - c >= 4:
        _four(a, c, m, i0, i1, k0, k1, out, zero, add)
        c += 4
    if r1 - c >= 2:
        _two(a, c, m, i0, i1, k0, k1, out, zero, add)
        c += 2
    if r1 - c == 1:
        _one(a, c, m, i0, i1, k0, k1, out, zero, add)


@njit(**_JIT)
def _blocked(a, m, out, kc, mc, nc):
    """out = a @ m.T in blocks: ``kc`` columns of a and m (the products of later blocks added
    to out in order), ``mc`` rows of a, ``nc`` rows of m (``mc`` and ``nc`` multiples of 4);
    inside, :func:`_row_groups`.  An entry's loops, so its bits, depend on the shapes, the block
    sizes and :data:`WIDE` alone.  Called as the section below says (one compiled
    specialisation per dtype)."""
    zero = out.dtype.type(0)
    k, n = a.shape
    n_out = m.shape[0]
    if n == 0:
        out[:, :] = zero
        return
    for k0 in range(0, n, kc):
        k1 = min(k0 + kc, n)
        add = k0 > 0
        for r0 in range(0, k, mc):
            r1 = min(r0 + mc, k)
            for i0 in range(0, n_out, nc):
                i1 = min(i0 + nc, n_out)
                _row_groups(a, r0, r1, m, i0, i1, k0, k1, out, zero, add)


# --- one compiled specialisation per dtype ------------------------------------------------------
#
# Numba compiles a function called from compiled code once for every distinct set of argument
# types it meets, and a constant argument has a type of its own (``Literal[int](0)``, even where
# the variable is later a loop counter: type inference meets the constant first); so do a C-
# and an A-ordered ``out``.  Each specialisation of the dot-product loops (:func:`_four` and
# its kin) took 1-3 s to compile, and the kernels that called them met up to four of each (a
# cold ``numrnn study`` compiled for 58 s, 12 of them these extra specialisations).  So
# :func:`_blocked`, :func:`_gemm_tn` and the loops are called only with ``out`` as an A-ordered
# view (``out[:, :]``; its rows are stored once per dot product) and int64 and bool variables,
# never constants: the public :func:`times_transpose`, :func:`gemm_nt` and :func:`gemm_tn` are
# inlined into their callers (Numba's ``inline="always"``) and pass them so (:func:`_index`).


@register_jitable(inline="always")
def _index(i):
    """``i`` as an int64 variable, never a constant's type (see above)."""
    return np.int64(i)


@njit(inline="always", **_JIT)
def times_transpose(a, m, out):
    """out = a @ m.T by compiled loops: a (k, n), m (n_out, n), out (k, n_out), one float dtype,
    rows of a and m contiguous (out's rows may be strided); out distinct from both.  For a few
    rows of a (a step's product): rows of m in chunks of :data:`CHUNK_BYTES`, each passed over
    by all of a (:func:`_blocked` over the whole of n and of a)."""
    k, n = a.shape
    chunk = max(4, CHUNK_BYTES // max(n * a.itemsize, 1) // 4 * 4)
    _blocked(a, m, out[:, :], _index(max(n, 1)), _index(max(k + 4 - k % 4, 4)), _index(chunk))


@njit(inline="always", **_JIT)
def gemm_nt(a, m, out, min_rows):
    """out = a @ m.T as :func:`times_transpose`, for any number of rows of a (the products over
    all steps): blocks of :data:`GEMM_BLOCKS` (depth, rows of a, rows of m) that stay in a
    core's L2; with AVX-512 and ``min_rows`` rows or more (:data:`PACKED_MIN_ROWS`, passed by
    the caller), the packed products (:func:`_packed`).  The bits of a row depend on the
    shapes, the rows a is given (which of the two runs) and :data:`WIDE`, never on threads."""
    if WIDE and a.shape[0] >= min_rows:
        _packed(a, m, out[:, :])
    else:
        _blocked(a, m, out[:, :], _index(GEMM_BLOCKS[0]), _index(GEMM_BLOCKS[1]),
                 _index(GEMM_BLOCKS[2]))


#: Padding of the rows of :func:`gemm_tn`'s packed blocks: rows of 512 float64 would lie 4 KiB
#: apart, and the packing's column writes would all fall in one set of the L1 cache.
_PACK_PAD = 8


@register_jitable
def aligned(shape, like):
    """An uninitialised C-contiguous array of ``shape`` in the dtype of ``like`` whose rows start
    on a cache line when a row is a multiple of 64 bytes (an AVX-512 load that straddles two
    lines costs two)."""
    per_line = 64 // like.itemsize
    buf = np.empty(shape[0] * shape[1] + per_line, like.dtype)
    skip = (-(buf.ctypes.data // like.itemsize)) % per_line
    return buf[skip:skip + shape[0] * shape[1]].reshape(shape)


@njit(**_JIT)
def _pack_t(src, k0, w, c0, n, dst):
    """dst[j, i] = src[k0 + i, c0 + j] for i < w, j < n, in 8 x 8 tiles: each tile reads eight
    rows of ``src`` along eight columns and writes eight rows of ``dst`` (0.9 ns a float64 number
    on a Zen 5 core, against 1.7 for the rows of src one at a time)."""
    i = 0
    while i + 8 <= w:
        row = src[k0 + i:k0 + i + 8]
        j = 0
        while j + 8 <= n:
            for jj in range(8):
                d = dst[j + jj]
                for ii in range(8):
                    d[i + ii] = row[ii, c0 + j + jj]
            j += 8
        for jj in range(j, n):
            d = dst[jj]
            for ii in range(8):
                d[i + ii] = row[ii, c0 + jj]
        i += 8
    for ii in range(i, w):
        r = src[k0 + ii]
        for jj in range(n):
            dst[jj, ii] = r[c0 + jj]


@njit(inline="always", **_JIT)
def gemm_tn(a, b, out, r0, r1, accumulate):
    """out[r0:r1] = a[:, r0:r1].T @ b (see :func:`_gemm_tn`; with AVX-512, a tile of rows or
    more and :data:`PACKED_TN_MIN_COLUMNS` columns, :func:`_packed_tn`), inlined into its
    callers so that the loops are compiled once per dtype (see :func:`_index`)."""
    if WIDE and r1 - r0 >= TILE_ROWS and b.shape[1] >= PACKED_TN_MIN_COLUMNS:
        _packed_tn(a, b, out[:, :], _index(r0), _index(r1), bool(accumulate))
    else:
        _gemm_tn(a, b, out[:, :], _index(r0), _index(r1), bool(accumulate))


@njit(**_JIT)
def _gemm_tn(a, b, out, r0, r1, accumulate):
    """out[r0:r1] = a[:, r0:r1].T @ b (``accumulate``: +=, adding each block of K's product in
    turn: for K up to one block, the bits of adding the product made on its own): a (K, M),
    b (K, P), out (M, P), one float dtype (the weight gradients, sums over all steps).  Each
    block of :data:`TN_BLOCKS` columns (the depth, here rows of a and b) is packed transposed,
    b's block once and a's rows r0..r1 in blocks of :data:`TN_BLOCKS` rows, and multiplied as
    :func:`gemm_nt` multiplies its blocks, the blocks of K added to out in order.  A packed
    number feeds P (or r1 - r0) multiply-adds, so the packing costs a few percent where those
    are 512 or more.  The bits of out[r] depend on the shapes, r0 and :data:`WIDE` (which loop
    row r falls in), never on threads."""
    K = a.shape[0]
    P = b.shape[1]
    kc, mc, nc = TN_BLOCKS
    zero = out.dtype.type(0)
    if r1 <= r0:
        return
    if K == 0:
        if not accumulate:
            out[r0:r1, :] = zero
        return
    ld = kc + _PACK_PAD
    pb = aligned((P, ld), a)
    pa = aligned((mc, ld), a)
    per_line = 64 // a.itemsize
    first = _index(0)  # (a variable: see _index)
    for k0 in range(0, K, kc):
        w = min(kc, K - k0)
        # the depth padded with zeros to whole vectors: no scalar remainder in the sums (a
        # product 0 * 0 adds nothing)
        wp = min(-(-w // per_line) * per_line, ld)
        add = accumulate or k0 > 0
        _pack_t(b, k0, w, first, P, pb)
        pb[:, w:wp] = zero
        for s0 in range(r0, r1, mc):
            rows = min(mc, r1 - s0)
            _pack_t(a, k0, w, s0, rows, pa)
            pa[:rows, w:wp] = zero
            o = out[s0:s0 + rows, :]
            for i0 in range(0, P, nc):
                i1 = min(i0 + nc, P)
                _row_groups(pa, first, rows, pb, i0, i1, first, wp, o, zero, add)


# --- packed products: a register tile of outer products --------------------------------------
#
# The dot products above reduce each of their sixteen vector sums to one number at the end: where
# the sums are 128 deep (float32, N = 128) that costs about as much as the sums.  The packed
# products have no reductions: :func:`_tile` keeps a TILE_ROWS x (TILE_VECTORS vectors) block of
# out in registers and adds one outer product (a column of a's panel times a row of b's) per
# step of the depth, as fused multiply-adds; the panels are packed so that both are read in
# order.  Numba gives no vector types, and LLVM does not vectorise a tile of scalar sums (a 6 x
# 32 tile written out as 192 scalars ran at 7 GFLOP/s), so the tile is an intrinsic that emits
# the vector code itself.  An entry of out is the sum, in order of k, of its products within
# each block of PACKED_BLOCKS[0] steps of the depth (one fused multiply-add after another from
# zero), the blocks added to out in order: its bits depend on the depth alone, never on the
# tile, the block or the thread that computes it.

#: Rows of a in the register tile of :func:`_tile`, and its vectors of 64 bytes across out:
#: sixteen vector sums, two vectors of b and a broadcast, 19 of AVX-512's 32 registers.  Each
#: step of the depth loads two vectors and eight numbers for sixteen fused multiply-adds (six
#: rows: eight loads for twelve), and a thread's share of a batch of 32 (16 rows) is two whole
#: tiles (six rows: three, the last a third empty).  One thread of the 2-core Zen 4 VM, GFLOP/s
#: six rows / eight (``bench_products.py --shapes``, the packed column), float32 16 x 512 x 2048
#: 88 / 100, 16 x 128 x 512 79 / 91, 16 x 512 x 512 85 / 106; float64 36 / 46, 42 / 48, 44 /
#: 48; the tile alone in L1 (``--peak``) 111 / 113 and 54 / 56.  An entry's bits do not depend
#: on the tile (see above).
TILE_ROWS = 8
TILE_VECTORS = 2

#: The blocks of the packed products: depth, rows of out, columns of out.  A panel of a
#: (8 x 256) and one of b (256 x 32 float32) stay in L1 while a tile is made; b's block (256 x
#: 512, 512 KiB in float32) and a's (96 x 256) in a core's L2.
PACKED_BLOCKS = (256, 96, 512)

#: Rows of a from which :func:`gemm_nt` runs the packed products.  One thread of the 2-core
#: Zen 5 VM, GFLOP/s against the dot products (``bench_products.py --shapes``), float32 and
#: float64: 6400 x 128 x 128 181 / 108 and 95 / 62, 6400 x 512 x 2048 189 / 159 and 97 / 79,
#: 800 rows 170-171 and 91-94; at 200 rows the packing of m's panels weighs (135 / 155 and
#: 81 / 138 float32).
PACKED_MIN_ROWS = 512

#: Columns of out from which :func:`gemm_tn` runs the packed products (:func:`_packed_tn`),
#: with AVX-512: each packed entry of a then feeds that many multiply-adds.  One thread, GFLOP/s
#: against its dot products, float32 and float64 (K x M x P): 200 x 2048 x 512 171 / 123 and
#: 89 / 77, 6400 x 2048 x 512 155 / 139 and 81 / 74; at P = 128 level or behind (6400 x 512 x
#: 128: 116 / 123 and 65 / 64), at P = 32 far behind (38 / 67).
PACKED_TN_MIN_COLUMNS = 256


def _tile_lanes(dtype):
    return {types.float32: 16, types.float64: 8}.get(dtype)


@intrinsic
def _tile(typingctx, pa, a0, si, sk, pb, b0, sb, depth, tile):
    """tile[i * NR + j] = sum over k < depth of A[i, k] * B[k, j] (i < TILE_ROWS, j < NR =
    TILE_VECTORS vectors of 64 bytes), as fused multiply-adds in order of k; ``depth`` >= 1.
    A[i, k] is the element a0 + i*si + k*sk of pa's data and B[k, j] the element b0 + k*sb + j
    of pb's (arrays of any layout: the offsets are in elements from their first; B's rows of NR
    are contiguous); tile: a C array of TILE_ROWS * NR; one float dtype for all three."""
    lanes = _tile_lanes(getattr(pa, "dtype", None))
    if lanes is None or pb.dtype != pa.dtype or tile.dtype != pa.dtype:
        return None
    rows, nvec = TILE_ROWS, TILE_VECTORS
    width = lanes * nvec

    def codegen(context, builder, signature, args):
        pa_v, a0_v, si_v, sk_v, pb_v, b0_v, sb_v, depth_v, tile_v = args
        arrays = [context.make_array(signature.args[i])(context, builder, v)
                  for i, v in ((0, pa_v), (4, pb_v), (8, tile_v))]
        da, db, dt = (arr.data for arr in arrays)
        fty = context.get_value_type(signature.args[0].dtype)
        vty = ir.VectorType(fty, lanes)
        i64 = ir.IntType(64)
        name = f"llvm.fma.v{lanes}{'f32' if lanes == 16 else 'f64'}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                             name)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        undef = ir.Constant(vty, ir.Undefined)
        zero = ir.Constant(vty, [0.0] * lanes)

        def const(n):
            return ir.Constant(i64, n)

        entry = builder.basic_block
        loop = builder.append_basic_block("tile.loop")
        done = builder.append_basic_block("tile.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        k = builder.phi(i64)
        k.add_incoming(const(0), entry)
        acc = [[builder.phi(vty) for _ in range(nvec)] for _ in range(rows)]
        for row in acc:
            for v in row:
                v.add_incoming(zero, entry)
        boff = builder.add(b0_v, builder.mul(k, sb_v))
        bvec = [builder.load(builder.bitcast(builder.gep(db, [builder.add(boff, const(lanes * v))]),
                                             vty.as_pointer()), align=4)
                for v in range(nvec)]
        aoff = builder.add(a0_v, builder.mul(k, sk_v))
        new = []
        for i in range(rows):
            x = builder.load(builder.gep(da, [builder.add(aoff, builder.mul(const(i), si_v))]))
            xv = builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(
                ir.IntType(32), 0)), undef, splat)
            new.append([builder.call(fma, [xv, bvec[v], acc[i][v]]) for v in range(nvec)])
        k1 = builder.add(k, const(1))
        end = builder.basic_block
        k.add_incoming(k1, end)
        for i in range(rows):
            for v in range(nvec):
                acc[i][v].add_incoming(new[i][v], end)
        builder.cbranch(builder.icmp_signed("<", k1, depth_v), loop, done)
        builder.position_at_end(done)
        for i in range(rows):
            for v in range(nvec):
                ptr = builder.gep(dt, [const(i * width + v * lanes)])
                builder.store(new[i][v], builder.bitcast(ptr, vty.as_pointer()), align=4)
        return context.get_dummy_value()

    return (types.void(pa, types.int64, types.int64, types.int64, pb, types.int64,
                       types.int64, types.int64, tile), codegen)


@register_jitable(inline="always")
def _pack(src, r0, r1, k0, k1, width, dst, d0):
    """dst[d0 + k*width + i] = src[r0 + i, k0 + k] for k < k1 - k0 and i < width: zero where
    r0 + i >= r1 (the tile's rows or columns beyond the edge)."""
    n = r1 - r0
    zero = dst.dtype.type(0)
    for k in range(k1 - k0):
        o = d0 + k * width
        for i in range(n):
            dst[o + i] = src[r0 + i, k0 + k]
        for i in range(n, width):
            dst[o + i] = zero


@register_jitable(inline="always")
def _panels(m, k0, k1, width, pb, p0):
    """m's rows packed for the tiles, depth k0..k1: panel q (columns q*width .. of the product,
    rows of m) at pb[p0 + q*width*(k1 - k0):], k after k, zeros past m's last row."""
    P = m.shape[0]
    depth = k1 - k0
    for q in range(-(-P // width)):
        c = q * width
        _pack(m, c, min(c + width, P), k0, k1, width, pb, p0 + q * width * depth)


@register_jitable(inline="always")
def _put_tile(out, r, n_rows, c, nj, tile, width, add):
    """out[r:r+n_rows, c:c+nj] (+)= the tile's first n_rows rows and nj columns."""
    for i in range(n_rows):
        o = out[r + i, c:c + nj]
        t = tile[i * width:i * width + nj]
        if add:
            for j in range(nj):
                o[j] += t[j]
        else:
            for j in range(nj):
                o[j] = t[j]


@njit(**_JIT)
def _tiles(a, k0, k1, pb, p0, P, out, add, pa, tile):
    """out (+)= a[:, k0:k1] @ B, B the panels packed by :func:`_panels` at pb[p0:] (P columns):
    a's rows in blocks of PACKED_BLOCKS[1], the columns in blocks of PACKED_BLOCKS[2] (whole
    panels), a tile after a tile; a's rows read in place, a short last tile packed in pa.
    Called, not inlined (one compiled specialisation per dtype: ``out`` A-ordered, int64 and
    bool variables, as :func:`_index` says), so the kernels that make a step's product with it
    do not compile its loops again."""
    M = a.shape[0]
    _, mc, nc = PACKED_BLOCKS
    rows = TILE_ROWS
    width = TILE_VECTORS * (64 // a.itemsize)
    nc = max(width, nc // width * width)
    depth = k1 - k0
    sa0 = a.strides[0] // a.itemsize
    sa1 = a.strides[1] // a.itemsize
    for j0 in range(0, P, nc):
        j1 = min(j0 + nc, P)
        for i0 in range(0, M, mc):
            i1 = min(i0 + mc, M)
            n_a = -(-(i1 - i0) // rows)
            short = i0 + (n_a - 1) * rows
            if i1 - short < rows:
                _pack(a, short, i1, k0, k1, rows, pa[0], 0)
            for c in range(j0, j1, width):
                nj = min(width, j1 - c)
                b0 = p0 + c * depth  # panel c // width
                for p in range(n_a):
                    r = i0 + p * rows
                    if r + rows > i1:
                        _tile(pa, 0, 1, rows, pb, b0, width, depth, tile)
                    else:
                        _tile(a, r * sa0 + k0 * sa1, sa0, sa1, pb, b0, width, depth, tile)
                    _put_tile(out, r, min(rows, i1 - r), c, nj, tile, width, add)


@register_jitable(inline="always")
def scratch(a):
    """The packed products' own buffers for a's dtype: a short tile of a, and one tile."""
    rows = TILE_ROWS
    width = TILE_VECTORS * (64 // a.itemsize)
    return (np.empty((1, rows * PACKED_BLOCKS[0]), a.dtype),
            np.empty(rows * width, a.dtype))


@njit(**_JIT)
def _packed(a, m, out):
    """out = a @ m.T by register tiles (:func:`_tile`): a (M, K), m (P, K), out (M, P), one
    float dtype.  For each block of :data:`PACKED_BLOCKS` of the depth, m's rows are packed in
    panels (:func:`_panels`) and the tiles made (:func:`_tiles`), the blocks of the depth added
    to out in order."""
    M, K = a.shape
    P = m.shape[0]
    zero = out.dtype.type(0)
    if K == 0:
        for i in range(M):
            for j in range(P):
                out[i, j] = zero
        return
    kc = PACKED_BLOCKS[0]
    width = TILE_VECTORS * (64 // a.itemsize)
    pb = np.empty(-(-P // width) * width * min(kc, K), a.dtype)
    pa, tile = scratch(a)
    for k0 in range(0, K, kc):
        k1 = min(k0 + kc, K)
        _panels(m, k0, k1, width, pb, 0)
        _tiles(a[:, :], _index(k0), _index(k1), pb, _index(0), _index(P), out, k0 > 0, pa,
               tile)


@register_jitable(inline="always")
def _pack_columns(src, c0, c1, k0, k1, width, dst, d0):
    """dst[d0 + q*width*depth + k*width + i] = src[k0 + k, c0 + q*width + i]: the columns
    c0..c1 of src in panels of ``width`` (rows k0..k1 of src the depth), k after k, zeros past
    c1.  The transposed operands of :func:`gemm_tn` (their columns are the tiles' rows or
    columns); a whole panel's copy has a constant length, so it runs as vector moves."""
    depth = k1 - k0
    n_full = (c1 - c0) // width
    zero = dst.dtype.type(0)
    for k in range(depth):
        row = src[k0 + k]
        for q in range(n_full):
            o = d0 + q * width * depth + k * width
            c = c0 + q * width
            for i in range(width):
                dst[o + i] = row[c + i]
        c = c0 + n_full * width
        if c < c1:
            o = d0 + n_full * width * depth + k * width
            for i in range(c1 - c):
                dst[o + i] = row[c + i]
            for i in range(c1 - c, width):
                dst[o + i] = zero


@njit(**_JIT)
def _packed_tn(a, b, out, r0, r1, accumulate):
    """out[r0:r1] (+)= a[:, r0:r1].T @ b by register tiles: a (K, M), b (K, P), out (M, P), one
    float dtype (the weight gradients, sums over all steps).  For each block of
    PACKED_BLOCKS[0] rows of a and b (the depth), b's columns are packed in panels and a's
    columns r0..r1 in tiles' rows (:func:`_pack_columns`); the blocks of the depth added to
    out in order (``accumulate``: the first one too)."""
    K = a.shape[0]
    P = b.shape[1]
    zero = out.dtype.type(0)
    if r1 <= r0:
        return
    if K == 0:
        if not accumulate:
            for i in range(r0, r1):
                for j in range(P):
                    out[i, j] = zero
        return
    kc, mc, nc = PACKED_BLOCKS
    rows = TILE_ROWS
    width = TILE_VECTORS * (64 // a.itemsize)
    nc = max(width, nc // width * width)
    mcp = -(-mc // rows) * rows
    pa = np.empty((1, mcp * kc), a.dtype)
    pb = np.empty(-(-P // width) * width * min(kc, K), a.dtype)
    tile = np.empty(rows * width, a.dtype)
    for k0 in range(0, K, kc):
        k1 = min(k0 + kc, K)
        depth = k1 - k0
        add = accumulate or k0 > 0
        _pack_columns(b, 0, P, k0, k1, width, pb, 0)
        for i0 in range(r0, r1, mc):
            i1 = min(i0 + mc, r1)
            n_a = -(-(i1 - i0) // rows)
            _pack_columns(a, i0, i1, k0, k1, rows, pa[0], 0)
            for j0 in range(0, P, nc):
                j1 = min(j0 + nc, P)
                for c in range(j0, j1, width):
                    nj = min(width, j1 - c)
                    for p in range(n_a):
                        r = i0 + p * rows
                        _tile(pa, p * rows * depth, 1, rows, pb, c * depth, width, depth, tile)
                        _put_tile(out, r, min(rows, i1 - r), c, nj, tile, width, add)


@njit(**_JIT)
def pack_matrix(m):
    """m (P, K) packed for :func:`times_packed`, whole: for each block of PACKED_BLOCKS[0] of
    the depth, its panels (:func:`_panels`); returned as a (1, n) array (it travels in the slot
    of a 2-D matrix)."""
    P, K = m.shape
    kc = PACKED_BLOCKS[0]
    width = TILE_VECTORS * (64 // m.itemsize)
    pp = -(-P // width) * width
    pb = np.empty((1, max(pp * K, 1)), m.dtype)
    for k0 in range(0, K, kc):
        k1 = min(k0 + kc, K)
        _panels(m, k0, k1, width, pb[0], k0 * pp)
    return pb


@njit(**_JIT)
def times_packed(a, pb, P, out, pa, tile):
    """out = a @ m.T with m packed by :func:`pack_matrix` (pb, P = m's rows): the packed
    products of :func:`_packed`, m packed once for many products (a step's, at every step).
    pa, tile: :func:`scratch`'s buffers.  A call (its callers, the recurrence kernels, pass
    A-ordered views of a and out: one compiled specialisation per dtype)."""
    K = a.shape[1]
    zero = out.dtype.type(0)
    if K == 0:
        for i in range(a.shape[0]):
            for j in range(P):
                out[i, j] = zero
        return
    kc = PACKED_BLOCKS[0]
    width = TILE_VECTORS * (64 // a.itemsize)
    pp = -(-P // width) * width
    for k0 in range(0, K, kc):
        _tiles(a, _index(k0), _index(min(k0 + kc, K)), pb, _index(k0 * pp), _index(P), out,
               k0 > 0, pa, tile)


_BLAS_WIDE = []


def blas_wide():
    """Whether the BLAS under the products over time runs AVX-512 kernels
    (:func:`numrnn.cpu.blas.wide_kernels`), probed once per process: the size rules of those
    products (:func:`gemm_nt_pays`, :func:`gemm_tn_pays`) depend on it."""
    if not _BLAS_WIDE:
        _BLAS_WIDE.append(blas.wide_kernels())
    return _BLAS_WIDE[0]


def gemm_tn_pays(dtype, K, M, P):
    """Whether :func:`gemm_tn` beats the BLAS on a (K, M).T @ (K, P) product (the size rule for
    :func:`use_dot_products`).  Its packing costs about a nanosecond a number, against 2 M P /
    (M + P) multiply-adds that the number feeds.

    Against OpenBLAS's AVX2 kernels, measured on the 2-core Zen 5 VM (2 threads, GFLOP/s
    compiled / OpenBLAS AVX2): float64 1.3-1.65x at every size tried (K = 200 and 6400, M and P
    128 to 2048); float32 1.2-1.4x at K = 6400 with M P >= 512 x 128 (6400 x 2048 x 512: 297 /
    211), behind at K = 200 (122-166 / 225) and 6400 x 128 x 128 (129 / 194).  So float32
    takes it from one packed block's depth (K >= 512) with M P >= 512 x 128.

    Against OpenBLAS's AVX-512 kernels (:func:`blas_wide`), on a 2-core Zen 4 VM (AVX-512 on
    256-bit units; one thread, GFLOP/s BLAS / compiled): float32 behind at every size (6400 x
    2048 x 512 92 / 66-84, 200 x 128 x 32 116 / 55, 6400 x 512 x 128 63 / 61); float64 level
    or behind from PACKED_TN_MIN_COLUMNS columns (6400 x 2048 x 512 45 / 41-48, 200 x 2048 x 512
    45 / 45) but ahead below them (6400 x 512 x 128 33 / 41, 6400 x 128 x 32 17 / 21; a GRU's
    whole vjp at B = 32, N = 128 took 1.065x as long with the BLAS).  So there float64 takes it
    below PACKED_TN_MIN_COLUMNS columns alone, float32 never."""
    if blas_wide():
        return np.dtype(dtype) == np.float64 and P < PACKED_TN_MIN_COLUMNS
    if np.dtype(dtype) == np.float64:
        return True
    return K >= TN_BLOCKS[0] and M * P >= 512 * 128


#: Least bytes of depth (the length of each dot product) for which a step's recurrent product
#: pays as compiled dot products (:func:`times_transpose_pays`): four AVX-512 vectors.
#: Shallower, the sixteen vector sums of a 4 x 4 block cost more to reduce than to build.  One
#: thread of a Zen 5 core, 16 rows of a, GFLOP/s dot products / the compiled loops
#: (:func:`numrnn.cpu.recurrence._matmul`) / OpenBLAS's AVX2 gemm: float32 depth 32, 128 rows
#: of m 40 / 57 / 39, 96 rows 40 / 48 / 40, 32 rows 36 / 41 / 32; depth 64, 256 rows 68 / 54
#: / 45; float64 depth 32, 128 rows 50 / 43 / 33, 32 rows 38 / 22 / 28.
STEP_MIN_DEPTH_BYTES = 256

#: Least bytes of depth for which the products over all steps pay as compiled dot products
#: (:func:`gemm_nt_pays`).  Against a gemm of 6400 rows OpenBLAS does better than against a
#: step's few: one thread of a Zen 5 core, GFLOP/s OpenBLAS's AVX2 gemm / compiled, rows x
#: depth x columns, float32: 6400x3x256 47 / 10, 6400x32x128 103 / 54, 6400x64x256 102 / 82,
#: 6400x96x384 91 / 97, 6400x128x512 87 / 110; float64: 6400x3x256 21 / 10, 6400x16x512 35 /
#: 32, 6400x32x128 48 / 50, 6400x64x512 45 / 58.  (The input's gradient, deep and narrow, takes
#: them at every width: 6400x256x3 float32 23 / 52.)
GEMM_MIN_DEPTH_BYTES = 512


def times_transpose_pays(dtype, depth):
    """Whether a step's product whose sums are ``depth`` long pays as compiled dot products
    (:data:`STEP_MIN_DEPTH_BYTES`): the size rule for :func:`use_dot_products`."""
    return depth * np.dtype(dtype).itemsize >= STEP_MIN_DEPTH_BYTES


def gemm_nt_pays(dtype, depth):
    """Whether a product over all steps whose sums are ``depth`` long (the input projection's:
    the input size) pays as compiled dot products (:data:`GEMM_MIN_DEPTH_BYTES`): the size rule
    for :func:`use_dot_products`.  Never where the BLAS runs AVX-512 kernels
    (:func:`blas_wide`): on a 2-core Zen 4 VM (one thread, GFLOP/s BLAS / compiled) float32
    6400 x 512 x 2048 100 / 77, 6400 x 128 x 512 91 / 73, 200 x 128 x 512 94 / 57; float64 51
    / 46, 40 / 42, 48 / 41; whole vjps at B = 32, N = 512 took 0.78-0.91 of their time with the
    BLAS for the products over time (``benchmarks/ab_calls.py``, every cell and dtype of the
    grid, results/ab_calls_blas_wide_2core_zen4.md)."""
    return depth * np.dtype(dtype).itemsize >= GEMM_MIN_DEPTH_BYTES and not blas_wide()


def use_dot_products(pays=True):
    """Whether a product runs as compiled dot products here: ``config.DOT_PRODUCTS`` "on", or
    "auto" where Numba compiles for AVX-512 (:data:`WIDE`) and ``pays``, the product's size rule
    (:func:`times_transpose_pays`, :func:`gemm_nt_pays`, :func:`gemm_tn_pays`; "on" takes them
    at every size)."""
    use = config.DOT_PRODUCTS
    if use not in ("auto", "on", "off"):
        raise ValueError(f"config.DOT_PRODUCTS (NUMRNN_DOT_PRODUCTS): expected 'auto', 'on' or "
                         f"'off', got {use!r}")
    return use == "on" or (use == "auto" and WIDE and bool(pays))


def product_t(a, m, m_t, out):
    """out = a @ m.T, given m (n_out, n), C-contiguous, and its transpose m_t (n, n_out), a copy
    or a view: :func:`times_transpose` where the compiler targets AVX-512 (:data:`WIDE`), or
    where a, m and out are float64 and a has at most SMALL_ROWS rows; else the BLAS
    (np.dot(a, m_t, out)).  Called from compiled code (the tests are made when it compiles;
    ``config.DOT_PRODUCTS`` does not reach them)."""
    if WIDE or (a.dtype == np.float64 and a.shape[0] <= SMALL_ROWS):
        times_transpose(a, m, out)
    else:
        np.dot(a, m_t, out)


@overload(product_t, jit_options=dict(nogil=True))
def _product_t(a, m, m_t, out):
    if WIDE and a.dtype == m.dtype == out.dtype:
        def compiled(a, m, m_t, out):
            times_transpose(a, m, out)
        return compiled
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
    Fortran order; c0 > c.  :func:`reflect_rows_of` with the reflector in w itself."""
    reflect_rows_of(w[c], w, c, t, c0, w.shape[0])


@njit(**_JIT)
def reflect_rows_of(u, x, c, t, r, r1):
    """Apply H = I - t v v^T, v = (1, u[c+1:]), to the rows r .. r1-1 of x (k, S) over their
    entries c .. S-1 (u: S long, not one of those rows).  The rows go four at a time, in order
    from r, then one at a time: a row's bits depend on where its group of four starts."""
    S = u.shape[0]
    i0 = max(c + 1, 0)  # (max: LLVM then knows the indices below are not negative)
    n = S - i0
    while r + 3 < r1:
        x0, x1, x2, x3 = x[r], x[r + 1], x[r + 2], x[r + 3]
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
    while r < r1:
        x0 = x[r]
        s0 = 0.0
        for j in range(n):
            s0 += u[i0 + j] * x0[i0 + j]
        s0 = t * (x0[c] + s0)
        x0[c] -= s0
        for j in range(n):
            x0[i0 + j] -= s0 * u[i0 + j]
        r += 1
