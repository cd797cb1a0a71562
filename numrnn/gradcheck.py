"""Finite-difference gradient checks."""
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import _validation as _v

__all__ = ["gradcheck", "GradcheckResult", "GradcheckError"]


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with finite differences. ``.result`` holds the numbers."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class GradcheckResult:
    """Outcome of :func:`gradcheck`.

    Attributes
    ----------
    passed : bool
    max_error, mean_error : dict
        Per input: max and mean of |analytic - numeric| / scale, where scale is the larger of the
        two gradients' max-norms (a relative error that stays meaningful for near-zero entries).
    max_abs_error : dict
        Per input: max |analytic - numeric| (NaN where either holds a NaN or inf).
    eps : float
        Relative step: entry i is perturbed by eps * max(1, |x_i|).
    problems : tuple of str
        Why the check failed other than by a too-large error: a non-finite value of f, a
        non-finite analytic gradient, or a non-finite finite difference (f overflowed or
        returned NaN near the point).  Any of them fails the check.
    """

    passed: bool
    max_error: dict
    mean_error: dict
    max_abs_error: dict
    eps: float
    problems: tuple = field(default=())

    def __repr__(self):
        worst = max(self.max_error, key=lambda k: (np.isnan(self.max_error[k]),
                                                    self.max_error[k])) if self.max_error else None
        head = "passed" if self.passed else "FAILED"
        lines = [f"GradcheckResult({head}; worst input {worst!r}: max rel. error "
                 f"{self.max_error.get(worst, 0.0):.3g})"]
        lines += [f"  problem: {p}" for p in self.problems]
        for k in self.max_error:
            lines.append(f"  {k!s:>24}: max {self.max_error[k]:.3g}  mean "
                         f"{self.mean_error[k]:.3g}  max abs {self.max_abs_error[k]:.3g}")
        return "\n".join(lines)


def gradcheck(f, inputs, eps=None, rtol=1e-6, atol=1e-12, raise_on_failure=True):
    """Compare an analytic gradient with central finite differences in float64.

    Parameters
    ----------
    f : callable
        ``f(*inputs) -> (value, grads)`` with a scalar ``value`` and ``grads`` a sequence of arrays
        shaped like ``inputs``; or, when ``inputs`` is a mapping, ``f(inputs) -> (value, grads)``
        with ``grads`` a mapping with the same keys.  ``f`` must not modify its inputs.
    inputs : sequence or mapping of ndarray (float64)
        The point at which the gradient is checked.
    eps : float, optional
        Relative step; default cbrt(machine epsilon) ~ 6e-6, which balances the O(eps^2)
        truncation error of central differences against the O(macheps/eps) rounding error.
    rtol, atol : float
        Input k fails when max|analytic - numeric| > atol + rtol * scale_k, with scale_k the
        larger max-norm of the two gradients of input k.  A NaN or inf anywhere (the value of
        f at the point, an analytic gradient, a finite difference) fails the check too: it is
        never compared as if it were a number.
    raise_on_failure : bool
        Raise :class:`GradcheckError` on failure (default) or return the failed result.

    Returns
    -------
    GradcheckResult

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn import gradcheck
    >>> f = lambda x: (np.sum(np.sin(x)), [np.cos(x)])
    >>> gradcheck(f, [np.linspace(0.0, 1.0, 5)]).passed
    True
    """
    if not callable(f):
        raise TypeError(f"f: expected a callable f(*inputs) -> (value, grads), got "
                        f"{type(f).__name__}")
    named = isinstance(inputs, Mapping)
    if not named and not isinstance(inputs, (list, tuple)):
        raise TypeError(f"inputs: expected a sequence or mapping of float64 arrays, got "
                        f"{type(inputs).__name__}")
    keys = list(inputs.keys()) if named else list(range(len(inputs)))
    point = {}
    for k in keys:
        a = inputs[k]
        if not isinstance(a, np.ndarray) or a.dtype != np.float64:
            raise TypeError(f"inputs[{k!r}]: expected a float64 numpy array (finite differences "
                            f"run in float64), got "
                            f"{getattr(a, 'dtype', type(a).__name__)}")
        bad = _v.count_nonfinite(a)
        if bad:
            raise ValueError(f"inputs[{k!r}]: expected finite values, got {bad} NaN/inf entr"
                             f"{'y' if bad == 1 else 'ies'}")
        point[k] = a.copy()
    if eps is None:
        eps = float(np.finfo(np.float64).eps ** (1.0 / 3.0))
    eps = _v.check_real("eps", eps, 0.0, low_open=True)
    rtol = _v.check_real("rtol", rtol, 0.0)
    atol = _v.check_real("atol", atol, 0.0)

    def call(args):
        return f(dict(args)) if named else f(*[args[k] for k in keys])

    value, grads = call(point)
    if not np.ndim(value) == 0:
        raise ValueError(f"f: expected a scalar value, got shape {np.shape(value)}")
    max_err, mean_err, max_abs = {}, {}, {}
    problems = []
    if not np.isfinite(value):
        problems.append(f"f returned the non-finite value {float(value)!r} at the point")
    for idx, k in enumerate(keys):
        ana = np.asarray(grads[k] if named else grads[idx], dtype=np.float64)
        x = point[k]
        if ana.shape != x.shape:
            raise ValueError(f"f: gradient for input {k!r} has shape {ana.shape}, expected "
                             f"{x.shape}")
        bad = _v.count_nonfinite(ana)
        if bad:
            problems.append(f"the analytic gradient of input {k!r} holds {bad} NaN/inf entr"
                            f"{'y' if bad == 1 else 'ies'}")
        num = np.empty_like(x)
        flat, nflat = x.reshape(-1), num.reshape(-1)
        for i in range(flat.size):
            orig = flat[i]
            h = eps * max(1.0, abs(orig))
            flat[i] = orig + h
            up = call(point)[0]
            flat[i] = orig - h
            down = call(point)[0]
            flat[i] = orig
            nflat[i] = (up - down) / (2.0 * h)
        bad = _v.count_nonfinite(num)
        if bad:
            problems.append(f"the finite differences of input {k!r} hold {bad} NaN/inf entr"
                            f"{'y' if bad == 1 else 'ies'} (f is not finite near the point)")
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(ana - num)
            scale = max(float(np.max(np.abs(num), initial=0.0)),
                        float(np.max(np.abs(ana), initial=0.0)), np.finfo(np.float64).tiny)
            if not (np.all(np.isfinite(diff)) and np.isfinite(scale)):
                max_abs[k] = max_err[k] = mean_err[k] = float("nan")
                continue
            max_abs[k] = float(np.max(diff, initial=0.0))
            max_err[k] = max_abs[k] / scale
            mean_err[k] = float(np.mean(diff)) / scale if diff.size else 0.0
        if max_abs[k] > atol + rtol * scale:
            problems.append(f"input {k!r}: max |analytic - numeric| = {max_abs[k]:.3g} > "
                            f"atol + rtol * scale = {atol + rtol * scale:.3g}")
    passed = not problems
    result = GradcheckResult(passed, max_err, mean_err, max_abs, eps, tuple(problems))
    if not passed and raise_on_failure:
        raise GradcheckError(f"gradcheck failed (rtol={rtol}, atol={atol}):\n{result!r}", result)
    return result
