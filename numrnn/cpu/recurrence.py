"""The sequential part of an RNN layer on the CPU: forward recurrence and the BPTT sweep.

Everything that is not sequential (the input projection of all steps, the weight gradients) is one
matrix product outside these kernels, in :mod:`numrnn.network`.  Each kernel runs one
(layer, direction) over the whole sequence and the whole batch.

Kernels are made per cell definition (:class:`numrnn.Cell`): the generic kernels below call
``row_forward``, ``row_backward``, ``read_row`` and ``read_pullback_row``, loops over one
sequence's units written for the cell by :func:`_row_functions` from the cell's own functions
(their CPU twins, with an ``exp`` and ``tanh`` that LLVM vectorises: the row loops run 2-4x faster
than with libm's).  Each cell's kernels are compiled once per dtype and cached on disk under the
cell's fingerprint (the hash of its code), so an edited cell is never served a stale kernel.

Tiers: ``_make_*`` build the kernels (``@njit`` over arrays and a range of sequences, writing
preallocated outputs); ``forward``/``backward`` allocate and hand disjoint ranges of the batch to
numrnn's threads (:mod:`numrnn.cpu.threads`).
"""
import types

import numpy as np
from numba import njit
from numba import types as types_
from numba.extending import intrinsic, register_jitable

from .. import config, norms
from ..cells import codegen
from ..cells.twins import Twins
from . import blas, elementary, products, scratch, sync, threads

# error_model="numpy": a float division is IEEE (no zero check that would keep loops scalar).
_JIT = dict(cache=True, fastmath=config.FASTMATH, nogil=True, error_model="numpy")

#: How the kernels' helpers (the cell's twins, its row loops, the gradient norm) are compiled:
#: each on its own, with LLVM's alwaysinline attribute, so that LLVM inlines every call before
#: it vectorises (its cost model does not inline the larger ones, and a call left in a row loop
#: keeps it scalar), with the kernels' error model and fastmath.  They were inlined at Numba's
#: IR level before, which typed each helper's body again at every call site: this way a cell's
#: kernels compile 25-35% faster (LSTM float64 forward + vjp, first call on an empty cache, 29.2
#: -> 20.2 s), with the same bits (benchmarks/README.md, "What the test suite compiles").
_FORCED = dict(forceinline=True, error_model="numpy", fastmath=config.FASTMATH)
#: The CPU twins of cell functions, with a vectorisable exp and tanh.
twins = Twins(elementary.cpu_math(), jit_options=_FORCED)
#: The gradient norm, inlined too: as a call, once per row and step, it cost the BPTT sweep a
#: third more at N = 32 (float32), where inlined its eight partial sums are one vector.
_gradient_norm = Twins(None, jit_options=_FORCED)(norms.gradient_norm)
_squared_sum = Twins(None, jit_options=_FORCED)(norms.squared_sum)
_scaled_norm = Twins(None, jit_options=_FORCED)(norms.scaled_norm)


# --- the row loops of one cell, generated from its definition --------------------------------
#
# A loop whose body calls scalar functions is vectorised; one that calls a function taking arrays
# keeps reference-counting calls and is not.  So the loops are written out per cell, with the
# gate layout's loads (gate g of unit j at g*n + j) in the loop and the cell's scalar functions
# called in it.  ``n = max(n, 0)`` lets LLVM prove g*n + j >= 0 (no wraparound select).
# Stores: LLVM does not vectorise a loop that stores to one array at offsets a runtime n apart
# (k*n + j: "unsafe indirect dependence"); it does when they are a constant apart.  So aux is
# unit-major (aux[j*A + k]), and BPTT writes a step's cotangents unit-major into a scratch row
# first, then gate-major into dhp/dxp (what the products read) one gate per loop.  Measured on
# the 2-core EPYC, B = 32, N = 128, ns per unit and step: LSTM forward 40.7 -> 4.8 (float32),
# LSTM backward 12.4 -> 3.6 (float32) and 18.9 -> 6.5 (float64).
# States: p0, p1 before the step, q0, q1 after it (p1, q1 unused for one-state cells).


def _row_functions(cell):
    """Generate and compile the row loops of ``cell``: a dict of jitable functions."""
    G, P, A = cell.gate_count, cell.state_count, cell.aux_count
    prev = [f"p{p}[j]" for p in range(P)]
    new = [f"s{p}" for p in range(P)]
    aux = [f"a{k}" for k in range(A)]
    src = codegen.Source()
    # forward
    src("def row_forward(xp, hp, n, m, p0, p1, aux, q0, q1, opts, one):").indent()
    src("n = max(n, 0)")
    src("m = max(m, 0)")
    codegen.options_lines(src, cell)
    src("for j in range(m):").indent()
    if cell.separate:
        pre = [f"xp[{g} * n + j]" for g in range(G)] + [f"hp[{g} * n + j]" for g in range(G)]
    else:
        pre = [f"xp[{g} * n + j] + hp[{g} * n + j]" for g in range(G)]
    codegen.step_lines(src, cell, pre, prev, new, aux)
    for p in range(P):
        src(f"q{p}[j] = s{p}")
    for k in range(A):
        src(f"aux[j * {A} + {k}] = a{k}")
    src.dedent().dedent()
    # backward: the carried cotangents c0, c1 enter, the direct parts of the previous state's leave
    W = 2 * G if cell.separate else G  # the cotangents of the pre-activations, per unit
    src("def row_backward(n, m, c0, c1, d_out, p0, p1, q0, q1, aux, dxp, dhp, sc, opts, one):")
    src.indent()
    src("n = max(n, 0)")
    src("m = max(m, 0)")
    codegen.options_lines(src, cell)
    src("for j in range(m):").indent()
    d_new = ["c0[j] + d_out[j]"] + [f"c{p}[j]" for p in range(1, P)]
    if cell.separate:
        d_pre = [f"dx{g}" for g in range(G)] + [f"dh{g}" for g in range(G)]
    else:
        d_pre = [f"dz{g}" for g in range(G)]
    d_prev = [f"e{p}" for p in range(P)]
    codegen.vjp_lines(src, cell, d_new, prev, [f"q{p}[j]" for p in range(P)],
                      [f"aux[j * {A} + {k}]" for k in range(A)], d_pre, d_prev)
    for w, name in enumerate(d_pre):
        src(f"sc[j * {W} + {w}] = {name}")
    for p in range(P):
        src(f"c{p}[j] = e{p}")
    src.dedent()
    for w in range(W):  # gate-major, as the products read them: one store stream per loop
        dst = "dxp" if cell.separate and w < G else "dhp"
        src("for j in range(m):").indent()
        src(f"{dst}[{w % G} * n + j] = sc[j * {W} + {w}]").dedent()
    src.dedent()
    # the recurrent input r of one sequence, (R*N,), and the pullback through it
    src("def read_row(p0, p1, n, r, opts, one):").indent()
    src("n = max(n, 0)")
    codegen.options_lines(src, cell)
    for q, p in enumerate(cell.read_index):
        src("for k in range(n):").indent()
        src(f"r[{q} * n + k] = {codegen.read_expr(cell, f'p{p}[k]')}").dedent()
    src.dedent()
    src("def read_pullback_row(tmp, p0, p1, n, m, c0, c1, opts, one):").indent()
    src("n = max(n, 0)")
    src("m = max(m, 0)")
    codegen.options_lines(src, cell)
    for q, p in enumerate(cell.read_index):
        grad = codegen.read_grad_expr(cell, f"p{p}[k]")
        src("for k in range(m):").indent()
        src(f"c{p}[k] += tmp[{q} * n + k]" + (f" * {grad}" if grad else "")).dedent()
    src.dedent()
    # the local derivatives of the step, for the analysis (see numrnn.cpu.jacobians): with
    # unit tangents, column by column, from the cell's jvp
    n_pre = cell.pre_count
    src("def row_coefficients(n, p0, p1, q0, q1, aux, opts, one, rec, inp, direct, rgrad):")
    src.indent()
    src("n = max(n, 0)")
    codegen.options_lines(src, cell)
    src("zero = one - one")
    src("for j in range(n):").indent()
    args_new = [f"q{p}[j]" for p in range(P)]
    args_aux = [f"aux[j * {A} + {k}]" for k in range(A)]
    outs = [f"t{p}" for p in range(P)]
    for i in range(n_pre + P):
        unit = ["one" if k == i else "zero" for k in range(n_pre + P)]
        codegen.jvp_lines(src, cell, unit[:n_pre], unit[n_pre:], prev, args_new, args_aux, outs)
        for p in range(P):
            if i >= n_pre:
                src(f"direct[{p}, {i - n_pre}, j] = t{p}")
            elif cell.separate and i < G:
                src(f"inp[{p}, {i} * n + j] = t{p}")
            else:
                src(f"rec[{p}, {i % G} * n + j] = t{p}")
    for q, p in enumerate(cell.read_index):
        grad = codegen.read_grad_expr(cell, f"p{p}[j]")
        src(f"rgrad[{q}, j] = {grad or 'one'}")
    src.dedent().dedent()
    namespace = codegen.compile_functions(src, cell, twins,
                                          f"<numrnn cpu rows of cell {cell.name!r}>")
    return {name: register_jitable(**_FORCED)(namespace[name])
            for name in ("row_forward", "row_backward", "read_row", "read_pullback_row",
                         "row_coefficients")}


# Every view a kernel takes (out_h[t, b], hp[i], p0[b], ...) increments and decrements the
# reference count of the memory it views, with atomic instructions that also drain the store
# buffer; LLVM's reference-count pruning removes few of them in a step's loop.  At B = 1 and
# N = 32 they were most of a step: 63% of the forward kernel's time in `perf` (NRT_incref and
# NRT_decref), 359 -> 173 ns a step (tanh float32, one thread) without them.  So the kernels
# take their views of arrays without a reference (:func:`_unmanaged`), with the same bits.

@intrinsic
def _unmanaged(typingctx, arrays):
    """The tuple ``arrays`` with every array freed of its reference to the memory it views
    (meminfo and parent null): views taken of them cost no atomic reference counting.  Only for
    arrays that outlive every use of the result: a kernel's arguments (the caller holds them),
    and its own allocations kept alive to the end by :func:`_keep`."""
    if not isinstance(arrays, types_.BaseTuple) or \
            not all(isinstance(t, types_.Array) for t in arrays):
        return None

    def codegen(context, builder, signature, args):
        out = []
        for i, ty in enumerate(signature.args[0]):
            src = context.make_array(ty)(context, builder,
                                         value=builder.extract_value(args[0], i))
            dst = context.make_array(ty)(context, builder)
            for name in ("nitems", "itemsize", "data", "shape", "strides"):
                setattr(dst, name, getattr(src, name))
            dst.meminfo = context.get_constant_null(types_.MemInfoPointer(types_.voidptr))
            dst.parent = context.get_constant_null(types_.pyobject)
            out.append(dst._getvalue())
        return context.make_tuple(builder, signature.return_type, out)

    return arrays(arrays), codegen


@register_jitable(**_FORCED)
def _keep(arrays):
    """Nothing: a use that keeps ``arrays`` (a tuple) alive to this point (see
    :func:`_unmanaged`)."""
    return len(arrays)


@register_jitable(**_FORCED)
def _count_nonfinite(v, n, zero):
    """How many of v[0..n) are NaN or inf (x - x is 0 for finite x and NaN otherwise)."""
    n = max(n, 0)
    c = 0
    for j in range(n):
        x = v[j]
        c += 0 if x - x == zero else 1
    return c


@register_jitable(**_FORCED)
def _entering(first, t, reverse, h0, c0, out_h, out_c, two_states):
    """The states (p0, p1) entering step t, (B, N) each: h0, c0 at the first step in running
    order, else the outputs of the step before it in that order (p1: c0, unused, for one-state
    cells)."""
    if first:
        return h0, c0
    tp = t + 1 if reverse else t - 1
    return out_h[tp], (out_c[tp] if two_states else c0)


@register_jitable(**_FORCED)
def _previous(p0, p1, j0, j1, prev, two_states):
    """prev[0, j0:j1] = p0[j0:j1] (and prev[1] from p1 for two-state cells): the states entering a
    step, copied out of the array the step writes its new states into.  LLVM does not vectorise
    a row loop that reads out_h[t-1] and writes out_h[t] (one array, a runtime distance apart);
    the copy costs one pass over N values and made the LSTM step's row loop 8x faster (41 -> 4.8
    ns per unit, float32)."""
    for j in range(j0, j1):
        prev[0, j] = p0[j]
    if two_states:
        for j in range(j0, j1):
            prev[1, j] = p1[j]


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


# --- the kernels, generic over the cell ----------------------------------------------------------
#
# Each ``_make_*`` returns a plain function whose globals are then swapped for the cell's (see
# :func:`_for_cell`); its closure holds the cell's fingerprint, which Numba's on-disk cache keys
# on (with the bytecode), so kernels of different cells never share a cache entry.
# ``DIRECT`` (the product reads the first state as it is, as every cell but the rate network and
# coRNN does) and ``TWO_STATES`` are compile-time constants of each cell's kernels.


#: The names each cell's kernels bind (in the globals :func:`_for_cell` gives them): the
#: generic kernels below are never compiled with these values.
DIRECT = TWO_STATES = None
row_forward = row_backward = read_row = read_pullback_row = row_coefficients = None
recurrent_projection = recurrent_pullback = gradient_norm = None
norms_squared_sum = norms_scaled = norms_safe = None


def _make_projection(fingerprint):
    def _recurrent_projection(p0, p1, b0, w_hh_t, w_hh, b_hh, mode, opts, one, rec, rec_t,
                              hp_t, hp, pa, tile):
        """hp = r Mᵀ + b_hh for the rows b0 <= b < b0 + nb of one step, r = the recurrent input
        read from the states (p0, p1) entering it.

        ``mode`` 0: compiled loops (small products); 1: BLAS gemm; 2: BLAS on the transposes,
        hpᵀ = M rᵀ, with r written transposed into ``rec_t`` (R*N, nb) and the result ``hp_t``
        (G*N, nb) read back transposed with the bias added (the copies are the loads the step
        makes anyway).  Mode 2 exists for OpenBLAS in float32 with few rows (a thread's share of
        the batch): there it runs at 42-64 GFLOP/s against 24-32 for the direct form (nb = 16,
        N, G*N in 128..2048, 2-core EPYC); in float64 the two forms run at the same speed.
        3: compiled dot products of rows of r with rows of M
        (:func:`numrnn.cpu.products.times_transpose`), for AVX-512 (:func:`product_mode`); 4:
        the packed products (:func:`numrnn.cpu.products.times_packed`), M packed once for the
        pass and passed in ``w_hh_t``'s place (pa, tile: their scratch).
        """
        fingerprint  # noqa: B018 - in the cache key
        nb, GN = hp.shape
        N = p0.shape[1]
        RN = rec.shape[1]
        if DIRECT:
            r = p0[b0:b0 + nb]
        else:
            for i in range(nb):
                read_row(p0[b0 + i], p1[b0 + i], N, rec[i], opts, one)
            r = rec
        if mode == 2:
            for i in range(nb):
                ri = r[i]
                for k in range(RN):
                    rec_t[k, i] = ri[k]
            np.dot(w_hh, rec_t, hp_t)
            for i in range(nb):
                row = hp[i]
                for q in range(GN):
                    row[q] = hp_t[q, i] + b_hh[q]
            return
        if mode == 4:
            products.times_packed(r[:, :], w_hh_t[0], GN, hp[:, :], pa, tile)
        elif mode == 3:
            products.times_transpose(r, w_hh, hp)
        else:
            _matmul(r, w_hh_t, hp, mode == 1)
        for i in range(nb):
            row = hp[i]
            for q in range(GN):
                row[q] += b_hh[q]
    return _recurrent_projection


def _make_pullback(fingerprint):
    def _recurrent_pullback(dg, p0, p1, b0, w_hh, w_hh_t, mode, opts, one, dg_t, tmp_t, tmp,
                            carry0, carry1, pa, tile):
        """carry += the pullback of dg (nb, G*N), the cotangent of the recurrent projection,
        through M and the read of the states, for the rows b0 <= b < b0 + nb of one step.

        ``mode`` as in the projection (mode 2: dgᵀ into ``dg_t``, Mᵀ dgᵀ into ``tmp_t``; mode 3:
        dot products of rows of dg with rows of Mᵀ; mode 4: Mᵀ packed, in ``w_hh_t``'s place).
        """
        fingerprint  # noqa: B018 - in the cache key
        nb, N = carry0.shape
        GN = dg.shape[1]
        RN = tmp.shape[1]
        if mode == 2:
            for i in range(nb):
                for q in range(GN):
                    dg_t[q, i] = dg[i, q]
            np.dot(w_hh_t, dg_t, tmp_t)
            for i in range(nb):
                row = tmp[i]
                for k in range(RN):
                    row[k] = tmp_t[k, i]
        elif mode == 4:
            products.times_packed(dg[:, :], w_hh_t[0], RN, tmp[:, :], pa, tile)
        elif mode == 3:
            products.times_transpose(dg, w_hh_t, tmp)
        else:
            _matmul(dg, w_hh, tmp, mode == 1)
        for i in range(nb):
            b = b0 + i
            read_pullback_row(tmp[i], p0[b], p1[b], N, N, carry0[i], carry1[i], opts, one)
    return _recurrent_pullback


def _make_forward(fingerprint):
    def _forward_kernel(opts, one, xp, w_hh_t, w_hh, b_hh, h0, c0, reverse, mode, out_h,
                        out_c, aux, bad, b0, b1):
        """Forward recurrence of one layer and direction for the sequences b0 <= b < b1.

        xp (T, B, G*N): input projection and b_hh (G*N,): bias of the recurrent one (see
        :func:`forward`); w_hh_t (R*N, G*N): M transposed and w_hh (G*N, R*N), both C order;
        h0, c0 (B, N): the initial states (c0: the second state, unused by one-state cells);
        ``opts``: the cell's options in the kernel's dtype, ``one`` = 1 in it; ``mode``: how the
        recurrent product runs (:func:`_recurrent_projection`).
        Writes out_h (T, B, N), out_c (T, B, N) (two-state cells only), aux (T, B, A*N) for its
        rows (unit-major: aux[t, b, j*A + k]), and bad (B,): the first time index t at which the output state of sequence b held
        a NaN or inf (-1: never).
        ``reverse`` runs t = T-1 .. 0.  Sequences are independent, so disjoint ranges can run on
        different threads with no synchronisation.
        """
        fingerprint  # noqa: B018 - in the cache key
        T = xp.shape[0]
        N = h0.shape[1]
        nb = b1 - b0
        zero = one - one
        GN, RN = w_hh.shape
        owned = (np.empty((nb, RN), xp.dtype), np.empty((nb, GN), xp.dtype),
                 np.empty((RN, nb), xp.dtype), np.empty((GN, nb), xp.dtype),
                 np.empty((2, N), xp.dtype))
        rec, hp, rec_t, hp_t, prev = _unmanaged(owned)
        packing = products.scratch(xp)
        pa, tile = _unmanaged(packing)
        xp, w_hh_t, w_hh, b_hh, h0, c0, out_h, out_c, aux, bad, opts = _unmanaged(
            (xp, w_hh_t, w_hh, b_hh, h0, c0, out_h, out_c, aux, bad, opts))
        for s in range(T):
            t = T - 1 - s if reverse else s
            p0, p1 = _entering(s == 0, t, reverse, h0, c0, out_h, out_c, TWO_STATES)
            recurrent_projection(p0, p1, b0, w_hh_t, w_hh, b_hh, mode, opts, one, rec, rec_t,
                                 hp_t, hp, pa, tile)
            q1 = out_c[t] if TWO_STATES else c0
            for i in range(nb):
                b = b0 + i
                ohb = out_h[t, b]
                _previous(p0[b], p1[b], 0, N, prev, TWO_STATES)
                row_forward(xp[t, b], hp[i], N, N, prev[0], prev[1], aux[t, b], ohb, q1[b], opts,
                            one)
                if bad[b] < 0 and _count_nonfinite(ohb, N, zero) > 0:
                    bad[b] = t
        _keep(owned)
        _keep(packing)
    return _forward_kernel


def _make_backward(fingerprint):
    def _backward_kernel(opts, one, w_hh, w_hh_t, h0, c0, out_h, out_c, aux, d_out, dh_n,
                         dc_n, reverse, truncate, mode, dxp, dhp, dh0, dc0, norm, bad, b0, b1):
        """Backpropagation through time of one layer and direction, sequences b0 <= b < b1.

        d_out (T, B, N): cotangent of the outputs; dh_n, dc_n (B, N): of the final states.
        ``truncate`` > 0 cuts the time axis into chunks [0, k), [k, 2k), ...: no state gradient
        crosses a chunk boundary (the state entering a chunk is a constant), except into h0/c0.
        Writes dhp (T, B, G*N) (cotangent of the recurrent projection), dxp (cells that see the
        projections apart: of the input projection; pass the same array as dhp otherwise),
        dh0, dc0 (B, N), norm (T, B) float64, the Euclidean norm of dL/dh_t (finite whenever
        dL/dh_t is), and bad (B,): the first time index t, in the sweep's order, at which
        dL/dh_t of sequence b held a NaN or inf (-1: never).
        """
        fingerprint  # noqa: B018 - in the cache key
        T, _, N = out_h.shape
        GN = w_hh.shape[0]
        RN = w_hh.shape[1]
        nb = b1 - b0
        zero = one - one
        dtype = out_h.dtype
        owned = (np.empty((nb, N), dtype), np.empty((nb, N), dtype), np.empty((nb, RN), dtype),
                 np.empty((GN, nb), dtype), np.empty((RN, nb), dtype), np.empty(2 * GN, dtype))
        carry, carry_c, tmp, dg_t, tmp_t, sc = _unmanaged(owned)
        packing = products.scratch(out_h)
        pa, tile = _unmanaged(packing)
        (opts, w_hh, w_hh_t, h0, c0, out_h, out_c, aux, d_out, dh_n, dc_n, dxp, dhp, dh0, dc0,
         norm, bad) = _unmanaged((opts, w_hh, w_hh_t, h0, c0, out_h, out_c, aux, d_out, dh_n,
                                  dc_n, dxp, dhp, dh0, dc0, norm, bad))
        for i in range(nb):
            for j in range(N):
                carry[i, j] = dh_n[b0 + i, j]
                carry_c[i, j] = dc_n[b0 + i, j]
        for s in range(T):
            t = s if reverse else T - 1 - s
            first = s == T - 1
            p0, p1 = _entering(first, t, reverse, h0, c0, out_h, out_c, TWO_STATES)
            q1 = out_c[t] if TWO_STATES else c0
            for i in range(nb):
                b = b0 + i
                cr, dob = carry[i], d_out[t, b]
                nrm = gradient_norm(cr, dob)
                row_backward(N, N, cr, carry_c[i], dob, p0[b], p1[b], out_h[t, b], q1[b],
                             aux[t, b], dxp[t, b], dhp[t, b], sc, opts, one)
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
            recurrent_pullback(dhp[t, b0:b1], p0, p1, b0, w_hh, w_hh_t, mode, opts, one, dg_t,
                               tmp_t, tmp, carry, carry_c, pa, tile)
            if first:
                for i in range(nb):
                    for j in range(N):
                        dh0[b0 + i, j] = carry[i, j]
                        dc0[b0 + i, j] = carry_c[i, j]
        _keep(owned)
        _keep(packing)
    return _backward_kernel


# --- one step split over threads: for small batches --------------------------------------------
#
# The batch split above leaves cores idle when B is below the number of blocks (one sequence
# on two cores runs on one), and gives each thread a product of a few rows that reads all of M
# at every step when B is a small multiple of it.  Then each step is split by units instead:
# unit block [j0, j1) owns rows g*N + j0 .. g*N + j1 of M for every gate g, computes them, runs
# the cell's row loop on its units and writes its part of h_t; a barrier (:mod:`numrnn.cpu.sync`)
# ends the step.
# The blocks' edges depend only on N and the machine's block count (multiples of 16 units, so
# two blocks never write one cache line), never on the thread count: each block's arithmetic is
# fixed, so the bits are the same on 1, 2 or 16 threads.  A thread runs its share of the blocks
# (``share``) one after the other.


@register_jitable(**_FORCED)
def _rows_product(r, w_hh, c0, c1, b_hh, hp, rec_t, hp_t, dot):
    """hp[:, c0:c1] = r M[c0:c1]ᵀ + b_hh[c0:c1] for every row of r (nb, R*N): a block of rows of
    the step's recurrent product, through BLAS (gemv for one row; for several, gemm on the
    transposes, rec_t = rᵀ), or for several rows with ``dot`` compiled dot products
    (:func:`numrnn.cpu.products.times_transpose`).  Compiled loops over a block's rows
    measured 1.7x slower than gemv here (B = 1, N = 128, 64-row blocks), where over whole rows
    they are level with it."""
    nb = r.shape[0]
    if nb == 1:
        np.dot(w_hh[c0:c1], r[0], hp[0, c0:c1])
    elif dot:
        products.times_transpose(r, w_hh[c0:c1], hp[:, c0:c1])
    else:
        out = hp_t[:c1 - c0]
        np.dot(w_hh[c0:c1], rec_t, out)
        for i in range(nb):
            row = hp[i]
            for q in range(c0, c1):
                row[q] = out[q - c0, i]
    for i in range(nb):
        row = hp[i]
        for q in range(c0, c1):
            row[q] += b_hh[q]


@register_jitable(**_FORCED)
def _rows_pullback(dg, w_hh_t, k0, k1, tmp, dg_t, tmp_t, dot):
    """tmp[:, k0:k1] = dg M[:, k0:k1] for every row of dg (nb, G*N): a block of columns of the
    pullback through the step's recurrent product (rows k0..k1 of Mᵀ; dg_t = dgᵀ; ``dot`` as
    in :func:`_rows_product`)."""
    nb = dg.shape[0]
    if nb == 1:
        np.dot(w_hh_t[k0:k1], dg[0], tmp[0, k0:k1])
        return
    if dot:
        products.times_transpose(dg, w_hh_t[k0:k1], tmp[:, k0:k1])
        return
    out = tmp_t[:k1 - k0]
    np.dot(w_hh_t[k0:k1], dg_t, out)
    for i in range(nb):
        row = tmp[i]
        for k in range(k0, k1):
            row[k] = out[k - k0, i]


def _make_forward_split(fingerprint):
    def _forward_split_kernel(opts, one, xp, w_hh, b_hh, h0, c0, reverse, out_h, out_c, aux,
                              bad, edges, dot, flags, me, n_threads):
        """Forward recurrence of one layer and direction, every sequence, the units of thread
        ``me`` of ``n_threads``: unit blocks [edges[k], edges[k+1]) for k in its share.

        Arguments as :func:`_forward_kernel`'s, except: ``bad`` (n_blocks, B): the first step,
        in running order, at which a unit of the block held a NaN or inf (-1: never);
        ``dot``: several sequences' products as compiled dot products (:func:`_rows_product`);
        ``flags``: the barrier's (:mod:`numrnn.cpu.sync`), zero at the start.
        """
        fingerprint  # noqa: B018 - in the cache key
        T = xp.shape[0]
        B, N = h0.shape
        GN = w_hh.shape[0]
        G = GN // N
        RN = w_hh.shape[1]
        A = aux.shape[2] // N
        zero = one - one
        n_blocks = edges.shape[0] - 1
        k_lo = me * n_blocks // n_threads
        k_hi = (me + 1) * n_blocks // n_threads
        rows = 0
        for blk in range(n_blocks):
            rows = max(rows, edges[blk + 1] - edges[blk])
        owned = (np.empty((B, RN), xp.dtype), np.empty((B, GN), xp.dtype),  # this thread's
                 np.empty((RN, B), xp.dtype), np.empty((rows, B), xp.dtype),  # scratch
                 np.empty((2, N), xp.dtype))
        rec, hp, rec_t, hp_t, prev = _unmanaged(owned)
        opts, xp, w_hh, b_hh, h0, c0, out_h, out_c, aux, bad, edges, flags = _unmanaged(
            (opts, xp, w_hh, b_hh, h0, c0, out_h, out_c, aux, bad, edges, flags))
        for s in range(T):
            t = T - 1 - s if reverse else s
            p0, p1 = _entering(s == 0, t, reverse, h0, c0, out_h, out_c, TWO_STATES)
            if DIRECT:
                r = p0
            else:  # every thread reads the whole state (N values): no second barrier
                for b in range(B):
                    read_row(p0[b], p1[b], N, rec[b], opts, one)
                r = rec
            if B > 1 and not dot:
                for b in range(B):
                    rb = r[b]
                    for k in range(RN):
                        rec_t[k, b] = rb[k]
            q1 = out_c[t] if TWO_STATES else c0
            for blk in range(k_lo, k_hi):
                j0, j1 = edges[blk], edges[blk + 1]
                for g in range(G):
                    _rows_product(r, w_hh, g * N + j0, g * N + j1, b_hh, hp, rec_t, hp_t,
                                  dot)
                for b in range(B):
                    ohb = out_h[t, b]
                    _previous(p0[b], p1[b], j0, j1, prev, TWO_STATES)
                    row_forward(xp[t, b, j0:], hp[b, j0:], N, j1 - j0, prev[0, j0:],
                                prev[1, j0:], aux[t, b, j0 * A:], ohb[j0:], q1[b, j0:], opts,
                                one)
                    if bad[blk, b] < 0 and _count_nonfinite(ohb[j0:j1], j1 - j0, zero) > 0:
                        bad[blk, b] = s
            sync.arrive_and_wait(flags, me, n_threads, s + 1)
        _keep(owned)
    return _forward_split_kernel


def _make_backward_split(fingerprint):
    def _backward_split_kernel(opts, one, w_hh, w_hh_t, h0, c0, out_h, out_c, aux, d_out,
                               dh_n, dc_n, reverse, truncate, dxp, dhp, dh0, dc0,
                               squares, norms, carry, carry_c, edges, dot, flags, me,
                               n_threads):
        """BPTT of one layer and direction, every sequence, the units of thread ``me`` (see
        :func:`_forward_split_kernel`); arguments as :func:`_backward_kernel`'s, except:
        ``squares``, ``norms`` (T, B, n_blocks) float64: per unit block, the sum of squares of
        dL/dh_t over its units and its norm (scaled where the squares leave float64's safe
        range), combined by :func:`_combine_norms`; ``carry``, ``carry_c`` (B, N): the carried
        cotangents, shared (each thread touches its units).

        One barrier per step, between the cell's backward (every unit's dhp_t written) and the
        pullback through Mᵀ, which reads all of dhp_t for its own rows of Mᵀ.
        """
        fingerprint  # noqa: B018 - in the cache key
        T, B, N = out_h.shape
        GN = w_hh.shape[0]
        R = w_hh.shape[1] // N
        A = aux.shape[2] // N
        zero = one - one
        n_blocks = edges.shape[0] - 1
        k_lo = me * n_blocks // n_threads
        k_hi = (me + 1) * n_blocks // n_threads
        rows = 0
        for blk in range(n_blocks):
            rows = max(rows, edges[blk + 1] - edges[blk])
        dtype = out_h.dtype
        owned = (np.empty((B, R * N), dtype), np.empty((GN, B), dtype),  # this thread's scratch
                 np.empty((rows, B), dtype), np.empty(2 * GN, dtype))
        tmp, dg_t, tmp_t, sc = _unmanaged(owned)
        (opts, w_hh, w_hh_t, h0, c0, out_h, out_c, aux, d_out, dh_n, dc_n, dxp, dhp, dh0, dc0,
         squares, norms, carry, carry_c, edges, flags) = _unmanaged(
            (opts, w_hh, w_hh_t, h0, c0, out_h, out_c, aux, d_out, dh_n, dc_n, dxp, dhp, dh0,
             dc0, squares, norms, carry, carry_c, edges, flags))
        for blk in range(k_lo, k_hi):
            for b in range(B):
                for j in range(edges[blk], edges[blk + 1]):
                    carry[b, j] = dh_n[b, j]
                    carry_c[b, j] = dc_n[b, j]
        phase = 0
        for s in range(T):
            t = s if reverse else T - 1 - s
            first = s == T - 1
            p0, p1 = _entering(first, t, reverse, h0, c0, out_h, out_c, TWO_STATES)
            q1 = out_c[t] if TWO_STATES else c0
            for blk in range(k_lo, k_hi):
                j0, j1 = edges[blk], edges[blk + 1]
                for b in range(B):
                    cr, dob = carry[b], d_out[t, b]
                    sq = norms_squared_sum(cr[j0:j1], dob[j0:j1])
                    squares[t, b, blk] = sq
                    if sq >= norms_safe and sq < np.inf:
                        norms[t, b, blk] = np.sqrt(sq)
                    else:
                        norms[t, b, blk] = norms_scaled(cr[j0:j1], dob[j0:j1])
                    row_backward(N, j1 - j0, cr[j0:], carry_c[b, j0:], dob[j0:], p0[b, j0:],
                                 p1[b, j0:], out_h[t, b, j0:], q1[b, j0:], aux[t, b, j0 * A:],
                                 dxp[t, b, j0:], dhp[t, b, j0:], sc, opts, one)
            cut = False
            if truncate > 0 and not first:
                cut = ((t + 1) % truncate == 0) if reverse else (t % truncate == 0)
            if cut:  # the state entering the chunk is a constant: nothing to pull back
                for blk in range(k_lo, k_hi):
                    for b in range(B):
                        for j in range(edges[blk], edges[blk + 1]):
                            carry[b, j] = zero
                            carry_c[b, j] = zero
                continue
            phase += 1
            sync.arrive_and_wait(flags, me, n_threads, phase)
            dg = dhp[t]
            if B > 1 and not dot:
                for b in range(B):
                    for q in range(GN):
                        dg_t[q, b] = dg[b, q]
            for blk in range(k_lo, k_hi):
                j0, j1 = edges[blk], edges[blk + 1]
                for q in range(R):
                    _rows_pullback(dg, w_hh_t, q * N + j0, q * N + j1, tmp, dg_t, tmp_t,
                                   dot)
                for b in range(B):
                    read_pullback_row(tmp[b, j0:], p0[b, j0:], p1[b, j0:], N, j1 - j0,
                                      carry[b, j0:], carry_c[b, j0:], opts, one)
                    if first:
                        for j in range(j0, j1):
                            dh0[b, j] = carry[b, j]
                            dc0[b, j] = carry_c[b, j]
        _keep(owned)
    return _backward_split_kernel


def _make_reads(fingerprint):
    def _reads_kernel(opts, one, h0, c0, out_h, out_c, reverse, out):
        """out[t] = the recurrent input r_t (T, B, R*N) read from the states entering step t."""
        fingerprint  # noqa: B018 - in the cache key
        T, B, N = out_h.shape
        for t in range(T):
            first = t == (T - 1 if reverse else 0)
            tp = t + 1 if reverse else t - 1
            for b in range(B):
                if first:
                    read_row(h0[b], c0[b], N, out[t, b], opts, one)
                elif TWO_STATES:
                    read_row(out_h[tp, b], out_c[tp, b], N, out[t, b], opts, one)
                else:
                    read_row(out_h[tp, b], c0[b], N, out[t, b], opts, one)
    return _reads_kernel


def _make_coefficients(fingerprint):
    def _coefficients_kernel(opts, one, h0, c0, out_h, out_c, aux, reverse, rec, inp, direct,
                             rgrad):
        """Per-step local derivatives of one (layer, direction) along its trajectory, for the
        tangent maps of :mod:`numrnn.cpu.jacobians`: rec, inp (T, B, P, G*N): d s'_p / d(row
        g*N + j of the recurrent, input projection) (one array twice for summed projections);
        direct (T, B, P, P, N): d s'_p / d s_p' not through M; rgrad (T, B, R, N): dr_q/ds."""
        fingerprint  # noqa: B018 - in the cache key
        T, B, N = out_h.shape
        for t in range(T):
            first = t == (T - 1 if reverse else 0)
            tp = t + 1 if reverse else t - 1
            for b in range(B):
                if first:
                    p0 = h0[b]
                    p1 = c0[b]
                else:
                    p0 = out_h[tp, b]
                    p1 = out_c[tp, b] if TWO_STATES else c0[b]
                q1 = out_c[t, b] if TWO_STATES else c0[b]
                row_coefficients(N, p0, p1, out_h[t, b], q1, aux[t, b], opts, one, rec[t, b],
                                 inp[t, b], direct[t, b], rgrad[t, b])
    return _coefficients_kernel


_INLINED = None


def _inlined_sources():
    """A hash of the modules whose functions are compiled into the kernels: Numba's on-disk cache
    checks only the file of the function it compiles (this one), so an edit of the barrier, the
    norms, exp/tanh or the products (their tile's size, inlined in the kernels' scratch) would
    otherwise be served the stale cached kernel."""
    global _INLINED
    if _INLINED is None:
        import hashlib
        import inspect

        from ..cells import twins as twins_module
        digest = hashlib.sha256()
        for module in (sync, norms, elementary, codegen, twins_module, products):
            digest.update(inspect.getsource(module).encode())
        _INLINED = digest.hexdigest()[:8]
    return _INLINED


def _for_cell(make, cell, namespace, inline=False):
    """The kernel ``make`` returns, with the cell's globals, compiled (and cached) with Numba;
    ``inline``: compiled only where it is called, inside that function (the kernels that run
    as :mod:`numrnn.cpu.threads` jobs)."""
    fingerprint = f"{cell.fingerprint()}{_inlined_sources()}"
    generic = make(fingerprint)
    glob = dict(globals())
    glob.update(namespace)
    # a name of its own: Numba names compiled code by qualified name and a per-process counter,
    # so two cells' kernels compiled in different processes could share a symbol, and a process
    # loading both from the cache would run the first for the second
    name = f"{generic.__name__}_{fingerprint}"
    fn = types.FunctionType(generic.__code__, glob, name, None, generic.__closure__)
    fn.__qualname__ = f"{generic.__qualname__}_{fingerprint}"
    return njit(**_JIT, inline="always" if inline else "never")(fn)


class CellKernels:
    """The compiled CPU kernels of one cell definition (made by :func:`kernels`)."""

    def __init__(self, cell):
        self.cell = cell
        rows = _row_functions(cell)
        ns = dict(rows, DIRECT=cell.read_map is None and cell.read_index == (0,),
                  TWO_STATES=cell.state_count == 2, gradient_norm=_gradient_norm,
                  norms_squared_sum=_squared_sum, norms_scaled=_scaled_norm,
                  norms_safe=norms.SAFE_SQUARES)
        ns["recurrent_projection"] = _for_cell(_make_projection, cell, ns)
        ns["recurrent_pullback"] = _for_cell(_make_pullback, cell, ns)
        self.direct = ns["DIRECT"]
        self.forward = _for_cell(_make_forward, cell, ns, inline=True)
        self.backward = _for_cell(_make_backward, cell, ns, inline=True)
        self.forward_split = _for_cell(_make_forward_split, cell, ns, inline=True)
        self.backward_split = _for_cell(_make_backward_split, cell, ns, inline=True)
        self.reads = _for_cell(_make_reads, cell, ns)
        self.coefficients = _for_cell(_make_coefficients, cell, ns)


_KERNELS = {}


def kernels(cell):
    """The :class:`CellKernels` of ``cell`` (made once per definition and process)."""
    key = id(cell)
    made = _KERNELS.get(key)
    if made is None or made.cell is not cell:
        made = _KERNELS[key] = CellKernels(cell)
    return made


def options_array(cell, options, dtype):
    """The cell's options, in declaration order, as an array of ``dtype`` (what kernels take)."""
    return np.array([options[k] for k in cell.options], dtype=dtype)


def product_mode(dtype, batch, n_in, n_out, rows=None):
    """How the recurrent product of a step runs: 0 compiled loops, 1 BLAS gemm, 2 BLAS gemm on
    the transposes, 3 compiled dot products (see :func:`_make_projection`); ``n_in`` is the
    depth of its sums.

    Mode 3 where every block of the batch split holds at least two sequences (``rows``: the
    fewest a block holds; default ``batch``) and ``config.DOT_PRODUCTS`` says so: "auto" where
    Numba compiles for AVX-512 (:data:`numrnn.cpu.products.WIDE`) and the sums are at least
    four vectors deep (:func:`numrnn.cpu.products.times_transpose_pays`).  On a Zen 5 core, one
    thread, 16 rows, it took 0.4-0.5 of the time of OpenBLAS's AVX2 gemm (float64 and float32,
    N = 128-512, G*N up to 2048); at one row, level with gemv (benchmarks/README.md, "Skinny
    products with AVX-512").  Shallower, with AVX-512 (float32 N = 32: a forward step's sums are
    32 deep), the compiled loops run instead: 1.1-1.4x the dot products' speed, 1.2-1.5x the
    BLAS's ("Dot products only where their sums are deep enough").

    Mode 4, ahead of both, where a block holds a whole register tile of sequences
    (:data:`numrnn.cpu.products.TILE_ROWS`) and ``config.DOT_PRODUCTS`` allows the compiled
    products ("auto": with AVX-512): the packed products, M packed once per pass
    (:func:`numrnn.cpu.products.times_packed`).  16 rows, one Zen 5 thread: float32 1.2-2.5x
    the dot products' speed at N = 32-128, 1.1-1.45x at 512; float64 1.0-1.7x.
    """
    rows = batch if rows is None else rows
    if rows >= products.TILE_ROWS and products.use_dot_products():
        return 4
    if rows >= 2 and products.use_dot_products(products.times_transpose_pays(dtype, n_in)):
        return 3
    if rows >= 2 and products.use_dot_products():  # AVX-512, but sums too short: the loops
        return 0
    if batch * n_in * n_out < config.BLAS_MIN_WORK:
        return 0
    return 2 if dtype == np.float32 and config.TRANSPOSED_GEMM_FLOAT32 else 1


def unit_blocks(B, N, RN, GN, steps, dtype):
    """The edges of the unit blocks when each step is split over threads, or None (the batch
    is split instead).

    Split when a block of the batch split would hold no sequence (fewer sequences than the
    machine has blocks, :func:`numrnn.cpu.threads.num_blocks`) and a step carries at least
    ``config.SPLIT_MIN_STEP_WORK`` float32 multiply-adds (B * R*N * G*N; a float64 one counts
    three times, ``config.SPLIT_FLOAT64_WEIGHT``: a small batch's step is bound by reading M,
    twice the bytes per multiply-add, and the measured break-even sits lower still; the
    barrier and the smaller products must pay); or when each block would hold 2 to
    ``config.SPLIT_MAX_ROWS`` sequences and one sequence's step carries
    ``config.SPLIT_MIN_SEQUENCE_WORK`` (R*N * G*N, float64 counted twice): then every thread of
    the batch split reads all of M at every step for a product of a few rows, where the unit
    split reads its share of M once for every sequence.  In both cases the call must carry at
    least ``config.PARALLEL_MIN_WORK`` multiply-adds.  Blocks: :func:`unit_edges`.  A function
    of the sizes, the dtype and the machine's block count alone, never of the thread count: the
    bits depend on it.
    """
    blocks = threads.num_blocks()
    work = B * RN * GN
    scale = np.dtype(dtype).itemsize // 4
    rows = -(-B // blocks)  # sequences per block of the batch split
    if B < blocks:
        weight = config.SPLIT_FLOAT64_WEIGHT if scale == 2 else 1
        enough = work * weight >= config.SPLIT_MIN_STEP_WORK
    else:
        enough = 2 <= rows <= config.SPLIT_MAX_ROWS and RN * GN * scale >= \
            config.SPLIT_MIN_SEQUENCE_WORK
    if (not enough or min(blocks, N // 16) < 2 or steps * work < config.PARALLEL_MIN_WORK
            or not blas.can_limit_threads()):
        return None
    return unit_edges(N)


def unit_edges(N):
    """The edges of the unit blocks of N units (see :func:`unit_blocks`): as many blocks as the
    machine's, at most N // 16, each a multiple of 16 units but the last."""
    n = max(1, min(threads.num_blocks(), N // 16))
    return np.array([(N * k // n) // 16 * 16 for k in range(n)] + [N], np.int64)


@njit(**_JIT)
def _first_step(bad_blocks, reverse, T, bad):
    """bad[b] = the time index of the first step, in running order, at which any unit block
    of sequence b held a NaN or inf (-1: never), from the blocks' first steps."""
    n_blocks, B = bad_blocks.shape
    for b in range(B):
        first = -1
        for k in range(n_blocks):
            s = bad_blocks[k, b]
            if s >= 0 and (first < 0 or s < first):
                first = s
        bad[b] = -1 if first < 0 else (T - 1 - first if reverse else first)


@njit(**_JIT)
def _combine_norms(squares, block_norms, reverse, norm, bad):
    """norm[t, b] = ||dL/dh_t|| from its unit blocks' parts, in block order: the square root of
    the summed squares where that sum is safely inside float64's range (as
    :func:`numrnn.norms.gradient_norm`), else the blocks' norms combined with scaling by the
    largest (NaN if one is NaN, inf if one is infinite).  bad[b]: the first time index, in the
    sweep's order, where the norm is not finite (-1: never)."""
    T, B, K = squares.shape
    for t in range(T):
        for b in range(B):
            acc = 0.0
            for k in range(K):
                acc += squares[t, b, k]
            if acc >= norms.SAFE_SQUARES and acc < np.inf:
                norm[t, b] = np.sqrt(acc)
                continue
            m = 0.0
            for k in range(K):
                v = block_norms[t, b, k]
                if v != v or v > m:
                    m = v
                    if v != v:
                        break
            if m != m or m == 0.0 or m == np.inf:
                norm[t, b] = m
                continue
            acc = 0.0
            for k in range(K):
                v = block_norms[t, b, k] / m
                acc += v * v
            norm[t, b] = m * np.sqrt(acc)
    for b in range(B):
        bad[b] = -1
        for s in range(T):
            t = s if reverse else T - 1 - s
            if not (norm[t, b] < np.inf):
                bad[b] = t
                break


def forward(cell, opts, xp, w_hh, b_hh, h0, c0, reverse, steps=None):
    """Run one layer and direction forward.

    Parameters
    ----------
    cell : numrnn.Cell
    opts : ndarray
        The cell's options (:func:`options_array`), in the dtype of ``xp``.
    xp : ndarray, shape (T, B, G*N)
        Input projection W_ih x_t (+ b_ih) for every step, C order.
    w_hh : ndarray, shape (G*N, R*N)
        The recurrent matrix M (``cell.recurrent_matrix`` of ``weight_hh``).
    b_hh : ndarray, shape (G*N,)
        Added to M r at every step.  A cell with summed projections uses only the sum of the
        two, so b_ih may be added here (b_hh + b_ih) instead of to ``xp``.
    h0, c0 : ndarray, shape (B, N)
        Initial states (c0: the second state; any (B, N) array for one-state cells).
    reverse : bool
    steps : int, optional
        The length of the whole sequence that these T steps are part of (a checkpointed pass
        runs it in segments): the batch split is chosen from it, so that a segment runs the
        same row blocks, and gives the same bits, as the whole.  Default T.

    Returns
    -------
    out_h : ndarray, shape (T, B, N)
    out_c : ndarray, shape (T, B, N) for two-state cells, else shape (1, B, N) (unused)
    aux : ndarray, shape (T, B, A*N), what BPTT needs of each step
    bad : ndarray of int64, shape (B,)
        Per sequence, the first time index (in running order) where h held a NaN or inf; -1 if
        it stayed finite.
    """
    k = kernels(cell)
    T, B, GN = xp.shape
    N = h0.shape[1]
    dtype = xp.dtype
    out_h = scratch.empty((T, B, N), dtype)
    out_c = scratch.empty((T if cell.state_count == 2 else 1, B, N), dtype)
    aux = scratch.empty((T, B, cell.aux_count * N), dtype)
    bad = np.empty(B, np.int64)
    bad.fill(-1)
    RN = w_hh.shape[1]
    w_hh = np.ascontiguousarray(w_hh)
    edges = unit_blocks(B, N, RN, GN, steps or T, dtype)
    if edges is not None:
        bad_blocks = np.full((len(edges) - 1, B), -1, np.int64)
        head = (opts, dtype.type(1), xp, w_hh, b_hh, h0, c0, bool(reverse), out_h, out_c, aux,
                bad_blocks, edges, B > 1 and products.use_dot_products())
        threads.together(k.forward_split, head,
                         threads.split_threads(k.forward_split, dtype, len(edges) - 1))
        _first_step(bad_blocks, bool(reverse), T, bad)
        return out_h, out_c, aux, bad
    work = (steps or T) * B * RN * GN
    pieces = threads.pieces(B, work)
    mode = product_mode(dtype, B, RN, GN, B // pieces)
    # Mᵀ only where the product reads it (modes 0 and 1), M packed for mode 4; an empty
    # stand-in otherwise
    if mode == 4:
        w_hh_t = products.pack_matrix(w_hh)
    else:
        w_hh_t = threads.transpose(w_hh) if mode in (0, 1) else np.empty((RN, 0), dtype)
    args = (opts, dtype.type(1), xp, w_hh_t, w_hh, b_hh, h0, c0, bool(reverse), mode, out_h,
            out_c, aux, bad)
    threads.run_kernel(k.forward, args, B, pieces)
    return out_h, out_c, aux, bad


def backward(cell, opts, w_hh, h0, c0, out_h, out_c, aux, d_out, dh_n, dc_n, reverse,
             truncate, steps=None):
    """BPTT through one layer and direction (see :func:`_backward_kernel`); ``steps`` as in
    :func:`forward`.

    Returns
    -------
    dxp : ndarray, shape (T, B, G*N)
        Cotangent of the input projection (the same array as ``dhp`` for summed projections).
    dhp : ndarray, shape (T, B, G*N)
        Cotangent of the recurrent projection M r_t + b_hh.
    dh0, dc0 : ndarray, shape (B, N)
    norm : ndarray of float64, shape (T, B)
        Euclidean norm of dL/dh_t, finite whenever dL/dh_t is.
    bad : ndarray of int64, shape (B,)
        Per sequence, the first time index (in the sweep's order) where dL/dh_t held a NaN or
        inf; -1 if it stayed finite.
    """
    k = kernels(cell)
    T, B, N = out_h.shape
    GN, RN = w_hh.shape
    dtype = out_h.dtype
    dhp = scratch.empty((T, B, GN), dtype)
    dxp = scratch.empty((T, B, GN), dtype) if cell.separate else dhp
    dh0 = np.zeros((B, N), dtype)
    dc0 = np.zeros((B, N), dtype)
    norm = scratch.empty((T, B), np.float64)
    bad = np.empty(B, np.int64)
    bad.fill(-1)
    w_hh = np.ascontiguousarray(w_hh)
    edges = unit_blocks(B, N, RN, GN, steps or T, dtype)
    work = (steps or T) * B * RN * GN
    pieces = threads.pieces(B, work)
    mode = product_mode(dtype, B, GN, RN, B // pieces)
    # Mᵀ only where the pullback reads it (the split, modes 2 and 3), packed for mode 4; an
    # empty stand-in otherwise
    w_hh_t = (threads.transpose(w_hh) if edges is not None or mode in (2, 3, 4)
              else np.empty((RN, 0), dtype))
    if edges is None and mode == 4:
        w_hh_t = products.pack_matrix(w_hh_t)
    if edges is not None:
        n_blocks = len(edges) - 1
        squares = scratch.empty((T, B, n_blocks), np.float64)
        block_norms = scratch.empty((T, B, n_blocks), np.float64)
        head = (opts, dtype.type(1), w_hh, w_hh_t, h0, c0, out_h, out_c, aux, d_out, dh_n,
                dc_n, bool(reverse), int(truncate or 0), dxp, dhp, dh0, dc0, squares,
                block_norms, np.empty((B, N), dtype), np.empty((B, N), dtype), edges,
                B > 1 and products.use_dot_products())
        threads.together(k.backward_split, head,
                         threads.split_threads(k.backward_split, dtype, n_blocks))
        _combine_norms(squares, block_norms, bool(reverse), norm, bad)
        return dxp, dhp, dh0, dc0, norm, bad
    args = (opts, dtype.type(1), w_hh, w_hh_t, h0,
            c0, out_h, out_c, aux, d_out, dh_n, dc_n, bool(reverse), int(truncate or 0),
            mode, dxp, dhp, dh0, dc0, norm, bad)
    threads.run_kernel(k.backward, args, B, pieces)
    return dxp, dhp, dh0, dc0, norm, bad


def recurrent_inputs(cell, opts, h0, c0, out_h, out_c, reverse):
    """The recurrent input r_t of every step, shape (T, B, R*N) (for the weight gradient)."""
    T, B, N = out_h.shape
    out = np.empty((T, B, cell.read_count * N), out_h.dtype)
    kernels(cell).reads(opts, out_h.dtype.type(1), h0, c0, out_h, out_c, bool(reverse), out)
    return out


def recurrent_weight_grad(cell, opts, dhp, h0, c0, out_h, out_c, reverse, out=None):
    """The gradient of M, the sum over t of dhp_tᵀ r_t, shape (G*N, R*N) (into ``out``).

    When the product reads the output state as it is (every cell but the rate network and
    coRNN), r_t is h_{t-1}: the states the forward pass stored, shifted by one step, so the
    product reads them in place (no (T, B, N) copy) and adds the step where h0 enters.
    Otherwise r_t is built by :func:`recurrent_inputs`.
    """
    T, B, N = out_h.shape
    d = dhp.reshape(T * B, -1)
    if not kernels(cell).direct:
        r = recurrent_inputs(cell, opts, h0, c0, out_h, out_c, reverse)
        return threads.matmul_tn(d, r.reshape(T * B, -1), out=out)
    h = out_h.reshape(T * B, N)
    if reverse:  # step t reads h_{t+1}; h0 enters at t = T-1
        grad = threads.matmul_tn(d[:-B], h[B:], out=out)
        entering = d[-B:]
    else:
        grad = threads.matmul_tn(d[B:], h[:-B], out=out)
        entering = d[:B]
    return threads.matmul_tn_add(entering, h0, grad)


def coefficients(cell, opts, h0, c0, out_h, out_c, aux, reverse, rec, inp, direct, rgrad):
    """Fill the tangent-map coefficients of one (layer, direction) (see
    :func:`_coefficients_kernel`); every array in the dtype of ``out_h``."""
    kernels(cell).coefficients(opts, out_h.dtype.type(1), h0, c0, out_h, out_c, aux,
                               bool(reverse), rec, inp, direct, rgrad)
