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


# --- which kernels the BLAS runs ---------------------------------------------------------------
#
# OpenBLAS built with DYNAMIC_ARCH picks a kernel family ("core") for the CPU when it loads, or
# takes the one OPENBLAS_CORETYPE names.  Forced or guessed below the CPU's vector width it stays
# correct but slow: with OPENBLAS_CORETYPE=Haswell (AVX2) on a 2-core AMD EPYC with AVX-512
# (Zen 5), a 1024^3 gemm ran at 109 GFLOP/s in float64 and 223 in float32, against 177 and 421
# with OpenBLAS's own choice (SkylakeX); PyTorch's MKL and oneDNN, and JAX's XLA, use AVX-512
# there whatever OPENBLAS_CORETYPE says (benchmarks/README.md, "A machine with AVX-512").

#: OpenBLAS's core names (lower case) whose widest kernels are AVX2.
AVX2_CORES = frozenset({"haswell", "zen", "excavator"})


def _text(lib, stem):
    """What OpenBLAS's ``stem`` function (get_config, get_corename) returns, or None."""
    for prefix in ("scipy_openblas_", "openblas_"):
        for suffix in ("", "64_"):
            fn = getattr(lib, prefix + stem + suffix, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                value = fn()
                return value.decode("ascii", "replace").strip() if value else None
    return None


def libraries():
    """The OpenBLAS libraries found, one dict each: ``name`` ("scipy": the one under Numba's
    np.dot, which numrnn's kernels call; "numpy": the one under ``numpy.matmul``), ``config``
    (its build, as ``openblas_get_config`` says), ``core`` (the kernel family it runs, as
    ``openblas_get_corename`` says) and ``threads``."""
    out = []
    for name, lib in _find().items():
        if lib is not None:
            out.append({"name": name, "config": _text(lib[2], "get_config"),
                        "core": _text(lib[2], "get_corename"), "threads": int(lib[0]())})
    return out


#: OpenBLAS's core names (lower case) whose widest kernels are AVX-512.
AVX512_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


def wide_kernels(found=None):
    """Whether both OpenBLAS libraries under numrnn's products over time, SciPy's (under
    Numba's np.dot) and NumPy's (the weight gradients' gemm), are found and run AVX-512 kernels
    (:data:`AVX512_CORES`) on a CPU with AVX-512.  False where either is missing or its kernels
    are unknown or narrower.  ``found``: :func:`libraries`' list (default: probed now)."""
    if found is None:
        found = libraries()
    cores = {lib["name"]: (lib["core"] or "").lower() for lib in found}
    return (_cpu_has_avx512() and set(cores) >= {"scipy", "numpy"}
            and all(cores[name] in AVX512_CORES for name in ("scipy", "numpy")))


def _cpu_has_avx512():
    """Whether this CPU runs AVX-512 (as LLVM, Numba's compiler, sees the host)."""
    try:
        import llvmlite.binding as ll
        return bool(ll.get_host_cpu_features().get("avx512f", False))
    except Exception:  # pragma: no cover - llvmlite is a dependency of Numba
        return False


def vector_width_note(found=None):
    """A sentence when an OpenBLAS found runs AVX2 kernels on a CPU with AVX-512 (its matrix
    products then run at 0.5-0.6 of the speed its AVX-512 kernels reach), else None.
    ``found``: :func:`libraries`' list (default: probed now)."""
    if found is None:
        found = libraries()
    narrow = [f"{lib['name']}'s {lib['core']}" for lib in found
              if (lib["core"] or "").lower() in AVX2_CORES]
    if not narrow or not _cpu_has_avx512():
        return None
    forced = os.environ.get("OPENBLAS_CORETYPE")
    why = (f"OPENBLAS_CORETYPE={forced} is set; unset it before NumPy is imported to let "
           f"OpenBLAS choose" if forced else "OpenBLAS did not recognise this CPU")
    return (f"OpenBLAS runs AVX2 kernels ({', '.join(narrow)}) on a CPU with AVX-512 ({why}): "
            f"its matrix products, numrnn's among them, run at 0.5-0.6 of the speed of its "
            f"AVX-512 kernels (measured on 2 Zen 5 cores)")


def summary():
    """One line for a benchmark's header: the CPU (as LLVM names it, and whether it has AVX-512),
    the kernel family of each OpenBLAS found, and OPENBLAS_CORETYPE where it is set."""
    try:
        import llvmlite.binding as ll
        cpu = ll.get_host_cpu_name()
    except Exception:  # pragma: no cover - llvmlite is a dependency of Numba
        cpu = "unknown"
    libs = ", ".join(f"{lib['name']}'s {lib['core']}" for lib in libraries()) or "none found"
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return (f"CPU {cpu} ({'with' if _cpu_has_avx512() else 'without'} AVX-512); OpenBLAS "
            f"kernels: {libs}" + (f" (OPENBLAS_CORETYPE={forced})" if forced else ""))


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
