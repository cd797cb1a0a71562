"""Scratch arrays for the CPU backend's calls, kept in one pool per process and reused between
calls.

A forward pass and its BPTT allocate arrays of T * B * G*N numbers that die when the call
returns: the input projection, the tape (states and what BPTT needs of each step), the
cotangents of the projections, a transposed weight, a parameter snapshot; an analysis call, its
tangent-map coefficients.  Above glibc's trim threshold (a few MiB), freeing them hands their
pages back to the kernel, and the next call takes them again page by page, each a fault of about
4-5 us on the 2-core Zen 3 VM: 600-3000 faults per vjp at T = 200.  Some results come from the
pool too (the states of a forward pass, the step Jacobians): a caller keeps them as long as it
likes, and once it drops them the next call writes their pages again.

:func:`empty` gives such an array as a view of a buffer that the pool keeps.  A buffer is handed
out again only when nothing else holds a reference to it (CPython's reference count says so), so
an array still in use, or one that reached a caller, is never overwritten: a pooled array is
safe wherever a plain one is, and costs memory for as long as it lives.  The pool holds at most
``numrnn.config.SCRATCH_BYTES`` for the whole process, whatever the threads calling (idle
buffers are dropped, least recently used first, to make room; an array that does not fit is a
plain one), and arrays smaller than ``numrnn.config.SCRATCH_MIN_BYTES`` are plain ones (the
allocator reuses those without faults).  :func:`release` drops the idle buffers (the memory
check does before it refuses a call: :func:`numrnn._memory.check`).  A pool thread keeps the
operands of its last job until its next one comes (or for a millisecond of spinning,
:data:`numrnn.cpu.threads.IDLE_SPIN_SECONDS`), so a buffer may stay in use a moment after the
call that made it: the next call then takes another.

Measured on the 2-core Zen 3 VM (T = 200 vjp, separate processes in alternation, before/after):
minor faults per call 600-3000 -> 0; relu float64 B = 32 N = 32 7.3-11.0 -> 4.3-7.2 ms, LSTM
float32 B = 32 N = 128 75-104 -> 70-77 ms; ``lyapunov_spectrum`` k = 10, N = 200, T = 2000
3400-5300 faults -> 1.  The step Jacobians (``numrnn.jacobians``, T = 500, B = 1, N = 128:
65 MB) on the 2-core Zen 4, plain against pooled output alternating call by call in one
process (median per round, 30 / 20 rounds): tanh 8.8 -> 6.1 ms (0.707), GRU 10.9 -> 8.4 ms
(0.773).
"""
import math
import os
import sys
import threading

import numpy as np

from .. import config

__all__ = ["empty", "release", "pooled_bytes"]

#: Every buffer is used from an offset that puts the array's first element on a cache line.
_ALIGN = 64


def _idle_count(buffers, i):
    return sys.getrefcount(buffers[i])


def _calibrate():
    """The reference count :func:`_idle_count` sees for a buffer that only the pool holds, and
    whether it tells a buffer a view holds from one it does not (False: no pooling here)."""
    buffers = [np.empty(1, np.uint8)]
    idle = _idle_count(buffers, 0)
    view = buffers[0][:]
    held = _idle_count(buffers, 0)
    del view
    return idle, held != idle and _idle_count(buffers, 0) == idle


_IDLE, _USABLE = _calibrate()

# The buffers (uint8, 1-D), least recently handed out first, where each one's aligned start
# is, and their bytes; changed only under the lock.  A buffer is taken under the lock, and only
# the pool hands out references to its buffers, so one seen idle there stays idle.
_buffers = []
_offsets = []
_total = 0
_lock = threading.RLock()


def _new_lock_in_child():
    """A child forked while another thread held the lock starts with a free one."""
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def _drop(i):
    global _total
    _total -= _buffers[i].size
    del _buffers[i], _offsets[i]


def empty(shape, dtype):
    """An uninitialised C-contiguous array of ``shape`` and ``dtype``, as :func:`numpy.empty`;
    from the pool when it is at least ``config.SCRATCH_MIN_BYTES`` and fits the pool's
    ``config.SCRATCH_BYTES``."""
    global _total
    dtype = np.dtype(dtype)
    if type(shape) is not tuple:
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = dtype.itemsize * math.prod(shape)
    limit = config.SCRATCH_BYTES
    if nbytes < max(config.SCRATCH_MIN_BYTES, 1) or nbytes + _ALIGN > limit or not _USABLE:
        return np.empty(shape, dtype)
    with _lock:
        best, best_size = -1, 0
        for i in range(len(_buffers)):  # the smallest idle one that holds it, < 25% to spare
            size = _buffers[i].size - _ALIGN
            if (nbytes <= size <= nbytes + nbytes // 4 and (best < 0 or size < best_size)
                    and _idle_count(_buffers, i) == _IDLE):
                best, best_size = i, size
        if best >= 0:
            buf, off = _buffers.pop(best), _offsets.pop(best)
        else:
            need = nbytes + _ALIGN
            i = 0
            while _total + need > limit and i < len(_buffers):
                if _idle_count(_buffers, i) == _IDLE:
                    _drop(i)
                else:
                    i += 1
            if _total + need > limit:  # the pool's buffers are in use: a plain array
                return np.empty(shape, dtype)
            buf = np.empty(need, np.uint8)
            off = -buf.__array_interface__["data"][0] % _ALIGN
            _total += need
        _buffers.append(buf)
        _offsets.append(off)
        return np.ndarray(shape, dtype, buf, off)


def release():
    """Drop the pool's idle buffers (those no array uses now); returns the bytes dropped."""
    with _lock:
        before = _total
        i = 0
        while i < len(_buffers):
            if _idle_count(_buffers, i) == _IDLE:
                _drop(i)
            else:
                i += 1
        return before - _total


def pooled_bytes():
    """(bytes the pool holds, of which in use now)."""
    with _lock:
        busy = sum(_buffers[i].size for i in range(len(_buffers))
                   if _idle_count(_buffers, i) != _IDLE)
        return _total, busy
