"""Tangent maps of the recurrence on the CPU: step Jacobians, JVP/VJP, and the QR loops on them.

The state of a network is stacked as (layer, direction, part, unit): block k = layer * D + direction
holds the cell's P state vectors (h, and for two-state cells such as LSTM c after it), N rows
each.  Kernels see it as a 4-D array (L*D, P, N, k) whose C-order flattening is the state vector
and ``k`` the number of tangent vectors carried at once.

The trajectory enters as per-step *coefficients*, the local derivatives of the cell's step
(:func:`numrnn.cpu.recurrence.coefficients`, from the cell's own jvp).  With them, one step's
tangent map of layer block k is, for each state part p,

    ds_p = A_p^rec (M r') + A_p^in (W_ih du) + sum_p' direct_pp' ds_p',   r'_q = rgrad_q ds_{reads[q]}

where A (N x G*N, one nonzero per gate in each row) holds the coefficients, M is the recurrent
matrix, r' the tangent of the recurrent input, ``du`` the tangent of the layer's input (the new
output state of the layer below; the network input is not part of the state).  The transposed
map (VJP) runs the same terms backwards, top layer first.  Both are matrix products with M and
W_ih (BLAS) plus O(G N P k) pointwise work.

Processing step t of a bidirectional (single-layer) network advances the forward direction with
x_t and the reverse direction with x_{T-1-t}: the product of two causal systems, each in its own
time.

The analysis passes float64 coefficients, weights and frames for either network dtype (a float32
network's steps are re-run in float64 first, see :mod:`numrnn.analysis.jacobians`); the kernels
themselves take either dtype (``lyapunov_from_jacobians`` runs float32 matrices as they are).

Tiers: ``_*_kernel`` write preallocated outputs; the functions without underscore allocate.
"""
import numpy as np
from numba import njit
from numba.extending import register_jitable

from .. import config
from . import blas

_JIT = dict(cache=True, fastmath=config.FASTMATH, nogil=True)


@njit(**_JIT)
def _apply_tangent(transpose, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct,
                   rgrad, v, out, r, y, z, up):
    """out = J_t v (``transpose`` False) or J_t^T v (True) for sequence b at processing step t.

    w_hh (L*D, G*N, R*N): the recurrent matrices M; w_up (max(L-1, 1), G*N, N): W_ih of layers
    1.. (D = 1 there); w_hh_t, w_up_t: their transposes, C-contiguous (BLAS on a transposed view
    is much slower in Numba); reads (R,): the state each recurrent input reads; coefficients
    (L*D, T, B, ...) from :func:`numrnn.cpu.recurrence.coefficients`: rec, inp (P, G*N), direct
    (P, P, N), rgrad (R, N) per step; v, out (L*D, P, N, k), distinct.
    Scratch: r (R*N, k); y, z (G*N, k); up (N, k).
    """
    LD = w_hh.shape[0]
    GN = w_hh.shape[1]
    N = up.shape[0]
    G = GN // N
    R = reads.shape[0]
    P = v.shape[1]
    T = direct.shape[1]
    K = v.shape[3]
    n_layers = LD // n_dir
    if not transpose:
        for layer in range(n_layers):
            for d in range(n_dir):
                blk = layer * n_dir + d
                td = t if d == 0 else T - 1 - t
                vb = v[blk]
                rg = rgrad[blk, td, b]
                for q in range(R):
                    vs = vb[reads[q]]
                    for j in range(N):
                        for c in range(K):
                            r[q * N + j, c] = rg[q, j] * vs[j, c]
                np.dot(w_hh[blk], r, y)
                has_up = layer > 0
                if has_up:
                    np.dot(w_up[layer - 1], out[blk - 1, 0], z)
                cr = rec[blk, td, b]
                ci = inp[blk, td, b]
                dr = direct[blk, td, b]
                ob = out[blk]
                for p in range(P):
                    for j in range(N):
                        for c in range(K):
                            acc = 0.0
                            for pp in range(P):
                                acc += dr[p, pp, j] * vb[pp, j, c]
                            for g in range(G):
                                acc += cr[p, g * N + j] * y[g * N + j, c]
                            if has_up:
                                for g in range(G):
                                    acc += ci[p, g * N + j] * z[g * N + j, c]
                            ob[p, j, c] = acc
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
            vb = v[blk]
            ob = out[blk]
            # the cotangent of the new state: v, and for the output state what the layer above
            # pulled back through its input projection
            for j in range(N):
                for c in range(K):
                    for pp in range(P):
                        ob[pp, j, c] = 0.0
                    for g in range(G):
                        y[g * N + j, c] = 0.0
                        z[g * N + j, c] = 0.0
                    for p in range(P):
                        gv = vb[p, j, c]
                        if p == 0 and from_above:
                            gv += up[j, c]
                        for pp in range(P):
                            ob[pp, j, c] += dr[p, pp, j] * gv
                        for g in range(G):
                            y[g * N + j, c] += cr[p, g * N + j] * gv
                            z[g * N + j, c] += ci[p, g * N + j] * gv
            np.dot(w_hh_t[blk], y, r)
            for q in range(R):
                os = ob[reads[q]]
                for j in range(N):
                    for c in range(K):
                        os[j, c] += rg[q, j] * r[q * N + j, c]
            if has_up:
                np.dot(w_up_t[layer - 1], z, up)


@njit(**_JIT)
def _tangent_kernel(transpose, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, v, out):
    """out[t, b] = J_t v[t', b'] (or J_t^T ...) for every t, b; v (T or 1, B or 1, L*D, P, N, k)
    is broadcast over a length-1 time or batch axis (v = identity gives the dense Jacobian)."""
    T, B = out.shape[0], out.shape[1]
    N, K = out.shape[4], out.shape[5]
    GN, RN = w_hh.shape[1], w_hh.shape[2]
    dt = out.dtype
    r = np.empty((RN, K), dt)
    up = np.zeros((N, K), dt)
    y = np.empty((GN, K), dt)
    z = np.empty((GN, K), dt)
    for t in range(T):
        tv = t if v.shape[0] > 1 else 0
        for b in range(B):
            bv = b if v.shape[1] > 1 else 0
            _apply_tangent(transpose, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, v[tv, bv], out[t, b],
                           r, y, z, up)


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


@register_jitable
def _frame_max(flat):
    """max |entry| of a 2-D array in float64; NaN if an entry is NaN."""
    m = 0.0
    for i in range(flat.shape[0]):
        for j in range(flat.shape[1]):
            a = abs(float(flat[i, j]))
            if a > m:
                m = a
            elif a != a:
                return a
    return m


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


@register_jitable
def _orthonormalise(flat, amax, log_r, log_col, measure):
    """QR of the (S, k) frame ``flat`` in place: flat <- Q, log_r[i] <- ln|R_ii| (-inf where
    R_ii = 0).  ``amax``: max |entry| of the frame (> 0 scales the k = 1 norm, so that its
    squares neither overflow nor underflow; 0: a zero frame, left as it is).  With ``measure``
    also log_col[i] <- ln of column i's norm before the QR, and returns (s, i): the smallest
    |R_ii| / ||R[:i+1, i]|| over columns i >= 1 and where it is ((1.0, 0) otherwise)."""
    S, K = flat.shape
    if K == 1:
        # the largest exponent alone: QR of one column is its normalisation (no LAPACK call)
        if amax == 0.0:
            log_r[0] = -np.inf
            log_col[0] = -np.inf
            return 1.0, 0
        acc = 0.0
        for i in range(S):
            v = float(flat[i, 0]) / amax
            acc += v * v
        root = np.sqrt(acc)
        for i in range(S):
            flat[i, 0] = (float(flat[i, 0]) / amax) / root
        log_r[0] = np.log(amax) + 0.5 * np.log(acc)
        log_col[0] = log_r[0]
        return 1.0, 0
    q, rr = np.linalg.qr(flat)
    flat[:, :] = q
    worst = 1.0
    at = 0
    for i in range(K):
        d = abs(float(rr[i, i]))
        log_r[i] = np.log(d) if d > 0.0 else -np.inf
        if measure:
            lc, m, acc = _column_log_norm(rr, i)
            log_col[i] = lc
            if i > 0 and m > 0.0:
                s = (d / m) / np.sqrt(acc)
                if s < worst:
                    worst = s
                    at = i
    return worst, at


@register_jitable
def _after_step(flat, t, n, qr, strict, ortho_tol, log_tiny, prev_log, log_r, log_col, st):
    """Check the frame ``flat`` (S, k) after step t, the n-th since the last QR, and
    orthonormalise it when ``qr``.  ``prev_log``: ln max|entry| after the previous step (0 after
    a QR).  Returns (code, ln max|entry|): code 0 go on, 1 the frame is lost (non-finite), 2 stop
    (ons_interval too long); a failure is written to ``st``: kind, t, n, a measure, a column."""
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
        return 0, la
    worst, at = _orthonormalise(flat, amax, log_r, log_col, strict)
    if strict and amax > 0.0:
        for i in range(flat.shape[1]):
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
def _replay_step(flat, acc, log_r, log_col):
    """One step of the replay of a refused block (QR after it): acc += ln|R_ii|.  False if the
    frame is not finite."""
    amax = _frame_max(flat)
    if not np.isfinite(amax):
        return False
    _orthonormalise(flat, amax, log_r, log_col, False)
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
    """The scratch arrays of a QR loop that advances frames q (B, L*D, P, N, k) with
    :func:`_advance`: (r, up, y, z, tmp, log_r, log_col)."""
    N, K = q.shape[3], q.shape[4]
    GN, RN = w_hh.shape[1], w_hh.shape[2]
    dt = q.dtype
    return (np.empty((RN, K), dt), np.zeros((N, K), dt), np.empty((GN, K), dt),
            np.empty((GN, K), dt), np.empty(q.shape[1:], dt), np.empty(K, np.float64),
            np.empty(K, np.float64))


@register_jitable
def _advance(jac, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, qb, flat, tmp, r, y, z, up):
    """The frame of sequence b through step t: by the given matrix jac[t, b] when jac holds
    matrices, else by the tangent map of a linearised trajectory (:func:`_apply_tangent`)."""
    if jac.shape[0] > 0:
        np.dot(jac[t, b], flat, tmp.reshape(flat.shape))
    else:
        _apply_tangent(False, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, qb, tmp, r, y, z, up)
    qb[:] = tmp


@njit(**_JIT)
def _lyapunov_kernel(jac, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, q, qr_at, record_at, local, strict, ortho_tol,
                     log_tiny, status):
    """Benettin's QR method along the trajectory of every sequence.

    The steps are the given matrices jac (T, B, S, S), q (B, S, 1, 1, k), when jac holds any;
    else (jac of shape (0, 0, 0, 0)) the tangent maps of a linearised trajectory (the arguments
    n_dir ... rgrad, see :func:`_apply_tangent`), q (B, L*D, P, N, k).  q: orthonormal initial
    vectors, overwritten.  qr_at (T,) bool: orthonormalise after step t; record_at (T,) int: the
    block that step t's QR is recorded in, or -1 (transient).  strict, ortho_tol, log_tiny: the
    checks of :func:`_after_step`.
    Writes local (n_blocks, B, k): sum over the block of ln|R_ii| (the caller divides by length),
    and status (B, 8): the first failure of each sequence (see FAIL_* and :func:`_after_step`).
    After a FAIL_OVERFLOW, FAIL_UNDERFLOW or FAIL_ORTHOGONALITY the block is replayed with a QR
    after every step to measure its growth rates (:func:`_record_rates`), and the kernel stops.
    """
    B = q.shape[0]
    T = qr_at.shape[0]
    S, K = q.shape[1] * q.shape[2] * q.shape[3], q.shape[4]
    r, up, y, z, tmp, log_r, log_col = _frame_workspace(q, w_hh)
    start = np.empty((S, K), q.dtype)
    acc = np.zeros(K, np.float64)
    for b in range(B):
        qb = q[b]
        flat = qb.reshape((S, K))
        start[:, :] = flat
        n = 0
        prev = 0.0
        for t in range(T):
            _advance(jac, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, qb, flat, tmp, r, y, z, up)
            n += 1
            code, prev = _after_step(flat, t, n, qr_at[t], strict, ortho_tol, log_tiny, prev,
                                     log_r, log_col, status[b])
            if code == 2:
                flat[:, :] = start
                ok = True
                for tt in range(t - n + 1, t + 1):
                    _advance(jac, tt, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, qb, flat, tmp, r, y, z,
                             up)
                    ok = _replay_step(flat, acc, log_r, log_col)
                    if not ok:
                        break
                _record_rates(acc, n, ok, status[b])
                return
            if code == 1:
                _lose_sequence(local, b, t, qr_at, record_at)
                break
            if qr_at[t]:
                n = 0
                start[:, :] = flat
                blk = record_at[t]
                if blk >= 0:
                    for i in range(K):
                        local[blk, b, i] = log_r[i]


@njit(**_JIT)
def _graded_product_kernel(n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, q, lag_slot, log_d, u_out, status):
    """Accumulate P_tau^T = J_{T-tau}^T ... J_{T-1}^T (processing steps) for every lag, graded.

    P_tau^T = Q_tau diag(exp(log_d)) U_tau with Q_tau orthonormal and U_tau upper triangular with
    diagonal +-1, updated by one QR per step: J^T Q = Q' R, R = |diag R| R~ with
    R~ = R / |diag R| (row-wise), so diag(d') U' = R diag(d) U with d' = |diag R| d and
    U' = (diag(d)^-1 R~ diag(d)) U, whose off-diagonal factor d_j / d_i shrinks as the QR orders
    the growth rates (no overflow or underflow at any lag).  An R_ii exactly 0 (an exactly
    singular step) makes ln d_i = -inf: that direction's singular value is 0 from then on.

    q (B, L*D, P, N, S): orthonormal start, overwritten; lag_slot (T,) int: after tau = s + 1
    factors (s = 0..T-1), the slot to save into, or -1.  Writes log_d (n_lags, B, S) and
    u_out (n_lags, B, S, S), and status (B, 5): FAIL_NONFINITE, the processing step t, the lag
    tau, then 0 (the product J^T Q) or 1 (the graded factor U) where a value became inf or NaN;
    that sequence's remaining lags are NaN.
    """
    B = q.shape[0]
    T = lag_slot.shape[0]
    N = q.shape[3]
    S = q.shape[1] * q.shape[2] * N
    GN, RN = w_hh.shape[1], w_hh.shape[2]
    dt = q.dtype
    r = np.empty((RN, S), dt)
    up = np.zeros((N, S), dt)
    y = np.empty((GN, S), dt)
    z = np.empty((GN, S), dt)
    tmp = np.empty(q.shape[1:], dt)
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
            _apply_tangent(True, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad, qb, tmp, r, y, z, up)
            jq = tmp.reshape((S, S))
            lost = -1
            if not np.isfinite(_frame_max(jq)):
                lost = 0
            else:
                qq, rr = np.linalg.qr(jq)
                flat[:, :] = qq
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
                u[:, :] = u_new
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


def lyapunov(args, q, qr_at, record_at, local, strict):
    """Benettin's loop along a linearised trajectory (see _lyapunov_kernel); returns the
    status array (B, 8)."""
    status = np.zeros((q.shape[0], 8))
    ortho_tol, log_tiny = qr_limits(q.dtype)
    no_matrices = np.empty((0, 0, 0, 0), q.dtype)
    with blas.single_threaded():
        _lyapunov_kernel(no_matrices, *args, q, qr_at, record_at, local, bool(strict), ortho_tol,
                         log_tiny, status)
    return status


def lyapunov_dense(jac, q, qr_at, record_at, local, strict):
    """Benettin's loop on given matrices jac (T, B, S, S) (see _lyapunov_kernel); returns the
    status array (B, 8)."""
    status = np.zeros((q.shape[0], 8))
    ortho_tol, log_tiny = qr_limits(q.dtype)
    with blas.single_threaded():
        _lyapunov_kernel(jac, *_no_tangent(q.dtype), q, qr_at, record_at, local, bool(strict),
                         ortho_tol, log_tiny, status)
    return status


def graded_product(args, q, lag_slot, log_d, u_out):
    """Graded accumulation of the transposed Jacobian products (see _graded_product_kernel);
    returns the status array (B, 5)."""
    status = np.zeros((q.shape[0], 5))
    with blas.single_threaded():
        _graded_product_kernel(*args, q, lag_slot, log_d, u_out, status)
    return status


def first_nonfinite(a):
    """(t, b) of the first step and sequence where ``a`` (T, B, ...) is not finite, or None."""
    where = np.empty(2, np.int64)
    _first_nonfinite_kernel(a.reshape(a.shape[0], a.shape[1], -1), where)
    return None if where[0] < 0 else (int(where[0]), int(where[1]))


# --- covariant Lyapunov vectors (Ginelli et al. 2007) -------------------------------------------
#
# Forward: Benettin's loop with a QR after every step (_advance and _after_step, so the frames and
# ln|R_ii| are _lyapunov_kernel's bits at ons_interval 1), keeping R_t (Y_t = J_t Q_{t-1} =
# Q_t R_t) from step ``r_from`` on and the frames Q_t at the chosen times.  R_t is recovered as
# Q_t^T Y_t from a copy of Y_t: upper triangular to rounding, its strictly lower part (of size
# eps |Y_t|) dropped.  Backward: the CLVs' coefficients in the frames, V_t = Q_t C_t, obey
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
                        log_tiny, status):
    """The forward phase of Ginelli's method along every sequence.

    jac, n_dir ... rgrad, q: as in :func:`_lyapunov_kernel` (q: the orthonormal initial frames,
    overwritten); qr_at (T,) all True; record_at (T,): the step's row of ``local`` or -1.
    Writes local (n_rows, B, k): ln|R_ii| of each recorded step; r_store (T - r_from, B, k, k):
    R_t of every step t >= r_from (zero below the diagonal); q_store (n_times, B, S, k): Q_t at
    the steps with q_slot[t] >= 0; status (B, 8): FAIL_NONFINITE and the step where a frame
    became inf or NaN one step after its QR (that sequence stops, its remaining rows NaN).
    """
    B = q.shape[0]
    T = qr_at.shape[0]
    S, K = q.shape[1] * q.shape[2] * q.shape[3], q.shape[4]
    r, up, y, z, tmp, log_r, log_col = _frame_workspace(q, w_hh)
    kept = np.empty((S, K), q.dtype)
    rt = np.empty((K, K), q.dtype)
    for b in range(B):
        qb = q[b]
        flat = qb.reshape((S, K))
        for t in range(T):
            _advance(jac, t, b, n_dir, reads, w_hh, w_up, w_hh_t, w_up_t, rec, inp, direct, rgrad,
                     qb, flat, tmp, r, y, z, up)
            keep = t >= r_from
            if keep:
                kept[:, :] = flat
            code, _ = _after_step(flat, t, 1, True, False, ortho_tol, log_tiny, 0.0, log_r,
                                  log_col, status[b])
            if code != 0:
                _lose_sequence(local, b, t, qr_at, record_at)
                break
            row = record_at[t]
            if row >= 0:
                for i in range(K):
                    local[row, b, i] = log_r[i]
            if keep:
                np.dot(flat.T, kept, rt)
                dst = r_store[t - r_from, b]
                for i in range(K):
                    for j in range(i):
                        dst[i, j] = 0.0
                    for j in range(i, K):
                        dst[i, j] = rt[i, j]
            slot = q_slot[t]
            if slot >= 0:
                q_store[slot, b] = flat


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
    """The forward phase (see _clv_forward_kernel) on given matrices ``jac`` (T, B, S, S), q
    (B, S, 1, 1, k), or with ``jac`` None along a linearised trajectory (``args``), q
    (B, L*D, P, N, k); returns the status array (B, 8)."""
    status = np.zeros((q.shape[0], 8))
    ortho_tol, log_tiny = qr_limits(q.dtype)
    if jac is None:
        jac = np.empty((0, 0, 0, 0), q.dtype)
    else:
        args = _no_tangent(q.dtype)
    qr_at = np.ones(record_at.shape[0], np.bool_)
    with blas.single_threaded():
        _clv_forward_kernel(jac, *args, q, qr_at, record_at, r_from, r_store, q_slot, q_store,
                            local, ortho_tol, log_tiny, status)
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
