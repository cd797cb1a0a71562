"""numrnn's own CPU parallelism: a small pool of Python threads running ``nogil`` kernels.

Why not Numba's ``parallel=True`` or a multi-threaded BLAS: on a machine with few cores, the
OpenMP workers of a Numba parallel region and the pool threads of OpenBLAS (NumPy and SciPy each
ship one) keep spinning for a while after their work is done, and starve whatever runs next: a
3.5 ms gemm measured 210 ms right after a parallel region on 2 cores.  So inside a numrnn call
every BLAS call is single-threaded (:func:`numrnn.cpu.blas.single_threaded`), and the parallel
work is split here into independent pieces.  Idle pool threads block; they do not spin.

Reproducibility.  Work is first cut into *blocks* whose number depends only on the size of the
work and on ``config.PARALLEL_BLOCKS`` (default: the machine's usable cores), never on the number
of threads: disjoint ranges of sequences for the recurrence (no per-step barrier), row blocks or
K-blocks for matrix products, with the K-block partial sums added in block order.  The threads
then share out whole blocks.  Each block's arithmetic is fixed, so the bits of every result are
the same with 1, 2 or 16 threads, and from run to run.

Fork.  A forked child (``os.fork``, ``multiprocessing``'s "fork" start method) inherits the pool
object but none of its threads; the pool is dropped in the child (``os.register_at_fork``) and
rebuilt at its first use there.
"""
import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from .. import config
from . import blas, sync

_pool = None
_pool_lock = threading.Lock()


_cores = None


def _forget_pool_in_child():
    global _pool, _pool_lock, _cores, _together_lock
    _pool = None  # its threads do not exist in the child; a submit there would wait forever
    _pool_lock = threading.Lock()
    _together_lock = threading.Lock()
    _cores = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _usable_cores():
    """The cores this process may run on, read once (a system call costs a microsecond at
    every one of a call's many products)."""
    global _cores
    if _cores is None:
        try:
            _cores = max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            _cores = max(1, os.cpu_count() or 1)
    return _cores


_serial = threading.local()  # non-empty in a thread inside serial()


def num_threads():
    """Threads numrnn uses for one call (``config.NUM_THREADS``, default: the usable cores;
    1 inside :func:`serial`)."""
    if _serial.__dict__:
        return 1
    if config.NUM_THREADS:
        return max(1, int(config.NUM_THREADS))
    return _usable_cores()


def num_blocks():
    """Blocks parallel work is cut into (``config.PARALLEL_BLOCKS``, default: the usable cores).

    Independent of :func:`num_threads`: results depend on this number, not on the threads.
    """
    if config.PARALLEL_BLOCKS:
        return max(1, int(config.PARALLEL_BLOCKS))
    return _usable_cores()


@contextlib.contextmanager
def serial():
    """Run the block's parallel work in the calling thread alone: the same blocks (so the same
    bits), one after another.  For work that is itself one of several run in parallel (an
    :class:`numrnn.Ensemble`'s members); a pool thread waiting on the pool could deadlock it."""
    nested = bool(_serial.__dict__)
    _serial.on = True
    try:
        yield
    finally:
        if not nested:
            del _serial.on


def _executor(n):
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n:
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="numrnn")
        return _pool


def pieces(total, work):
    """Into how many blocks to cut ``total`` independent items carrying ``work`` multiply-adds.

    A function of the work alone (and of the machine's block count): 1 below
    ``config.PARALLEL_MIN_WORK`` or where the BLAS cannot be held to one thread.
    """
    if work < config.PARALLEL_MIN_WORK or not blas.can_limit_threads():
        return 1
    return max(1, min(total, num_blocks()))


def bounds(n_items, n_blocks):
    """Start of each of ``n_blocks`` near-equal ranges covering range(n_items), and the end."""
    return [n_items * p // n_blocks for p in range(n_blocks + 1)]


def run(fn, n_items, n_blocks):
    """Call ``fn(start, stop)`` on each of ``n_blocks`` disjoint ranges covering range(n_items).

    The blocks are shared out over at most :func:`num_threads` threads, each taking a contiguous
    run of whole blocks (the first in the calling thread); exceptions propagate.  Which thread runs
    a block changes nothing in its result.
    """
    edges = bounds(n_items, n_blocks)
    n_threads = min(num_threads(), n_blocks)
    if n_threads == 1:
        for p in range(n_blocks):
            fn(edges[p], edges[p + 1])
        return
    shares = bounds(n_blocks, n_threads)

    def work(i):
        for p in range(shares[i], shares[i + 1]):
            fn(edges[p], edges[p + 1])

    futures = [_executor(n_threads - 1).submit(work, i) for i in range(1, n_threads)]
    try:
        work(0)
    finally:
        for f in futures:
            f.result()


_together_lock = threading.Lock()
#: Until this time.monotonic(), together() runs its work on one thread (see together).
_alone_until = 0.0
#: A run whose threads spent more than this share of their time waiting at the barrier sends
#: the next ALONE_SECONDS of calls to one thread.
WAITED_SHARE = 0.5
ALONE_SECONDS = 2.0


@njit(cache=True, nogil=True)
def _release(flags, n_threads):
    sync.release_all(flags, n_threads)


@njit(cache=True, nogil=True)
def _cycles():
    return sync.cycles()


def waited_share(flags, n_threads, cycles):
    """The share of ``n_threads`` threads' ``cycles`` (the run's length) spent waiting at the
    barrier, from the waiting cycles each thread left in ``flags``."""
    if n_threads <= 1 or cycles <= 0:
        return 0.0
    waited = sum(int(flags[i * sync.STRIDE + 1]) for i in range(n_threads))
    return waited / (n_threads * cycles)


def together(fn, n_threads):
    """Call ``fn(flags, i, n_threads)`` for i in range(n_threads), all running at once (the
    first in the calling thread), for kernels that meet at a barrier
    (:func:`numrnn.cpu.sync.arrive_and_wait` on ``flags``).

    Every participant must run at the same time, or the others spin until it starts: the pool
    is grown to ``n_threads - 1`` idle workers, and one such call runs at a time in the process
    (two interleaved on a shared pool could each hold workers the other waits for).  A
    participant that raises releases the barrier for good, so the others finish (their results
    are then discarded: the exception propagates).

    On a loaded machine a thread that shares its core with another process is descheduled for
    milliseconds, and every step waits for it (measured: 10-30x slower than one thread).  So a
    run whose threads spent more than ``WAITED_SHARE`` of their time waiting sends the calls of
    the next ``ALONE_SECONDS`` to one thread, which runs every block in turn: the same blocks,
    so the same bits.
    """
    global _alone_until
    if n_threads > 1 and time.monotonic() < _alone_until:
        n_threads = 1
    flags = np.zeros(max(n_threads, 1) * sync.STRIDE, np.int64)
    if n_threads <= 1:
        fn(flags, 0, 1)
        return

    def member(i):
        try:
            fn(flags, i, n_threads)
        except BaseException:
            _release(flags, n_threads)
            raise

    with _together_lock:
        pool = _executor(n_threads - 1)
        start = _cycles()
        futures = [pool.submit(member, i) for i in range(1, n_threads)]
        try:
            member(0)
        finally:
            for f in futures:
                f.result()
        if waited_share(flags, n_threads, _cycles() - start) > WAITED_SHARE:
            _alone_until = time.monotonic() + ALONE_SECONDS


@njit(cache=True, nogil=True)
def _dot_into(a, b, out):
    np.dot(a, b, out)


def matmul(a, b):
    """a @ b (2-D, same float dtype) on numrnn's threads, split over the rows of ``a``.

    ``b`` may be C- or Fortran-contiguous (a weight's transpose ``w.T`` goes to the BLAS as a
    transposed operand: copying it cost 3-7 ms per call for a 2048 x 512 LSTM weight)."""
    out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    a = np.ascontiguousarray(a)
    if not (b.flags.c_contiguous or b.flags.f_contiguous):
        b = np.ascontiguousarray(b)
    n = pieces(a.shape[0], a.shape[0] * a.shape[1] * b.shape[1])
    with blas.single_threaded():
        run(lambda r0, r1: _dot_into(a[r0:r1], b, out[r0:r1]), a.shape[0], n)
    return out


@njit(cache=True, nogil=True)
def _transpose_rows(a, out, r0, r1):
    """out[:, r0:r1] = a[r0:r1].T, in 32 x 32 tiles (a row of tiles stays in cache)."""
    n = a.shape[1]
    for i0 in range(r0, r1, 32):
        i1 = min(i0 + 32, r1)
        for j0 in range(0, n, 32):
            j1 = min(j0 + 32, n)
            for j in range(j0, j1):
                row = out[j]
                for i in range(i0, i1):
                    row[i] = a[i, j]


def transpose(a):
    """A C-contiguous copy of a.T (2-D), tiled and split over numrnn's threads by rows of ``a``:
    a weight's transpose for the kernels, 2-4x faster than ``np.ascontiguousarray(a.T)``
    (2048 x 512, float32: 3.9 ms against 1.8 on one thread of the 2-core EPYC)."""
    out = np.empty((a.shape[1], a.shape[0]), a.dtype)
    a = np.ascontiguousarray(a)
    rows = a.shape[0]
    tiles = -(-rows // 32)
    run(lambda t0, t1: _transpose_rows(a, out, t0 * 32, min(t1 * 32, rows)), tiles,
        pieces(tiles, a.size * 64))
    return out


def matmul_tn(a, b, out=None):
    """a.T @ b for a (K, M), b (K, P): split over K, partial products summed in a fixed order.

    ``out``: a C-contiguous (M, P) array to write into (the first block's product goes there
    directly).  The pieces go through NumPy's BLAS when it can be held to one thread
    (:func:`numrnn.cpu.blas.numpy_blas_controlled`; faster for this transposed form), else through
    Numba's ``np.dot``.  ``numpy.matmul`` releases the GIL, so the pieces run in parallel either
    way.
    """
    K = a.shape[0]
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    if out is None:
        out = np.empty((a.shape[1], b.shape[1]), a.dtype)
    if K == 0:
        out[...] = 0
        return out
    n = pieces(K, K * a.shape[1] * b.shape[1])
    parts = [out] + [np.empty_like(out) for _ in range(n - 1)]
    edges = bounds(K, n)
    use_numpy = blas.numpy_blas_controlled()

    def piece(k0, k1):
        p = edges.index(k0)
        if use_numpy:
            np.matmul(a[k0:k1].T, b[k0:k1], out=parts[p])
        else:
            _dot_into(a[k0:k1].T, b[k0:k1], parts[p])

    with blas.single_threaded():
        run(piece, K, n)
    for p in parts[1:]:
        out += p
    return out
