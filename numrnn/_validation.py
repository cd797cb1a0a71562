"""Input checks shared by every backend and by the analysis code.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong rank, shape,
value) with a message that names the argument, what was expected and what came.
"""
import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _shape_str(shape):
    inner = ", ".join(str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def check_dtype_arg(dtype):
    """The network's dtype: float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: expected numpy.float32 or numpy.float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected numpy.float32 or numpy.float64, got {dt}")
    return dt


def check_int(name, value, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r} "
                        f"({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_real(name, value, low=None, high=None, low_open=False, high_open=False):
    """A finite real number, optionally in an interval."""
    if type(value) is not float and (isinstance(value, (bool, np.bool_))
                                     or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name}: expected a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    lo_ok = low is None or (value > low if low_open else value >= low)
    hi_ok = high is None or (value < high if high_open else value <= high)
    if not math.isfinite(value) or not (lo_ok and hi_ok):
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        interval = f"{lb}{'-inf' if low is None else low}, {'inf' if high is None else high}{rb}"
        raise ValueError(f"{name}: expected a finite number in {interval}, got {value!r}")
    return value


def check_float_array(name, a, dtype, shapes, finite=True):
    """Check an array argument and return it as a C-contiguous ndarray of ``dtype``.

    ``shapes`` is a list of allowed shapes; ``None`` in a shape matches any length.  The dtype must
    be exactly ``dtype``: numrnn never converts a user's float32 to float64 or back silently.
    """
    if type(a) is not np.ndarray or a.dtype != dtype:  # (an ndarray of the dtype passes these)
        a = _float_array(name, a, dtype)
    ndim, shape = a.ndim, a.shape
    for s in shapes:
        if len(s) == ndim and all(e is None or e == g for e, g in zip(s, shape)):
            break
    else:
        ranks = sorted({len(s) for s in shapes})
        if ndim not in ranks:
            raise ValueError(f"{name}: expected an array of rank {' or '.join(map(str, ranks))} "
                             f"(shape {' or '.join(_shape_str(s) for s in shapes)}), got rank "
                             f"{ndim} with shape {_shape_str(shape)}")
        want = " or ".join(_shape_str(["*" if e is None else e for e in s]) for s in shapes
                           if len(s) == ndim)
        raise ValueError(f"{name}: expected shape {want}, got {_shape_str(shape)}")
    if finite and not np.isfinite(a).all():
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/inf entr"
                         f"{'y' if bad == 1 else 'ies'}")
    return np.ascontiguousarray(a)


def _float_array(name, a, dtype):
    """``a`` as an ndarray of exactly ``dtype`` (lists and scalars converted; integer literals
    take the dtype), or the TypeError that says what came instead."""
    if hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: got a device array; this network runs on the CPU "
                        "(copy it to the host, or use device='cuda')")
    if not isinstance(a, np.ndarray):
        if isinstance(a, (list, tuple)) or np.isscalar(a):
            a = np.asarray(a)
            if a.dtype.kind in "iub":
                # Python number literals carry no dtype intent of the user's
                a = a.astype(dtype)
        else:
            raise TypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype.kind in "iub":
        raise TypeError(f"{name}: expected a floating array of dtype {np.dtype(dtype)}, got "
                        f"integer/boolean dtype {a.dtype}")
    if a.dtype.kind == "c":
        raise TypeError(f"{name}: expected a real floating array of dtype {np.dtype(dtype)}, "
                        f"got complex dtype {a.dtype}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating array of dtype {np.dtype(dtype)}, got "
                        f"dtype {a.dtype}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)} (the network's dtype), got "
                        f"{a.dtype}; convert it explicitly with .astype(numpy.{np.dtype(dtype)})")
    return a


def check_seed(seed, name="seed"):
    """A ``numpy.random.Generator`` from ``seed``: None (fresh entropy), a non-negative integer,
    a sequence of non-negative integers, a ``SeedSequence`` or a ``Generator`` (used as is).

    Every random number numrnn draws comes from a generator made here (no global state), so the
    same seed gives the same bits.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    expected = ("expected None, a non-negative integer, a sequence of them, a "
                "numpy.random.SeedSequence or a numpy.random.Generator")
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"{name}: {expected}, got {seed!r}")
    if isinstance(seed, numbers.Integral):
        if seed < 0:
            raise ValueError(f"{name}: {expected}, got the negative integer {seed}")
        return np.random.default_rng(int(seed))
    if isinstance(seed, (list, tuple, np.ndarray)):
        entries = np.asarray(seed, dtype=object).ravel()
        if entries.size == 0:
            raise ValueError(f"{name}: {expected}, got an empty sequence")
        for e in entries:
            if isinstance(e, (bool, np.bool_)) or not isinstance(e, numbers.Integral):
                raise TypeError(f"{name}: {expected}, got a sequence holding {e!r}")
            if e < 0:
                raise ValueError(f"{name}: {expected}, got a sequence holding the negative "
                                 f"integer {e}")
        return np.random.default_rng([int(e) for e in entries])
    raise TypeError(f"{name}: {expected}, got {seed!r} ({type(seed).__name__})")


def count_nonfinite(a):
    """Number of NaN/inf entries of a float array (0 for an empty one).

    A NaN or inf entry makes the sum NaN or inf, so one reduction answers for a finite array;
    the entries are counted only when the sum is not finite (an entry is, or the sum overflowed).
    """
    a = np.asarray(a)
    if math.isfinite(np.add.reduce(a, axis=None)):
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))
