"""Holding the BLAS libraries to one thread while numrnn's own threads run.

Two OpenBLAS builds live in a NumPy + SciPy process.  Numba's ``np.dot`` calls the one SciPy ships
(through ``scipy.linalg.cython_blas``); NumPy's ``matmul`` calls the one NumPy ships.  numrnn's
kernels use the first; :func:`numrnn.cpu.threads.matmul_tn` uses the second where it can, because
for a transposed left operand (the weight-gradient products) it ran 10-25% faster here (OpenBLAS
0.3.31 in NumPy 2.4 against 0.3.30 in SciPy 1.17, both dtypes, N = 128 and 512).

When numrnn splits work over threads, each thread calls the BLAS; a multi-threaded BLAS underneath
would oversubscribe the cores and wait on its own thread pool at every call (measured here: 25x
slower on a loaded 2-core machine).  A library's thread count is process-wide, so it is set for
the duration of a numrnn call and restored after.  If SciPy's library cannot be found (another
BLAS build), ``can_limit_threads()`` is False and numrnn does not split work; if NumPy's cannot be
found, ``numpy_blas_controlled()`` is False and every product goes through Numba's ``np.dot``.
"""
import contextlib
import ctypes
import glob
import os
import threading

_lock = threading.RLock()
_depth = 0  # blocks entered by the thread holding _lock (re-entrant)


def _reset_lock_in_child():
    # a fork while another thread held the lock would leave it held forever in the child
    global _lock, _depth
    _lock = threading.RLock()
    _depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_in_child)
_libs = None
_NAMES = [(p + "_get_num_threads" + s, p + "_set_num_threads" + s)
          for p in ("scipy_openblas", "openblas") for s in ("", "64_")]


def _open(paths):
    """(get, put, library) of the first OpenBLAS among ``paths`` (its thread-count functions),
    or None."""
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, put_name in _NAMES:
            get = getattr(lib, get_name, None)
            put = getattr(lib, put_name, None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                put.argtypes = [ctypes.c_int]
                return get, put, lib
    return None


def numpy_gemm_addresses():
    """{"s": address, "d": address} of ``cblas_sgemm`` and ``cblas_dgemm`` in NumPy's own
    OpenBLAS when it is the 64-bit-integer build NumPy 2 wheels ship (so compiled code can run
    the products ``numpy.matmul`` runs), else None."""
    lib = _find()["numpy"]
    if lib is None:
        return None
    found = {}
    for ch in "sd":
        for name in (f"scipy_cblas_{ch}gemm64_", f"cblas_{ch}gemm64_"):
            fn = getattr(lib[2], name, None)
            if fn is not None:
                found[ch] = ctypes.cast(fn, ctypes.c_void_p).value
                break
    return found if len(found) == 2 else None


def _bundled(package):
    """Paths of the OpenBLAS shared libraries a wheel of ``package`` (numpy, scipy) ships."""
    try:
        module = __import__(package)
    except ImportError:  # pragma: no cover - both are dependencies
        return []
    here = os.path.dirname(module.__file__)
    return (sorted(glob.glob(os.path.join(os.path.dirname(here), package + ".libs", "*openblas*")))
            + sorted(glob.glob(os.path.join(here, ".dylibs", "*openblas*"))))


def _find():
    """{"scipy": (get, put, library) or None, "numpy": ... or None}, probed once."""
    global _libs
    if _libs is None:
        _libs = {name: _open(_bundled(name)) for name in ("scipy", "numpy")}
    return _libs


def can_limit_threads():
    """True when the BLAS under Numba's np.dot was found and its thread count can be set."""
    return _find()["scipy"] is not None


def numpy_blas_controlled():
    """True when NumPy's own BLAS (under ``numpy.matmul``) was found and its threads can be set."""
    return _find()["numpy"] is not None


def num_threads(library="scipy"):
    """The thread count of ``library``'s BLAS ("scipy": under Numba's np.dot; "numpy"), or None."""
    lib = _find()[library]
    return None if lib is None else int(lib[0]())


class _SingleThreaded:
    """The context manager :func:`single_threaded` returns (one object: the state is the
    module's, guarded by ``_lock``).  A class rather than a generator: numrnn enters it around
    every matrix product, nested in the call's own block, where it must cost next to nothing."""

    __slots__ = ()

    def __enter__(self):
        global _depth, _before
        if _helper.__dict__:  # working for the holder (see helping): it holds the BLAS at one
            return self
        _lock.acquire()
        if _depth == 0:  # the outermost block of the thread holding the lock
            libs = _held_libraries()
            _before = [get() for get, _, _ in libs]
            for _, put, _ in libs:
                put(1)
        _depth += 1
        return self

    def __exit__(self, *exc):
        global _depth
        if _helper.__dict__:
            return False
        _depth -= 1
        try:
            if _depth == 0:
                for (_, put, _), n in zip(_held_libraries(), _before):
                    put(n)
        finally:
            _lock.release()
        return False


_before = []
_BLOCK = _SingleThreaded()


def _held_libraries():
    return [lib for lib in _find().values() if lib is not None]


_helper = threading.local()  # non-empty in a thread inside helping()


@contextlib.contextmanager
def helping():
    """Run the block in a thread that works for a thread inside :func:`single_threaded` (the
    members of a :class:`numrnn.Ensemble` on numrnn's pool threads): the block's own
    ``single_threaded()`` blocks are no-ops, since the holder keeps every BLAS at one thread
    until it has collected this work.  Without it the helpers would queue on the lock, one
    member at a time.  Only for work the holder waits on, inside its block."""
    nested = bool(_helper.__dict__)
    _helper.on = True
    try:
        yield
    finally:
        if not nested:
            del _helper.on


def single_threaded():
    """A context manager: run the block with every BLAS found held to one thread (a no-op for
    those not found), restoring their thread counts after.  Re-entrant; other threads entering
    it wait until the outermost block ends."""
    return _BLOCK
