"""Tangent maps of the recurrence on the CPU: step Jacobians, JVP/VJP, and the QR loops on them.

The state of a network is stacked as (layer, direction, part, unit): block k = layer * D + direction
holds h (N rows) and, for LSTM, c (N rows) after it.  Kernels see it as a 4-D array
(L*D, P, N, k) whose C-order flattening is the state vector (P = 2 for LSTM, 1 otherwise) and ``k``
the number of tangent vectors carried at once.

The trajectory enters as per-step *coefficients* (:func:`numrnn.cells.unit_tangent_coefficients`,
one call per unit and step, written by :func:`_coefficients_kernel`).  With them, one step's tangent
map of layer block k is

    dh = A_h^rec (W_hh (r' * dh_prev)) + A_h^in (W_ih du) + direct * dh_prev + dh_dcprev * dc_prev
    dc = A_c^rec (W_hh (r' * dh_prev)) + A_c^in (W_ih du) + dc_dcprev * dc_prev      (LSTM)

where A (N x G*N, one nonzero per gate in each row) holds the coefficients, ``du`` is the tangent
of the layer's input (the new h of the layer below; the network input is not part of the state)
and r' the derivative of the recurrent input.  The transposed map (VJP) runs the same terms
backwards, top layer first.  Both are matrix products with W (BLAS) plus O(G N k) pointwise work.

Processing step t of a bidirectional (single-layer) network advances the forward direction with
x_t and the reverse direction with x_{T-1-t}: the product of two causal systems, each in its own
time.

Tiers: ``_*_kernel`` write preallocated outputs; the functions without underscore allocate.
"""
import numpy as np
from numba import njit
from numba.extending import register_jitable

from .. import cells, config
from . import blas

_JIT = dict(cache=True, fastmath=config.FASTMATH, nogil=True)


@njit(**_JIT)
def _coefficients_kernel(kind, act, consts, h0, c0, out_h, out_c, aux, reverse,
                         h_rec, h_in, c_rec, c_in, direct, dh_dcp, dc_dcp, r_grad):
    """Per-step local derivatives of one (layer, direction) along its trajectory.

    out_h (T, B, N), out_c (T, B, N) (LSTM; else anything), aux (T, B, AUX*N): the forward tape.
    Writes h_rec, h_in, c_rec, c_in (T, B, G*N) (pass one array twice where they coincide, see
    :func:`numrnn.cells.unit_tangent_coefficients`; c_* only for LSTM) and direct, dh_dcp, dc_dcp,
    r_grad (T, B, N) (dh_dcp, dc_dcp only for LSTM), all indexed by time t.
    """
    T, B, N = out_h.shape
    a, oma, one, zero = consts[0], consts[1], consts[2], consts[3]
    lstm = kind == cells.KIND_LSTM
    for t in range(T):
        first = t == (T - 1 if reverse else 0)
        tp = t + 1 if reverse else t - 1
        for b in range(B):
            auxb = aux[t, b]
            hr = h_rec[t, b]
            hi = h_in[t, b]
            cr = c_rec[t, b] if lstm else hr
            ci = c_in[t, b] if lstm else hi
            for j in range(N):
                hp = h0[b, j] if first else out_h[tp, b, j]
                cp = zero
                c = zero
                if lstm:
                    cp = c0[b, j] if first else out_c[tp, b, j]
                    c = out_c[t, b, j]
                dd, dhc, dcc, rg = cells.unit_tangent_coefficients(
                    kind, act, a, oma, one, zero, j, N, hp, cp, c, auxb, hr, hi, cr, ci)
                direct[t, b, j] = dd
                r_grad[t, b, j] = rg
                if lstm:
                    dh_dcp[t, b, j] = dhc
                    dc_dcp[t, b, j] = dcc


@register_jitable
def _tangent_rows(rec, inp, direct, v_state, y, z, has_up, out):
    """out[j, q] = direct[j] v_state[j, q] + sum_g rec[g*N + j] y[g*N + j, q]
    (+ sum_g inp[g*N + j] z[g*N + j, q] when ``has_up``): one state's tangent (h or c)."""
    N, K = out.shape
    G = y.shape[0] // N
    for j in range(N):
        for q in range(K):
            acc = direct[j] * v_state[j, q]
            for g in range(G):
                acc += rec[g * N + j] * y[g * N + j, q]
            if has_up:
                for g in range(G):
                    acc += inp[g * N + j] * z[g * N + j, q]
            out[j, q] = acc


@njit(**_JIT)
def _apply_tangent(transpose, t, b, lstm, n_dir, w_hh, w_up, w_hh_t, w_up_t, h_rec, h_in, c_rec,
                   c_in, direct, dh_dcp, dc_dcp, r_grad, v, out, r, y, z, up):
    """out = J_t v (``transpose`` False) or J_t^T v (True) for sequence b at processing step t.

    w_hh (L*D, G*N, N); w_up (max(L-1, 1), G*N, N): W_ih of layers 1.. (D = 1 there); w_hh_t,
    w_up_t: their transposes, C-contiguous (BLAS on a transposed view is much slower in Numba);
    coefficients (L*D, T, B, .) from :func:`_coefficients_kernel`; v, out (L*D, P, N, k), distinct.
    Scratch: r, up (N, k); y, z (G*N, k).
    """
    LD = w_hh.shape[0]
    GN = w_hh.shape[1]
    N = w_hh.shape[2]
    G = GN // N
    T = direct.shape[1]
    K = v.shape[3]
    n_layers = LD // n_dir
    if not transpose:
        for layer in range(n_layers):
            for d in range(n_dir):
                blk = layer * n_dir + d
                td = t if d == 0 else T - 1 - t
                vh = v[blk, 0]
                rg = r_grad[blk, td, b]
                for j in range(N):
                    for q in range(K):
                        r[j, q] = rg[j] * vh[j, q]
                np.dot(w_hh[blk], r, y)
                has_up = layer > 0
                if has_up:
                    np.dot(w_up[layer - 1], out[blk - 1, 0], z)
                hr = h_rec[blk, td, b]
                hi = h_in[blk, td, b]
                dr = direct[blk, td, b]
                oh = out[blk, 0]
                _tangent_rows(hr, hi, dr, vh, y, z, has_up, oh)
                if lstm:
                    vc = v[blk, 1]
                    hc = dh_dcp[blk, td, b]
                    _tangent_rows(c_rec[blk, td, b], c_in[blk, td, b], dc_dcp[blk, td, b], vc,
                                  y, z, has_up, out[blk, 1])
                    for j in range(N):
                        for q in range(K):
                            oh[j, q] += hc[j] * vc[j, q]
        return
    for layer in range(n_layers - 1, -1, -1):
        for d in range(n_dir):
            blk = layer * n_dir + d
            td = t if d == 0 else T - 1 - t
            from_above = layer < n_layers - 1
            has_up = layer > 0
            hr = h_rec[blk, td, b]
            hi = h_in[blk, td, b]
            dr = direct[blk, td, b]
            rg = r_grad[blk, td, b]
            vh = v[blk, 0]
            oh = out[blk, 0]
            for j in range(N):
                for q in range(K):
                    gh = vh[j, q]
                    if from_above:
                        gh += up[j, q]
                    oh[j, q] = dr[j] * gh
                    for g in range(G):
                        y[g * N + j, q] = hr[g * N + j] * gh
                        if has_up:
                            z[g * N + j, q] = hi[g * N + j] * gh
                    if lstm:
                        gc = v[blk, 1, j, q]
                        cr = c_rec[blk, td, b]
                        ci = c_in[blk, td, b]
                        out[blk, 1, j, q] = dh_dcp[blk, td, b, j] * gh + dc_dcp[blk, td, b, j] * gc
                        for g in range(G):
                            y[g * N + j, q] += cr[g * N + j] * gc
                            if has_up:
                                z[g * N + j, q] += ci[g * N + j] * gc
            np.dot(w_hh_t[blk], y, r)
            for j in range(N):
                for q in range(K):
                    oh[j, q] += rg[j] * r[j, q]
            if has_up:
                np.dot(w_up_t[layer - 1], z, up)


@njit(**_JIT)
def _tangent_kernel(transpose, lstm, n_dir, w_hh, w_up, w_hh_t, w_up_t, h_rec, h_in, c_rec, c_in,
                    direct, dh_dcp, dc_dcp, r_grad, v, out):
    """out[t, b] = J_t v[t', b'] (or J_t^T ...) for every t, b; v (T or 1, B or 1, L*D, P, N, k)
    is broadcast over a length-1 time or batch axis (v = identity gives the dense Jacobian)."""
    T, B = out.shape[0], out.shape[1]
    N, K = out.shape[4], out.shape[5]
    GN = w_hh.shape[1]
    dt = out.dtype
    r = np.empty((N, K), dt)
    up = np.zeros((N, K), dt)
    y = np.empty((GN, K), dt)
    z = np.empty((GN, K), dt)
    for t in range(T):
        tv = t if v.shape[0] > 1 else 0
        for b in range(B):
            bv = b if v.shape[1] > 1 else 0
            _apply_tangent(transpose, t, b, lstm, n_dir, w_hh, w_up, w_hh_t, w_up_t, h_rec, h_in,
                           c_rec, c_in, direct, dh_dcp, dc_dcp, r_grad, v[tv, bv], out[t, b],
                           r, y, z, up)


@njit(**_JIT)
def _orthonormalise(q4, log_r):
    """QR of the (S, k) matrix q4 viewed flat: q4 <- Q, log_r[i] <- ln|R_ii|."""
    S = q4.shape[0] * q4.shape[1] * q4.shape[2]
    K = q4.shape[3]
    flat = q4.reshape((S, K))
    if K == 1:
        # the largest exponent alone: QR of one column is its normalisation (no LAPACK call)
        acc = 0.0
        for i in range(S):
            acc += float(flat[i, 0]) * float(flat[i, 0])
        norm = np.sqrt(acc)
        inv = 1.0 / norm
        for i in range(S):
            flat[i, 0] *= inv
        log_r[0] = np.log(norm)
        return
    q, rr = np.linalg.qr(flat)
    flat[:, :] = q
    for i in range(K):
        log_r[i] = np.log(np.abs(rr[i, i]))


@njit(**_JIT)
def _lyapunov_kernel(lstm, n_dir, w_hh, w_up, w_hh_t, w_up_t, h_rec, h_in, c_rec, c_in, direct,
                     dh_dcp, dc_dcp, r_grad, q, qr_at, record_at, local):
    """Benettin's QR method along the trajectory of every sequence.

    q (B, L*D, P, N, k): orthonormal initial vectors, overwritten.  qr_at (T,) bool:
    orthonormalise after step t; record_at (T,) int: the block that step t's QR is recorded in, or
    -1 (transient).
    Writes local (n_blocks, B, k): sum over the block of ln|R_ii| (the caller divides by length).
    """
    B = q.shape[0]
    T = qr_at.shape[0]
    N, K = q.shape[3], q.shape[4]
    GN = w_hh.shape[1]
    dt = q.dtype
    r = np.empty((N, K), dt)
    up = np.zeros((N, K), dt)
    y = np.empty((GN, K), dt)
    z = np.empty((GN, K), dt)
    tmp = np.empty(q.shape[1:], dt)
    log_r = np.empty(K, np.float64)
    for b in range(B):
        qb = q[b]
        for t in range(T):
            _apply_tangent(False, t, b, lstm, n_dir, w_hh, w_up, w_hh_t, w_up_t, h_rec, h_in,
                           c_rec, c_in, direct, dh_dcp, dc_dcp, r_grad, qb, tmp, r, y, z, up)
            qb[:] = tmp
            if qr_at[t]:
                _orthonormalise(qb, log_r)
                blk = record_at[t]
                if blk >= 0:
                    for i in range(K):
                        local[blk, b, i] = log_r[i]


@njit(**_JIT)
def _lyapunov_dense_kernel(jac, q, qr_at, record_at, local):
    """As :func:`_lyapunov_kernel` for given matrices jac (T, B, S, S); q (B, S, 1, 1, k)."""
    T, B = jac.shape[0], jac.shape[1]
    S, K = q.shape[1], q.shape[4]
    tmp = np.empty((S, K), q.dtype)
    log_r = np.empty(K, np.float64)
    for b in range(B):
        qb = q[b]
        flat = qb.reshape((S, K))
        for t in range(T):
            np.dot(jac[t, b], flat, tmp)
            flat[:, :] = tmp
            if qr_at[t]:
                _orthonormalise(qb, log_r)
                blk = record_at[t]
                if blk >= 0:
                    for i in range(K):
                        local[blk, b, i] = log_r[i]


@njit(**_JIT)
def _graded_product_kernel(lstm, n_dir, w_hh, w_up, w_hh_t, w_up_t, h_rec, h_in, c_rec, c_in,
                           direct, dh_dcp, dc_dcp, r_grad, q, lag_slot, log_d, u_out):
    """Accumulate P_tau^T = J_{T-tau}^T ... J_{T-1}^T (processing steps) for every lag, graded.

    P_tau^T = Q_tau diag(exp(log_d)) U_tau with Q_tau orthonormal and U_tau upper triangular with
    diagonal +-1, updated by one QR per step: J^T Q = Q' R, R = |diag R| R~ with
    R~ = R / |diag R| (row-wise), so diag(d') U' = R diag(d) U with d' = |diag R| d and
    U' = (diag(d)^-1 R~ diag(d)) U, whose off-diagonal factor d_j / d_i shrinks as the QR orders
    the growth rates (no overflow or underflow at any lag).

    q (B, L*D, P, N, S): orthonormal start, overwritten; lag_slot (T,) int: after tau = s + 1
    factors (s = 0..T-1), the slot to save into, or -1.  Writes log_d (n_lags, B, S) and
    u_out (n_lags, B, S, S).
    """
    B = q.shape[0]
    T = lag_slot.shape[0]
    N = q.shape[3]
    S = q.shape[1] * q.shape[2] * N
    GN = w_hh.shape[1]
    dt = q.dtype
    r = np.empty((N, S), dt)
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
            _apply_tangent(True, t, b, lstm, n_dir, w_hh, w_up, w_hh_t, w_up_t, h_rec, h_in,
                           c_rec, c_in, direct, dh_dcp, dc_dcp, r_grad, qb, tmp, r, y, z, up)
            qq, rr = np.linalg.qr(tmp.reshape((S, S)))
            flat[:, :] = qq
            for i in range(S):
                di = np.abs(rr[i, i])
                inv = 1.0 / di if di > 0.0 else 0.0
                m[i, i] = 1.0 if rr[i, i] >= 0.0 else -1.0
                for jj in range(i):
                    m[i, jj] = 0.0
                for jj in range(i + 1, S):
                    # (R / |diag R|)_ij d_j / d_i; the ratio is capped so that it stays finite
                    # while the QR has not yet ordered the growth rates
                    if rr[i, jj] == 0.0:
                        m[i, jj] = 0.0
                    else:
                        m[i, jj] = rr[i, jj] * inv * np.exp(min(ld[jj] - ld[i], 700.0))
            for i in range(S):
                ld[i] += np.log(np.abs(rr[i, i]))
            np.dot(m, u, u_new)
            u[:, :] = u_new
            slot = lag_slot[s]
            if slot >= 0:
                for i in range(S):
                    log_d[slot, b, i] = ld[i]
                    for jj in range(S):
                        u_out[slot, b, i, jj] = u[i, jj]


# --- drivers ------------------------------------------------------------------------------------
#
# Every loop below calls BLAS/LAPACK once per step on small matrices; a multi-threaded BLAS would
# synchronise its pool at every call (measured: 17x slower for N = 200 on a loaded 2-core
# machine), so the BLAS is held to one thread while they run.


def tangent(args, v, out, transpose):
    """out[t, b] = J_t v (or J_t^T v); ``args`` from the linearisation (see _tangent_kernel)."""
    with blas.single_threaded():
        _tangent_kernel(bool(transpose), *args, v, out)


def lyapunov(args, q, qr_at, record_at, local):
    """Benettin's loop along a linearised trajectory (see _lyapunov_kernel)."""
    with blas.single_threaded():
        _lyapunov_kernel(*args, q, qr_at, record_at, local)


def lyapunov_dense(jac, q, qr_at, record_at, local):
    """Benettin's loop on given matrices (see _lyapunov_dense_kernel)."""
    with blas.single_threaded():
        _lyapunov_dense_kernel(jac, q, qr_at, record_at, local)


def graded_product(args, q, lag_slot, log_d, u_out):
    """Graded accumulation of the transposed Jacobian products (see _graded_product_kernel)."""
    with blas.single_threaded():
        _graded_product_kernel(*args, q, lag_slot, log_d, u_out)



def coefficients(kind, act, alpha, h0, c0, out_h, out_c, aux, reverse, into):
    """Fill the coefficient arrays ``into`` (views of one block, each (T, B, .)) for one
    (layer, direction); see :func:`_coefficients_kernel`."""
    consts = np.array([alpha, 1.0 - alpha, 1.0, 0.0], dtype=out_h.dtype)
    _coefficients_kernel(kind, act, consts, h0, c0, out_h, out_c, aux, bool(reverse), *into)
