"""CPU backend: ``@njit`` kernels for the recurrence (forward and BPTT), and numrnn's own threads."""
import numpy as np

from .blas import single_threaded
from .recurrence import (backward, coefficients, forward, recurrent_inputs,
                         recurrent_weight_grad)
from .threads import matmul, matmul_tn

__all__ = ["forward", "backward", "coefficients", "recurrent_inputs", "recurrent_weight_grad",
           "matmul", "matmul_tn", "single_threaded", "describe"]

_PRODUCTS = ("compiled loops", "BLAS gemm per step", "BLAS gemm per step, transposed",
             "compiled dot products (AVX-512)", "packed register tiles (AVX-512)")


def describe(sizes=((1, 32), (1, 512), (32, 128), (32, 512)), *, steps=200, dtype=np.float32):
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
        ``blas_threads``, ``numpy_blas_thread_control``, ``blas_libraries`` (each OpenBLAS found:
        its build and the kernel family it runs, :func:`numrnn.cpu.blas.libraries`),
        ``blas_note`` (a sentence when OpenBLAS runs AVX2 kernels on a CPU with AVX-512, else
        None), and ``kernels``: one dict per size with
        ``batch``, ``hidden``, ``steps``, ``dtype``, ``split`` ("sequences": the batch is cut
        into ``pieces`` blocks of sequences, one per thread at most; "units": each step is cut
        into ``pieces`` blocks of units of every sequence, the threads meeting at a barrier
        after every step, for small batches: see :func:`numrnn.cpu.recurrence.unit_blocks`),
        ``pieces`` and
        ``recurrent_product`` ("compiled loops", "BLAS gemm per step", "BLAS gemm per step,
        transposed", "compiled dot products (AVX-512)", "BLAS per unit block" or "compiled dot
        products per unit block (AVX-512)").  ``dot_products``: whether the recurrent products
        of several sequences and the products over all steps (the input projection, the
        input's gradient, the weight gradients) run as compiled dot products where their sums
        are deep enough (``config.DOT_PRODUCTS``, :func:`numrnn.cpu.products.use_dot_products`
        and its size rules).  ``blas_avx512_kernels``: whether both OpenBLAS libraries run
        AVX-512 kernels (:func:`numrnn.cpu.blas.wide_kernels`); then the products over all
        steps go to the BLAS, but float64's narrow weight gradients
        (:func:`numrnn.cpu.products.gemm_nt_pays`, :func:`numrnn.cpu.products.gemm_tn_pays`).
        ``split_min_step_work``: float32 multiply-adds per step from which a small batch's
        steps are split by units (a float64 one counts ``split_float64_weight`` times);
        ``split_max_rows`` and ``split_min_sequence_work``: the most sequences per block of the
        batch split, and the least work of one sequence's step, for which a larger batch is
        split by units.

    Examples
    --------
    >>> import numrnn.cpu
    >>> d = numrnn.cpu.describe([(1, 8)])
    >>> d["kernels"][0]["recurrent_product"], d["kernels"][0]["pieces"]
    ('compiled loops', 1)
    >>> d["kernels"][0]["split"]
    'sequences'
    """
    from .. import config
    from . import blas, products, recurrence, threads

    dtype = np.dtype(dtype)
    kernels = []
    for batch, hidden in sizes:
        # the rules forward() and backward() apply: the thread split of the whole call, and the
        # form of each step's recurrent product (n_in = n_out = N for one gate and one read)
        edges = recurrence.unit_blocks(batch, hidden, hidden, hidden, steps, dtype)
        if edges is not None:
            kernels.append({"batch": int(batch), "hidden": int(hidden), "steps": int(steps),
                            "dtype": str(dtype), "split": "units", "pieces": len(edges) - 1,
                            "recurrent_product":
                                "compiled dot products per unit block (AVX-512)"
                                if batch > 1 and products.use_dot_products()
                                else "BLAS per unit block"})
            continue
        pieces = threads.pieces(batch, steps * batch * hidden * hidden)
        mode = recurrence.product_mode(dtype, batch, hidden, hidden, batch // pieces)
        kernels.append({"batch": int(batch), "hidden": int(hidden), "steps": int(steps),
                        "dtype": str(dtype), "split": "sequences", "pieces": pieces,
                        "recurrent_product": _PRODUCTS[mode]})
    found = blas.libraries()
    return {"threads": threads.num_threads(), "parallel_blocks": threads.num_blocks(),
            "parallel_min_work": config.PARALLEL_MIN_WORK, "blas_min_work": config.BLAS_MIN_WORK,
            "split_min_step_work": config.SPLIT_MIN_STEP_WORK,
            "split_float64_weight": config.SPLIT_FLOAT64_WEIGHT,
            "split_max_rows": config.SPLIT_MAX_ROWS,
            "split_min_sequence_work": config.SPLIT_MIN_SEQUENCE_WORK,
            "transposed_gemm_float32": config.TRANSPOSED_GEMM_FLOAT32,
            "dot_products": products.use_dot_products(),
            "blas_avx512_kernels": products.blas_wide(),
            "blas_thread_control": blas.can_limit_threads(), "blas_threads": blas.num_threads(),
            "numpy_blas_thread_control": blas.numpy_blas_controlled(),
            "blas_libraries": found, "blas_note": blas.vector_width_note(found),
            "kernels": kernels}
