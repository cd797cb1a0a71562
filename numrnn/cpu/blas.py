"""Holding the BLAS behind Numba's ``np.dot`` to one thread while numrnn's own threads run.

Numba's ``np.dot`` calls the BLAS that SciPy ships (through ``scipy.linalg.cython_blas``).  When
numrnn splits a batch over threads, each thread calls gemm once per time step; a multi-threaded
BLAS underneath would oversubscribe the cores and wait on its own thread pool every step (measured
here: 25x slower on a loaded 2-core machine).  The library's thread count is process-wide, so it
is set for the duration of a kernel call and restored after.  If the library cannot be found
(another BLAS build), ``can_limit_threads()`` is False and numrnn does not split batches.
"""
import contextlib
import ctypes
import glob
import os
import threading

_lock = threading.RLock()
_lib = None
_probed = False
_PREFIXES = ("scipy_openblas", "scipy_openblas64_", "openblas")


def _find():
    global _lib, _probed
    if _probed:
        return _lib
    _probed = True
    try:
        import scipy

        root = os.path.dirname(os.path.dirname(scipy.__file__))
        paths = sorted(glob.glob(os.path.join(root, "scipy.libs", "*openblas*")))
        paths += sorted(glob.glob(os.path.join(os.path.dirname(scipy.__file__), ".dylibs",
                                               "*openblas*")))
    except ImportError:  # pragma: no cover - scipy is a dependency
        paths = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            get = getattr(lib, prefix + "_get_num_threads", None)
            put = getattr(lib, prefix + "_set_num_threads", None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                put.argtypes = [ctypes.c_int]
                _lib = (get, put)
                return _lib
    return None


def can_limit_threads():
    """True when the BLAS under Numba's np.dot was found and its thread count can be set."""
    return _find() is not None


def num_threads():
    """The BLAS's thread count, or None if unknown."""
    lib = _find()
    return None if lib is None else int(lib[0]())


@contextlib.contextmanager
def single_threaded():
    """Run the block with the BLAS held to one thread (a no-op if it cannot be controlled)."""
    lib = _find()
    if lib is None:
        yield
        return
    get, put = lib
    with _lock:
        before = get()
        put(1)
        try:
            yield
        finally:
            put(before)
