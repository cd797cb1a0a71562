"""Launch configuration of the GPU recurrence kernels, and the tunables tests patch.

Three paths run the same kernel source (:mod:`numrnn.gpu.recurrence`).  "W_hh" below is the
(G*N, R*N) matrix M the recurrent product uses (``weight_hh``, or the cell's map of it): forward
a unit has G rows of R*N entries, BPTT R columns of G*N.

``"block"``
    Each thread block owns whole sequences (all N units of a few batch rows): the recurrence needs
    only ``syncthreads``, no grid-wide sync.  Chosen when the whole W_hh fits in one block's shared
    memory (small networks; cuDNN's fast small-hidden regime).
``"persistent"``
    One cooperative launch for all T steps; block k owns units [k U, (k+1) U) of every sequence,
    keeps its rows (forward) or columns (BPTT) of W_hh on chip in shared memory, and the grid
    synchronises once per step (Diamos et al. 2016).  The grid is at most
    ``max_cooperative_grid_blocks``.  When the slices do not fit on chip even at that grid size, the
    same kernel reads W_hh from global memory (L2) instead (``weights_on_chip`` False).
``"stepwise"``
    The non-persistent fallback: one launch per step (two for BPTT), W_hh in global memory, any
    grid size.  Used when cooperative launches are unavailable; slow (a launch costs tens of
    microseconds in Numba) but correct everywhere.

References
----------
Diamos, G. et al. (2016). Persistent RNNs: stashing recurrent weights on-chip. ICML.
"""
from collections import namedtuple

from .. import config as _config
from . import _cuda

#: Most threads per block of the recurrence kernels (a multiple of 32): a block gets one warp per
#: (unit, 4 batch rows) item of its share (BPTT: per read of a unit), up to this many.
#: (1024 failed to launch on an H200, too many registers per thread; 128 gave larger grids whose
#: per-step grid sync cost more: 256 is what the benchmark table was measured with.)
THREADS_PER_BLOCK = 64 if _cuda.SIMULATOR else _config.GPU_THREADS_PER_BLOCK
#: Fewest threads per block.
MIN_THREADS_PER_BLOCK = THREADS_PER_BLOCK
#: Force a path ("block", "persistent", "stepwise") instead of choosing one; None chooses.
FORCE_PATH = None
#: Force W_hh into shared memory (True) or global memory (False); None chooses.
FORCE_WEIGHTS_ON_CHIP = None
#: Units per block for the persistent and stepwise paths; None chooses.
UNITS_PER_BLOCK = None
#: Batch rows per block for the block path; None chooses.
BATCH_PER_BLOCK = None
#: Bytes of shared memory for the batch tile of recurrent inputs (a multiple of 4 rows is used).
BATCH_TILE_BYTES = 16 * 1024
#: Warp shuffles for the in-warp sums (the simulator has none: a shared-memory path replaces them).
WARP_SHUFFLE = not _cuda.SIMULATOR
#: Cap on dynamic shared memory per block in bytes (None: the device's opt-in limit).
MAX_SHARED_BYTES = None

#: Batch rows one warp carries through a dot product (fixed by the kernel's four accumulators).
BR = 4

Plan = namedtuple("Plan", "path weights_on_chip n_ug units n_bg batch_per_block batch_tile "
                          "threads shared_bytes grid")


def _round4(x):
    return max(BR, -(-x // BR) * BR)


def _smem_elems(w_on_chip, units, row_len, n_rows_w, tile, threads, scratch_per_warp):
    """Elements of dynamic shared memory, in the kernels' order: the W slice (``n_rows_w`` rows
    of ``row_len`` per unit), the batch tile (``tile`` rows of ``row_len``), the warp-sum buffer
    (simulator) and the per-warp scratch."""
    w = n_rows_w * units * row_len if w_on_chip else 0
    red = 0 if (WARP_SHUFFLE and not _cuda.SIMULATOR) else (threads // 32) * BR * 32
    return w + tile * row_len + red + (threads // 32) * scratch_per_warp


def _threads(items_per_unit, units, tile):
    """One warp per (unit, 4 batch rows) item (``items_per_unit`` per unit and 4 rows: BPTT has
    one per read), clamped to [MIN, MAX] threads."""
    items = items_per_unit * units * (tile // BR)
    return max(MIN_THREADS_PER_BLOCK, min(THREADS_PER_BLOCK, 32 * items))


def plan(stage, N, G, B, itemsize, max_coop_blocks, reads=1):
    """Choose the path and launch shape of one recurrence kernel.

    Parameters
    ----------
    stage : {"forward", "backward"}
        The recurrent matrix M is (G*N, R*N): forward rows are length R*N (G of them per unit,
        and the warp keeps BR*G projections in its scratch); BPTT columns are length G*N (R of
        them per unit, one warp item each).
    N, G, B : int
        Hidden size, gates, batch.
    itemsize : int
        4 or 8.
    max_coop_blocks : callable
        ``max_coop_blocks(shared_bytes, threads)`` -> blocks of a cooperative grid.
    reads : int, default 1
        R, the number of N-vectors the recurrent product reads.
    """
    name, n_sm, smem_limit, coop_ok = _cuda.device_properties()
    if MAX_SHARED_BYTES is not None:
        smem_limit = min(smem_limit, MAX_SHARED_BYTES)
    if stage == "forward":
        row_len, rows_per_unit, items_per_unit, scratch = reads * N, G, 1, BR * G
    else:
        row_len, rows_per_unit, items_per_unit, scratch = G * N, reads, reads, 0
    tile = _round4(min(_round4(B), max(BR, BATCH_TILE_BYTES // (row_len * itemsize))))

    def threads(units, t):
        return _threads(items_per_unit, units, t)

    def smem(w, units, t=tile):
        return _smem_elems(w, units, row_len, rows_per_unit, t, threads(units, t),
                           scratch) * itemsize

    path = FORCE_PATH
    w_force = FORCE_WEIGHTS_ON_CHIP
    if path is None:
        if smem(True, N) <= smem_limit and (w_force is None or w_force):
            path = "block"
        elif coop_ok:
            path = "persistent"
        else:
            path = "stepwise"

    if path == "block":
        bb = BATCH_PER_BLOCK or _round4(-(-B // n_sm))
        bb = min(bb, _round4(B))
        t = _round4(min(bb, tile)) if bb >= tile else _round4(bb)
        w = (smem(True, N, t) <= smem_limit) if w_force is None else w_force
        n_bg = -(-B // bb)
        return Plan("block", w, 1, N, n_bg, bb, t, threads(N, t), smem(w, N, t), n_bg)

    if path == "stepwise":
        units = UNITS_PER_BLOCK or max(1, 8 * BR // tile)
        n_ug = -(-N // units)
        return Plan("stepwise", False, n_ug, units, 1, B, tile, threads(units, tile),
                    smem(False, units), n_ug)

    # persistent: the fewest units per block (most blocks) whose W slice fits and co-resides
    if UNITS_PER_BLOCK is not None:
        units = UNITS_PER_BLOCK
        w = w_force if w_force is not None else smem(True, units) <= smem_limit
        n_ug = -(-N // units)
        limit = max_coop_blocks(smem(w, units), threads(units, tile))
        if n_ug > limit:
            raise ValueError(f"UNITS_PER_BLOCK={units} needs {n_ug} co-resident blocks; the "
                             f"device allows {limit}")
        return Plan("persistent", w, n_ug, units, 1, B, tile, threads(units, tile),
                    smem(w, units), n_ug)
    if w_force is None or w_force:
        for units in range(1, N + 1):
            n_ug = -(-N // units)
            if (units > 1 and -(-N // (units - 1)) == n_ug):
                continue  # same grid as a smaller slice
            s = smem(True, units)
            if s > smem_limit:
                break
            if n_ug <= max_coop_blocks(s, threads(units, tile)):
                return Plan("persistent", True, n_ug, units, 1, B, tile, threads(units, tile), s,
                            n_ug)
        if w_force:
            raise ValueError(f"W_hh (N={N}, {G} gates, {reads} reads) does not fit on chip in a "
                             "cooperative grid on this device; unset FORCE_WEIGHTS_ON_CHIP")
    # W_hh in global memory: the fewest units per block that co-reside
    for units in range(1, N + 1):
        n_ug = -(-N // units)
        s = smem(False, units)
        if n_ug <= max_coop_blocks(s, threads(units, tile)):
            return Plan("persistent", False, n_ug, units, 1, B, tile, threads(units, tile), s,
                        n_ug)
    raise ValueError(f"no cooperative grid fits N={N} on this device; set "
                     "numrnn.gpu.launch.FORCE_PATH = 'stepwise'")
