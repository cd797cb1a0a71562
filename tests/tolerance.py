"""The one tolerance helper every numrnn test uses for numerical comparisons."""
import numpy as np

#: Default relative tolerances by dtype (what "equal to working precision" means in these tests).
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5}


def rel_error(actual, expected):
    """max|actual - expected| / max(max|expected|, tiny): a norm-wise relative error."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape mismatch: {actual.shape} vs {expected.shape}")
    scale = max(float(np.max(np.abs(expected), initial=0.0)), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(actual - expected), initial=0.0)) / scale


def assert_close(actual, expected, rtol=None, atol=0.0, what=""):
    """Assert a norm-wise relative error <= rtol (or absolute error <= atol).

    ``rtol`` defaults to RTOL of ``expected``'s dtype.
    """
    if rtol is None:
        rtol = RTOL.get(np.asarray(expected).dtype, 1e-12)
    err = rel_error(actual, expected)
    abs_err = float(np.max(np.abs(np.asarray(actual, np.float64)
                                  - np.asarray(expected, np.float64)), initial=0.0))
    if not (err <= rtol or abs_err <= atol):
        raise AssertionError(f"{what or 'arrays'} differ: relative error {err:.3g} > rtol "
                             f"{rtol:.3g} (max abs error {abs_err:.3g})")
