"""The sequential part of an RNN layer on the GPU: forward recurrence and the BPTT sweep.

The GPU twin of :mod:`numrnn.cpu.recurrence`: same inputs, same outputs, same cell math (the
cell's own functions, compiled into the kernels as GPU twins), so a CPU/GPU disagreement is a
launch bug.  Everything that is not sequential (the input projection of all steps, the weight
gradients) is a tiled matrix product in :mod:`numrnn.gpu.matmul`.

Kernels are made per cell definition (:class:`numrnn.Cell`): the generic kernels below call
``load_x``, ``unit_forward``, ``read_value``, ``unit_backward`` and ``pullback_load``, the work of
one (unit, batch row) written for the cell by :func:`_unit_functions` from the cell's functions
(:mod:`numrnn.cells.codegen`), and are compiled once per cell, dtype and variant (below).

Work split (see :mod:`numrnn.gpu.launch` for the three paths): a block owns units [u0, u1) of batch
rows [b0, b1).  Per step it loads a tile of recurrent inputs (a few batch rows, all R*N entries of
r = the read states, through the cell's read map) into shared memory; one warp computes, for one
unit and four batch rows, the dot products with the unit's G rows of M (forward) or, in BPTT, with
one of its R columns, the lanes splitting the reduction and a warp sum combining them in a fixed
order (deterministic: no atomics anywhere).  Lanes 0-3 keep the G recurrent projections of their
batch row in the warp's scratch and then apply the cell's step (forward); in BPTT they add the
pulled-back cotangent to the state the column reads.  The forward needs one grid-wide sync per
step (after the new states are written); BPTT one (after the cotangents of the projections are
written: the next state cotangent needs all of them).

Tiers: ``_make_*`` build the ``@cuda.jit`` kernels (one source, specialised per cell, dtype,
synchronisation (grid or block) and warp-sum variant); ``forward``/``backward`` allocate, plan
the launch and report the path they ran in :data:`last_paths`.
"""
import numba
import numpy as np
from numba.extending import register_jitable

from .. import config, norms
from ..cells import codegen
from ..cells.twins import Twins
from . import _cuda, launch
from ._cuda import cuda

_FASTMATH = config.FASTMATH

#: The GPU twins of cell functions: the real ``math`` (CUDA's functions); NVVM inlines them.
twins = Twins(None, inline="never")

#: The plans of the most recent forward and backward launches: {"forward": Plan, "backward": Plan}.
last_paths = {}


# --- the work of one (unit, batch row), generated from the cell's definition -------------------
#
# States: p0, p1 entering the step (p1 only for two-state cells); the carried cotangents of BPTT
# live in ``carry`` (2, B, N) (row p: state p; row 1 is carried, untouched, by one-state cells, as
# the CPU kernel does) and the direct parts of the read states' cotangents, before the pullback
# through M is added, in ``direct`` (2, B, N).


def _unit_functions(cell):
    """Generate and compile the per-unit functions of ``cell``: a dict of jitable functions."""
    G, P, A = cell.gate_count, cell.state_count, cell.aux_count
    BR = launch.BR
    init = ("h0", "c0")
    outs = ("out_h", "out_c")
    src = codegen.Source()
    # the G input projections of one unit, loaded before the dot products (their latency hides)
    src("def load_x(xp, t, b, u, N):").indent()
    src("return (" + ", ".join(f"xp[t, b, {g} * N + u]" for g in range(G)) + ",)").dedent()
    # forward: hs[hoff + BR*g] holds (M r)_g + b_hh for this unit and batch row
    src("def unit_forward(xv, hs, hoff, p0, p1, opts, one, out_h, out_c, aux, t, b, u, N):")
    src.indent()
    codegen.options_lines(src, cell)
    if cell.separate:
        pre = [f"xv[{g}]" for g in range(G)] + [f"hs[hoff + {BR * g}]" for g in range(G)]
    else:
        pre = [f"xv[{g}] + hs[hoff + {BR * g}]" for g in range(G)]
    codegen.step_lines(src, cell, pre, [f"p{p}" for p in range(P)],
                       [f"s{p}" for p in range(P)], [f"a{k}" for k in range(A)])
    for p in range(P):
        src(f"{outs[p]}[t, b, u] = s{p}")
    for k in range(A):
        src(f"aux[t, b, {k} * N + u] = a{k}")
    src.dedent()
    # entry k of the recurrent input r (R*N,) of batch row b entering the step
    src("def read_value(k, b, first, tp, h0, c0, out_h, out_c, N, opts, one):").indent()
    if cell.read_map is not None:
        codegen.options_lines(src, cell)
    last = cell.read_count - 1
    for q, p in enumerate(cell.read_index):
        if q < last:
            src(f"if k < {q + 1} * N:").indent()
        src(f"kk = k - {q} * N")
        src(f"s = {init[p]}[b, kk] if first else {outs[p]}[tp, b, kk]")
        src(f"return {codegen.read_expr(cell, 's')}")
        if q < last:
            src.dedent()
    src.dedent()
    # BPTT, phase 1: the cell's vjp for one unit and batch row
    src("def unit_backward(t, b, u, N, first, tp, h0, c0, out_h, out_c, aux, d_out, carry, "
        "direct, dh_all, dxp, dhp, opts, one):").indent()
    codegen.options_lines(src, cell)
    src("if first:").indent()
    for p in range(P):
        src(f"p{p} = {init[p]}[b, u]")
    src.dedent()("else:").indent()
    for p in range(P):
        src(f"p{p} = {outs[p]}[tp, b, u]")
    src.dedent()
    src("d0 = carry[0, b, u] + d_out[t, b, u]")
    src("dh_all[t, b, u] = d0")
    for p in range(1, P):
        src(f"d{p} = carry[{p}, b, u]")
    if cell.separate:
        d_pre = [f"dx{g}" for g in range(G)] + [f"dh{g}" for g in range(G)]
    else:
        d_pre = [f"dz{g}" for g in range(G)]
    codegen.vjp_lines(src, cell, [f"d{p}" for p in range(P)], [f"p{p}" for p in range(P)],
                      [f"{outs[p]}[t, b, u]" for p in range(P)],
                      [f"aux[t, b, {k} * N + u]" for k in range(A)], d_pre,
                      [f"e{p}" for p in range(P)])
    for g in range(G):
        if cell.separate:
            src(f"dxp[t, b, {g} * N + u] = dx{g}")
            src(f"dhp[t, b, {g} * N + u] = dh{g}")
        else:
            src(f"dhp[t, b, {g} * N + u] = dz{g}")
    for p in range(P):  # a read state gets the pullback through M added in phase 2
        src(f"{'direct' if p in cell.read_index else 'carry'}[{p}, b, u] = e{p}")
    src.dedent()
    # BPTT, phase 2: for read q of one unit, (the state it reads, the direct part of that
    # state's cotangent, dr_q/ds); the kernel stores direct + (M^T dhp)_q * dr_q/ds
    src("def pullback_load(q, b, u, first, tp, h0, c0, out_h, out_c, direct, opts, one):")
    src.indent()
    if cell.read_map is not None:
        codegen.options_lines(src, cell)
    for q, p in enumerate(cell.read_index):
        if q < last:
            src(f"if q == {q}:").indent()
        grad = "one"
        if cell.read_map is not None:
            src(f"s = {init[p]}[b, u] if first else {outs[p]}[tp, b, u]")
            grad = codegen.read_grad_expr(cell, "s")
        src(f"return {p}, direct[{p}, b, u], {grad}")
        if q < last:
            src.dedent()
    src.dedent()
    namespace = codegen.compile_functions(src, cell, twins,
                                          f"<numrnn gpu units of cell {cell.name!r}>")
    return {name: register_jitable(inline="never")(namespace[name])
            for name in ("load_x", "unit_forward", "read_value", "unit_backward",
                         "pullback_load")}


# --- warp sums: shuffles on a GPU, shared memory in the simulator ------------------------------


def _make_sum4(shuffle):
    """sum4(a0, a1, a2, a3, lane, red, roff): lane q < 4 gets the warp's total of a_q.

    Every thread of the block must call it the same number of times (the shared-memory variant
    uses ``syncthreads``).  Both variants add in a fixed order: the same bits on every run.
    """
    if shuffle:
        @cuda.jit(device=True, fastmath=_FASTMATH)
        def sum4(a0, a1, a2, a3, lane, red, roff):
            off = 16
            while off > 0:
                a0 += cuda.shfl_xor_sync(0xFFFFFFFF, a0, off)
                a1 += cuda.shfl_xor_sync(0xFFFFFFFF, a1, off)
                a2 += cuda.shfl_xor_sync(0xFFFFFFFF, a2, off)
                a3 += cuda.shfl_xor_sync(0xFFFFFFFF, a3, off)
                off >>= 1
            q = lane & 3
            return a0 if q == 0 else (a1 if q == 1 else (a2 if q == 2 else a3))
        return sum4

    @cuda.jit(device=True, fastmath=_FASTMATH)
    def sum4(a0, a1, a2, a3, lane, red, roff):
        red[roff + lane] = a0
        red[roff + 32 + lane] = a1
        red[roff + 64 + lane] = a2
        red[roff + 96 + lane] = a3
        cuda.syncthreads()
        v = a0
        if lane < 4:
            base = roff + 32 * lane
            v = red[base]
            for i in range(1, 32):
                v += red[base + i]
        cuda.syncthreads()
        return v
    return sum4


@cuda.jit(device=True)
def _grid_sync():
    cuda.cg.this_grid().sync()


@cuda.jit(device=True)
def _block_sync():
    cuda.syncthreads()


# --- forward -------------------------------------------------------------------------------


def _make_forward(units_fns, two_states, dtype, step_sync, sum4, SHUFFLE):
    load_x = units_fns["load_x"]
    unit_forward = units_fns["unit_forward"]
    read_value = units_fns["read_value"]
    TWO_STATES = two_states
    BR = launch.BR

    @cuda.jit(fastmath=_FASTMATH)
    def forward_kernel(opts, one, xp, w_flat, b_hh, h0, c0, reverse, s_begin, s_end, n_ug,
                       units, bpb, tile, w_on_chip, out_h, out_c, aux):
        """Steps [s_begin, s_end) of the forward recurrence of one layer and direction.

        xp (T, B, G*N) input projection with b_ih; w_flat (G*N*R*N,) M row-major; b_hh (G*N,);
        h0, c0 (B, N) (c0: the second state, any (B, N) array for one-state cells); ``opts``
        the cell's options, ``one`` = 1 in the dtype.  Writes out_h (T, B, N) (may be a strided
        view), out_c (T, B, N) (two-state cells) and aux (T, B, A*N).

        Shared memory: the block's rows of M (G*units rows of R*N, when on chip), the tile of
        recurrent inputs (tile rows of R*N), the warp sums' buffer (simulator) and per warp
        BR*G scratch values (the recurrent projections of its four batch rows).
        """
        T = out_h.shape[0]
        B = out_h.shape[1]
        N = out_h.shape[2]
        GN = b_hh.shape[0]
        G = GN // N
        RN = w_flat.shape[0] // GN
        zero = one - one
        tid = cuda.threadIdx.x
        nthr = cuda.blockDim.x
        lane = tid & 31
        warp = tid >> 5
        nw = nthr >> 5
        bid = cuda.blockIdx.x
        ug = bid % n_ug
        bg = bid // n_ug
        u0 = ug * units
        nu = min(N, u0 + units) - u0
        b0 = bg * bpb
        b1 = min(B, b0 + bpb)
        dyn = cuda.shared.array(0, dtype)
        w_elems = G * units * RN if w_on_chip else 0
        w_s = dyn[0:w_elems]
        r_s = dyn[w_elems:w_elems + tile * RN]
        red_off = w_elems + tile * RN
        red_elems = 0 if SHUFFLE else nw * BR * 32
        red = dyn[red_off:red_off + red_elems]
        scratch = dyn[red_off + red_elems:]
        wo = warp * BR * G
        if w_on_chip:
            for e in range(tid, G * units * RN, nthr):
                row = e // RN
                k = e - row * RN
                g = row // units
                uu = row - g * units
                if uu < nu:
                    w_s[e] = w_flat[(g * N + u0 + uu) * RN + k]
            cuda.syncthreads()
        nq = tile // BR
        n_iter = (units * nq + nw - 1) // nw
        for s in range(s_begin, s_end):
            t = T - 1 - s if reverse else s
            tp = t + 1 if reverse else t - 1
            first = s == 0
            for bt0 in range(b0, b1, tile):
                for e in range(tid, tile * RN, nthr):
                    bb = e // RN
                    k = e - bb * RN
                    b = bt0 + bb
                    v = zero
                    if b < b1:
                        v = read_value(k, b, first, tp, h0, c0, out_h, out_c, N, opts, one)
                    r_s[e] = v
                cuda.syncthreads()
                for it in range(n_iter):
                    item = warp + it * nw
                    uu = item % units
                    qd = item // units
                    valid = uu < nu and qd < nq
                    if not valid:
                        uu = 0
                        qd = 0
                    u = u0 + uu
                    roff = qd * BR * RN
                    b = bt0 + qd * BR + lane
                    mine = valid and lane < BR and b < b1
                    # issue this item's loads now: they complete during the dot products
                    xv = load_x(xp, t, b if mine else b0, u, N)
                    p0 = zero
                    p1 = zero
                    if mine:
                        if first:
                            p0 = h0[b, u]
                            p1 = c0[b, u]
                        else:
                            p0 = out_h[tp, b, u]
                            if TWO_STATES:
                                p1 = out_c[tp, b, u]
                    for g in range(G):
                        bh = b_hh[g * N + u] if mine else zero
                        a0 = zero
                        a1 = zero
                        a2 = zero
                        a3 = zero
                        if w_on_chip:
                            woff = (g * units + uu) * RN
                            for k in range(lane, RN, 32):
                                w = w_s[woff + k]
                                a0 += w * r_s[roff + k]
                                a1 += w * r_s[roff + RN + k]
                                a2 += w * r_s[roff + 2 * RN + k]
                                a3 += w * r_s[roff + 3 * RN + k]
                        else:
                            woff = (g * N + u) * RN
                            for k in range(lane, RN, 32):
                                w = w_flat[woff + k]
                                a0 += w * r_s[roff + k]
                                a1 += w * r_s[roff + RN + k]
                                a2 += w * r_s[roff + 2 * RN + k]
                                a3 += w * r_s[roff + 3 * RN + k]
                        v = sum4(a0, a1, a2, a3, lane, red, warp * BR * 32)
                        if mine:
                            scratch[wo + g * BR + lane] = v + bh
                    if mine:
                        unit_forward(xv, scratch, wo + lane, p0, p1, opts, one, out_h, out_c,
                                     aux, t, b, u, N)
                cuda.syncthreads()
            step_sync()
    return forward_kernel


# --- backward (BPTT) -----------------------------------------------------------------------


def _make_backward(units_fns, dtype, step_sync, sum4, SHUFFLE):
    unit_backward = units_fns["unit_backward"]
    pullback_load = units_fns["pullback_load"]
    BR = launch.BR

    @cuda.jit(fastmath=_FASTMATH)
    def backward_kernel(opts, one, wt_flat, h0, c0, out_h, out_c, aux, d_out, dh_n, dc_n,
                        reverse, truncate, s_begin, s_end, phases, n_ug, units, bpb, tile,
                        w_on_chip, dxp, dhp, dh0, dc0, dh_all, carry, direct):
        """Steps [s_begin, s_end) of BPTT through one layer and direction.

        wt_flat (R*N*G*N,): M transposed, row-major.  Phase 1 of a step applies each unit's
        vector-Jacobian product (writes dhp, dxp for cells that see the projections apart,
        dh_all = dL/dh_t, and the states' direct cotangents); phase 2, after the step's sync,
        adds the pullback of dhp through M and the read map to the read states' cotangents
        (``phases`` selects them, for the stepwise path).  carry, direct (2, B, N) are scratch:
        the carried state cotangents and the direct parts of the read states'.

        Shared memory: the block's columns of M (R*units rows of G*N, when on chip), the tile of
        projection cotangents (tile rows of G*N) and the warp sums' buffer (simulator).
        """
        T = out_h.shape[0]
        B = out_h.shape[1]
        N = out_h.shape[2]
        GN = dhp.shape[2]
        RN = wt_flat.shape[0] // GN
        R = RN // N
        zero = one - one
        tid = cuda.threadIdx.x
        nthr = cuda.blockDim.x
        lane = tid & 31
        warp = tid >> 5
        nw = nthr >> 5
        bid = cuda.blockIdx.x
        ug = bid % n_ug
        bg = bid // n_ug
        u0 = ug * units
        nu = min(N, u0 + units) - u0
        b0 = bg * bpb
        b1 = min(B, b0 + bpb)
        nb = b1 - b0
        dyn = cuda.shared.array(0, dtype)
        w_elems = R * units * GN if w_on_chip else 0
        w_s = dyn[0:w_elems]
        v_s = dyn[w_elems:w_elems + tile * GN]
        red = dyn[w_elems + tile * GN:w_elems + tile * GN + (0 if SHUFFLE else nw * BR * 32)]
        if w_on_chip:
            for e in range(tid, R * units * GN, nthr):
                row = e // GN
                i = e - row * GN
                q = row // units
                uu = row - q * units
                if uu < nu:
                    w_s[e] = wt_flat[(q * N + u0 + uu) * GN + i]
        if s_begin == 0 and (phases & 1):
            for e in range(tid, nb * nu, nthr):
                bl = e // nu
                u = u0 + e - bl * nu
                b = b0 + bl
                carry[0, b, u] = dh_n[b, u]
                carry[1, b, u] = dc_n[b, u]
        cuda.syncthreads()
        nq = tile // BR
        cols = R * units
        n_iter = (cols * nq + nw - 1) // nw
        for s in range(s_begin, s_end):
            t = s if reverse else T - 1 - s
            first = t == (T - 1 if reverse else 0)
            tp = t + 1 if reverse else t - 1
            if phases & 1:
                for e in range(tid, nb * nu, nthr):
                    bl = e // nu
                    u = u0 + e - bl * nu
                    b = b0 + bl
                    unit_backward(t, b, u, N, first, tp, h0, c0, out_h, out_c, aux, d_out, carry,
                                  direct, dh_all, dxp, dhp, opts, one)
            step_sync()
            if phases & 2:
                cut = False
                if truncate > 0 and not first:
                    cut = ((t + 1) % truncate == 0) if reverse else (t % truncate == 0)
                if cut:
                    for e in range(tid, nb * nu, nthr):
                        bl = e // nu
                        u = u0 + e - bl * nu
                        b = b0 + bl
                        carry[0, b, u] = zero
                        carry[1, b, u] = zero
                else:
                    for bt0 in range(b0, b1, tile):
                        for e in range(tid, tile * GN, nthr):
                            bb = e // GN
                            q = e - bb * GN
                            b = bt0 + bb
                            v_s[e] = dhp[t, b, q] if b < b1 else zero
                        cuda.syncthreads()
                        for it in range(n_iter):
                            item = warp + it * nw
                            cu = item % cols
                            qd = item // cols
                            q = cu // units
                            uu = cu - q * units
                            valid = uu < nu and qd < nq
                            if not valid:
                                q = 0
                                uu = 0
                                qd = 0
                            u = u0 + uu
                            voff = qd * BR * GN
                            b = bt0 + qd * BR + lane
                            mine = valid and lane < BR and b < b1
                            # loads issued before the dot product
                            p, dd, gg = pullback_load(q, b if mine else b0, u, first, tp, h0, c0,
                                                      out_h, out_c, direct, opts, one)
                            a0 = zero
                            a1 = zero
                            a2 = zero
                            a3 = zero
                            if w_on_chip:
                                woff = (q * units + uu) * GN
                                for i in range(lane, GN, 32):
                                    w = w_s[woff + i]
                                    a0 += w * v_s[voff + i]
                                    a1 += w * v_s[voff + GN + i]
                                    a2 += w * v_s[voff + 2 * GN + i]
                                    a3 += w * v_s[voff + 3 * GN + i]
                            else:
                                woff = (q * N + u) * GN
                                for i in range(lane, GN, 32):
                                    w = wt_flat[woff + i]
                                    a0 += w * v_s[voff + i]
                                    a1 += w * v_s[voff + GN + i]
                                    a2 += w * v_s[voff + 2 * GN + i]
                                    a3 += w * v_s[voff + 3 * GN + i]
                            v = sum4(a0, a1, a2, a3, lane, red, warp * BR * 32)
                            if mine:
                                carry[p, b, u] = dd + v * gg
                        cuda.syncthreads()
                if first:  # every state's cotangent of this block's units is final
                    for e in range(tid, nb * nu, nthr):
                        bl = e // nu
                        u = u0 + e - bl * nu
                        b = b0 + bl
                        dh0[b, u] = carry[0, b, u]
                        dc0[b, u] = carry[1, b, u]
            cuda.syncthreads()
    return backward_kernel


# --- the recurrent inputs, for the weight gradient of M --------------------------------------


def _make_reads(units_fns):
    read_value = units_fns["read_value"]

    @cuda.jit(fastmath=_FASTMATH)
    def reads_kernel(opts, one, h0, c0, out_h, out_c, reverse, out):
        """out[t] = r_t (T, B, R*N): the recurrent input read from the states entering step t."""
        i = cuda.grid(1)
        T = out.shape[0]
        B = out.shape[1]
        RN = out.shape[2]
        N = out_h.shape[2]
        if i < T * B * RN:
            t = i // (B * RN)
            rem = i - t * B * RN
            b = rem // RN
            k = rem - b * RN
            first = t == (T - 1 if reverse else 0)
            tp = t + 1 if reverse else t - 1
            out[t, b, k] = read_value(k, b, first, tp, h0, c0, out_h, out_c, N, opts, one)
    return reads_kernel


# --- small elementwise kernels ---------------------------------------------------------------


def _grid1(n):
    """(blocks, threads) of a one-thread-per-element launch over n elements: up to 128 threads
    a block, fewer (whole warps) for small n (the simulator runs every thread as a Python
    thread)."""
    threads = min(128, 32 * max(1, -(-n // 32)))
    return max(1, -(-n // threads)), threads


@cuda.jit(fastmath=_FASTMATH)
def _norm_kernel(dh_all, zero_row, norm):
    """norm[t, b] = ||dh_all[t, b]||_2 in float64 by :func:`numrnn.norms.gradient_norm`, the
    CPU kernel's formula (finite whenever the gradient is)."""
    i = cuda.grid(1)
    T, B, N = dh_all.shape
    if i < T * B:
        t = i // B
        b = i - t * B
        norm[t, b] = norms.gradient_norm(dh_all[t, b], zero_row)


@cuda.jit(fastmath=_FASTMATH)
def _nonfinite_rows_kernel(a, flags):
    """flags[t, b] = 1 where a[t, b, :] holds a NaN or inf, else 0."""
    i = cuda.grid(1)
    T, B, N = a.shape
    if i < T * B:
        t = i // B
        b = i - t * B
        f = 0
        for j in range(N):
            x = a[t, b, j]
            if not (x - x == 0):
                f = 1
        flags[t, b] = f


def first_nonfinite(a, reverse):
    """Per sequence, the first time index (in running order) where a (T, B, N) on the device
    holds a NaN or inf, or -1: an int64 numpy array of shape (B,) (the CPU kernels' ``bad``)."""
    T, B, _ = a.shape
    flags = _cuda.empty((T, B), np.int8)
    _nonfinite_rows_kernel[_grid1(T * B)](a, flags)
    return first_hits(flags.copy_to_host().astype(bool), reverse)


def first_hits(hit, reverse):
    """Per column b of the (T, B) bool array ``hit``, the first t in running order (descending
    when ``reverse``) where it is True, or -1: int64, shape (B,)."""
    T, B = hit.shape
    bad = np.full(B, -1, np.int64)
    order = np.arange(T)[::-1] if reverse else np.arange(T)
    for b in np.flatnonzero(hit.any(axis=0)):
        bad[b] = order[np.argmax(hit[order, b])]
    return bad


# --- kernel cache and compilation ------------------------------------------------------------


class CellKernels:
    """The GPU kernels of one cell definition (made by :func:`kernels`), compiled per dtype and
    variant on first use."""

    def __init__(self, cell):
        self.cell = cell
        self.units = _unit_functions(cell)
        self._made = {}

    def get(self, stage, dtype, coop=False):
        """The ``@cuda.jit`` dispatcher of ``stage`` ("forward", "backward" or "reads") for
        ``dtype``, with a grid (``coop``) or block sync per step."""
        shuffle = bool(launch.WARP_SHUFFLE) and not _cuda.SIMULATOR
        key = (stage, np.dtype(dtype), bool(coop), shuffle)
        made = self._made.get(key)
        if made is None:
            if stage == "reads":
                made = _make_reads(self.units)
            else:
                sync = _grid_sync if coop else _block_sync
                nb_dtype = numba.from_dtype(np.dtype(dtype))
                if stage == "forward":
                    made = _make_forward(self.units, self.cell.state_count == 2, nb_dtype, sync,
                                         _make_sum4(shuffle), shuffle)
                else:
                    made = _make_backward(self.units, nb_dtype, sync, _make_sum4(shuffle),
                                          shuffle)
            self._made[key] = made
        return made


_KERNELS = {}


def kernels(cell):
    """The :class:`CellKernels` of ``cell`` (made once per definition and process)."""
    made = _KERNELS.get(id(cell))
    if made is None or made.cell is not cell:
        made = _KERNELS[id(cell)] = CellKernels(cell)
    return made


def _compiled(disp, args):
    """Compile ``disp`` for ``args`` and let it use the device's opt-in shared memory.

    Returns the compiled kernel (None in the simulator)."""
    if _cuda.SIMULATOR:
        return None
    kern = disp.compile(tuple(disp.typeof_pyval(x) for x in args))
    if not getattr(kern, "_numrnn_smem_set", False):
        from numba.cuda.cudadrv.driver import binding, driver

        _, _, smem_optin, _ = _cuda.device_properties()
        cufunc = kern._codelibrary.get_cufunc()
        attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        driver.cuKernelSetAttribute(attr, smem_optin - int(cufunc.attrs.shared), cufunc.handle,
                                    cufunc.device.id)
        kern._numrnn_smem_set = True
    return kern


def _plan_and_kernel(k, stage, dtype, N, G, R, B, args_for_types):
    """Choose the plan (compiling the cooperative kernel only if it is asked about)."""
    coop_disp = k.get(stage, dtype, True)
    cache = {}

    def max_coop(smem, threads):
        if _cuda.SIMULATOR:
            return 1  # the simulator runs one block per cooperative grid
        if "k" not in cache:
            cache["k"] = _compiled(coop_disp, args_for_types)
        try:
            return int(cache["k"].max_cooperative_grid_blocks(threads, smem))
        except Exception:
            return 0

    p = launch.plan(stage, N, G, B, np.dtype(dtype).itemsize, max_coop, reads=R)
    disp = coop_disp if p.path == "persistent" else k.get(stage, dtype, False)
    _compiled(disp, args_for_types)
    return p, disp


def _launch(disp, p, args):
    disp[p.grid, p.threads, 0, p.shared_bytes](*args)


# --- drivers -------------------------------------------------------------------------------


def forward(cell, opts, xp, w_hh, b_hh, h0, c0, reverse, out_h=None):
    """Run one layer and direction forward on the GPU (device arrays in and out).

    Parameters
    ----------
    cell : numrnn.Cell
    opts : device array, shape (len(cell.options),)
        The cell's options in declaration order, in the dtype of ``xp``
        (:meth:`numrnn.RNN.options_array`, uploaded).
    xp : device array, shape (T, B, G*N)
        Input projection W_ih x_t + b_ih of every step.
    w_hh : device array, shape (G*N, R*N), C order
        The recurrent matrix M (``cell.recurrent_matrix`` of ``weight_hh``).
    b_hh : device array, shape (G*N,)
    h0, c0 : device arrays, shape (B, N)
        Initial states (c0: the second state; any (B, N) array for one-state cells).
    reverse : bool
    out_h : device array, shape (T, B, N), optional
        Where to write the states (may be a strided view of a (T, B, D*N) array).

    Returns
    -------
    out_h : device array, shape (T, B, N)
    out_c : device array, shape (T, B, N) for two-state cells, else (1, B, N) (unused)
    aux : device array, shape (T, B, A*N)
    """
    T, B, GN = xp.shape
    N = h0.shape[1]
    G = GN // N
    RN = w_hh.shape[1]
    dtype = np.dtype(xp.dtype)
    k = kernels(cell)
    if out_h is None:
        out_h = _cuda.empty((T, B, N), dtype)
    out_c = _cuda.empty((T if cell.state_count == 2 else 1, B, N), dtype)
    aux = _cuda.empty((T, B, cell.aux_count * N), dtype)
    w_flat = w_hh.reshape(GN * RN)
    one = dtype.type(1)

    def args(p, s0, s1, w_on_chip):
        return (opts, one, xp, w_flat, b_hh, h0, c0, bool(reverse), s0, s1, p.n_ug, p.units,
                p.batch_per_block, p.batch_tile, w_on_chip, out_h, out_c, aux)

    probe = launch.Plan("persistent", True, 1, 1, 1, 1, 4, 32, 0, 1)
    p, disp = _plan_and_kernel(k, "forward", dtype, N, G, RN // N, B, args(probe, 0, T, True))
    last_paths["forward"] = p
    if p.path == "stepwise":
        for s in range(T):
            _launch(disp, p, args(p, s, s + 1, False))
    else:
        _launch(disp, p, args(p, 0, T, p.weights_on_chip))
    return out_h, out_c, aux


def backward(cell, opts, w_hh, h0, c0, out_h, out_c, aux, d_out, dh_n, dc_n, reverse, truncate):
    """BPTT through one layer and direction on the GPU (device arrays in and out).

    Same arguments as :func:`numrnn.cpu.backward` (``opts`` and ``w_hh`` = M on the device);
    returns (dxp, dhp, dh0, dc0, norm), norm (T, B) float64 on the device (the CPU's ``bad``
    comes from :func:`first_hits` of the norm's host copy in :mod:`numrnn.gpu.backend`); dxp is
    dhp itself for cells with summed projections.  ``d_out`` may be a strided view.
    """
    T, B, N = out_h.shape
    GN, RN = w_hh.shape
    G = GN // N
    dtype = np.dtype(out_h.dtype)
    k = kernels(cell)
    dhp = _cuda.empty((T, B, GN), dtype)
    dxp = _cuda.empty((T, B, GN), dtype) if cell.separate else dhp
    dh0 = _cuda.empty((B, N), dtype)
    dc0 = _cuda.empty((B, N), dtype)
    dh_all = _cuda.empty((T, B, N), dtype)
    carry = _cuda.empty((2, B, N), dtype)
    direct = _cuda.empty((2, B, N), dtype)
    norm = _cuda.empty((T, B), np.float64)
    from .matmul import transpose2d
    wt_flat = transpose2d(w_hh).reshape(RN * GN)
    one = dtype.type(1)
    trunc = int(truncate or 0)

    def args(p, s0, s1, phases, w_on_chip):
        return (opts, one, wt_flat, h0, c0, out_h, out_c, aux, d_out, dh_n, dc_n, bool(reverse),
                trunc, s0, s1, phases, p.n_ug, p.units, p.batch_per_block, p.batch_tile,
                w_on_chip, dxp, dhp, dh0, dc0, dh_all, carry, direct)

    probe = launch.Plan("persistent", True, 1, 1, 1, 1, 4, 32, 0, 1)
    p, disp = _plan_and_kernel(k, "backward", dtype, N, G, RN // N, B,
                               args(probe, 0, T, 3, True))
    last_paths["backward"] = p
    if p.path == "stepwise":
        for s in range(T):
            _launch(disp, p, args(p, s, s + 1, 1, False))
            _launch(disp, p, args(p, s, s + 1, 2, False))
    else:
        _launch(disp, p, args(p, 0, T, 3, p.weights_on_chip))
    _norm_kernel[_grid1(T * B)](dh_all, _cuda.to_device(np.zeros(N, dtype)), norm)
    return dxp, dhp, dh0, dc0, norm


def recurrent_inputs(cell, opts, h0, c0, out_h, out_c, reverse):
    """The recurrent input r_t of every step, shape (T, B, R*N), on the device (for the weight
    gradient of M)."""
    T, B, N = out_h.shape
    RN = cell.read_count * N
    dtype = np.dtype(out_h.dtype)
    out = _cuda.empty((T, B, RN), dtype)
    kern = kernels(cell).get("reads", dtype)
    kern[_grid1(T * B * RN)](opts, dtype.type(1), h0, c0, out_h, out_c, bool(reverse), out)
    return out
