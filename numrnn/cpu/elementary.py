"""exp, expm1 and tanh that LLVM can vectorise, for the CPU kernels.

libm's ``exp`` and ``tanh`` are opaque calls: a loop that calls them runs one element at a time,
and in the pointwise part of an LSTM or GRU step they cost more than the matrix product at
moderate sizes.  llvmlite's LLVM has no vector math library (``numba -s``: "SVML Operational:
False"), so these are written out here, branch-free, in the argument's own precision:

- ``exp``: Cody-Waite reduction x = k ln 2 + r with |r| <= ln(2)/2, a Taylor polynomial for
  e^r (degree 13 in float64, 7 in float32: truncation below half an ulp), and 2^k assembled in the
  exponent bits (split in two factors, so the whole range from underflow to overflow is covered).
- ``expm1``: the same reduction; e^r - 1 as r (1 + r/2 (1 + ...)) has no cancellation, and
  e^x - 1 = 2^k (e^r - 1) + (2^k - 1).
- ``tanh``: -u / (u + 2) with u = expm1(-2|x|), sign restored (the form glibc uses near zero).

Measured against NumPy in extended precision (``tests/test_cpu_elementary.py``, 4e5 points
each, float64 and float32 alike): exp within 1.1 ulp, expm1 within 2.3 ulp, tanh within 2.8 ulp;
NaN, +-inf and signed zeros give what libm gives, and exp underflows gradually.  Speed, one
loop over 4096 values on the 2-core EPYC: tanh 1.9 ns against libm's 18-28 ns (float32) and
4-5 ns against 16-29 ns (float64); exp 1.2 against 3-6 ns and 3-3.8 against 5.6-10 ns.
The CPU kernels see them through :func:`cpu_math`, a stand-in for the
``math`` module of :mod:`numrnn.cells`; the GPU kernels call CUDA's own functions.
"""
import math
import types as pytypes

import numpy as np
from numba import types
from numba.extending import intrinsic, overload, register_jitable


#: the type of the same width on the other side of a bit reinterpretation
_SAME_BITS = {types.float64: types.int64, types.int64: types.float64,
              types.float32: types.int32, types.int32: types.float32}


@intrinsic
def _reinterpret(typingctx, value):
    """The bits of a float64 (float32) as int64 (int32), or the other way round."""
    if value not in _SAME_BITS:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(signature.return_type))

    return _SAME_BITS[value](value), codegen


class _Consts:
    """Constants of one precision, as numpy scalars of that dtype (Numba freezes their type)."""

    def __init__(self, dtype):
        f = np.dtype(dtype).type
        wide = dtype == np.float64
        self.log2e = f(1.0 / math.log(2.0))
        # ln 2 split so that k * ln2_hi is exact for the k that occur (fdlibm's split in float64).
        self.ln2_hi = f(6.93147180369123816490e-01) if wide else f(0.693145751953125)
        self.ln2_lo = (f(1.90821492927058770002e-10) if wide
                       else f(math.log(2.0) - 0.693145751953125))
        self.shifter = f(1.5 * 2.0 ** 52) if wide else f(1.5 * 2.0 ** 23)
        self.lo = f(-746.0) if wide else f(-104.0)  # below: e^x underflows to 0
        self.hi = f(710.0) if wide else f(89.0)     # above: overflows to inf
        self.bias = 1023 if wide else 127
        self.shift = 52 if wide else 23
        self.int = np.int64 if wide else np.int32
        degree = 13 if wide else 7
        # 1/n! for n = degree .. 1, Horner order
        self.inv_fact = tuple(f(1.0 / math.factorial(n)) for n in range(degree, 0, -1))
        self.one = f(1.0)
        self.two = f(2.0)
        self.zero = f(0.0)


_F64 = _Consts(np.float64)
_F32 = _Consts(np.float32)


def _make(c):
    """exp, expm1 and tanh of one precision, closed over its constants."""
    # Numba freezes closure variables that are numbers or tuples, not attributes of an object.
    to_int = c.int
    bias = to_int(c.bias)
    shift = to_int(c.shift)
    one_i = to_int(1)
    p = c.inv_fact
    n_terms = len(p)
    lo, hi, log2e, shifter = c.lo, c.hi, c.log2e, c.shifter
    ln2_hi, ln2_lo, one, two, zero = c.ln2_hi, c.ln2_lo, c.one, c.two, c.zero

    @register_jitable(inline="always")
    def reduce(x):
        # k = round(x / ln 2) by the shifter trick; k's integer value sits in the low bits of t.
        xc = min(max(x, lo), hi)
        t = xc * log2e + shifter
        kf = t - shifter
        r = (xc - kf * ln2_hi) - kf * ln2_lo
        k = to_int(_reinterpret(t) - _reinterpret(shifter))
        return r, k

    @register_jitable(inline="always")
    def expm1_r(r):
        """e^r - 1 for |r| <= ln(2)/2, as r * (1 + r/2 * (1 + r/3 * ...))."""
        q = p[0]
        for m in range(1, n_terms):
            q = q * r + p[m]
        return q * r

    @register_jitable(inline="always")
    def pow2(k):
        return _reinterpret(to_int((k + bias) << shift))

    @register_jitable(inline="always")
    def exp(x):
        r, k = reduce(x)
        k1 = to_int(k >> one_i)
        k2 = to_int(k - k1)
        y = (expm1_r(r) + one) * pow2(k1) * pow2(k2)
        return y if x == x else x

    @register_jitable(inline="always")
    def expm1(x):
        r, k = reduce(x)
        k1 = to_int(k >> one_i)
        k2 = to_int(k - k1)
        s1 = pow2(k1)
        s2 = pow2(k2)
        # 2^k (e^r - 1) + (2^k - 1); exact for k = 0.  s1 * s2 - 1 is exact while 2^k - 1 is.
        y = expm1_r(r) * s1 * s2 + (s1 * s2 - one)
        return y if (x == x and x != zero) else x  # NaN and signed zeros pass through

    @register_jitable(inline="always")
    def tanh(x):
        u = expm1(-two * abs(x))
        y = abs(u / (u + two))
        y = y if x > zero else -y
        return y if (x == x and x != zero) else x  # NaN and signed zeros pass through

    return exp, expm1, tanh


_exp64, _expm1_64, _tanh64 = _make(_F64)
_exp32, _expm1_32, _tanh32 = _make(_F32)


def exp(x):
    """e^x (vectorisable; see the module docstring). Plain Python falls back to math.exp."""
    return math.exp(x)


def expm1(x):
    """e^x - 1 (vectorisable). Plain Python falls back to math.expm1."""
    return math.expm1(x)


def tanh(x):
    """tanh x (vectorisable). Plain Python falls back to math.tanh."""
    return math.tanh(x)


def _by_precision(f64, f32):
    def typer(x):
        if x == types.float64:
            return lambda x: f64(x)
        if x == types.float32:
            return lambda x: f32(x)
        return None
    return typer


overload(exp)(_by_precision(_exp64, _exp32))
overload(expm1)(_by_precision(_expm1_64, _expm1_32))
overload(tanh)(_by_precision(_tanh64, _tanh32))


def cpu_math():
    """A module that stands in for :mod:`math` in the CPU twins of the cell functions."""
    module = pytypes.ModuleType("numrnn_cpu_math")
    for name in dir(math):  # every other function is math's own
        if not name.startswith("_"):
            setattr(module, name, getattr(math, name))
    module.exp = exp
    module.expm1 = expm1
    module.tanh = tanh
    return module
