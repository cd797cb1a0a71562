"""Tangent maps of the recurrence on the CPU: step Jacobians, JVP/VJP, and the QR loops on them.

The state of a network is stacked as (layer, direction, part, unit): block k = layer * D + direction
holds the cell's P state vectors (h, and for two-state cells such as LSTM c after it), N rows
each.  Kernels carry k tangent vectors at once *frame-major*, as a (k, L*D, P, N) array: each
vector contiguous (its C-order flattening is the state vector), so that the loops over units
vectorise and a frame of k vectors is the (S, k) matrix in Fortran order, LAPACK's layout (the
QR runs on it without a transposed copy).  ``frame_major`` converts (B, S, k) frames.

The trajectory enters as per-step *coefficients*, the local derivatives of the cell's step
(:func:`numrnn.cpu.recurrence.coefficients`, from the cell's own jvp).  With them, one step's
tangent map of layer block k is, for each state part p,

    ds_p = A_p^rec (M r') + A_p^in (W_ih du) + sum_p' direct_pp' ds_p',   r'_q = rgrad_q ds_{reads[q]}

where A (N x G*N, one nonzero per gate in each row) holds the coefficients, M is the recurrent
matrix, r' the tangent of the recurrent input, ``du`` the tangent of the layer's input (the new
output state of the layer below; the network input is not part of the state).  The transposed
map (VJP) runs the same terms backwards, top layer first.  Both are matrix products with M and
W_ih (:func:`numrnn.cpu.products.product_t`: compiled loops for a few float64 vectors, else the
BLAS) plus O(G N P k) pointwise work.

Processing step t of a bidirectional (single-layer) network advances the forward direction with
x_t and the reverse direction with x_{T-1-t}: the product of two causal systems, each in its own
time.

The analysis passes float64 coefficients, weights and frames for either network dtype (a float32
network's steps are re-run in float64 first, see :mod:`numrnn.analysis.jacobians`); the kernels
themselves take either dtype (``lyapunov_from_jacobians`` runs float32 matrices as they are; their
QR runs in float64 on a copy of the frame, see ``_orthonormalise``).

Dense Jacobians (:func:`jacobians`) are written entry by entry from the same coefficients,
without a product with the identity.

Tiers: ``_*_kernel`` write preallocated outputs; the functions without underscore allocate.
"""
import math

import numpy as np
from numba import njit
from numba.extending import register_jitable

from .. import config
from ..norms import SAFE_SQUARES
from . import blas, products, sync, threads

_JIT = dict(cache=True, fastmath=config.FASTMATH, nogil=True)


@njit(**_JIT)
def _apply_tangent(transpose, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct,
                   rgrad, v, out, r, y, z, up):
    """out = J_t v (``transpose`` False) or J_t^T v (True) for sequence b at processing step t.

    w_hh (L*D, G*N, R*N): the recurrent matrices M; w_up (max(L-1, 1), G*N, N): W_ih of layers
    1.. (D = 1 there); w_hh_t, w_up_t: their transposes, C-contiguous (BLAS on a transposed view
    is much slower in Numba); reads (R,): the state each recurrent input reads; coefficients
    (L*D, T, B, ...) from :func:`numrnn.cpu.recurrence.coefficients`: rec, inp (P, G*N), direct
    (P, P, N), rgrad (R, N) per step; v, out (k, L*D, P, N): k tangent vectors, each contiguous
    (frame-major), distinct.  Scratch: r (k, R*N); y, z (k, G*N); up (k, N).

    Every loop runs along the units of one vector (contiguous: it vectorises), and the sums are
    formed term by term in a fixed order: direct terms by part, then recurrent terms by gate,
    then input terms by gate.
    """
    LD = w_hh.shape[0]
    GN = w_hh.shape[1]
    N = up.shape[1]
    G = GN // N
    R = reads.shape[0]
    K = v.shape[0]
    P = v.shape[2]
    T = direct.shape[1]
    n_layers = LD // n_dir
    if not transpose:
        for layer in range(n_layers):
            for d in range(n_dir):
                blk = layer * n_dir + d
                td = t if d == 0 else T - 1 - t
                rg = rgrad[blk, td, b]
                for c in range(K):
                    for q in range(R):
                        p, qn = reads[q], max(q * N, 0)
                        for j in range(N):
                            r[c, qn + j] = rg[q, j] * v[c, blk, p, j]
                products.product_t(r, w_hh[blk], w_hh_t[blk], y)  # y = (M r)^T, a row per vector
                has_up = layer > 0
                if has_up:
                    # the new output state of the layer below, made contiguous for BLAS
                    for c in range(K):
                        for j in range(N):
                            up[c, j] = out[c, blk - 1, 0, j]
                    products.product_t(up, w_up[layer - 1], w_up_t[layer - 1], z)
                cr = rec[blk, td, b]
                ci = inp[blk, td, b]
                dr = direct[blk, td, b]
                for c in range(K):
                    for p in range(P):
                        for j in range(N):
                            out[c, blk, p, j] = dr[p, 0, j] * v[c, blk, 0, j]
                        for pp in range(1, P):
                            for j in range(N):
                                out[c, blk, p, j] += dr[p, pp, j] * v[c, blk, pp, j]
                        for g in range(G):
                            gn = max(g * N, 0)
                            for j in range(N):
                                out[c, blk, p, j] += cr[p, gn + j] * y[c, gn + j]
                        if has_up:
                            for g in range(G):
                                gn = max(g * N, 0)
                                for j in range(N):
                                    out[c, blk, p, j] += ci[p, gn + j] * z[c, gn + j]
        return
    for layer in range(n_layers - 1, -1, -1):
        for d in range(n_dir):
            blk = layer * n_dir + d
            td = t if d == 0 else T - 1 - t
            from_above = layer < n_layers - 1
            has_up = layer > 0
            cr = rec[blk, td, b]
            ci = inp[blk, td, b]
            dr = direct[blk, td, b]
            rg = rgrad[blk, td, b]
            for c in range(K):
                # the cotangent of the new state part p: v, and for the output state what the
                # layer above pulled back through its input projection (in ``up``, summed into
                # it in place: it is consumed here)
                if from_above:
                    for j in range(N):
                        up[c, j] = v[c, blk, 0, j] + up[c, j]
                for p in range(P):
                    first = p == 0
                    summed = first and from_above
                    for pp in range(P):
                        if summed:
                            for j in range(N):
                                out[c, blk, pp, j] = dr[0, pp, j] * up[c, j]
                        elif first:
                            for j in range(N):
                                out[c, blk, pp, j] = dr[0, pp, j] * v[c, blk, 0, j]
                        else:
                            for j in range(N):
                                out[c, blk, pp, j] += dr[p, pp, j] * v[c, blk, p, j]
                    for g in range(G):
                        gn = max(g * N, 0)
                        if summed:
                            for j in range(N):
                                y[c, gn + j] = cr[0, gn + j] * up[c, j]
                        elif first:
                            for j in range(N):
                                y[c, gn + j] = cr[0, gn + j] * v[c, blk, 0, j]
                        else:
                            for j in range(N):
                                y[c, gn + j] += cr[p, gn + j] * v[c, blk, p, j]
                    if has_up:
                        for g in range(G):
                            gn = max(g * N, 0)
                            if summed:
                                for j in range(N):
                                    z[c, gn + j] = ci[0, gn + j] * up[c, j]
                            elif first:
                                for j in range(N):
                                    z[c, gn + j] = ci[0, gn + j] * v[c, blk, 0, j]
                            else:
                                for j in range(N):
                                    z[c, gn + j] += ci[p, gn + j] * v[c, blk, p, j]
            products.product_t(y, w_hh_t[blk], w_hh[blk], r)  # r = (M^T y)^T
            for c in range(K):
                for q in range(R):
                    p, qn = reads[q], max(q * N, 0)
                    for j in range(N):
                        out[c, blk, p, j] += rg[q, j] * r[c, qn + j]
            if has_up:
                products.product_t(z, w_up_t[layer - 1], w_up[layer - 1], up)


@njit(**_JIT)
def _tangent_kernel(transpose, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad,
                    v, out):
    """out[t, b] = J_t v[t', b'] (or J_t^T ...) for every t, b; v (T or 1, B or 1, k, L*D, P, N)
    is broadcast over a length-1 time or batch axis."""
    T, B, K = out.shape[0], out.shape[1], out.shape[2]
    N = out.shape[5]
    GN, RN = w_hh.shape[1], w_hh.shape[2]
    dt = out.dtype
    r = np.empty((K, RN), dt)
    up = np.zeros((K, N), dt)
    y = np.empty((K, GN), dt)
    z = np.empty((K, GN), dt)
    for t in range(T):
        tv = t if v.shape[0] > 1 else 0
        for b in range(B):
            bv = b if v.shape[1] > 1 else 0
            _apply_tangent(transpose, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp,
                           direct, rgrad, v[tv, bv], out[t, b], r, y, z, up)


# --- dense Jacobians ----------------------------------------------------------------------------
#
# J_t written entry by entry from the coefficients: the block of state parts (p, p') of layer
# block k is sum_g diag(A^rec_p,g) M_g,q diag(rgrad_q) (q the read of part p') plus
# diag(direct_pp'), and below the diagonal blocks of a stacked network A^in W_ih times the rows
# of the layer below.  Pushing the identity through the tangent map (_apply_tangent with v = I)
# gives the same numbers, but at a (G*N x R*N) by (R*N x S) product per step and block, most of
# whose terms are exact zeros; here each entry costs G multiply-adds and is written once, and
# the T*B*S*S output (fresh pages) is the cost: the kernel is memory bound.
#
# For the (N, N) block of parts (p, p') and read q, the rows i < N are
# sum_g a_g[i] * (M[g*N+i, q*N:(q+1)*N] * rgrad_q): one loop nest per gate count (up to four gates
# fused, so each row is written once), in a function of its own called once per block.
# Measured on N = 128: a row loop inside the kernel's own loop nest, or a function called per
# row, ran up to 2x slower (scalar code, and an atomic reference-count increment and decrement
# for every array view or argument made per row); these nests vectorise.  max(., 0) on offsets
# lets LLVM see non-negative indices (no wraparound select in the loop).


@register_jitable
def _gate_block(jac, r0, cc, N, m, qn, rg, q, a, p, G):
    """jac[r0 + i, cc + j] <- sum_g a[p, g*N+i] * (m[g*N+i, qn+j] * rg[q, j]) for i, j < N over
    the first min(G, 4) gates, summed left to right."""
    r0, cc, qn, N = max(r0, 0), max(cc, 0), max(qn, 0), max(N, 0)
    if G == 1:
        for i in range(N):
            a0 = a[p, i]
            for j in range(N):
                jac[r0 + i, cc + j] = a0 * (m[i, qn + j] * rg[q, j])
    elif G == 2:
        for i in range(N):
            a0, a1, i1 = a[p, i], a[p, N + i], N + i
            for j in range(N):
                r = rg[q, j]
                jac[r0 + i, cc + j] = a0 * (m[i, qn + j] * r) + a1 * (m[i1, qn + j] * r)
    elif G == 3:
        for i in range(N):
            a0, a1, a2 = a[p, i], a[p, N + i], a[p, 2 * N + i]
            i1, i2 = N + i, 2 * N + i
            for j in range(N):
                r = rg[q, j]
                jac[r0 + i, cc + j] = (a0 * (m[i, qn + j] * r) + a1 * (m[i1, qn + j] * r)
                                       + a2 * (m[i2, qn + j] * r))
    else:
        for i in range(N):
            a0, a1, a2, a3 = a[p, i], a[p, N + i], a[p, 2 * N + i], a[p, 3 * N + i]
            i1, i2, i3 = N + i, 2 * N + i, 3 * N + i
            for j in range(N):
                r = rg[q, j]
                jac[r0 + i, cc + j] = (a0 * (m[i, qn + j] * r) + a1 * (m[i1, qn + j] * r)
                                       + a2 * (m[i2, qn + j] * r) + a3 * (m[i3, qn + j] * r))


@register_jitable
def _gate_block_add(jac, r0, cc, N, m, qn, rg, q, a, p, g0, G):
    """jac[r0 + i, cc + j] += a[p, g*N+i] * (m[g*N+i, qn+j] * rg[q, j]), gates g0 <= g < G in
    order (a pass each: the gates past the fourth)."""
    r0, cc, qn, N = max(r0, 0), max(cc, 0), max(qn, 0), max(N, 0)
    for g in range(g0, G):
        for i in range(N):
            ag, gi = a[p, g * N + i], g * N + i
            for j in range(N):
                jac[r0 + i, cc + j] += ag * (m[gi, qn + j] * rg[q, j])


@register_jitable
def _read_of(reads, part):
    """The recurrent input q that reads state part ``part`` (reads are distinct), or -1."""
    for q in range(reads.shape[0]):
        if reads[q] == part:
            return q
    return -1


@register_jitable
def _fill_block(jac, r0, n_rows, c_lo, c_hi):
    """jac[r0:r0 + n_rows, c_lo:c_hi] <- 0."""
    r0, c_lo = max(r0, 0), max(c_lo, 0)
    for i in range(n_rows):
        for c in range(c_hi - c_lo):
            jac[r0 + i, c_lo + c] = 0.0


@register_jitable
def _jacobian_step(t, b, n_dir, reads, w_hh, w_up, rec, inp, direct, rgrad, jac, below, z):
    """jac <- J_t of sequence b (S, S), every entry written.  Arguments as in
    :func:`_apply_tangent`; scratch below (N*S,), z (G*N*S,) for the path through the layer
    below (num_layers > 1), flat so that their (N, c0), (G*N, c0) heads are contiguous (BLAS).

    Each entry is summed in the order of :func:`_apply_tangent` applied to the identity
    (direct term, then the gates in order, then the input terms), whose other terms are exact
    zeros: the same bits, without the (G*N x R*N) by (R*N x S) products."""
    LD = w_hh.shape[0]
    GN = w_hh.shape[1]
    P = direct.shape[3]
    N = direct.shape[5]
    G = GN // N
    T = direct.shape[1]
    S = jac.shape[0]
    n_layers = LD // n_dir
    PN = P * N
    for layer in range(n_layers):
        for d in range(n_dir):
            blk = layer * n_dir + d
            td = t if d == 0 else T - 1 - t
            c0 = blk * PN  # first row and column of the block
            cr = rec[blk, td, b]
            dr = direct[blk, td, b]
            rg = rgrad[blk, td, b]
            m = w_hh[blk]
            for p in range(P):
                r0 = c0 + p * N
                # the columns of the blocks before (the path through the layer below, added
                # below) and after
                _fill_block(jac, r0, N, 0, c0)
                _fill_block(jac, r0, N, c0 + PN, S)
                for pp in range(P):
                    cc = c0 + pp * N
                    q = _read_of(reads, pp)
                    if q < 0:  # a part no recurrent input reads: the direct term alone
                        _fill_block(jac, r0, N, cc, cc + N)
                        for i in range(N):
                            jac[r0 + i, cc + i] = dr[p, pp, i]
                        continue
                    _gate_block(jac, r0, cc, N, m, q * N, rg, q, cr, p, G)
                    _gate_block_add(jac, r0, cc, N, m, q * N, rg, q, cr, p, 4, G)
                    # the diagonal again, with the direct term first
                    for i in range(N):
                        r = rg[q, i]
                        acc = dr[p, pp, i]
                        for g in range(G):
                            acc += cr[p, g * N + i] * (m[g * N + i, q * N + i] * r)
                        jac[r0 + i, cc + i] = acc
            if layer > 0:
                # the layer's input is the new output state (part 0) of the block below, whose
                # rows of J_t are final: rows += A^in W_ih (those rows), columns 0..c0
                ci = inp[blk, td, b]
                bl = below[:N * c0].reshape((N, c0))
                zz = z[:GN * c0].reshape((GN, c0))
                r0 = c0 - PN
                for i in range(N):
                    for c in range(c0):
                        bl[i, c] = jac[r0 + i, c]
                np.dot(w_up[layer - 1], bl, zz)
                for p in range(P):
                    for g in range(G):
                        for i in range(N):
                            a, gi, row = ci[p, g * N + i], g * N + i, c0 + p * N + i
                            for c in range(c0):
                                jac[row, c] += a * zz[gi, c]


_EXPONENT = np.uint64(0x7FF0000000000000)


@register_jitable
def _has_nonfinite(a):
    """Whether the C-contiguous float64 array ``a`` holds an inf or NaN: the largest exponent
    field is all ones (an integer max, which vectorises; a float reduction would not)."""
    u = a.reshape(-1).view(np.uint64)
    top = np.uint64(0)
    for i in range(u.shape[0]):
        e = u[i] & _EXPONENT
        if e > top:
            top = e
    return top == _EXPONENT


@njit(**_JIT)
def _jacobians_kernel(t0, t1, n_dir, reads, w_hh, w_up, rec, inp, direct, rgrad, jac, bad):
    """jac[t, b] <- J_t of sequence b for t0 <= t < t1 and every b; jac (T, B, S, S) float64.
    Arguments as in :func:`_apply_tangent`.  bad (T, B) uint8 <- 1 where J_t holds an inf or
    NaN (checked while J_t is still in cache: a second pass over the output would cost as
    much again as the memory traffic of writing it)."""
    B, S = jac.shape[1], jac.shape[2]
    N = direct.shape[5]
    GN = w_hh.shape[1]
    below = np.empty(N * S, jac.dtype)
    z = np.empty(GN * S, jac.dtype)
    for t in range(t0, t1):
        for b in range(B):
            jt = jac[t, b]
            _jacobian_step(t, b, n_dir, reads, w_hh, w_up, rec, inp, direct, rgrad, jt, below, z)
            bad[t, b] = 1 if _has_nonfinite(jt) else 0


# --- the QR loops -------------------------------------------------------------------------------
#
# Benettin's loop carries a frame Y of k tangent vectors through ``ons_interval`` steps and then
# orthonormalises it.  Between two QRs the columns of Y grow apart (column i's component outside
# the span of the columns before it shrinks relative to the column like exp((lambda_i - lambda_1)
# t)) and the frame as a whole grows or shrinks like exp(lambda_1 t).  Too long an interval is
# caught here, never passed on as a number:
#
# * overflow: a frame entry became inf or NaN after more than one step (FAIL_OVERFLOW);
# * underflow: the frame's largest entry, or a column's norm, fell below ``log_tiny`` (about
#   tiny / eps^1.5, where the part of a column that the QR measures starts losing digits to
#   subnormal numbers) (FAIL_UNDERFLOW);
# * loss of orthogonality: s_i = |R_ii| / ||R[:i+1, i]||, the sine of the angle between column i
#   and the span of the columns before it, fell below ``ortho_tol`` (sqrt(eps)).  Householder QR
#   is columnwise backward stable, so the computed R_ii carries a relative error of about
#   eps / s_i: below sqrt(eps) half the digits of ln|R_ii| are rounding (FAIL_ORTHOGONALITY).
#
# These checks are ``strict`` only when ons_interval > 1: with a QR after every step nothing can
# be done better, and an R_ii that is exactly 0 (a step that maps the frame exactly onto fewer
# dimensions) is an exponent of -inf.  A frame that becomes exactly zero in one step (every
# direction killed at once) is such a step too, whatever the interval.  A non-finite frame one
# step after a QR is a value born inside the computation (FAIL_NONFINITE): the sequence stops,
# its remaining blocks are NaN, and the caller reports it.

FAIL_NONE = 0
FAIL_NONFINITE = 1
FAIL_OVERFLOW = 2
FAIL_UNDERFLOW = 3
FAIL_ORTHOGONALITY = 4


_ABS64 = np.uint64(0x7FFFFFFFFFFFFFFF)
_ABS32 = np.uint32(0x7FFFFFFF)


@register_jitable
def _copy_frame(dst, src):
    """dst[:, :] = src for two 2-D arrays of one shape, entry by entry: Numba's array-to-array
    assignment brings its broadcasting and its error messages into the kernel, 4-6 s of
    compiling per process on the 2-core Zen 5 VM (against 0.2 s for these loops)."""
    for i in range(dst.shape[0]):
        d, r = dst[i], src[i]
        for j in range(dst.shape[1]):
            d[j] = r[j]


@register_jitable
def _frame_max(flat):
    """max |entry| of a C-contiguous 2-D array in float64; NaN if an entry is NaN, else inf if
    one is infinite.  As integers the bits of |x| order the finite values by size and put
    inf above them and NaN above inf: one integer max (which vectorises, where a float max
    with NaN checks runs scalar), read back as a float."""
    if flat.itemsize == 8:
        u = flat.reshape(-1).view(np.uint64)
        top = np.uint64(0)
        for i in range(u.shape[0]):
            a = u[i] & _ABS64
            if a > top:
                top = a
        bits = np.empty(1, np.uint64)
        bits[0] = top
        return float(bits.view(np.float64)[0])
    u32 = flat.reshape(-1).view(np.uint32)
    top32 = np.uint32(0)
    for i in range(u32.shape[0]):
        a32 = u32[i] & _ABS32
        if a32 > top32:
            top32 = a32
    bits32 = np.empty(1, np.uint32)
    bits32[0] = top32
    return float(bits32.view(np.float32)[0])


@register_jitable
def _column_log_norm(rr, i):
    """ln ||R[:i+1, i]||, scaled (no overflow or underflow of the squares); -inf for a zero
    column.  Returns (log norm, largest |entry|, sum of squares of the scaled entries)."""
    m = 0.0
    for j in range(i + 1):
        a = abs(float(rr[j, i]))
        if a > m:
            m = a
    if m == 0.0:
        return -np.inf, m, 0.0
    acc = 0.0
    for j in range(i + 1):
        v = float(rr[j, i]) / m
        acc += v * v
    return np.log(m) + 0.5 * np.log(acc), m, acc


# --- QR of a frame ------------------------------------------------------------------------------
#
# Frames are frame-major: k tangent vectors of S numbers, each contiguous, so a (k, S) C array
# is the (S, k) matrix A in Fortran order, LAPACK's own layout.  The QR runs on a float64 copy of
# it (the workspace, also for float32 frames): Householder reflectors as LAPACK's dgeqrf forms
# them (R_ii = -sign(a_ii) ||A[i:, i]|| after the reflectors before it, so R and Q agree with
# LAPACK's to rounding), then Q formed explicitly (dorgqr's backward accumulation), written to
# the frame.  Up to HOUSEHOLDER_MAX_K columns a compiled Householder QR, whose reflectors are
# applied to the columns to their right four at a time (:func:`numrnn.cpu.products
# .reflect_rows`: the dot products vectorised, which needs reassociation, allowed in those
# loops alone); wider frames go to LAPACK's dgeqrf and dorgqr (blocked, level 3, from 128
# columns on), called directly (workspace allocated once per kernel call, no copy or
# allocation per step).  At S = 50 to 512 the compiled QR was the faster up to k = 32 (one
# core; benchmarks/README.md, "Skinny products and frame QRs compiled").  (np.linalg.qr, used
# before either, allocates, and copies to and from Fortran order, at every call.)

def _lapack_int():
    """The Fortran integer of scipy's cython_lapack (LP64 unless scipy says ILP64)."""
    try:
        from scipy.__config__ import CONFIG
        return np.int64 if CONFIG["Build Dependencies"]["blas"]["cython blas ilp64"] else np.int32
    except (ImportError, KeyError, TypeError):
        return np.int32


LAPACK_INT = _lapack_int()


def _lapack(name, n_args):
    """scipy's cython_lapack ``name`` as a function Numba calls by symbol (resolved at link time
    in every process, so the kernels calling it are cached safely); every argument a pointer."""
    import llvmlite.binding as ll
    from numba import types
    from numba.extending import get_cython_function_address

    symbol = f"numrnn_{name}"
    ll.add_symbol(symbol, get_cython_function_address("scipy.linalg.cython_lapack", name))
    return types.ExternalFunction(symbol, types.void(*([types.voidptr] * n_args)))


_dgeqrf = _lapack("dgeqrf", 8)  # (m, n, a, lda, tau, work, lwork, info)
_dorgqr = _lapack("dorgqr", 9)  # (m, n, k, a, lda, tau, work, lwork, info)
_dgeqrt = _lapack("dgeqrt", 9)  # (m, n, nb, a, lda, t, ldt, work, info)
_dgemqrt = _lapack("dgemqrt", 14)  # (side, trans, m, n, k, nb, v, ldv, t, ldt, c, ldc, work, info)

#: Frames of at most this many vectors are orthonormalised by the compiled Householder QR, wider
#: ones by LAPACK (see above).  Read by the drivers when they call a kernel (tests patch it).
HOUSEHOLDER_MAX_K = 32


def qr_workspace(K, S, householder_max_k=None):
    """The workspace of :func:`_orthonormalise` for frames of K vectors of S numbers: (w (K, S),
    tau (K,), work, ints, use_lapack)."""
    if householder_max_k is None:
        householder_max_k = HOUSEHOLDER_MAX_K
    use_lapack = K > householder_max_k
    # LAPACK's optimal workspace is n * nb with a block size nb of at most 64
    work = np.empty(max(1, 64 * K) if use_lapack else 1)
    return (np.empty((K, S)), np.empty(K), work, np.zeros(6, LAPACK_INT), bool(use_lapack))


# --- the full spectrum: Q kept factored ---------------------------------------------------------
#
# With k = S (the full spectrum) and a QR after every step, forming Q explicitly (dorgqr) and
# multiplying the next step's Jacobian by it costs 4/3 S^3 + 2 S^3 per step; applying Q as its
# reflectors instead (C_t = J_t Q_{t-1} by dgemqrt on the dense J_t, which is cheap to write,
# see _jacobian_step) costs 2 S^3, and the QR in compact WY form (dgeqrt) is a little faster
# than dgeqrf.  Measured at S = 200 (one core): 0.87 ms per step against 1.33.  The first
# frame is factored once (dgeqrt of Q_0: the same frame up to the signs of its columns).
# Q_t is formed explicitly only where the covariant vectors need it.
#
# Each step is cut into blocks that numrnn's threads share (:func:`_factored_loop`): J_t Q_{t-1}
# by blocks of rows (the rows of C_t are independent), and the QR as LAPACK's dgeqrt does it,
# panel by panel, each panel of FACTORED_NB columns factored on one thread and the columns to
# its right updated by blocks (dgemqrt from the left, the columns independent), the next panel
# factored as soon as its own block is updated (that block takes fewer columns:
# :data:`FACTOR_SHARE`); the last 2 * FACTORED_NB columns are one dgeqrt.  The blocks are a
# function of S and of the machine's block count alone (:func:`factored_blocks`), so the bits
# do not depend on the thread count.

#: Whether the full spectrum keeps Q factored (tests compare the two routes).
FACTORED = True
#: The least S of the factored route (smaller full spectra keep Q explicit).
FACTORED_MIN_S = 4
#: Block size of the compact WY QR (dgeqrt); measured at S = 200: 16 and 24 best, 64 5% slower.
FACTORED_NB = 24
#: The factored route cuts its steps into more than one block from this S on.  Measured on 2
#: cores, T = 1000, 1 against 2 threads (min of 7-9 alternating runs): S = 64 159 / 151 ms,
#: S = 100 346 / 332, S = 128 586 / 622 (medians 888 / 720), S = 200 1557 / 1129.
FACTORED_SPLIT_MIN_S = 128
#: What factoring a panel of the QR costs, in panels of columns of the update right of it: the
#: block that factors the next panel takes that many panels' columns fewer of each update
#: (:func:`update_columns`).  One thread of the 2-core Zen 4, SciPy's OpenBLAS: a 152 x 24
#: panel's dgeqrt took 34 us, the update of 88 columns by its reflectors 34 us (200 rows: 36
#: and 54; 104 rows: 20 and 24), so about 3.  With an even split (0) one thread did twice the
#: LAPACK work of the other (`perf`, S = 200).  Full spectrum, S = 200, T = 300, 40
#: alternating rounds in one process, time against 0 (median per round): 2 0.959, 3 0.947,
#: 4 0.969, 6 0.941.
FACTOR_SHARE = 3


def _factored(K, S, strict):
    """Whether frames of K vectors of S numbers take the factored route."""
    return FACTORED and K == S and not strict and K >= FACTORED_MIN_S


def factored_blocks(S):
    """The factored route's block count at S: the machine's (:func:`numrnn.cpu.threads
    .num_blocks`, at most S) from ``FACTORED_SPLIT_MIN_S`` on, else 1.  Never the thread
    count: the bits depend on it."""
    if S < FACTORED_SPLIT_MIN_S:
        return 1
    return max(1, min(threads.num_blocks(), S))


def factored_workspace(K, S, strict):
    """The workspace of the factored route (see above), or stand-ins of size 0 where it does
    not apply (k < S; S < FACTORED_MIN_S; or ``strict``: an ons_interval > 1, which
    keeps the frame explicit between QRs): (jc (2, S, S), bufs (2, S, S: the C_t, each on a
    cache line, see :func:`factored_rows`), tb (2, S, nb), work (n_blocks, S * nb) and ints
    (n_blocks, 8) for each block's LAPACK calls, chars, the edges of the row blocks
    (:func:`factored_rows`), and :func:`update_columns`).  Frames and matrices of either
    dtype: the route runs in float64."""
    if not _factored(K, S, strict):
        S = 0
    nb = max(1, min(FACTORED_NB, S))
    n = factored_blocks(S) if S else 1
    bufs = products.aligned((2 * S, S), np.empty(0)).reshape((2, S, S))
    return (np.empty((2, S, S)), bufs, np.empty((2, S, nb)),
            np.empty((n, max(1, S * nb))), np.zeros((n, 8), LAPACK_INT),
            np.array([ord("R"), ord("N"), ord("L"), ord("T")], np.uint8),
            factored_rows(S, n), update_columns(S, nb, n))


def factored_rows(S, n_blocks):
    """The edges of the factored route's blocks of rows of C_t = J_t Q_{t-1}: S i // n_blocks,
    rounded down to a multiple of 8 rows where S is one (and each block keeps 8 rows or more).
    C_t is stored by columns, and :func:`factored_workspace` puts its first column on a cache
    line, so with S a multiple of 8 every column starts on one and two row blocks never write
    one line.  (Each block reflector of the dgemqrt in J_t Q_{t-1} rewrites every column of a
    block, and a line that two blocks share passes between their cores each time; the column
    blocks of the QR's updates, too, start on lines once every column does.)  Measured: full
    spectrum, 2 threads of the Zen 4, alternating call by call in one process, median per
    round of the time against edges S i // n_blocks on an np.empty C (16 bytes off a line):
    S = 200, T = 500: 0.966, 0.935, 0.940, 0.870 (four processes, 30 rounds each); the
    aligned C alone (edge at row 100, mid-line): 1.006.  Against an aligned C with its edge
    mid-line (24 rounds; S = 200: edge 100, S = 256: edge 124): S = 200, edges 96 / 104 (on
    a line) 0.967 / 0.963, edge 96 on an np.empty C 1.035; S = 256 (16 rounds, T = 300),
    edges 128 / 132 (on / off a line) 0.982 / 1.001, edge 128 on an np.empty C 1.055."""
    line = 8 if S % 8 == 0 and S >= 8 * n_blocks else 1
    return np.array([S * i // n_blocks // line * line for i in range(n_blocks)] + [S], np.int64)


def update_columns(S, nb, n_blocks):
    """The column blocks of the QR's panel steps in the factored route: row p (the step after
    panel p, of columns p nb .. (p + 1) nb, is factored) holds the edges of the n_blocks blocks
    of the columns from (p + 1) nb on, which the panel's reflectors update.  Block 0 holds the
    next panel, which its thread factors after the update, so it takes ``FACTOR_SHARE`` panels'
    columns fewer than an even share (never fewer than the panel's nb); the others share the
    rest evenly.  The step that reaches the last 2 nb columns is not in it (one block).  At
    least one row, all zero where there is no such step."""
    rows = []
    lo = nb
    while n_blocks > 1 and S - lo > 2 * nb:
        rest = S - lo
        first = min(rest, max(nb, (rest - FACTOR_SHARE * nb) // n_blocks))
        left = rest - first
        rows.append([lo] + [lo + first + left * b // (n_blocks - 1) for b in range(n_blocks)])
        lo += nb
    return np.array(rows or [[0] * (n_blocks + 1)], np.int64)


@register_jitable
def _transpose_rows(a, dst, r0, r1):
    """dst[:, r0:r1] <- a[r0:r1].T for square a, dst (float64), in 8 x 8 tiles (both sides
    stay in cache)."""
    S = a.shape[1]
    for i0 in range(r0, r1, 8):
        i1 = min(i0 + 8, r1)
        for j0 in range(0, S, 8):
            j1 = min(j0 + 8, S)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    dst[j, i] = a[i, j]


@register_jitable
def _geqrt(fw, cur, i, n_cols, blk):
    """dgeqrt of A[i:, i:i + n_cols], A = bufs[cur] (S x S, Fortran order), into its compact
    WY form with blocks of nb columns, their T into tb[cur] from column i (ldt nb); block
    ``blk``'s LAPACK workspace."""
    bufs, tb, iw = fw[1], fw[2], fw[4][blk]
    S, nb = bufs.shape[1], tb.shape[2]
    iw[0] = S - i
    iw[1] = n_cols
    iw[2] = min(nb, n_cols)
    iw[3] = S
    iw[4] = nb
    iw[5] = 0
    a = bufs[cur].reshape(S * S)
    tt = tb[cur].reshape(S * nb)
    _dgeqrt(iw[0:].ctypes, iw[1:].ctypes, iw[2:].ctypes, a[i * S + i:].ctypes, iw[3:].ctypes,
            tt[i * nb:].ctypes, iw[4:].ctypes, fw[3][blk].ctypes, iw[5:].ctypes)


@register_jitable
def _gemqrt(fw, side, trans, vi, i, k, c, r0, c0, m, n, blk):
    """c[r0:r0 + m, c0:c0 + n] (c (S, S) in Fortran order) <- op(H) times it (side 2) or it
    times op(H) (side 0), H = the k reflectors of bufs[vi] from A[i, i] on (their T in tb[vi]
    from column i), op = chars[trans] ('N' at 1, 'T' at 3); dgemqrt, block ``blk``'s LAPACK
    workspace.  c may be bufs[vi] where the two regions do not overlap."""
    bufs, tb, iw, chars = fw[1], fw[2], fw[4][blk], fw[5]
    S, nb = bufs.shape[1], tb.shape[2]
    iw[0] = m
    iw[1] = n
    iw[2] = k
    iw[3] = min(nb, k)
    iw[4] = S
    iw[5] = nb
    iw[6] = 0
    v = bufs[vi].reshape(S * S)
    tt = tb[vi].reshape(S * nb)
    cf = c.reshape(S * S)
    _dgemqrt(chars[side:].ctypes, chars[trans:].ctypes, iw[0:].ctypes, iw[1:].ctypes,
             iw[2:].ctypes, iw[3:].ctypes, v[i * S + i:].ctypes, iw[4:].ctypes,
             tt[i * nb:].ctypes, iw[5:].ctypes, cf[c0 * S + r0:].ctypes, iw[4:].ctypes,
             fw[3][blk].ctypes, iw[6:].ctypes)


@register_jitable
def _factor_start(fw, flat):
    """Factor the explicit first frame flat (S, S) (Q_0 in Fortran order) into bufs[1]."""
    bufs = fw[1]
    S = bufs.shape[1]
    start = bufs[1]
    for c in range(S):
        for i in range(S):
            start[c, i] = flat[c, i]
    _geqrt(fw, 1, 0, S, 0)


#: Below this a column's norm is scaled up before its reflector is formed (LAPACK's safmin / eps).
SAFE_MIN = float(np.finfo(np.float64).tiny / np.finfo(np.float64).eps)


@register_jitable
def _householder_qr(w, tau):
    """Householder QR of the (S, k) matrix A = w.T (w (k, S): A in Fortran order), in place as
    LAPACK's dgeqr2 leaves it: R in w[i, :i+1] (R[j, i] = w[i, j]), reflector c below the
    diagonal of column c and its scale in tau[c].  The reflector of a column is LAPACK's
    dlarfg: beta = -sign(alpha) ||(alpha, x)||, tau = (beta - alpha) / beta, v = x / (alpha -
    beta); none (tau = 0, R_cc = alpha) for x = 0.  ||x|| is scaled where its sum of squares is
    not safely inside float64's range (dnrm2), and a column of norm below SAFE_MIN is scaled up
    by 1 / SAFE_MIN (a power of 2: exact) until it is not, as dlarfg does."""
    K, S = w.shape
    for c in range(K):
        xx = products.dot_tail(w[c], w[c], c + 1)  # the squares of row c
        if xx >= SAFE_SQUARES and xx < np.inf:
            xnorm = math.sqrt(xx)
        else:
            xnorm = _scaled_norm(w, c, c + 1)
            if xnorm == 0.0:
                tau[c] = 0.0  # nothing below the diagonal: H = I, R_cc = alpha
                continue
        alpha = w[c, c]
        beta = -math.copysign(math.hypot(alpha, xnorm), alpha)
        knt = 0
        while abs(beta) < SAFE_MIN and knt < 20:
            knt += 1
            for i in range(c, S):
                w[c, i] /= SAFE_MIN  # (a power of 2: exact)
            alpha = w[c, c]
            beta = -math.copysign(math.hypot(alpha, _scaled_norm(w, c, c + 1)), alpha)
        t = (beta - alpha) / beta
        tau[c] = t
        f = 1.0 / (alpha - beta)
        row = w[c]
        i0 = max(c + 1, 0)  # (max: no negative-index wraparound check, so the loop vectorises)
        for j in range(S - i0):
            row[i0 + j] *= f
        for _ in range(knt):
            beta *= SAFE_MIN
        row[c] = beta
        products.reflect_rows(w, c, t, c + 1)


@register_jitable
def _scaled_norm(w, c, i0):
    """||w[c, i0:]||, scaled by its largest entry (no overflow or underflow of the squares)."""
    S = w.shape[1]
    m = 0.0
    for i in range(i0, S):
        m = max(m, abs(w[c, i]))
    if m == 0.0:
        return 0.0
    acc = 0.0
    for i in range(i0, S):
        d = w[c, i] / m
        acc += d * d
    return m * math.sqrt(acc)


@register_jitable
def _householder_q_rows(w, tau, dst, lo, hi):
    """Rows lo .. hi-1 of Q = H_0 ... H_{k-1} [I_k; 0] (frame-major: Q's columns) into dst,
    from the factored w (LAPACK's dorg2r, by rows): row j is H_j e_j, then H_{j-1} .. H_0
    applied in turn.  dst may be w itself with the whole of Q (lo = 0, hi = k: in place, each
    reflector read before its row is overwritten); else w is only read, so disjoint row blocks
    can be formed at once.  A row's bits depend on lo (where its groups of four rows start)."""
    K, S = w.shape
    for c in range(hi - 1, -1, -1):
        t = tau[c]
        products.reflect_rows_of(w[c], dst, c, t, max(c + 1, lo), hi)
        if c >= lo:
            src = w[c]
            row = dst[c]
            i0 = max(c + 1, 0)
            for j in range(S - i0):
                row[i0 + j] = src[i0 + j] * -t
            row[c] = 1.0 - t
            for i in range(c):
                row[i] = 0.0


@register_jitable
def _q_rows_into(w, tau, dst, lo, hi):
    """Rows lo .. hi-1 of Q (:func:`_householder_q_rows`) into dst: straight where dst has w's
    float64, else formed in w (in place: the rows before lo keep their reflectors) and rounded
    into dst once, as LAPACK's Q would be."""
    if dst.itemsize == w.itemsize:
        _householder_q_rows(w, tau, dst, lo, hi)
    else:
        _householder_q_rows(w, tau, w, lo, hi)
        for c in range(lo, hi):
            d, src = dst[c], w[c]
            for i in range(w.shape[1]):
                d[i] = src[i]


@register_jitable
def _q_left_to_caller(K, qw, form_q):
    """Whether :func:`_orthonormalise` leaves Q unformed (``form_q`` False, a frame of two
    vectors or more, the compiled QR): the caller forms it by row blocks
    (:func:`_householder_q_rows`)."""
    return not form_q and K > 1 and not qw[4]


@register_jitable
def _lapack_qr(w, tau, work, ints, form_q):
    """dgeqrf (``form_q`` False) or dorgqr (True) on w (k, S): A (S, k) in Fortran order, the
    same layout as :func:`_householder_qr`'s.  Returns LAPACK's info (0: success)."""
    K, S = w.shape
    ints[0] = S
    ints[1] = K
    ints[2] = S
    ints[3] = work.shape[0]
    ints[4] = 0
    m, n, lda, lwork, info = ints[0:], ints[1:], ints[2:], ints[3:], ints[4:]
    if form_q:
        _dorgqr(m.ctypes, n.ctypes, n.ctypes, w.ctypes, lda.ctypes, tau.ctypes, work.ctypes,
                lwork.ctypes, info.ctypes)
    else:
        _dgeqrf(m.ctypes, n.ctypes, w.ctypes, lda.ctypes, tau.ctypes, work.ctypes,
                lwork.ctypes, info.ctypes)
    return ints[4]


@register_jitable
def _orthonormalise(flat, dst, amax, log_r, log_col, measure, qw, r_out, form_q=True):
    """QR of the frame ``flat`` (k, S) (frame-major: the (S, k) matrix A in Fortran order):
    dst <- Q (dst may be flat), log_r[i] <- ln|R_ii| (-inf where R_ii = 0); with r_out of shape
    (k, k) also r_out <- R (zero below the diagonal).  ``form_q`` False: where
    :func:`_q_left_to_caller` says so, Q is not formed (dst is not written; the factored frame
    is in ``qw``).  ``amax``: max |entry| of the frame (> 0 scales the k = 1 norm, so that its
    squares neither overflow nor underflow; 0: a zero frame, left as it is).  ``qw``: the
    workspace of :func:`qr_workspace`.  With ``measure`` also log_col[i] <- ln
    of column i's norm before the QR, and returns (s, i): the smallest |R_ii| / ||R[:i+1, i]||
    over columns i >= 1 and where it is ((1.0, 0) otherwise)."""
    K, S = flat.shape
    keep_r = r_out.shape[0] > 0
    if K == 1:
        # the largest exponent alone: QR of one column is its normalisation (no LAPACK call)
        if amax == 0.0:
            for i in range(S):
                dst[0, i] = flat[0, i]
            log_r[0] = -np.inf
            log_col[0] = -np.inf
            if keep_r:
                r_out[0, 0] = 0.0
            return 1.0, 0
        acc = 0.0
        below = False
        for i in range(S):
            v = float(flat[0, i]) / amax
            acc += v * v
            below = below or (i > 0 and v != 0.0)
        # LAPACK's sign (dlarfg): R_00 = -sign(a_0) |a|, or a_0 itself when nothing is below it
        root = np.sqrt(acc)
        if below:
            root = -math.copysign(root, float(flat[0, 0]))
        else:
            root = float(flat[0, 0]) / amax
        for i in range(S):
            dst[0, i] = (float(flat[0, i]) / amax) / root
        log_r[0] = np.log(amax) + 0.5 * np.log(acc)
        log_col[0] = log_r[0]
        if keep_r:
            r_out[0, 0] = amax * root
        return 1.0, 0
    w, tau, work, ints, use_lapack = qw
    for c in range(K):
        for i in range(S):
            w[c, i] = flat[c, i]
    if use_lapack:
        _lapack_qr(w, tau, work, ints, False)
    else:
        _householder_qr(w, tau)
    worst = 1.0
    at = 0
    for i in range(K):
        d = abs(w[i, i])
        log_r[i] = np.log(d) if d > 0.0 else -np.inf
        if measure:
            lc, m, acc = _column_log_norm(w.T, i)  # R[j, i] = w[i, j]
            log_col[i] = lc
            if i > 0 and m > 0.0:
                s = (d / m) / np.sqrt(acc)
                if s < worst:
                    worst = s
                    at = i
        if keep_r:
            for j in range(i + 1):
                r_out[j, i] = w[i, j]
            for j in range(i + 1, K):
                r_out[j, i] = 0.0
    if use_lapack:
        _lapack_qr(w, tau, work, ints, True)
        for c in range(K):
            for i in range(S):
                dst[c, i] = w[c, i]
    elif form_q:
        _q_rows_into(w, tau, dst, 0, K)
    return worst, at


@njit(**_JIT)
def _qr_kernel(frame, dst, log_r, log_col, qw, r_out):
    """:func:`_orthonormalise` of one frame (k, S), with the measures; returns (s, i)."""
    return _orthonormalise(frame, dst, _frame_max(frame), log_r, log_col, True, qw, r_out)


@register_jitable
def _after_step(flat, dst, t, n, qr, strict, ortho_tol, log_tiny, prev_log, log_r, log_col, st,
                qw, r_out, form_q=True):
    """Check the frame ``flat`` (k, S) after step t, the n-th since the last QR, and into
    ``dst`` orthonormalise it when ``qr`` (workspace ``qw``; R into r_out if it has shape (k,
    k)), else copy it.  ``prev_log``: ln max|entry| after the previous step (0 after a QR).
    Returns (code, ln max|entry|): code 0 go on, 1 the frame is lost (non-finite), 2 stop
    (ons_interval too long; dst is then not written); a failure is written to ``st``: kind, t,
    n, a measure, a column.  ``form_q`` False: dst is not written where a frame is only copied
    either, and Q is left to the caller as :func:`_orthonormalise` says."""
    amax = _frame_max(flat)
    if not np.isfinite(amax):
        if strict and n > 1:
            st[0], st[1], st[2], st[3], st[4] = FAIL_OVERFLOW, t, n, prev_log, 0
            return 2, prev_log
        st[0], st[1], st[2], st[3], st[4] = FAIL_NONFINITE, t, n, 0.0, 0
        return 1, prev_log
    la = np.log(amax) if amax > 0.0 else -np.inf
    if strict and la < log_tiny:
        # an exact zero reached in one step from a frame of ordinary size is an exactly singular
        # step (every exponent -inf); reached gradually, it is underflow
        exact = amax == 0.0 and (prev_log >= 0.5 * log_tiny or prev_log == -np.inf)
        if not exact:
            st[0], st[1], st[2], st[3], st[4] = FAIL_UNDERFLOW, t, n, la, -1
            return 2, la
    if not qr:
        if form_q:
            _copy_frame(dst, flat)
        return 0, la
    worst, at = _orthonormalise(flat, dst, amax, log_r, log_col, strict, qw, r_out, form_q)
    if strict and amax > 0.0:
        for i in range(flat.shape[0]):
            if log_col[i] < log_tiny:
                st[0], st[1], st[2], st[3], st[4] = FAIL_UNDERFLOW, t, n, log_col[i], i
                return 2, la
        if worst < ortho_tol:
            st[0], st[1], st[2], st[3], st[4] = FAIL_ORTHOGONALITY, t, n, worst, at
            return 2, la
    return 0, 0.0


@register_jitable
def _lose_sequence(local, b, t, qr_at, record_at):
    """NaN in every block of sequence b from the one holding step t on."""
    for tt in range(t, qr_at.shape[0]):
        if qr_at[tt] and record_at[tt] >= 0:
            local[record_at[tt], b, :] = np.nan


@register_jitable
def _replay_step(flat, dst, acc, log_r, log_col, qw, no_r):
    """One step of the replay of a refused block (QR of flat into dst): acc += ln|R_ii|.  False
    if the frame is not finite."""
    amax = _frame_max(flat)
    if not np.isfinite(amax):
        return False
    _orthonormalise(flat, dst, amax, log_r, log_col, False, qw, no_r)
    for i in range(acc.shape[0]):
        acc[i] += log_r[i]
    return True


@register_jitable
def _record_rates(acc, n, ok, st):
    """st[5:8] <- the growth rates per step of a refused block, measured by its replay with a QR
    after every step: the largest gap lambda_1 - lambda_i, lambda_1 and lambda_k (NaN if the
    replay failed)."""
    if not ok:
        st[5], st[6], st[7] = np.nan, np.nan, np.nan
        return
    K = acc.shape[0]
    gap = 0.0
    for i in range(1, K):
        g = acc[0] - acc[i]
        if g != g or g > gap:
            gap = g
    st[5], st[6], st[7] = gap / n, acc[0] / n, acc[K - 1] / n


@register_jitable
def _frame_workspace(q, w_hh):
    """The scratch arrays of a QR loop that advances frames q (B, k, L*D, P, N) with
    :func:`_advance`: (r, up, y, z, tmp, log_r, log_col, no_r), no_r a (0, 0) stand-in for
    the R the QR does not return.  r .. tmp, one row a vector, start on a cache line (where a
    row is a multiple of 64 bytes, so is every row): the threads of :func:`_lyapunov_split`
    write blocks of the rows of r .. z (:func:`_product_scratch`) and of its moved frames,
    and would otherwise share the line at each edge.  Measured,
    k = 10, N = 200, T = 2000, 2 threads of the Zen 4, against np.empty arrays, alternating in
    one process (median per round of the whole call, 30-40 rounds, seven processes): 0.980,
    0.984, 0.985, 0.985, 0.993, 0.994, 1.008: about 1.5%, at the edge of the machine's noise."""
    r, up, y, z = _product_scratch(q, w_hh)
    like = np.empty(0, q.dtype)
    tmp = products.aligned((q.shape[1], q.shape[2] * q.shape[3] * q.shape[4]),
                           like).reshape(q.shape[1:])
    K = q.shape[1]
    return (r, up, y, z, tmp, np.empty(K, np.float64), np.empty(K, np.float64),
            np.empty((0, 0), np.float64))


@register_jitable
def _product_scratch(q, w_hh):
    """(r, up, y, z) of :func:`_frame_workspace`: the tangent products' scratch, up zeroed."""
    K, N = q.shape[1], q.shape[4]
    GN, RN = w_hh.shape[1], w_hh.shape[2]
    like = np.empty(0, q.dtype)
    up = products.aligned((K, N), like)
    up[:] = 0.0
    return (products.aligned((K, RN), like), up, products.aligned((K, GN), like),
            products.aligned((K, GN), like))


def _split_workspace(q, w_hh, n_parts):
    """The scratch of :func:`_lyapunov_split` for ``n_parts`` participants at most: shared, (r,
    up, y, z) of :func:`_product_scratch` and the two moved frames (2, k, L*D, P, N); per
    participant, its QR workspace (w, tau, work, ints, as :func:`qr_workspace`'s, and
    use_lapack), ``own``, ``logs`` (2, k) and a status row (8,), each participant's rows
    starting on a cache line where their size allows (the participants write them at once):
    tau and logs are padded to whole lines (the kernel takes their first k)."""
    K, S = q.shape[1], q.shape[2] * q.shape[3] * q.shape[4]
    r, up, y, z = _product_scratch(q, w_hh)
    like = np.empty(0, q.dtype)
    moved = products.aligned((2 * K, S), like).reshape((2,) + q.shape[1:])
    w, tau, work, ints, use_lapack = _qr_workspace_of(q)

    def lines(n, dtype):  # n entries rounded up to whole cache lines
        per = 64 // np.dtype(dtype).itemsize
        return -(-max(n, 1) // per) * per

    f64 = np.empty(0, np.float64)
    kp = lines(K, np.float64)
    parts = (products.aligned((n_parts * K, S), f64).reshape(n_parts, K, S),
             products.aligned((n_parts, kp), f64),
             products.aligned((n_parts, lines(work.shape[0], np.float64)), f64),
             products.aligned((n_parts, lines(ints.shape[0], ints.dtype)), ints),
             use_lapack,
             products.aligned((n_parts * K, S), like).reshape(n_parts, K, S),
             products.aligned((n_parts * 2, kp), f64).reshape(n_parts, 2, kp),
             products.aligned((n_parts, 8), f64))
    return (r, up, y, z, moved), parts


@register_jitable
def _advance(jac, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, qb,
             flat, tmp, r, y, z, up):
    """tmp <- the frame qb (flat: the same, (k, S)) of sequence b through step t: by the given
    matrix jac[t, b] when jac holds matrices (frame-major: the rows of flat times J^T), else by
    the tangent map of a linearised trajectory (:func:`_apply_tangent`)."""
    if jac.shape[0] > 0:
        j = jac[t, b]
        products.product_t(flat, j, j.T, tmp.reshape(flat.shape))
    else:
        _apply_tangent(False, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct,
                       rgrad, qb, tmp, r, y, z, up)


@register_jitable
def _record_factored(c, t, b, K, log_r, record_at, local, r_from, r_store, q_slot, q_store, q_t,
                     fw, cur):
    """After step t's QR (R in c = bufs[cur]): ln|R_ii| into local, R_t into r_store, Q_t into
    q_store, where wanted (see :func:`_factored_loop`)."""
    S = c.shape[0]
    for i in range(K):
        d = abs(c[i, i])
        log_r[i] = np.log(d) if d > 0.0 else -np.inf
    row = record_at[t]
    if row >= 0:
        for i in range(K):
            local[row, b, i] = log_r[i]
    if t >= r_from:
        dst = r_store[t - r_from, b]
        for i in range(K):
            for j in range(i + 1):
                dst[j, i] = c[i, j]  # R[j, i], Fortran order
            for j in range(i + 1, K):
                dst[j, i] = 0.0
    slot = q_slot[t]
    if slot >= 0:
        q_t[:, :] = 0.0
        for i in range(S):
            q_t[i, i] = 1.0
        _gemqrt(fw, 2, 1, cur, 0, S, q_t, 0, 0, S, S, 0)  # Q_t, Fortran order
        dq = q_store[slot, b]
        for i in range(S):
            for j in range(K):
                dq[i, j] = q_t[j, i]


@njit(**_JIT)
def _factored_loop(jac, n_dir, reads, w_hh, w_up, rec, inp, direct, rgrad, q, qr_at, record_at,
                   local, status, fw, r_from, r_store, q_slot, q_store, lost, flags, me,
                   n_threads):
    """Benettin's loop with k = S and a QR after every step, Q kept factored (see above):
    participant ``me`` of ``n_threads`` (:func:`numrnn.cpu.threads.together`; all arguments
    shared) in the loop of :func:`_lyapunov_kernel` (strict False) and of
    :func:`_clv_forward_kernel`, with their arguments; R_t into r_store from step r_from on, Q_t
    into q_store where q_slot[t] >= 0 (r_store and q_store of size 0 when not wanted).

    Each step, a barrier after each phase: the blocks of rows of C_t = J_t Q_{t-1} (fw's
    edges); participant 0 checks C_t and factors its first panel of nb columns; then, panel by
    panel, the columns right of the panel are updated by blocks, the first block holding the
    next panel, which its participant factors at once (a look-ahead: the other blocks' updates
    hide it).  The last 2 nb columns are one dgeqrt (S <= 2 nb, or one block: the whole QR is).
    The last participant writes J_{t+1} during that phase (the tangent maps' J alternate
    between fw's two jc).  ``lost[0]``: 1 when participant 0 has lost the sequence (its frame
    non-finite)."""
    B, K = q.shape[0], q.shape[1]
    T = record_at.shape[0]
    S = K
    N = direct.shape[5]
    GN = w_hh.shape[1]
    jcs, bufs, tb, edges, cols = fw[0], fw[1], fw[2], fw[6], fw[7]
    n_blocks = edges.shape[0] - 1
    nb = tb.shape[2]
    tail = S if n_blocks == 1 else 2 * nb  # the QR's last columns, one dgeqrt
    writer = me == n_threads - 1 and jac.shape[0] == 0  # writes the next J_t
    below = np.empty(N * S if writer else 0, w_up.dtype)  # (the dtype of the product W_ih J:
    z = np.empty(GN * S if writer else 0, w_up.dtype)      # a stand-in's for given matrices)
    q_t = np.empty((S, S) if q_store.shape[0] > 0 and me == 0 else (0, 0))
    log_r = np.empty(K)
    phase = 0
    for b in range(B):
        if me == 0:
            lost[0] = 0
            _factor_start(fw, q[b].reshape((K, S)))
        if writer and T > 0:
            _jacobian_step(0, b, n_dir, reads, w_hh, w_up, rec, inp, direct, rgrad, jcs[0],
                           below, z)
        phase += 1
        sync.arrive_and_wait(flags, me, n_threads, phase)
        cur = 0
        for t in range(T):
            c = bufs[cur]
            for blk in range(me, n_blocks, n_threads):  # C_t = J_t Q_{t-1}, by rows
                r0, r1 = edges[blk], edges[blk + 1]
                if jac.shape[0] > 0:
                    _transpose_rows(jac[t, b], c, r0, r1)
                else:
                    _transpose_rows(jcs[t % 2], c, r0, r1)
                _gemqrt(fw, 0, 1, 1 - cur, 0, S, c, r0, 0, r1 - r0, S, blk)
            phase += 1
            sync.arrive_and_wait(flags, me, n_threads, phase)
            if me == 0:
                if not np.isfinite(_frame_max(c)):
                    st = status[b]
                    st[0], st[1], st[2], st[3], st[4] = FAIL_NONFINITE, t, 1, 0.0, 0
                    _lose_sequence(local, b, t, qr_at, record_at)
                    lost[0] = 1
                elif S > tail:
                    _geqrt(fw, cur, 0, nb, 0)  # the first panel
                else:
                    _geqrt(fw, cur, 0, S, 0)
                    _record_factored(c, t, b, K, log_r, record_at, local, r_from, r_store,
                                     q_slot, q_store, q_t, fw, cur)
            if writer and S <= tail and t + 1 < T:
                _jacobian_step(t + 1, b, n_dir, reads, w_hh, w_up, rec, inp, direct, rgrad,
                               jcs[(t + 1) % 2], below, z)
            phase += 1
            sync.arrive_and_wait(flags, me, n_threads, phase)
            i = 0  # the panel factored
            while lost[0] == 0 and S - i > tail:
                lo = i + nb  # the next panel's first column
                last = S - lo <= tail  # the next "panel" is the last columns
                for blk in range(me, n_blocks, n_threads):
                    if last:  # one block: columns lo.. updated and factored at once
                        c0, c1 = (lo, S) if blk == 0 else (S, S)
                    else:
                        c0, c1 = cols[i // nb, blk], cols[i // nb, blk + 1]
                    if c1 > c0:
                        _gemqrt(fw, 2, 3, cur, i, nb, c, i, c0, S - i, c1 - c0, blk)
                    if blk == 0 and last:
                        _geqrt(fw, cur, lo, S - lo, 0)
                        _record_factored(c, t, b, K, log_r, record_at, local, r_from, r_store,
                                         q_slot, q_store, q_t, fw, cur)
                    elif blk == 0:
                        _geqrt(fw, cur, lo, nb, 0)
                if writer and last and t + 1 < T:
                    _jacobian_step(t + 1, b, n_dir, reads, w_hh, w_up, rec, inp, direct, rgrad,
                                   jcs[(t + 1) % 2], below, z)
                phase += 1
                sync.arrive_and_wait(flags, me, n_threads, phase)
                i = lo
            if lost[0] == 1:
                break
            cur = 1 - cur


@njit(**_JIT)
def _lyapunov_kernel(jac, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, q,
                     qr_at, record_at, local, strict, ortho_tol, log_tiny, qw, status):
    """Benettin's QR method along the trajectory of every sequence.

    The steps are the given matrices jac (T, B, S, S), q (B, k, S, 1, 1), when jac holds any;
    else (jac of shape (0, 0, 0, 0)) the tangent maps of a linearised trajectory (the arguments
    n_dir ... rgrad, see :func:`_apply_tangent`), q (B, k, L*D, P, N).  q: orthonormal initial
    vectors (frame-major), overwritten.  qr_at (T,) bool: orthonormalise after step t;
    record_at (T,) int: the block that step t's QR is recorded in, or -1 (transient).  strict,
    ortho_tol, log_tiny: the checks of :func:`_after_step`; qw: the QR workspace
    (:func:`qr_workspace`).  (The full spectrum with a QR after every step runs
    :func:`_factored_loop` instead, where :func:`factored_workspace` is not empty.)
    Writes local (n_blocks, B, k): sum over the block of ln|R_ii| (the caller divides by length),
    and status (B, 8): the first failure of each sequence (see FAIL_* and :func:`_after_step`).
    After a FAIL_OVERFLOW, FAIL_UNDERFLOW or FAIL_ORTHOGONALITY the block is replayed with a QR
    after every step to measure its growth rates (:func:`_record_rates`), and the kernel stops.
    """
    B = q.shape[0]
    T = qr_at.shape[0]
    K, S = q.shape[1], q.shape[2] * q.shape[3] * q.shape[4]
    r, up, y, z, tmp, log_r, log_col, no_r = _frame_workspace(q, w_hh)
    moved = tmp.reshape((K, S))
    start = np.empty((K, S), q.dtype)
    acc = np.zeros(K, np.float64)
    for b in range(B):
        qb = q[b]
        flat = qb.reshape((K, S))
        if strict:  # (only a strict loop refuses a block, and replays it from its start)
            _copy_frame(start, flat)
        n = 0
        prev = 0.0
        for t in range(T):
            _advance(jac, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad,
                     qb, flat, tmp, r, y, z, up)
            n += 1
            code, prev = _after_step(moved, flat, t, n, qr_at[t], strict, ortho_tol, log_tiny,
                                     prev, log_r, log_col, status[b], qw, no_r)
            if code == 2:
                _copy_frame(flat, start)
                ok = True
                for tt in range(t - n + 1, t + 1):
                    _advance(jac, tt, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp,
                             direct, rgrad, qb, flat, tmp, r, y, z, up)
                    ok = _replay_step(moved, flat, acc, log_r, log_col, qw, no_r)
                    if not ok:
                        break
                _record_rates(acc, n, ok, status[b])
                return
            if code == 1:
                _lose_sequence(local, b, t, qr_at, record_at)
                break
            if qr_at[t]:
                n = 0
                if strict:
                    _copy_frame(start, flat)
                blk = record_at[t]
                if blk >= 0:
                    for i in range(K):
                        local[blk, b, i] = log_r[i]


@njit(**_JIT)
def _graded_product_kernel(n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, q,
                           lag_slot, log_d, u_out, qw, status):
    """Accumulate P_tau^T = J_{T-tau}^T ... J_{T-1}^T (processing steps) for every lag, graded.

    P_tau^T = Q_tau diag(exp(log_d)) U_tau with Q_tau orthonormal and U_tau upper triangular with
    diagonal +-1, updated by one QR per step: J^T Q = Q' R, R = |diag R| R~ with
    R~ = R / |diag R| (row-wise), so diag(d') U' = R diag(d) U with d' = |diag R| d and
    U' = (diag(d)^-1 R~ diag(d)) U, whose off-diagonal factor d_j / d_i shrinks as the QR orders
    the growth rates (no overflow or underflow at any lag).  An R_ii exactly 0 (an exactly
    singular step) makes ln d_i = -inf: that direction's singular value is 0 from then on.

    q (B, S, L*D, P, N): orthonormal start (frame-major), overwritten; lag_slot (T,) int: after
    tau = s + 1 factors (s = 0..T-1), the slot to save into, or -1; qw: the QR workspace.
    Writes log_d (n_lags, B, S) and u_out (n_lags, B, S, S), and status (B, 5): FAIL_NONFINITE,
    the processing step t, the lag tau, then 0 (the product J^T Q) or 1 (the graded factor U)
    where a value became inf or NaN; that sequence's remaining lags are NaN.
    """
    B = q.shape[0]
    T = lag_slot.shape[0]
    S = q.shape[1]
    r, up, y, z, tmp, log_r, log_col, _ = _frame_workspace(q, w_hh)
    moved = tmp.reshape((S, S))
    rr = np.empty((S, S), np.float64)
    m = np.empty((S, S), np.float64)
    u = np.empty((S, S), np.float64)
    u_new = np.empty((S, S), np.float64)
    ld = np.empty(S, np.float64)
    for b in range(B):
        qb = q[b]
        flat = qb.reshape((S, S))
        u[:, :] = 0.0
        for i in range(S):
            u[i, i] = 1.0
            ld[i] = 0.0
        for s in range(T):
            t = T - 1 - s
            _apply_tangent(True, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct,
                           rgrad, qb, tmp, r, y, z, up)
            lost = -1
            amax = _frame_max(moved)  # (J^T Q)^T, frame-major
            if not np.isfinite(amax):
                lost = 0
            else:
                _orthonormalise(moved, flat, amax, log_r, log_col, False, qw, rr)
                for i in range(S):
                    di = np.abs(rr[i, i])
                    inv = 1.0 / di if di > 0.0 else 0.0
                    m[i, i] = 1.0 if rr[i, i] >= 0.0 else -1.0
                    for jj in range(i):
                        m[i, jj] = 0.0
                    for jj in range(i + 1, S):
                        # (R / |diag R|)_ij d_j / d_i; the ratio is capped so that it stays
                        # finite while the QR has not yet ordered the growth rates
                        if rr[i, jj] == 0.0 or inv == 0.0:
                            m[i, jj] = 0.0
                        else:
                            gap = ld[jj] - ld[i]
                            if gap != gap:  # both scales exactly 0 (-inf - -inf)
                                gap = 0.0
                            m[i, jj] = rr[i, jj] * inv * np.exp(min(gap, 700.0))
                for i in range(S):
                    di = np.abs(rr[i, i])
                    ld[i] += np.log(di) if di > 0.0 else -np.inf
                np.dot(m, u, u_new)
                if not np.isfinite(_frame_max(u_new)):
                    lost = 1
                _copy_frame(u, u_new)
            if lost >= 0:
                st = status[b]
                st[0], st[1], st[2], st[3], st[4] = FAIL_NONFINITE, t, s + 1, lost, 0
                for ss in range(s, T):
                    slot = lag_slot[ss]
                    if slot >= 0:
                        log_d[slot, b, :] = np.nan
                        u_out[slot, b, :, :] = np.nan
                break
            slot = lag_slot[s]
            if slot >= 0:
                for i in range(S):
                    log_d[slot, b, i] = ld[i]
                    for jj in range(S):
                        u_out[slot, b, i, jj] = u[i, jj]


@njit(**_JIT)
def _first_nonfinite_kernel(a, where):
    """where <- (t, b) of the first a[t, b, :] (time first, then sequence) holding a NaN or inf;
    (-1, -1) if none.  a (T, B, M): an analysis output, checked without a temporary."""
    T, B, M = a.shape
    where[0] = -1
    where[1] = -1
    for t in range(T):
        for b in range(B):
            for i in range(M):
                v = a[t, b, i]
                if not np.isfinite(v):
                    where[0] = t
                    where[1] = b
                    return


# --- drivers ------------------------------------------------------------------------------------
#
# Every loop below calls BLAS/LAPACK once per step on small matrices; a multi-threaded BLAS would
# synchronise its pool at every call (measured: 17x slower for N = 200 on a loaded 2-core
# machine), so the BLAS is held to one thread while they run.


def qr_limits(dtype):
    """(ortho_tol, log_tiny) of the QR loops' checks for frames of ``dtype`` (see above)."""
    info = np.finfo(dtype)
    eps, tiny = float(info.eps), float(info.tiny)
    return np.sqrt(eps), float(np.log(tiny) - 1.5 * np.log(eps))


def tangent(args, v, out, transpose):
    """out[t, b] = J_t v (or J_t^T v); ``args`` from the linearisation (see _tangent_kernel)."""
    with blas.single_threaded():
        _tangent_kernel(bool(transpose), *args, v, out)


def jacobians(args, out):
    """out[t, b] <- the dense step Jacobian J_t of sequence b, out (T, B, S, S) float64
    C-contiguous; ``args``: (n_dir, reads, w_hh, w_up, rec, inp, direct, rgrad) of the
    linearisation (see _jacobians_kernel).  Returns (t, b) of the first J_t (time first, then
    sequence) holding an inf or NaN, or None.

    Ranges of steps go to numrnn's threads (:func:`numrnn.cpu.threads.run`): every J_t is
    computed the same way whichever thread writes it, so the bits do not depend on the split.
    The work counted is the entries written (the kernel is memory bound)."""
    T, B, S = out.shape[0], out.shape[1], out.shape[2]
    bad = np.zeros((T, B), np.uint8)

    def part(t0, t1):
        _jacobians_kernel(t0, t1, *args, out, bad)

    with blas.single_threaded():
        threads.run(part, T, threads.pieces(T, T * B * S * S))
    if not bad.any():
        return None
    t, b = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return int(t), int(b)


def frame_major(q, args=None):
    """Frames q (B, S, k) as the kernels hold them: (B, k, L*D, P, N) C-contiguous, the state
    layout of the linearisation ``args`` (kernel_args), or (B, k, S, 1, 1) for given matrices
    (``args`` None)."""
    B, S, K = q.shape
    qt = np.ascontiguousarray(q.transpose(0, 2, 1))
    if args is None:
        return qt.reshape(B, K, S, 1, 1)
    w_hh, direct = args[2], args[8]
    return qt.reshape(B, K, w_hh.shape[0], direct.shape[3], direct.shape[5])


def _qr_workspace_of(q):
    return qr_workspace(q.shape[1], q.shape[2] * q.shape[3] * q.shape[4])


def workspace_bytes(K, S, strict):
    """Bytes of the QR loops' workspaces for frames of K vectors of S numbers (the QR's copy of
    the frame; for the full spectrum the factored route's four S x S matrices and its blocks'
    LAPACK workspaces; else, where the steps may be split by vectors, each participant's copy
    and Q and the two moved frames of :func:`_split_workspace`)."""
    if _factored(K, S, strict):
        nb = min(FACTORED_NB, S)
        return K * S * 8 + (4 * S * S + (2 + factored_blocks(S)) * S * nb) * 8
    split = 0 if strict or K < 2 else (2 * min(threads.num_blocks(), K) + 2) * K * S * 8
    return K * S * 8 + split


def _factored_workspace_of(q, strict):
    return factored_workspace(q.shape[1], q.shape[2] * q.shape[3] * q.shape[4], bool(strict))


def _run_factored(jac, args, q, qr_at, record_at, local, status, fw, r_from=None, r_store=None,
                  q_slot=None, q_store=None):
    """Run :func:`_factored_loop` (q frame-major), on numrnn's threads where a run carries at
    least ``config.PARALLEL_MIN_WORK`` (T * B * S^3) and fw has more than one block."""
    T = len(record_at)
    no_store = np.empty((0, 0, 0, 0))
    if r_store is None:
        r_from, r_store, q_slot, q_store = T, no_store, np.full(T, -1, np.int64), no_store
    n_dir, reads, w_hh, w_up, _, _, rec, inp, direct, rgrad = args
    head = (jac, n_dir, reads, w_hh, w_up, rec, inp, direct, rgrad, q, qr_at, record_at, local,
            status, fw, r_from, r_store, q_slot, q_store, np.zeros(1, np.int64))
    n_blocks = len(fw[6]) - 1
    S = fw[1].shape[1]
    n_threads = 1
    if n_blocks > 1 and T * q.shape[0] * S ** 3 >= config.PARALLEL_MIN_WORK:
        n_threads = threads.split_threads(_factored_loop, q.dtype, n_blocks)
    threads.together(_factored_loop, head, n_threads)


def lyapunov(args, q, qr_at, record_at, local, strict):
    """Benettin's loop along a linearised trajectory (see _lyapunov_kernel), q (B, S, k)
    orthonormal frames; returns the status array (B, 8).  Each step's tangent products are split
    over numrnn's threads by vectors where that pays (:func:`vector_blocks`), and every thread
    then factors the frame itself and writes its own vectors of Q (:func:`_lyapunov_split`)."""
    q = frame_major(q, args)
    status = np.zeros((q.shape[0], 8))
    ortho_tol, log_tiny = qr_limits(q.dtype)
    fw = _factored_workspace_of(q, strict)
    edges = None if strict or fw[1].shape[1] > 0 else vector_blocks(q, args[2], len(qr_at))
    with blas.single_threaded():
        if fw[1].shape[1] > 0:
            _run_factored(np.empty((0, 0, 0, 0), q.dtype), args, q, qr_at, record_at, local,
                          status, fw)
            return status
        if edges is not None:
            shared, parts = _split_workspace(q, args[2], len(edges) - 1)
            head = (*args, q, qr_at, record_at, local, ortho_tol, log_tiny, status, *shared,
                    edges, *parts)
            threads.together(_lyapunov_split, head,
                             threads.split_threads(_lyapunov_split, q.dtype, len(edges) - 1))
            return status
        no_matrices = np.empty((0, 0, 0, 0), q.dtype)
        _lyapunov_kernel(no_matrices, *args, q, qr_at, record_at, local, bool(strict), ortho_tol,
                         log_tiny, _qr_workspace_of(q), status)
    return status


def vector_blocks(q, w_hh, T):
    """The edges of the blocks of tangent vectors when each step of Benettin's loop is split
    over threads, or None (one thread runs the loop).

    Split when the frame has at least two vectors, a step's tangent products carry at least
    ``config.SPLIT_MIN_STEP_WORK`` multiply-adds (k * G*N * R*N), and the loop at least
    ``config.PARALLEL_MIN_WORK``: as many blocks as the machine's
    (:func:`numrnn.cpu.threads.num_blocks`), at most k.  A function of the sizes and the
    machine's block count alone, never of the thread count: the bits depend on it (each block's
    products are their own BLAS call).  Only for a QR after every step and without the factored
    full spectrum (the caller checks)."""
    K = q.shape[1]
    n = min(threads.num_blocks(), K)
    work = K * w_hh.shape[1] * w_hh.shape[2]
    if (n < 2 or work < config.SPLIT_MIN_STEP_WORK or T * q.shape[0] * work < config.PARALLEL_MIN_WORK
            or not blas.can_limit_threads()):
        return None
    return np.array([K * i // n for i in range(n + 1)], np.int64)


@njit(**_JIT)
def _lyapunov_split(n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, q, qr_at,
                    record_at, local, ortho_tol, log_tiny, status, r, up, y, z, moved, edges,
                    qr_w, qr_tau, qr_work, qr_ints, use_lapack, own, logs, own_status, flags,
                    me, n_threads):
    """Participant ``me`` of ``n_threads`` (:func:`numrnn.cpu.threads.together`) in the loop of
    :func:`_lyapunov_kernel` (tangent maps, not strict), one barrier a step.  At step t it moves
    its vector blocks me, me + n_threads, ... (``edges``) of the frame through the step into
    ``moved[t % 2]``, and all meet at the barrier.  Then each checks and factors the whole
    moved frame itself, in its own workspace (the same arithmetic on the same numbers, so the
    same bits and the same verdict in every participant), and writes its blocks' vectors of Q
    into the frame: the next step's products read only their own vectors, so no one waits for
    another's QR, and the two moved buffers keep a step's writes off the frame the others are
    still factoring (a participant writes ``moved[t % 2]`` again only after the next barrier,
    which the others pass once they have read it).  Participant 0 alone writes ``status``
    and the local rates.  Against one participant factoring and forming all of Q between two
    barriers a step: k = 10, N = 200, T = 2000 on the 2-core Zen 4, the whole
    ``lyapunov_spectrum`` call alternating with the old code's in one process (30 rounds, three
    processes), 0.951-0.960 of its time, the same exponents.  Forming Q by row blocks between
    three barriers instead (participant 0 factoring) took 1.045-1.085 of it (its third
    barrier, and the factored frame read on the other core; not measured apart).

    Per participant (first axis: at least n_threads): the QR's workspace (``qr_w`` .. ``qr_ints``,
    as :func:`qr_workspace`'s), ``own`` (k, S) (LAPACK's Q), ``logs`` (2, k) (ln|R_ii|, the
    columns' norms), ``own_status`` (8,) (where participant 0 writes ``status``).  The scratch
    (r, up, y, z, :func:`_product_scratch`) is shared: the blocks write disjoint vectors of it."""
    B = q.shape[0]
    T = qr_at.shape[0]
    K, S = q.shape[1], q.shape[2] * q.shape[3] * q.shape[4]
    n_blocks = edges.shape[0] - 1
    qw = (qr_w[me], qr_tau[me][:K], qr_work[me], qr_ints[me], use_lapack)
    by_rows = _q_left_to_caller(K, qw, False)
    w, tau = qw[0], qw[1]
    mine = own[me]
    log_r, log_col = logs[me, 0][:K], logs[me, 1][:K]
    no_r = np.empty((0, 0), np.float64)
    phase = 0
    for b in range(B):
        qb = q[b]
        flat = qb.reshape((K, S))
        st = status[b] if me == 0 else own_status[me]
        n = 0
        prev = 0.0
        for t in range(T):
            buf = moved[t % 2]
            for blk in range(me, n_blocks, n_threads):
                c0, c1 = edges[blk], edges[blk + 1]
                _apply_tangent(False, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp,
                               direct, rgrad, qb[c0:c1], buf[c0:c1], r[c0:c1], y[c0:c1],
                               z[c0:c1], up[c0:c1])
            n += 1
            phase += 1
            sync.arrive_and_wait(flags, me, n_threads, phase)
            frame = buf.reshape((K, S))
            code, prev = _after_step(frame, mine, t, n, qr_at[t], False, ortho_tol, log_tiny,
                                     prev, log_r, log_col, st, qw, no_r, False)
            if code == 1:
                if me == 0:
                    _lose_sequence(local, b, t, qr_at, record_at)
                break
            if me == 0 and qr_at[t]:
                blk = record_at[t]
                if blk >= 0:
                    for i in range(K):
                        local[blk, b, i] = log_r[i]
            for blk in range(me, n_blocks, n_threads):
                c0, c1 = edges[blk], edges[blk + 1]
                if not qr_at[t]:
                    _copy_frame(flat[c0:c1], frame[c0:c1])
                elif by_rows:
                    _q_rows_into(w, tau, flat, c0, c1)
                else:
                    _copy_frame(flat[c0:c1], mine[c0:c1])
            if qr_at[t]:
                n = 0


def lyapunov_dense(jac, q, qr_at, record_at, local, strict):
    """Benettin's loop on given matrices jac (T, B, S, S) (see _lyapunov_kernel), q (B, S, k)
    orthonormal frames; returns the status array (B, 8)."""
    q = frame_major(q)
    status = np.zeros((q.shape[0], 8))
    ortho_tol, log_tiny = qr_limits(q.dtype)
    fw = _factored_workspace_of(q, strict)
    with blas.single_threaded():
        if fw[1].shape[1] > 0:
            _run_factored(jac, _no_tangent(q.dtype), q, qr_at, record_at, local, status, fw)
        else:
            _lyapunov_kernel(jac, *_no_tangent(q.dtype), q, qr_at, record_at, local,
                             bool(strict), ortho_tol, log_tiny, _qr_workspace_of(q), status)
    return status


def graded_product(args, q, lag_slot, log_d, u_out):
    """Graded accumulation of the transposed Jacobian products (see _graded_product_kernel),
    q (B, S, S) orthonormal; returns the status array (B, 5)."""
    q = frame_major(q, args)
    status = np.zeros((q.shape[0], 5))
    with blas.single_threaded():
        _graded_product_kernel(*args, q, lag_slot, log_d, u_out, _qr_workspace_of(q), status)
    return status


def frame_qr(a, householder_max_k=None):
    """The QR of an (S, k) matrix as the QR loops compute it (see ``_orthonormalise``).

    Parameters
    ----------
    a : ndarray, shape (S, k), 1 <= k <= S, finite, float64 or float32 (factored in float64)
    householder_max_k : int, optional
        The widest frame given to the compiled Householder QR (default HOUSEHOLDER_MAX_K);
        wider ones go to LAPACK.

    Returns
    -------
    q : ndarray, shape (S, k), float64
        Orthonormal columns, a = q r.
    r : ndarray, shape (k, k), float64
        Upper triangular, the signs of LAPACK's (R_ii = -sign(a_ii) |.| column by column).
    log_r : ndarray, shape (k,)
        ln|R_ii| as the loops record it (-inf where R_ii = 0).
    log_col : ndarray, shape (k,)
        ln ||R[:i+1, i]|| (the norm of column i of a).
    worst : (float, int)
        The smallest sin of the angle between a column and the span of those before it,
        |R_ii| / ||R[:i+1, i]||, over i >= 1, and its column (1.0, 0 for k = 1).
    """
    a = np.asarray(a)
    if a.ndim != 2 or not 1 <= a.shape[1] <= a.shape[0]:
        raise ValueError(f"a: expected an (S, k) matrix with 1 <= k <= S, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("a: expected finite values, got NaN or inf entries")
    frame = np.ascontiguousarray(a.T)
    K, S = frame.shape
    dst = np.empty((K, S), frame.dtype)
    log_r, log_col, r = np.empty(K), np.empty(K), np.empty((K, K))
    with blas.single_threaded():
        worst = _qr_kernel(frame, dst, log_r, log_col, qr_workspace(K, S, householder_max_k), r)
    return dst.T, r, log_r, log_col, (float(worst[0]), int(worst[1]))


def first_nonfinite(a):
    """(t, b) of the first step and sequence where ``a`` (T, B, ...) is not finite, or None."""
    where = np.empty(2, np.int64)
    _first_nonfinite_kernel(a.reshape(a.shape[0], a.shape[1], -1), where)
    return None if where[0] < 0 else (int(where[0]), int(where[1]))


# --- covariant Lyapunov vectors (Ginelli et al. 2007) -------------------------------------------
#
# Forward: Benettin's loop with a QR after every step (_advance and _after_step, so the frames and
# ln|R_ii| are _lyapunov_kernel's bits at ons_interval 1), keeping R_t (Y_t = J_t Q_{t-1} =
# Q_t R_t) from step ``r_from`` on, as the QR computes it, and the frames Q_t at the chosen
# times.  Backward: the CLVs' coefficients in the frames, V_t = Q_t C_t, obey
# C_{t-1} = R_t^{-1} C_t (columns renormalised); from a random upper triangular C they converge
# to the CLVs' at the rates of the spectral gaps.  The normalisation of column i is
# 1 / |J_t v_i(t-1)|: its log is the CLV's one-step growth rate.


@register_jitable
def _solve_upper(rr, c):
    """c <- R^{-1} c in place for upper triangular R and C (k, k), by rows (the inner loop runs
    along a row of C); only the upper triangles are read.  False at a zero R_ii (left there)."""
    K = c.shape[0]
    for i in range(K - 1, -1, -1):
        d = rr[i, i]
        if d == 0.0:
            return False
        ci = c[i]
        for l in range(i + 1, K):
            a = rr[i, l]
            if a != 0.0:
                cl = c[l]
                for j in range(l, K):
                    ci[j] -= a * cl[j]
        for j in range(i, K):
            ci[j] /= d
    return True


@njit(**_JIT)
def _clv_forward_kernel(jac, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, q,
                        qr_at, record_at, r_from, r_store, q_slot, q_store, local, ortho_tol,
                        log_tiny, qw, status):
    """The forward phase of Ginelli's method along every sequence.

    jac, n_dir ... rgrad, q, qw: as in :func:`_lyapunov_kernel` (q: the orthonormal initial
    frames, frame-major, overwritten; where the full spectrum takes the factored route,
    :func:`_factored_loop` runs instead, as for the exponents, so the same bits); qr_at (T,)
    all True; record_at (T,): the step's row of ``local`` or -1.  Writes local (n_rows, B, k):
    ln|R_ii| of each recorded step; r_store (T - r_from, B, k, k): R_t of every step t >=
    r_from (zero below the diagonal); q_store (n_times, B, S, k): Q_t at the steps with
    q_slot[t] >= 0; status (B, 8): FAIL_NONFINITE and the step where a frame became inf or NaN
    one step after its QR (that sequence stops, its remaining rows NaN).
    """
    B = q.shape[0]
    T = qr_at.shape[0]
    K, S = q.shape[1], q.shape[2] * q.shape[3] * q.shape[4]
    r, up, y, z, tmp, log_r, log_col, no_r = _frame_workspace(q, w_hh)
    moved = tmp.reshape((K, S))
    rt = np.zeros((K, K), np.float64)
    for b in range(B):
        qb = q[b]
        flat = qb.reshape((K, S))
        for t in range(T):
            _advance(jac, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad,
                     qb, flat, tmp, r, y, z, up)
            keep = t >= r_from
            code, _ = _after_step(moved, flat, t, 1, True, False, ortho_tol, log_tiny, 0.0, log_r,
                                  log_col, status[b], qw, rt if keep else no_r)
            if code != 0:
                _lose_sequence(local, b, t, qr_at, record_at)
                break
            row = record_at[t]
            if row >= 0:
                for i in range(K):
                    local[row, b, i] = log_r[i]
            if keep:
                dst = r_store[t - r_from, b]
                for i in range(K):
                    for j in range(K):
                        dst[i, j] = rt[i, j]
            slot = q_slot[t]
            if slot >= 0:
                dq = q_store[slot, b]
                for c in range(K):
                    for i in range(S):
                        dq[i, c] = flat[c, i]


@njit(**_JIT)
def _clv_backward_kernel(r_store, r_from, t_first, c, q_slot, lost, vectors, growth, status):
    """The backward phase of Ginelli's method: V_t = Q_t C_t at the chosen times.

    r_store (T - r_from, B, k, k): R_t at row t - r_from; c (B, k, k): upper triangular C_{T-1}
    with unit columns, overwritten; q_slot (T,): the slot of step t in ``vectors`` or -1 (the
    first slot is step t_first >= r_from - 1); lost (B,): the step where the forward phase lost
    sequence b, or -1 (its slots are NaN).  vectors (n_times, B, S, k): Q_t on entry, V_t on
    return; growth (n_times, B, k): ln|J_{t+1} v_i(t)| (left as it is at t = T - 1).  status
    (B, 2): 1 and the step t of a zero R_ii (an exactly singular step, past which C cannot be
    carried back), 2 and t where C_{t-1} became inf or NaN, else 0 and -1; the earlier slots of
    a failed sequence are NaN.
    """
    T = q_slot.shape[0]
    B, K = c.shape[0], c.shape[1]
    S = vectors.shape[2]
    out = np.empty((S, K), vectors.dtype)
    for b in range(B):
        status[b, 0] = 0
        status[b, 1] = -1
        stop = t_first - 1
        if lost[b] >= 0:
            stop = T - 1
        else:
            cb = c[b]
            for t in range(T - 1, t_first - 1, -1):
                slot = q_slot[t]
                if slot >= 0:
                    np.dot(vectors[slot, b], cb, out)
                    vectors[slot, b] = out
                if t == t_first:
                    break
                if not _solve_upper(r_store[t - r_from, b], cb):
                    status[b, 0] = 1
                    status[b, 1] = t
                    stop = t - 1
                    break
                prev = q_slot[t - 1]
                for j in range(K):
                    lc, m, acc = _column_log_norm(cb, j)
                    if not (np.isfinite(lc) and acc > 0.0):
                        # inf or NaN from an R_ii within rounding of 0 (a subnormal pivot)
                        status[b, 0] = 2
                        break
                    norm = np.sqrt(acc)
                    for i in range(j + 1):
                        cb[i, j] = (cb[i, j] / m) / norm
                    if prev >= 0:
                        growth[prev, b, j] = -lc
                if status[b, 0] != 0:
                    status[b, 1] = t
                    stop = t - 1
                    break
        for t in range(stop, t_first - 1, -1):
            slot = q_slot[t]
            if slot >= 0:
                vectors[slot, b] = np.nan
                growth[slot, b] = np.nan


@njit(**_JIT)
def _clv_angles_kernel(vectors, n_u, angles):
    """angles[s, b] <- the smallest principal angle between span(v_1..v_nu) and
    span(v_nu+1..v_k) of vectors[s, b] (S, k), as scipy.linalg.subspace_angles computes it:
    orthonormal bases, the cosines from the singular values of their product, and below
    45 degrees the sine from those of the smaller basis's residual (accurate for small angles).
    NaN where the vectors are not finite."""
    n_times, B, S, K = vectors.shape
    p = n_u
    a = np.empty((S, p), np.float64)
    bb = np.empty((S, K - p), np.float64)
    for s in range(n_times):
        for b in range(B):
            v = vectors[s, b]
            if not np.isfinite(_frame_max(v)):
                angles[s, b] = np.nan
                continue
            for i in range(S):
                for j in range(p):
                    a[i, j] = v[i, j]
                for j in range(p, K):
                    bb[i, j - p] = v[i, j]
            # (Numba's qr returns views of its work arrays: copied, for BLAS-friendly products)
            qa = np.ascontiguousarray(np.linalg.qr(a)[0])
            qb = np.ascontiguousarray(np.linalg.qr(bb)[0])
            if p >= K - p:
                angles[s, b] = _smallest_angle(qa, qb)
            else:
                angles[s, b] = _smallest_angle(qb, qa)


@register_jitable
def _smallest_angle(big, small):
    """The smallest principal angle between the spans of two orthonormal bases, ``small``
    having no more columns than ``big`` (scipy.linalg.subspace_angles' formulas)."""
    m = np.dot(big.T, small)
    cos = min(np.linalg.svd(m, False)[1][0], 1.0)
    if cos * cos < 0.5:
        return np.arccos(cos)
    sines = np.linalg.svd(small - np.dot(big, m), False)[1]
    return np.arcsin(min(sines[sines.shape[0] - 1], 1.0))


def _no_tangent(dtype):
    """Stand-ins for the tangent-map arguments of a kernel run on given matrices (unused:
    one-element arrays of their ranks)."""
    w3 = np.zeros((1, 1, 1), dtype)
    c5, c6 = np.zeros((1,) * 5, dtype), np.zeros((1,) * 6, dtype)
    return (1, np.zeros(1, np.int64), w3, w3, w3, w3, c5, c5, c6, c5)


def covariant_forward(jac, args, q, record_at, r_from, r_store, q_slot, q_store, local):
    """The forward phase (see _clv_forward_kernel) on given matrices ``jac`` (T, B, S, S), or
    with ``jac`` None along a linearised trajectory (``args``); q (B, S, k) orthonormal frames;
    returns the status array (B, 8)."""
    if jac is None:
        jac = np.empty((0, 0, 0, 0), q.dtype)
        q = frame_major(q, args)
    else:
        args = _no_tangent(q.dtype)
        q = frame_major(q)
    status = np.zeros((q.shape[0], 8))
    ortho_tol, log_tiny = qr_limits(q.dtype)
    qr_at = np.ones(record_at.shape[0], np.bool_)
    fw = _factored_workspace_of(q, False)
    with blas.single_threaded():
        if fw[1].shape[1] > 0:
            _run_factored(jac, args, q, qr_at, record_at, local, status, fw, r_from, r_store,
                          q_slot, q_store)
        else:
            _clv_forward_kernel(jac, *args, q, qr_at, record_at, r_from, r_store, q_slot,
                                q_store, local, ortho_tol, log_tiny, _qr_workspace_of(q), status)
    return status


def covariant_backward(r_store, r_from, t_first, c, q_slot, lost, vectors, growth):
    """The backward phase (see _clv_backward_kernel); returns the status array (B, 2)."""
    status = np.zeros((c.shape[0], 2), np.int64)
    with blas.single_threaded():
        _clv_backward_kernel(r_store, r_from, t_first, c, q_slot, lost, vectors, growth, status)
    return status


def subspace_angles(vectors, n_u):
    """The smallest principal angle between the first n_u columns of vectors[s, b] (S, k) and
    the others (see _clv_angles_kernel), shape (n_times, B); 0 < n_u < k."""
    angles = np.empty(vectors.shape[:2])
    with blas.single_threaded():
        _clv_angles_kernel(vectors, int(n_u), angles)
    return angles
