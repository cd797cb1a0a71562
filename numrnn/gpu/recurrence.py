"""The sequential part of an RNN layer on the GPU: forward recurrence and the BPTT sweep.

The GPU twin of :mod:`numrnn.cpu.recurrence`: same inputs, same outputs, same cell math (the
``register_jitable`` functions of :mod:`numrnn.cells`), so a CPU/GPU disagreement is a launch bug.
Everything that is not sequential (the input projection of all steps, the weight gradients) is a
tiled matrix product in :mod:`numrnn.gpu.matmul`.

Work split (see :mod:`numrnn.gpu.launch` for the three paths): a block owns units [u0, u1) of batch
rows [b0, b1).  Per step it loads a tile of recurrent inputs (a few batch rows, all N units) into
shared memory; one warp computes, for one unit and four batch rows, the dot products with the
unit's G rows of W_hh (forward) or its column of W_hh (BPTT), the lanes splitting the reduction
and a warp sum combining them in a fixed order (deterministic: no atomics anywhere); lanes 0-3 then
apply the cell's step or its vector-Jacobian product to their batch row.  The forward needs one
grid-wide sync per step (after the new states are written); BPTT one (after the cotangents of the
projections are written: the next state cotangent needs all of them).

Tiers: ``_make_*`` build the ``@cuda.jit`` kernels (one source, specialised per dtype, per
synchronisation (grid or block) and per warp-sum variant); ``forward``/``backward`` allocate,
plan the launch and report the path they ran in :data:`last_paths`.
"""
import numba
import numpy as np

from .. import cells, config, norms
from . import _cuda, launch
from ._cuda import cuda

_FASTMATH = config.FASTMATH

#: The plans of the most recent forward and backward launches: {"forward": Plan, "backward": Plan}.
last_paths = {}


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


def _make_forward(dtype, step_sync, sum4, SHUFFLE):
    @cuda.jit(fastmath=_FASTMATH)
    def forward_kernel(kind, act, consts, xp, w_flat, b_hh, h0, c0, reverse, s_begin, s_end,
                       n_ug, units, bpb, tile, w_on_chip, out_h, out_c, aux):
        """Steps [s_begin, s_end) of the forward recurrence of one layer and direction.

        xp (T, B, G*N) input projection with b_ih; w_flat (G*N*N,) W_hh row-major; b_hh (G*N,);
        h0, c0 (B, N); consts = [a, 1 - a, 1, 0].  Writes out_h (T, B, N) (may be a strided view),
        out_c (T, B, N) (LSTM) and aux (T, B, AUX_WIDTH*N).
        """
        T = out_h.shape[0]
        B = out_h.shape[1]
        N = out_h.shape[2]
        G = b_hh.shape[0] // N
        a = consts[0]
        oma = consts[1]
        one = consts[2]
        zero = consts[3]
        lstm = kind == cells.KIND_LSTM
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
        w_elems = G * units * N if w_on_chip else 0
        w_s = dyn[0:w_elems]
        r_s = dyn[w_elems:w_elems + tile * N]
        red_elems = 0 if SHUFFLE else nw * 128
        red = dyn[w_elems + tile * N:w_elems + tile * N + red_elems]
        scratch = dyn[w_elems + tile * N + red_elems:]
        wo = warp * 48
        xs = scratch[wo:wo + 16]
        hs = scratch[wo + 16:wo + 32]
        axs = scratch[wo + 32:wo + 48]
        aw = 1 if kind == cells.KIND_ELMAN else (0 if kind == cells.KIND_RATE else 4)
        if w_on_chip:
            for e in range(tid, G * units * N, nthr):
                row = e // N
                k = e - row * N
                g = row // units
                uu = row - g * units
                if uu < nu:
                    w_s[e] = w_flat[(g * N + u0 + uu) * N + k]
            cuda.syncthreads()
        nq = tile // 4
        n_iter = (units * nq + nw - 1) // nw
        for s in range(s_begin, s_end):
            t = T - 1 - s if reverse else s
            tp = t + 1 if reverse else t - 1
            for bt0 in range(b0, b1, tile):
                for e in range(tid, tile * N, nthr):
                    bb = e // N
                    k = e - bb * N
                    b = bt0 + bb
                    v = zero
                    if b < b1:
                        hv = h0[b, k] if s == 0 else out_h[tp, b, k]
                        v = cells.recurrent_input(kind, act, hv, zero)
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
                    roff = qd * 4 * N
                    b = bt0 + qd * 4 + lane
                    mine = valid and lane < 4 and b < b1
                    # issue this item's loads now: they complete during the dot products
                    x0 = zero
                    x1 = zero
                    x2 = zero
                    x3 = zero
                    bh0 = zero
                    bh1 = zero
                    bh2 = zero
                    bh3 = zero
                    h_prev = zero
                    c_prev = zero
                    if mine:
                        x0 = xp[t, b, u]
                        bh0 = b_hh[u]
                        if G > 1:
                            x1 = xp[t, b, N + u]
                            x2 = xp[t, b, 2 * N + u]
                            bh1 = b_hh[N + u]
                            bh2 = b_hh[2 * N + u]
                        if G > 3:
                            x3 = xp[t, b, 3 * N + u]
                            bh3 = b_hh[3 * N + u]
                        if s == 0:
                            h_prev = h0[b, u]
                            c_prev = c0[b, u]
                        else:
                            h_prev = out_h[tp, b, u]
                            if lstm:
                                c_prev = out_c[tp, b, u]
                    for g in range(G):
                        a0 = zero
                        a1 = zero
                        a2 = zero
                        a3 = zero
                        if w_on_chip:
                            woff = (g * units + uu) * N
                            for k in range(lane, N, 32):
                                w = w_s[woff + k]
                                a0 += w * r_s[roff + k]
                                a1 += w * r_s[roff + N + k]
                                a2 += w * r_s[roff + 2 * N + k]
                                a3 += w * r_s[roff + 3 * N + k]
                        else:
                            woff = (g * N + u) * N
                            for k in range(lane, N, 32):
                                w = w_flat[woff + k]
                                a0 += w * r_s[roff + k]
                                a1 += w * r_s[roff + N + k]
                                a2 += w * r_s[roff + 2 * N + k]
                                a3 += w * r_s[roff + 3 * N + k]
                        v = sum4(a0, a1, a2, a3, lane, red, warp * 128)
                        if mine:
                            bh = bh0 if g == 0 else (bh1 if g == 1 else (bh2 if g == 2 else bh3))
                            hs[g * 4 + lane] = v + bh
                    if mine:
                        xs[lane] = x0
                        xs[4 + lane] = x1
                        xs[8 + lane] = x2
                        xs[12 + lane] = x3
                        # per-warp rows of 4 batch lanes: unit j = lane, "n" = 4
                        h, c = cells.unit_forward(kind, act, a, oma, one, zero, xs, hs, lane, 4,
                                                  h_prev, c_prev, axs)
                        out_h[t, b, u] = h
                        if lstm:
                            out_c[t, b, u] = c
                        for g in range(aw):
                            aux[t, b, g * N + u] = axs[g * 4 + lane]
                cuda.syncthreads()
            step_sync()
    return forward_kernel


# --- backward (BPTT) -----------------------------------------------------------------------


def _make_backward(dtype, step_sync, sum4, SHUFFLE):
    @cuda.jit(fastmath=_FASTMATH)
    def backward_kernel(kind, act, consts, wt_flat, h0, c0, out_h, out_c, aux, d_out, dh_n,
                        dc_n, reverse, truncate, s_begin, s_end, phases, n_ug, units, bpb, tile,
                        w_on_chip, dxp, dhp, dh0, dc0, dh_all, carry, carry_d, carry_c):
        """Steps [s_begin, s_end) of BPTT through one layer and direction.

        wt_flat (N*G*N,): W_hh transposed, row-major.  Phase 1 of a step applies each unit's
        vector-Jacobian product (writes dhp, dxp for GRU, dh_all = dL/dh_t); phase 2, after the
        step's sync, adds W_hh^T dhp to the carried state cotangent (``phases`` selects them, for
        the stepwise path).  carry, carry_d (direct part), carry_c (B, N) are scratch.
        """
        T = out_h.shape[0]
        B = out_h.shape[1]
        N = out_h.shape[2]
        GN = dhp.shape[2]
        a = consts[0]
        oma = consts[1]
        one = consts[2]
        zero = consts[3]
        lstm = kind == cells.KIND_LSTM
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
        w_elems = units * GN if w_on_chip else 0
        w_s = dyn[0:w_elems]
        v_s = dyn[w_elems:w_elems + tile * GN]
        red = dyn[w_elems + tile * GN:w_elems + tile * GN + (0 if SHUFFLE else nw * 128)]
        if w_on_chip:
            for e in range(tid, nu * GN, nthr):
                w_s[e] = wt_flat[u0 * GN + e]
        if s_begin == 0 and (phases & 1):
            for e in range(tid, nb * nu, nthr):
                bl = e // nu
                u = u0 + e - bl * nu
                b = b0 + bl
                carry[b, u] = dh_n[b, u]
                carry_c[b, u] = dc_n[b, u]
        cuda.syncthreads()
        nq = tile // 4
        n_iter = (units * nq + nw - 1) // nw
        for s in range(s_begin, s_end):
            t = s if reverse else T - 1 - s
            first = t == (T - 1 if reverse else 0)
            tp = t + 1 if reverse else t - 1
            if phases & 1:
                for e in range(tid, nb * nu, nthr):
                    bl = e // nu
                    u = u0 + e - bl * nu
                    b = b0 + bl
                    if first:
                        h_prev = h0[b, u]
                        c_prev = c0[b, u]
                    else:
                        h_prev = out_h[tp, b, u]
                        c_prev = out_c[tp, b, u] if lstm else zero
                    c_t = out_c[t, b, u] if lstm else zero
                    dh = carry[b, u] + d_out[t, b, u]
                    dh_all[t, b, u] = dh
                    dhd, dcp = cells.unit_backward(kind, act, a, oma, one, zero, dh, carry_c[b, u],
                                                   u, N, h_prev, c_prev, c_t, aux[t, b], dxp[t, b],
                                                   dhp[t, b])
                    carry_d[b, u] = dhd
                    carry_c[b, u] = dcp
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
                        carry[b, u] = zero
                        carry_c[b, u] = zero
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
                            uu = item % units
                            qd = item // units
                            valid = uu < nu and qd < nq
                            if not valid:
                                uu = 0
                                qd = 0
                            u = u0 + uu
                            voff = qd * 4 * GN
                            b = bt0 + qd * 4 + lane
                            mine = valid and lane < 4 and b < b1
                            cd = zero
                            h_prev = zero
                            if mine:  # loads issued before the dot product
                                cd = carry_d[b, u]
                                h_prev = h0[b, u] if first else out_h[tp, b, u]
                            a0 = zero
                            a1 = zero
                            a2 = zero
                            a3 = zero
                            if w_on_chip:
                                woff = uu * GN
                                for q in range(lane, GN, 32):
                                    w = w_s[woff + q]
                                    a0 += w * v_s[voff + q]
                                    a1 += w * v_s[voff + GN + q]
                                    a2 += w * v_s[voff + 2 * GN + q]
                                    a3 += w * v_s[voff + 3 * GN + q]
                            else:
                                woff = u * GN
                                for q in range(lane, GN, 32):
                                    w = wt_flat[woff + q]
                                    a0 += w * v_s[voff + q]
                                    a1 += w * v_s[voff + GN + q]
                                    a2 += w * v_s[voff + 2 * GN + q]
                                    a3 += w * v_s[voff + 3 * GN + q]
                            v = sum4(a0, a1, a2, a3, lane, red, warp * 128)
                            if mine:
                                val = cd + v * cells.recurrent_input_grad(
                                    kind, act, h_prev, one, zero)
                                carry[b, u] = val
                                if first:
                                    dh0[b, u] = val
                                    dc0[b, u] = carry_c[b, u]
                        cuda.syncthreads()
            cuda.syncthreads()
    return backward_kernel


# --- small elementwise kernels ---------------------------------------------------------------


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
    threads = 128
    _nonfinite_rows_kernel[-(-T * B // threads), threads](a, flags)
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


@cuda.jit(fastmath=_FASTMATH)
def _recurrent_inputs_kernel(kind, act, consts, h0, out_h, reverse, out):
    """out[t] = r_t (h_{t-1}, or phi(h_{t-1}) for the rate network)."""
    i = cuda.grid(1)
    T, B, N = out.shape
    if i < T * B * N:
        t = i // (B * N)
        rem = i - t * B * N
        b = rem // N
        k = rem - b * N
        first = t == (T - 1 if reverse else 0)
        if first:
            h = h0[b, k]
        else:
            h = out_h[t + 1, b, k] if reverse else out_h[t - 1, b, k]
        out[t, b, k] = cells.recurrent_input(kind, act, h, consts[3])


# --- kernel cache and compilation ------------------------------------------------------------

_kernels = {}


def _kernel(stage, dtype, coop):
    shuffle = bool(launch.WARP_SHUFFLE) and not _cuda.SIMULATOR
    key = (stage, np.dtype(dtype), coop, shuffle)
    if key not in _kernels:
        sync = _grid_sync if coop else _block_sync
        make = _make_forward if stage == "forward" else _make_backward
        _kernels[key] = make(numba.from_dtype(np.dtype(dtype)), sync, _make_sum4(shuffle),
                              shuffle)
    return _kernels[key]


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


def _plan_and_kernel(stage, dtype, N, G, B, args_for_types):
    """Choose the plan (compiling the cooperative kernel only if it is asked about)."""
    coop_disp = _kernel(stage, dtype, True)
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

    p = launch.plan(stage, N, G, B, np.dtype(dtype).itemsize, max_coop)
    disp = coop_disp if p.path == "persistent" else _kernel(stage, dtype, False)
    _compiled(disp, args_for_types)
    return p, disp


_consts_cache = {}


def _consts(alpha, dtype):
    """[a, 1 - a, 1, 0] on the device, kept (a host-to-device copy would wait for the GPU)."""
    key = (float(alpha), np.dtype(dtype))
    if key not in _consts_cache:
        _consts_cache[key] = _cuda.to_device(np.array([alpha, 1.0 - alpha, 1.0, 0.0], dtype))
    return _consts_cache[key]


def _launch(disp, p, args):
    disp[p.grid, p.threads, 0, p.shared_bytes](*args)


# --- drivers -------------------------------------------------------------------------------


def forward(kind, act, alpha, xp, w_hh, b_hh, h0, c0, reverse, out_h=None):
    """Run one layer and direction forward on the GPU (device arrays in and out).

    Parameters
    ----------
    kind, act : int
        Cell family and nonlinearity codes from :mod:`numrnn.cells`.
    alpha : float
    xp : device array, shape (T, B, G*N)
        Input projection with b_ih.
    w_hh : device array, shape (G*N, N), C order
    b_hh : device array, shape (G*N,)
    h0, c0 : device arrays, shape (B, N)
    reverse : bool
    out_h : device array, shape (T, B, N), optional
        Where to write the states (may be a strided view of a (T, B, D*N) array).

    Returns
    -------
    out_h, out_c, aux : device arrays, shapes as in :func:`numrnn.cpu.forward`
    """
    T, B, GN = xp.shape
    N = w_hh.shape[1]
    G = GN // N
    dtype = np.dtype(xp.dtype)
    if out_h is None:
        out_h = _cuda.empty((T, B, N), dtype)
    out_c = _cuda.empty((T if kind == cells.KIND_LSTM else 1, B, N), dtype)
    aux = _cuda.empty((T, B, cells.AUX_WIDTH[kind] * N), dtype)
    w_flat = w_hh.reshape(GN * N)
    consts = _consts(alpha, dtype)

    def args(p, s0, s1, w_on_chip):
        return (kind, act, consts, xp, w_flat, b_hh, h0, c0, bool(reverse), s0, s1, p.n_ug,
                p.units, p.batch_per_block, p.batch_tile, w_on_chip, out_h, out_c, aux)

    probe = launch.Plan("persistent", True, 1, 1, 1, 1, 4, 32, 0, 1)
    p, disp = _plan_and_kernel("forward", dtype, N, G, B, args(probe, 0, T, True))
    last_paths["forward"] = p
    if p.path == "stepwise":
        for s in range(T):
            _launch(disp, p, args(p, s, s + 1, False))
    else:
        _launch(disp, p, args(p, 0, T, p.weights_on_chip))
    return out_h, out_c, aux


def backward(kind, act, alpha, w_hh, h0, c0, out_h, out_c, aux, d_out, dh_n, dc_n, reverse,
             truncate):
    """BPTT through one layer and direction on the GPU (device arrays in and out).

    Same arguments as :func:`numrnn.cpu.backward`; returns (dxp, dhp, dh0, dc0, norm), norm
    (T, B) float64 on the device (the CPU's ``bad`` comes from :func:`first_nonfinite` of the
    norm's host copy in :mod:`numrnn.gpu.passes`).  ``d_out`` may be a strided view.
    """
    T, B, N = out_h.shape
    GN = w_hh.shape[0]
    G = GN // N
    dtype = np.dtype(out_h.dtype)
    dhp = _cuda.empty((T, B, GN), dtype)
    dxp = _cuda.empty((T, B, GN), dtype) if kind == cells.KIND_GRU else dhp
    dh0 = _cuda.empty((B, N), dtype)
    dc0 = _cuda.empty((B, N), dtype)
    dh_all = _cuda.empty((T, B, N), dtype)
    carry = _cuda.empty((B, N), dtype)
    carry_d = _cuda.empty((B, N), dtype)
    carry_c = _cuda.empty((B, N), dtype)
    norm = _cuda.empty((T, B), np.float64)
    from .matmul import transpose2d
    wt_flat = transpose2d(w_hh).reshape(GN * N)
    consts = _consts(alpha, dtype)
    trunc = int(truncate or 0)

    def args(p, s0, s1, phases, w_on_chip):
        return (kind, act, consts, wt_flat, h0, c0, out_h, out_c, aux, d_out, dh_n, dc_n,
                bool(reverse), trunc, s0, s1, phases, p.n_ug, p.units, p.batch_per_block,
                p.batch_tile, w_on_chip, dxp, dhp, dh0, dc0, dh_all, carry, carry_d, carry_c)

    probe = launch.Plan("persistent", True, 1, 1, 1, 1, 4, 32, 0, 1)
    p, disp = _plan_and_kernel("backward", dtype, N, G, B, args(probe, 0, T, 3, True))
    last_paths["backward"] = p
    if p.path == "stepwise":
        for s in range(T):
            _launch(disp, p, args(p, s, s + 1, 1, False))
            _launch(disp, p, args(p, s, s + 1, 2, False))
    else:
        _launch(disp, p, args(p, 0, T, 3, p.weights_on_chip))
    threads = 128
    _norm_kernel[-(-T * B // threads), threads](dh_all, _cuda.to_device(np.zeros(N, dtype)),
                                                norm)
    return dxp, dhp, dh0, dc0, norm


def recurrent_inputs(kind, act, h0, out_h, reverse):
    """The recurrent input r_t of every step, shape (T, B, N), on the device."""
    T, B, N = out_h.shape
    out = _cuda.empty((T, B, N), out_h.dtype)
    threads = 128
    _recurrent_inputs_kernel[-(-T * B * N // threads), threads](
        kind, act, _consts(1.0, out_h.dtype), h0, out_h, bool(reverse), out)
    return out
