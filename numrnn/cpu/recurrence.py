"""The sequential part of an RNN layer on the CPU: forward recurrence and the BPTT sweep.

Everything that is not sequential (the input projection of all steps, the weight gradients) is one
matrix product outside these kernels, in :mod:`numrnn.network`.  Each kernel runs one
(layer, direction) over the whole sequence and the whole batch; a single compiled kernel serves
every cell (the cell family is a run-time argument), so Numba compiles it once per dtype.

Tiers: ``_forward_kernel``/``_backward_kernel`` take arrays and a range of sequences and write
preallocated outputs; ``forward``/``backward`` allocate and hand disjoint ranges of the batch to
numrnn's threads (:mod:`numrnn.cpu.threads`).
"""
import math
import types

import numpy as np
from numba import njit
from numba.extending import register_jitable

from .. import cells, config, norms
from . import elementary, threads

# error_model="numpy": a float division is IEEE (no zero check that would keep loops scalar).
_JIT = dict(cache=True, fastmath=config.FASTMATH, nogil=True, error_model="numpy")


#: Twins inlined at Numba IR level (they take and return only scalars); LLVM inlines the small
#: rest (sigmoid, exp, ...) on its own but not these, which its cost model finds too large.
#: The gradient norm is inlined too: called once per row and step, as a call it cost the BPTT
#: sweep a third more at N = 32 (float32), where inlined its eight partial sums are one vector.
_IR_INLINED = ("lstm_gates", "lstm_state", "lstm_step", "lstm_vjp", "lstm_partials",
               "gru_step", "gru_vjp", "gru_partials", "squared_sum", "gradient_norm")


def _cpu_twins(source, math_module):
    """The functions of ``source`` (:mod:`numrnn.cells`, :mod:`numrnn.norms`) as the CPU kernels
    compile them.

    Each twin has the same code object as its original (the math is written once); only its
    ``math`` may differ and its inlining.  For the cells, ``math`` is
    :func:`numrnn.cpu.elementary.cpu_math`, exp and tanh that LLVM can vectorise, where libm's
    are opaque scalar calls; the GPU kernels keep CUDA's functions.  With these, the row loops
    below run 2-4x faster (forward pass, B = 32, N = 128: tanh 23 -> 9, GRU 92 -> 26, LSTM
    188 -> 75 ns per unit and step in float32).
    """
    namespace = dict(vars(source))
    namespace["math"] = math_module
    twins = {}
    for name, fn in vars(source).items():
        if isinstance(fn, types.FunctionType) and fn.__module__ == source.__name__:
            twin = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__,
                                      fn.__closure__)
            inline = "always" if name in _IR_INLINED else "never"
            twins[name] = register_jitable(inline=inline)(twin)
    namespace.update(twins)
    module = types.ModuleType(f"numrnn_cpu_{source.__name__.rpartition('.')[2]}")
    vars(module).update(namespace)  # Numba resolves attributes of a module
    return module


_cells = _cpu_twins(cells, elementary.cpu_math())
_norms = _cpu_twins(norms, math)


# --- One sequence's step for all units, per cell family ---------------------------------------
#
# The loops below call the scalar cell functions (the math of :mod:`numrnn.cells`) and do the
# gate layout's loads and stores themselves: a loop whose body calls a function that takes arrays
# keeps reference-counting calls and is not vectorised, one that calls scalar functions is.
# The layout is the one :func:`numrnn.cells.unit_forward` and :func:`numrnn.cells.unit_backward`
# document (gate g of unit j at g*n + j); the GPU kernels call those.
# ``n = max(n, 0)`` lets LLVM prove that g*n + j >= 0, so no index wraparound select is left.


@register_jitable(inline="always")
def _elman_row_forward(act, a, oma, zero, xp, hp, n, h_prev, aux, h_out):
    n = max(n, 0)
    for j in range(n):
        y = _cells.activation(act, xp[j] + hp[j], zero)
        aux[j] = y
        h_out[j] = _cells.leaky_update(h_prev[j], y, a, oma)


@register_jitable(inline="always")
def _rate_row_forward(a, oma, xp, hp, n, h_prev, h_out):
    n = max(n, 0)
    for j in range(n):
        h_out[j] = _cells.leaky_update(h_prev[j], xp[j] + hp[j], a, oma)


@register_jitable(inline="always")
def _lstm_row_forward(one, xp, hp, n, c_prev, aux, h_out, c_out):
    # Two loops (gates, then state): as one loop LLVM does not vectorise it.
    n = max(n, 0)
    for j in range(n):
        i, f, g, o = _cells.lstm_gates(xp[j] + hp[j], xp[n + j] + hp[n + j],
                                       xp[2 * n + j] + hp[2 * n + j],
                                       xp[3 * n + j] + hp[3 * n + j], one)
        aux[j] = i
        aux[n + j] = f
        aux[2 * n + j] = g
        aux[3 * n + j] = o
    for j in range(n):
        c, h = _cells.lstm_state(aux[j], aux[n + j], aux[2 * n + j], aux[3 * n + j], c_prev[j])
        c_out[j] = c
        h_out[j] = h


@register_jitable(inline="always")
def _gru_row_forward(one, xp, hp, n, h_prev, aux, h_out):
    n = max(n, 0)
    for j in range(n):
        r, z, nn, h = _cells.gru_step(xp[j], xp[n + j], xp[2 * n + j], hp[j], hp[n + j],
                                      hp[2 * n + j], h_prev[j], one)
        aux[j] = r
        aux[n + j] = z
        aux[2 * n + j] = nn
        aux[3 * n + j] = hp[2 * n + j]
        h_out[j] = h


@register_jitable(inline="always")
def _elman_row_backward(act, a, oma, one, zero, n, dh_carry, d_out, aux, dhp):
    n = max(n, 0)
    for j in range(n):
        dh = dh_carry[j] + d_out[j]
        dhp[j] = dh * _cells.elman_dz(act, aux[j], a, one, zero)
        dh_carry[j] = oma * dh


@register_jitable(inline="always")
def _rate_row_backward(a, oma, n, dh_carry, d_out, dhp):
    n = max(n, 0)
    for j in range(n):
        dh = dh_carry[j] + d_out[j]
        dhp[j] = a * dh
        dh_carry[j] = oma * dh


@register_jitable(inline="always")
def _lstm_row_backward(one, zero, n, dh_carry, dc_carry, d_out, c_prev, c_t, aux, dhp):
    n = max(n, 0)
    for j in range(n):
        dh = dh_carry[j] + d_out[j]
        dzi, dzf, dzg, dzo, dcp = _cells.lstm_vjp(dh, dc_carry[j], aux[j], aux[n + j],
                                                  aux[2 * n + j], aux[3 * n + j], c_t[j],
                                                  c_prev[j], one)
        dhp[j] = dzi
        dhp[n + j] = dzf
        dhp[2 * n + j] = dzg
        dhp[3 * n + j] = dzo
        dc_carry[j] = dcp
    for j in range(n):  # the direct part of dh_prev is zero (in the loop above: not vectorised)
        dh_carry[j] = zero


@register_jitable(inline="always")
def _gru_row_backward(one, n, dh_carry, d_out, h_prev, aux, dxp, dhp):
    n = max(n, 0)
    for j in range(n):
        dh = dh_carry[j] + d_out[j]
        dr, dz, dxn, dhn, dhd = _cells.gru_vjp(dh, aux[j], aux[n + j], aux[2 * n + j],
                                               aux[3 * n + j], h_prev[j], one)
        dxp[j] = dr
        dxp[n + j] = dz
        dxp[2 * n + j] = dxn
        dhp[j] = dr
        dhp[n + j] = dz
        dhp[2 * n + j] = dhn
        dh_carry[j] = dhd


@register_jitable(inline="always")
def _count_nonfinite(v, n, zero):
    """How many of v[0..n) are NaN or inf (x - x is 0 for finite x and NaN otherwise)."""
    n = max(n, 0)
    c = 0
    for j in range(n):
        x = v[j]
        c += 0 if x - x == zero else 1
    return c


@register_jitable
def _state_before(t, reverse, lstm, h0, c0, out_h, out_c):
    """(first, h_prev, c_prev): the state entering step t, (B, N) each; c0 stands in for c
    except for LSTM, and ``first`` says whether t is the first step in running order."""
    first = t == (out_h.shape[0] - 1 if reverse else 0)
    if first:
        return first, h0, c0
    tp = t + 1 if reverse else t - 1
    return first, out_h[tp], (out_c[tp] if lstm else c0)


@njit(**_JIT)
def _matmul(a, b, out, use_blas):
    """out = a @ b for C-contiguous 2-D arrays: BLAS gemm, or compiled loops for small products.

    The loops take four rows of b per pass over a row of out, so out is loaded and stored a
    quarter as often (1.6-2x faster than one row per pass for B = 1, N = 128 LSTM).
    """
    if use_blas:
        np.dot(a, b, out)
        return
    m, k_dim = a.shape
    p = b.shape[1]
    k4 = k_dim - k_dim % 4
    for i in range(m):
        row = out[i]
        arow = a[i]
        for q in range(p):
            row[q] = 0
        for k in range(0, k4, 4):
            a0, a1, a2, a3 = arow[k], arow[k + 1], arow[k + 2], arow[k + 3]
            b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
            for q in range(p):
                row[q] += (a0 * b0[q] + a1 * b1[q]) + (a2 * b2[q] + a3 * b3[q])
        for k in range(k4, k_dim):
            aik = arow[k]
            brow = b[k]
            for q in range(p):
                row[q] += aik * brow[q]


@njit(**_JIT)
def _recurrent_projection(kind, act, zero, h_prev, b0, w_hh_t, w_hh, b_hh, mode, rec, rec_t,
                          hp_t, hp):
    """hp = r W_hhᵀ + b_hh for the rows b0 <= b < b0 + nb of one step, r = r(h_prev[b]).

    ``mode`` 0: compiled loops (small products); 1: BLAS gemm; 2: BLAS on the transposes,
    hpᵀ = W_hh rᵀ, with r written transposed into ``rec_t`` (N, nb) and the result ``hp_t``
    (G*N, nb) read back transposed with the bias added (the copies are the loads the step makes
    anyway).  Mode 2 exists for OpenBLAS in float32 with few rows (a thread's share of the
    batch): there it runs at 42-64 GFLOP/s against 24-32 for the direct form (nb = 16, N, G*N in
    128..2048, 2-core EPYC); in float64 the two forms run at the same speed.
    """
    nb, GN = hp.shape
    N = rec.shape[1]
    if mode == 2:
        for i in range(nb):
            for k in range(N):
                rec_t[k, i] = _cells.recurrent_input(kind, act, h_prev[b0 + i, k], zero)
        np.dot(w_hh, rec_t, hp_t)
        for i in range(nb):
            row = hp[i]
            for q in range(GN):
                row[q] = hp_t[q, i] + b_hh[q]
        return
    if kind == cells.KIND_RATE:  # r = phi(h); every other cell multiplies h itself, in place
        for i in range(nb):
            for k in range(N):
                rec[i, k] = _cells.recurrent_input(kind, act, h_prev[b0 + i, k], zero)
        r = rec
    else:
        r = h_prev[b0:b0 + nb]
    _matmul(r, w_hh_t, hp, mode == 1)
    for i in range(nb):
        row = hp[i]
        for q in range(GN):
            row[q] += b_hh[q]


@njit(**_JIT)
def _recurrent_pullback(kind, act, one, zero, dg, h_prev, b0, w_hh, w_hh_t, mode, dg_t, tmp_t,
                        tmp, carry):
    """carry += (dg W_hh) * r'(h_prev) for the rows b0 <= b < b0 + nb of one step.

    dg (nb, G*N) is the cotangent of the recurrent projection; ``mode`` as in
    :func:`_recurrent_projection` (mode 2: dgᵀ into ``dg_t``, W_hh^T dgᵀ into ``tmp_t``).
    """
    nb, N = carry.shape
    GN = dg.shape[1]
    if mode == 2:
        for i in range(nb):
            for q in range(GN):
                dg_t[q, i] = dg[i, q]
        np.dot(w_hh_t, dg_t, tmp_t)
        for i in range(nb):
            for k in range(N):
                carry[i, k] += tmp_t[k, i] * _cells.recurrent_input_grad(
                    kind, act, h_prev[b0 + i, k], one, zero)
        return
    _matmul(dg, w_hh, tmp, mode == 1)
    for i in range(nb):
        for k in range(N):
            carry[i, k] += tmp[i, k] * _cells.recurrent_input_grad(
                kind, act, h_prev[b0 + i, k], one, zero)


@njit(**_JIT)
def _forward_kernel(kind, act, consts, xp, w_hh_t, w_hh, b_hh, h0, c0, reverse, mode,
                    out_h, out_c, aux, bad, b0, b1):
    """Forward recurrence of one layer and direction for the sequences b0 <= b < b1.

    xp (T, B, G*N): input projection and b_hh (G*N,): bias of the recurrent one (see
    :func:`forward`); w_hh_t (N, G*N): W_hh transposed and w_hh (G*N, N), both C order; h0, c0
    (B, N); consts = [a, 1 - a, 1, 0] in the kernel's dtype; ``mode``: how the recurrent product
    runs (:func:`_recurrent_projection`).
    Writes out_h (T, B, N), out_c (T, B, N) (LSTM only), aux (T, B, AUX_WIDTH*N) for its rows,
    and bad (B,): the first time index t at which h of sequence b held a NaN or inf (-1: never;
    NaN in c reaches h in the same step, and c cannot overflow on its own).
    ``reverse`` runs t = T-1 .. 0.  Sequences are independent, so disjoint ranges can run on
    different threads with no synchronisation.
    """
    T = xp.shape[0]
    N = h0.shape[1]
    nb = b1 - b0
    a, oma, one, zero = consts[0], consts[1], consts[2], consts[3]
    lstm = kind == cells.KIND_LSTM
    GN = w_hh_t.shape[1]
    rec = np.empty((nb, N), xp.dtype)
    hp = np.empty((nb, GN), xp.dtype)
    rec_t = np.empty((N, nb), xp.dtype)
    hp_t = np.empty((GN, nb), xp.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        first, h_prev, c_prev = _state_before(t, reverse, lstm, h0, c0, out_h, out_c)
        _recurrent_projection(kind, act, zero, h_prev, b0, w_hh_t, w_hh, b_hh, mode, rec, rec_t,
                              hp_t, hp)
        for i in range(nb):
            b = b0 + i
            hpb = hp[i]
            xpb, hpv, auxb, ohb = xp[t, b], h_prev[b], aux[t, b], out_h[t, b]
            if kind == cells.KIND_LSTM:
                _lstm_row_forward(one, xpb, hpb, N, c_prev[b], auxb, ohb, out_c[t, b])
            elif kind == cells.KIND_GRU:
                _gru_row_forward(one, xpb, hpb, N, hpv, auxb, ohb)
            elif kind == cells.KIND_RATE:
                _rate_row_forward(a, oma, xpb, hpb, N, hpv, ohb)
            elif act == cells.ACT_TANH:  # one loop per nonlinearity: each body is branch-free
                _elman_row_forward(cells.ACT_TANH, a, oma, zero, xpb, hpb, N, hpv, auxb, ohb)
            elif act == cells.ACT_RELU:
                _elman_row_forward(cells.ACT_RELU, a, oma, zero, xpb, hpb, N, hpv, auxb, ohb)
            else:
                _elman_row_forward(cells.ACT_LINEAR, a, oma, zero, xpb, hpb, N, hpv, auxb, ohb)
            if bad[b] < 0 and _count_nonfinite(ohb, N, zero) > 0:
                bad[b] = t


@njit(**_JIT)
def _backward_kernel(kind, act, consts, w_hh, w_hh_t, h0, c0, out_h, out_c, aux, d_out, dh_n,
                     dc_n, reverse, truncate, mode, dxp, dhp, dh0, dc0, norm, bad, b0, b1):
    """Backpropagation through time of one layer and direction, sequences b0 <= b < b1.

    d_out (T, B, N): cotangent of the outputs; dh_n, dc_n (B, N): of the final state.
    ``truncate`` > 0 cuts the time axis into chunks [0, k), [k, 2k), ...: no state gradient crosses
    a chunk boundary (the state entering a chunk is a constant), except into h0/c0.
    Writes dhp (T, B, G*N) (cotangent of the recurrent projection), dxp (GRU only: of the input
    projection; pass the same array as dhp otherwise), dh0, dc0 (B, N), norm (T, B) float64, the
    Euclidean norm of dL/dh_t (finite whenever dL/dh_t is), and bad (B,): the first time index t,
    in the sweep's order, at which dL/dh_t of sequence b held a NaN or inf (-1: never).
    """
    T, _, N = out_h.shape
    GN = w_hh.shape[0]
    nb = b1 - b0
    a, oma, one, zero = consts[0], consts[1], consts[2], consts[3]
    lstm = kind == cells.KIND_LSTM
    carry = np.empty((nb, N), out_h.dtype)
    carry_c = np.empty((nb, N), out_h.dtype)
    tmp = np.empty((nb, N), out_h.dtype)
    dg_t = np.empty((GN, nb), out_h.dtype)
    tmp_t = np.empty((N, nb), out_h.dtype)
    for i in range(nb):
        for j in range(N):
            carry[i, j] = dh_n[b0 + i, j]
            carry_c[i, j] = dc_n[b0 + i, j]
    for s in range(T):
        t = s if reverse else T - 1 - s
        first, h_prev, c_prev = _state_before(t, reverse, lstm, h0, c0, out_h, out_c)
        c_t = out_c[t] if lstm else c0
        for i in range(nb):
            b = b0 + i
            auxb = aux[t, b]
            dgb = dhp[t, b]
            cr, dob = carry[i], d_out[t, b]
            nrm = _norms.gradient_norm(cr, dob)
            if kind == cells.KIND_LSTM:
                _lstm_row_backward(one, zero, N, cr, carry_c[i], dob, c_prev[b], c_t[b], auxb,
                                   dgb)
            elif kind == cells.KIND_GRU:
                _gru_row_backward(one, N, cr, dob, h_prev[b], auxb, dxp[t, b], dgb)
            elif kind == cells.KIND_RATE:
                _rate_row_backward(a, oma, N, cr, dob, dgb)
            elif act == cells.ACT_TANH:
                _elman_row_backward(cells.ACT_TANH, a, oma, one, zero, N, cr, dob, auxb, dgb)
            elif act == cells.ACT_RELU:
                _elman_row_backward(cells.ACT_RELU, a, oma, one, zero, N, cr, dob, auxb, dgb)
            else:
                _elman_row_backward(cells.ACT_LINEAR, a, oma, one, zero, N, cr, dob, auxb, dgb)
            norm[t, b] = nrm
            if bad[b] < 0 and not (nrm < np.inf):
                bad[b] = t
        cut = False
        if truncate > 0 and not first:
            cut = ((t + 1) % truncate == 0) if reverse else (t % truncate == 0)
        if cut:
            carry[:, :] = zero
            carry_c[:, :] = zero
            continue
        _recurrent_pullback(kind, act, one, zero, dhp[t, b0:b1], h_prev, b0, w_hh, w_hh_t, mode,
                            dg_t, tmp_t, tmp, carry)
        if first:
            for i in range(nb):
                for j in range(N):
                    dh0[b0 + i, j] = carry[i, j]
                    dc0[b0 + i, j] = carry_c[i, j]


@njit(**_JIT)
def _recurrent_inputs_kernel(kind, act, consts, h0, out_h, reverse, out):
    """out[t] = the recurrent input r of step t (h_{t-1}, or phi(h_{t-1}) for the rate network)."""
    T, B, N = out_h.shape
    zero = consts[3]
    for t in range(T):
        first = t == (T - 1 if reverse else 0)
        for b in range(B):
            for k in range(N):
                if first:
                    h = h0[b, k]
                else:
                    h = out_h[t + 1, b, k] if reverse else out_h[t - 1, b, k]
                out[t, b, k] = _cells.recurrent_input(kind, act, h, zero)


def _consts(alpha, dtype):
    return np.array([alpha, 1.0 - alpha, 1.0, 0.0], dtype=dtype)


def _mode(dtype, batch, n_in, n_out):
    """How the recurrent product of a step runs (see :func:`_recurrent_projection`)."""
    if batch * n_in * n_out < config.BLAS_MIN_WORK:
        return 0
    return 2 if dtype == np.float32 and config.TRANSPOSED_GEMM_FLOAT32 else 1


def forward(kind, act, alpha, xp, w_hh, b_hh, h0, c0, reverse):
    """Run one layer and direction forward.

    Parameters
    ----------
    kind, act : int
        Cell family and nonlinearity codes from :mod:`numrnn.cells`.
    alpha : float
        Leak a in (0, 1].
    xp : ndarray, shape (T, B, G*N)
        Input projection W_ih x_t (+ b_ih) for every step, C order.
    w_hh : ndarray, shape (G*N, N)
    b_hh : ndarray, shape (G*N,)
        Added to W_hh r at every step.  Every cell but GRU uses only the sum of the two
        projections, so b_ih may be added here (b_hh + b_ih) instead of to ``xp``; GRU's b_in
        must be in ``xp``.
    h0, c0 : ndarray, shape (B, N)
    reverse : bool

    Returns
    -------
    out_h : ndarray, shape (T, B, N)
    out_c : ndarray, shape (T, B, N) for LSTM, else shape (1, B, N) (unused)
    aux : ndarray, shape (T, B, AUX_WIDTH*N), what BPTT needs of each step
    bad : ndarray of int64, shape (B,)
        Per sequence, the first time index (in running order) where h held a NaN or inf; -1 if
        it stayed finite.
    """
    T, B, GN = xp.shape
    N = w_hh.shape[1]
    dtype = xp.dtype
    out_h = np.empty((T, B, N), dtype)
    out_c = np.empty((T if kind == cells.KIND_LSTM else 1, B, N), dtype)
    aux = np.empty((T, B, cells.AUX_WIDTH[kind] * N), dtype)
    bad = np.empty(B, np.int64)
    bad.fill(-1)
    args = (kind, act, _consts(alpha, dtype), xp, np.ascontiguousarray(w_hh.T),
            np.ascontiguousarray(w_hh), b_hh, h0, c0, bool(reverse), _mode(dtype, B, N, GN),
            out_h, out_c, aux, bad)
    threads.run(lambda b0, b1: _forward_kernel(*args, b0, b1), B,
                threads.pieces(B, T * B * N * GN))
    return out_h, out_c, aux, bad


def backward(kind, act, alpha, w_hh, h0, c0, out_h, out_c, aux, d_out, dh_n, dc_n, reverse,
             truncate):
    """BPTT through one layer and direction (see :func:`_backward_kernel`).

    Returns
    -------
    dxp : ndarray, shape (T, B, G*N)
        Cotangent of the input projection (the same array as ``dhp`` except for GRU).
    dhp : ndarray, shape (T, B, G*N)
        Cotangent of the recurrent projection W_hh r_t + b_hh.
    dh0, dc0 : ndarray, shape (B, N)
    norm : ndarray of float64, shape (T, B)
        Euclidean norm of dL/dh_t, finite whenever dL/dh_t is.
    bad : ndarray of int64, shape (B,)
        Per sequence, the first time index (in the sweep's order) where dL/dh_t held a NaN or
        inf; -1 if it stayed finite.
    """
    T, B, N = out_h.shape
    GN = w_hh.shape[0]
    dtype = out_h.dtype
    dhp = np.empty((T, B, GN), dtype)
    dxp = np.empty((T, B, GN), dtype) if kind == cells.KIND_GRU else dhp
    dh0 = np.zeros((B, N), dtype)
    dc0 = np.zeros((B, N), dtype)
    norm = np.empty((T, B), np.float64)
    bad = np.empty(B, np.int64)
    bad.fill(-1)
    args = (kind, act, _consts(alpha, dtype), np.ascontiguousarray(w_hh),
            np.ascontiguousarray(w_hh.T), h0, c0, out_h, out_c, aux, d_out, dh_n, dc_n,
            bool(reverse), int(truncate or 0), _mode(dtype, B, GN, N), dxp, dhp, dh0, dc0,
            norm, bad)
    threads.run(lambda b0, b1: _backward_kernel(*args, b0, b1), B,
                threads.pieces(B, T * B * N * GN))
    return dxp, dhp, dh0, dc0, norm, bad


def recurrent_inputs(kind, act, h0, out_h, reverse):
    """The recurrent input r_t of every step, shape (T, B, N) (for the weight gradient)."""
    out = np.empty_like(out_h)
    _recurrent_inputs_kernel(kind, act, _consts(1.0, out_h.dtype), h0, out_h, bool(reverse), out)
    return out


def recurrent_weight_grad(kind, act, dhp, h0, out_h, reverse, out=None):
    """The gradient of W_hh, sum over t of dhp_tᵀ r_t, shape (G*N, N) (into ``out`` if given).

    For every cell but the rate network r_t is h_{t-1}: the states the forward pass stored,
    shifted by one step, so the product reads them in place (no (T, B, N) copy) and adds the step
    where h0 enters.  The rate network's r_t = phi(h_{t-1}) is built by
    :func:`recurrent_inputs`.
    """
    T, B, N = out_h.shape
    d = dhp.reshape(T * B, -1)
    if kind == cells.KIND_RATE:
        return threads.matmul_tn(d, recurrent_inputs(kind, act, h0, out_h, reverse)
                                 .reshape(T * B, N), out=out)
    h = out_h.reshape(T * B, N)
    if reverse:  # step t reads h_{t+1}; h0 enters at t = T-1
        grad = threads.matmul_tn(d[:-B], h[B:], out=out)
        entering = d[-B:]
    else:
        grad = threads.matmul_tn(d[B:], h[:-B], out=out)
        entering = d[:B]
    grad += threads.matmul_tn(entering, h0)
    return grad
