"""The GPU backend's side of the layer loop (:mod:`numrnn.driver`).

The same functions with the same signatures as :mod:`numrnn.cpu.backend`, on device arrays: the
recurrence runs in the ``@cuda.jit`` kernels of :mod:`numrnn.gpu.recurrence`, the products in
:mod:`numrnn.gpu.matmul`.  numpy inputs give numpy results; device inputs (anything with
``__cuda_array_interface__``: numba, CuPy, PyTorch CUDA tensors) are used without a copy and give
numba device arrays.  The parameters stay numpy arrays on the network (the one source of truth)
and are uploaded at each call, so in-place edits of ``net.parameters`` always take effect; the
tape a forward pass keeps for its pullback stays on the device.
"""
import contextlib
import math

import numpy as np

from .. import _validation as _v
from . import _cuda, matmul as mm, recurrence as rec
from ._cuda import cuda

name = "cuda"
#: The products over time run over the whole sequence at once (see numrnn.cpu.backend).
STEP_BLOCK = False
#: Checkpointed passes run on the CPU backend only.
CHECKPOINTS = False


class Session:
    """One call's arguments and results: where the input lived decides where results go."""

    def __init__(self, dtype, on_device):
        self.dtype = dtype
        self.on_device = on_device

    def take(self, label, a, shapes):
        """Validate an argument (shape and dtype; host arrays also finiteness); a device array,
        C-contiguous."""
        if _cuda.is_device_array(a):
            d = _cuda.as_device(a)
            if np.dtype(d.dtype) != self.dtype:
                raise TypeError(f"{label}: expected dtype {self.dtype} (the network's dtype), got "
                                f"{np.dtype(d.dtype)}; convert it explicitly")
            if not any(len(s) == d.ndim and all(e is None or e == g for e, g in zip(s, d.shape))
                       for s in shapes):
                want = " or ".join("(" + ", ".join("*" if e is None else str(e) for e in s) + ")"
                                   for s in shapes)
                raise ValueError(f"{label}: expected shape {want}, got {tuple(d.shape)}")
            if not d.is_c_contiguous():
                d = _cuda.to_device(d.copy_to_host())
            return d
        return _cuda.to_device(_v.check_float_array(label, a, self.dtype, shapes))

    def give(self, a):
        """A result: a device array if the call's input was one, else a numpy array."""
        return a if self.on_device else a.copy_to_host()


def session(dtype, x):
    """The :class:`Session` of a call whose input is ``x`` (checks that a GPU can be used)."""
    _cuda.require()
    return Session(dtype, _cuda.is_device_array(x))


def running():
    """Around a pass: nothing to set up on the GPU."""
    return contextlib.nullcontext()


def upload(a):
    return _cuda.to_device(np.ascontiguousarray(a))


def to_host(a):
    return a.copy_to_host()


def store(dst, host):
    """Write the host array ``host`` into the device array ``dst``."""
    dst.copy_to_device(np.ascontiguousarray(host))


def empty(shape, dtype):
    return _cuda.empty(shape, dtype)


def temporary(shape, dtype):
    """An uninitialised array that the call drops before it returns."""
    return _cuda.empty(shape, dtype)


def zeros(shape, dtype):
    return _cuda.to_device(np.zeros(shape, dtype))


@cuda.jit
def _copy2_kernel(src, dst):
    i = cuda.grid(1)
    b, n = dst.shape
    if i < b * n:
        r = i // n
        dst[r, i - r * n] = src[r, i - r * n]


@cuda.jit
def _copy1_kernel(src, dst):
    i = cuda.grid(1)
    if i < dst.shape[0]:
        dst[i] = src[i]


def copy(dst, src):
    """dst[...] = src for 1-D or 2-D device arrays (either may be a strided view)."""
    n = dst.size
    kernel = _copy2_kernel if dst.ndim == 2 else _copy1_kernel
    kernel[max(1, -(-n // 128)), 128](src, dst)


@cuda.jit
def _add2_kernel(dst, src):
    i = cuda.grid(1)
    b, n = dst.shape
    if i < b * n:
        r = i // n
        dst[r, i - r * n] += src[r, i - r * n]


def copy_new(a):
    """A C-contiguous device copy of ``a``."""
    out = _cuda.empty(a.shape, a.dtype)
    if a.ndim == 2:
        copy(out, a)
    else:
        out.copy_to_device(a)
    return out


def add_into(dst, src):
    """dst += src for 2-D device arrays of one shape."""
    _add2_kernel[max(1, -(-dst.size // 128)), 128](dst, src)


def swap01(a):
    return mm.swap01(a)


def part(a, d, n, parts):
    """Columns [d*n, (d+1)*n) of a (T, B, parts*n) array: a view (the kernels take strides)."""
    return a if parts == 1 else a[:, :, d * n:(d + 1) * n]


def project(flat_in, w_ih, bias, blocks=None):
    """flat_in (T*B, I) @ w_ih.T (+ bias): the input projection of every step, one product
    (``blocks``: unused here; this backend does not block the products over time)."""
    return mm.matmul(flat_in, w_ih, tb=True, bias=bias)


def forward(cell, opts, xp, w_hh, b_hh, h0, c0, reverse, into=None, d=0, steps=None):
    """:func:`numrnn.gpu.recurrence.forward`, writing the states into direction ``d``'s columns
    of ``into`` (T, B, D*N) when given; with the first non-finite step of each sequence."""
    n = h0.shape[1]
    view = None if into is None else into[:, :, d * n:(d + 1) * n]
    out_h, out_c, aux = rec.forward(cell, opts, xp, w_hh, b_hh, h0, c0, reverse, out_h=view)
    return out_h, out_c, aux, rec.first_nonfinite(out_h, reverse)


def backward(cell, opts, w_hh, h0, c0, out_h, out_c, aux, d_out, dh_n, dc_n, reverse,
             truncate, steps=None):
    """:func:`numrnn.gpu.recurrence.backward`, with the first step (in the sweep's order) where
    dL/dh held a NaN or inf in each sequence."""
    dxp, dhp, dh0, dc0, norm = rec.backward(cell, opts, w_hh, h0, c0, out_h, out_c, aux, d_out,
                                            dh_n, dc_n, reverse, truncate)
    # the sweep of a forward direction runs backwards in time
    bad = rec.first_hits(~np.isfinite(norm.copy_to_host()), not reverse)
    return dxp, dhp, dh0, dc0, norm, bad


def recurrent_weight_grad(cell, opts, dhp, h0, c0, out_h, out_c, reverse, out=None):
    """The gradient of M, the sum over t of dhp_tᵀ r_t (G*N, R*N), on the device."""
    T, B, _ = out_h.shape
    r = rec.recurrent_inputs(cell, opts, h0, c0, out_h, out_c, reverse)
    return mm.matmul(dhp.reshape(T * B, dhp.shape[2]), r.reshape(T * B, r.shape[2]), ta=True,
                     out=out)


def matmul_tn(a, b, out):
    return mm.matmul(a, b, ta=True, out=out)


def matmul(a, b, out=None, accumulate=False, blocks=None):
    """a @ b (into ``out``; ``accumulate``: out += a @ b); ``blocks`` unused, as in
    :func:`project`."""
    return mm.matmul(a, b, out=out, accumulate=accumulate)


def colsum(a, out):
    out.copy_to_device(mm.colsum(a))
    return out


@cuda.jit
def _hypot_kernel(a, b):
    """a = hypot(a, b) elementwise (2-D): the norm of two directions' gradients together."""
    i = cuda.grid(1)
    t, n = a.shape
    if i < t * n:
        r = i // n
        a[r, i - r * n] = math.hypot(a[r, i - r * n], b[r, i - r * n])


def hypot(a, b):
    _hypot_kernel[max(1, -(-a.size // 128)), 128](a, b)
    return a


def check_memory(what, nbytes, detail, fits):
    """DeviceMemoryError with the sizes, before allocating, when ``nbytes`` exceed the free
    memory of the GPU (the simulator's arrays are host memory: checked as the CPU's)."""
    if _cuda.SIMULATOR:
        from .. import _memory

        _memory.check(what, nbytes, detail, fits)
        return
    free, total = cuda.current_context().get_memory_info()
    if nbytes > free:
        raise _cuda.DeviceMemoryError(
            f"{what}: needs {nbytes / 2**20:.1f} MiB of GPU memory for {detail}; {free / 2**20:.1f}"
            f" MiB of {total / 2**20:.1f} MiB are free")
