"""numrnn.cpu.elementary: the vectorisable exp, expm1 and tanh the CPU kernels use.

Errors are measured in units in the last place of the result's dtype against NumPy in
extended precision (np.longdouble), over the whole range where the result is a normal number,
and near zero, where expm1 and tanh must keep their relative accuracy.
"""
import numpy as np
import pytest
from numba import njit

from numrnn.cpu import elementary


@njit(error_model="numpy", cache=True)
def _apply(code, x, out):
    for i in range(x.shape[0]):
        if code == 0:
            out[i] = elementary.exp(x[i])
        elif code == 1:
            out[i] = elementary.expm1(x[i])
        else:
            out[i] = elementary.tanh(x[i])


FUNCS = {"exp": (0, np.exp), "expm1": (1, np.expm1), "tanh": (2, np.tanh)}

#: ulp bounds the module docstring states
BOUND = {"exp": 2.0, "expm1": 2.5, "tanh": 3.0}


def _compute(name, x):
    out = np.empty_like(x)
    _apply(FUNCS[name][0], x, out)
    return out


def _ulp_error(got, x, name):
    ref = FUNCS[name][1](x.astype(np.longdouble))
    ulp = np.spacing(np.abs(ref).astype(x.dtype)).astype(np.longdouble)
    return np.max(np.abs(got.astype(np.longdouble) - ref) / ulp)


def _points(rng, dtype, name, n=200_000):
    tiny = np.finfo(dtype).tiny
    if name == "exp":  # results stay normal numbers
        lo, hi = (np.log(tiny) + 1, np.log(np.finfo(dtype).max) - 1)
    else:
        lo, hi = (-30.0, 30.0) if dtype == np.float64 else (-15.0, 15.0)
    uniform = rng.uniform(lo, hi, n)
    small = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-30, 0.5, n)
    return np.concatenate([uniform, small]).astype(dtype)


@pytest.mark.skipif(np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps,
                    reason="needs an extended-precision long double for the reference")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(FUNCS))
def test_error_in_ulps(rng, dtype, name):
    x = _points(rng, dtype, name)
    err = _ulp_error(_compute(name, x), x, name)
    assert err <= BOUND[name], f"{name} {np.dtype(dtype).name}: {err:.3f} ulp"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(FUNCS))
def test_special_values_match_numpy(dtype, name):
    big = 1000.0
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, big, -big, 1e-300, -1e-300], dtype)
    got = _compute(name, x)
    with np.errstate(over="ignore"):
        expected = FUNCS[name][1](x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_array_equal(got[finite], expected[finite])
    np.testing.assert_array_equal(np.signbit(got[finite]), np.signbit(expected[finite]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exp_underflows_gradually_and_overflows(dtype):
    info = np.finfo(dtype)
    x = np.linspace(np.log(info.tiny) - 20, np.log(info.tiny), 1001).astype(dtype)
    got = _compute("exp", x)
    expected = np.exp(x.astype(np.longdouble))
    # Subnormal results: correct to the subnormal spacing (2 units of it).
    assert np.max(np.abs(got - expected)) <= 2 * info.smallest_subnormal
    top = np.array([np.log(info.max) * 0.999, np.log(info.max) * 1.001], dtype)
    got = _compute("exp", top)
    assert np.isfinite(got[0]) and got[1] == np.inf


def test_plain_python_falls_back_to_math():
    assert elementary.exp(1.0) == np.exp(1.0)
    assert elementary.tanh(0.5) == np.tanh(0.5)
    assert elementary.expm1(1e-10) == np.expm1(1e-10)
