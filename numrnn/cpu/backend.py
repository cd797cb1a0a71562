"""The CPU backend's side of the layer loop (:mod:`numrnn.driver`).

:mod:`numrnn.gpu.backend` has the same functions with the same signatures; the driver calls one
or the other and never asks which.  Arrays here are NumPy arrays; the recurrence runs in the
compiled kernels of :mod:`numrnn.cpu.recurrence` on numrnn's own threads.
"""
import threading

import numpy as np

from .. import _memory
from .. import _validation as _v
from . import blas, recurrence, scratch, threads

name = "cpu"
#: The products over time (the input projection, the weight gradients, the input's gradient)
#: run on blocks of steps aligned in absolute time (numrnn.config.STEP_BLOCK_*), so that a
#: checkpointed pass, whose segments are multiples of a block, runs exactly the products of the
#: whole pass.
STEP_BLOCK = True
#: A checkpointed pass (``checkpoint=``) runs here.
CHECKPOINTS = True


class Session:
    """One call's arguments and results: host arrays in, host arrays out."""

    def __init__(self, dtype):
        self.dtype = dtype

    def take(self, label, a, shapes):
        """Validate an argument (shape, dtype, finiteness); the array the kernels read."""
        return _v.check_float_array(label, a, self.dtype, shapes)

    def give(self, a):
        """A result, as the caller receives it."""
        return a


def session(dtype, x):
    """The :class:`Session` of a call whose input is ``x``."""
    return Session(dtype)


class _Running:
    """The context manager :func:`running` returns (one object; the state is per thread).

    Re-entrant: the outermost block of a thread sets up and restores, the blocks nested in it
    only count (``vjp`` holds one around both of its passes, each of which holds its own).  A
    class rather than a generator: the setup runs once a call, where it cost 4.7 us."""

    __slots__ = ()

    def __enter__(self):
        state = _running.__dict__
        depth = state.get("depth", 0)
        if depth:
            state["depth"] = depth + 1
            return self
        threads.wake()
        blas.single_threaded().__enter__()
        try:
            errors = np.errstate(all="ignore")
            errors.__enter__()
        except BaseException:
            blas.single_threaded().__exit__(None, None, None)
            raise
        state["errstate"] = errors
        state["depth"] = 1
        return self

    def __exit__(self, *exc):
        state = _running.__dict__
        state["depth"] -= 1
        if state["depth"]:
            return False
        try:
            state.pop("errstate").__exit__(*exc)
        finally:
            blas.single_threaded().__exit__(*exc)
        return False


_running = threading.local()  # depth: the blocks of running() the thread is in
_RUNNING = _Running()


def running():
    """Around a pass: numrnn's own threads do the parallel work (the BLAS is held to one), and
    NaN/inf born inside are reported by numrnn (:mod:`numrnn.errors`), not as NumPy warnings.
    The pool's threads are woken now, to be spinning when the first parallel work comes.
    Re-entrant (a block nested in another costs next to nothing)."""
    return _RUNNING


def upload(a):
    """A host array where the kernels read it (here: as it is)."""
    return a


def to_host(a):
    return a


def store(dst, host):
    """Write the host array ``host`` into ``dst``."""
    np.copyto(dst, host)


def empty(shape, dtype):
    return np.empty(shape, dtype)


def zeros(shape, dtype):
    return np.zeros(shape, dtype)


def temporary(shape, dtype):
    """An uninitialised array that the call drops before it returns: a scratch array, reused
    by the next call (:mod:`numrnn.cpu.scratch`)."""
    return scratch.empty(shape, dtype)


def copy(dst, src):
    dst[...] = src


def swap01(a):
    """(T, B, F) <-> (B, T, F), C-contiguous."""
    return np.ascontiguousarray(a.transpose(1, 0, 2))


def part(a, d, n, parts):
    """Columns [d*n, (d+1)*n) of a (T, B, parts*n) array, C-contiguous (the kernels read rows)."""
    return a if parts == 1 else np.ascontiguousarray(a[:, :, d * n:(d + 1) * n])


def project(flat_in, w_ih, bias, blocks=None):
    """The input projection of every step, flat_in (T*B, I) @ w_ih.T (+ bias): one product,
    run on the blocks of rows ``blocks`` (row edges of the blocks of steps), each split as a
    product of its own would be (so a checkpointed segment gets the bits of the whole)."""
    return threads.matmul(flat_in, w_ih.T, bias=bias, blocks=blocks)


def copy_new(a):
    """A copy of ``a`` (C order)."""
    return np.array(a, order="C")


def add_into(dst, src):
    """dst += src (arrays of one shape)."""
    np.add(dst, src, out=dst)


def forward(cell, opts, xp, w_hh, b_hh, h0, c0, reverse, into=None, d=0, steps=None):
    """:func:`numrnn.cpu.recurrence.forward`; with ``into`` (T, B, D*N) the states are also
    written to its columns of direction ``d`` (a bidirectional layer's output)."""
    out_h, out_c, aux, bad = recurrence.forward(cell, opts, xp, w_hh, b_hh, h0, c0, reverse,
                                                steps)
    if into is not None:
        n = out_h.shape[2]
        into[:, :, d * n:(d + 1) * n] = out_h
    return out_h, out_c, aux, bad


backward = recurrence.backward
recurrent_weight_grad = recurrence.recurrent_weight_grad


def matmul_tn(a, b, out):
    """out = a.T @ b (the weight gradients: one product after the sweep)."""
    return threads.matmul_tn(a, b, out=out)


def matmul(a, b, out=None, accumulate=False, blocks=None):
    """a @ b; into ``out`` if given (``accumulate``: out += a @ b); ``blocks``: row edges of
    blocks each run as a product of its own would be (see :func:`project`)."""
    if out is None:
        return threads.matmul(a, b, blocks=blocks)
    if accumulate:
        out += threads.matmul(a, b, blocks=blocks)
    elif out.flags.c_contiguous:
        threads.matmul(a, b, out, blocks=blocks)
    else:
        np.copyto(out, threads.matmul(a, b, blocks=blocks))
    return out


def colsum(a, out):
    """out = the sum of the rows of a (rows, cols) (a bias's gradient over every step)."""
    return threads.colsum(a, out)


def hypot(a, b):
    """a = hypot(a, b) elementwise (two directions' gradient norms together)."""
    return np.hypot(a, b, out=a)


def check_memory(what, nbytes, detail, fits):
    """MemoryError with the sizes, before allocating, when ``nbytes`` do not fit."""
    _memory.check(what, nbytes, detail, fits)
