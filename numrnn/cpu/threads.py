"""numrnn's own CPU parallelism: a small pool of Python threads running ``nogil`` kernels.

Why not Numba's ``parallel=True`` or a multi-threaded BLAS: on a machine with few cores, the
OpenMP workers of a Numba parallel region and the pool threads of OpenBLAS (NumPy and SciPy each
ship one) keep spinning for a while after their work is done, and starve whatever runs next: a
3.5 ms gemm measured 210 ms right after a parallel region on 2 cores.  So inside a numrnn call
every BLAS call is single-threaded (:func:`numrnn.cpu.blas.single_threaded`), and the parallel
work is split here into independent pieces: disjoint ranges of sequences for the recurrence (no
per-step barrier), row blocks or K-blocks for matrix products (K-block partial sums are added in
a fixed order, so results do not depend on timing).  Idle pool threads block; they do not
spin.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from .. import config
from . import blas

_pool = None
_pool_lock = threading.Lock()


def num_threads():
    """Threads numrnn uses for one call (``config.NUM_THREADS``, default: the usable cores)."""
    if config.NUM_THREADS:
        return max(1, int(config.NUM_THREADS))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _executor(n):
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n:
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="numrnn")
        return _pool


def pieces(total, work):
    """Into how many pieces to split ``total`` independent items carrying ``work`` multiply-adds."""
    if work < config.PARALLEL_MIN_WORK or not blas.can_limit_threads():
        return 1
    return max(1, min(total, num_threads()))


def run(fn, n_items, n_pieces):
    """Call ``fn(start, stop)`` on ``n_pieces`` disjoint ranges covering range(n_items).

    The first range runs in the calling thread, the others in the pool; exceptions propagate.
    """
    bounds = [n_items * p // n_pieces for p in range(n_pieces + 1)]
    if n_pieces == 1:
        fn(0, n_items)
        return
    futures = [_executor(n_pieces - 1).submit(fn, bounds[p], bounds[p + 1])
               for p in range(1, n_pieces)]
    try:
        fn(bounds[0], bounds[1])
    finally:
        for f in futures:
            f.result()


@njit(cache=True, nogil=True)
def _dot_into(a, b, out):
    np.dot(a, b, out)


def matmul(a, b):
    """a @ b (2-D, same float dtype) on numrnn's threads, split over the rows of ``a``."""
    out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    n = pieces(a.shape[0], a.shape[0] * a.shape[1] * b.shape[1])
    with blas.single_threaded():
        run(lambda r0, r1: _dot_into(a[r0:r1], b, out[r0:r1]), a.shape[0], n)
    return out


def matmul_tn(a, b):
    """a.T @ b for a (K, M), b (K, P): split over K, partial products summed in a fixed order.

    The pieces go through NumPy's BLAS when it can be held to one thread
    (:func:`numrnn.cpu.blas.numpy_blas_controlled`; faster for this transposed form), else through
    Numba's ``np.dot``.  ``numpy.matmul`` releases the GIL, so the pieces run in parallel either
    way.
    """
    K = a.shape[0]
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    if K == 0:
        return np.zeros((a.shape[1], b.shape[1]), np.result_type(a, b))
    n = pieces(K, K * a.shape[1] * b.shape[1])
    parts = [np.empty((a.shape[1], b.shape[1]), a.dtype) for _ in range(n)]
    bounds = [K * p // n for p in range(n + 1)]
    use_numpy = blas.numpy_blas_controlled()

    def piece(k0, k1):
        p = bounds.index(k0)
        if use_numpy:
            np.matmul(a[k0:k1].T, b[k0:k1], out=parts[p])
        else:
            _dot_into(a[k0:k1].T, b[k0:k1], parts[p])

    with blas.single_threaded():
        run(piece, K, n)
    out = parts[0]
    for p in parts[1:]:
        out += p
    return out
