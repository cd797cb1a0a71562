"""CPU backend: ``@njit`` kernels for the recurrence (forward and BPTT), and numrnn's own threads."""
import numpy as np

from .blas import single_threaded
from .recurrence import (backward, coefficients, forward, recurrent_inputs,
                         recurrent_weight_grad)
from .threads import matmul, matmul_tn

__all__ = ["forward", "backward", "coefficients", "recurrent_inputs", "recurrent_weight_grad",
           "matmul", "matmul_tn", "single_threaded", "describe"]

_PRODUCTS = ("compiled loops", "BLAS gemm per step", "BLAS gemm per step, transposed")


def describe(sizes=((1, 32), (32, 128), (32, 512)), *, steps=200, dtype=np.float32):
    """What this backend does on this machine: its threads, its thresholds, and which kernels
    run for a few sizes (the dispatch rules of :mod:`numrnn.config`, as they stand now).

    Parameters
    ----------
    sizes : sequence of (int, int)
        (B, N) pairs: batch and hidden size of a cell with one gate that reads one state (an
        Elman cell), for which ``kernels`` says what runs.
    steps : int
        T, the sequence length of those calls (the work that decides the thread split).
    dtype : numpy.float32 or numpy.float64

    Returns
    -------
    dict
        ``threads`` (threads one call uses), ``parallel_blocks`` (blocks parallel work is cut
        into: results depend on this, not on ``threads``), ``parallel_min_work`` (multiply-adds
        from which a call is split over threads), ``blas_min_work`` (multiply-adds per step from
        which the recurrent product is a BLAS gemm), ``transposed_gemm_float32``,
        ``blas_thread_control`` (whether numrnn can hold the BLAS to one thread),
        ``blas_threads``, ``numpy_blas_thread_control``, and ``kernels``: one dict per size with
        ``batch``, ``hidden``, ``steps``, ``dtype``, ``pieces`` (blocks the batch is split into)
        and ``recurrent_product`` ("compiled loops", "BLAS gemm per step" or "BLAS gemm per
        step, transposed").

    Examples
    --------
    >>> import numrnn.cpu
    >>> d = numrnn.cpu.describe([(1, 8)])
    >>> d["kernels"][0]["recurrent_product"], d["kernels"][0]["pieces"]
    ('compiled loops', 1)
    """
    from .. import config
    from . import blas, recurrence, threads

    dtype = np.dtype(dtype)
    kernels = []
    for batch, hidden in sizes:
        # the rules forward() and backward() apply: the thread split of the whole call, and the
        # form of each step's recurrent product (n_in = n_out = N for one gate and one read)
        kernels.append({"batch": int(batch), "hidden": int(hidden), "steps": int(steps),
                        "dtype": str(dtype),
                        "pieces": threads.pieces(batch, steps * batch * hidden * hidden),
                        "recurrent_product":
                            _PRODUCTS[recurrence.product_mode(dtype, batch, hidden, hidden)]})
    return {"threads": threads.num_threads(), "parallel_blocks": threads.num_blocks(),
            "parallel_min_work": config.PARALLEL_MIN_WORK, "blas_min_work": config.BLAS_MIN_WORK,
            "transposed_gemm_float32": config.TRANSPOSED_GEMM_FLOAT32,
            "blas_thread_control": blas.can_limit_threads(), "blas_threads": blas.num_threads(),
            "numpy_blas_thread_control": blas.numpy_blas_controlled(), "kernels": kernels}
