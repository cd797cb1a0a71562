"""What numrnn does when a NaN or inf is born inside a computation.

Inputs are checked before any kernel reads them (a non-finite input is a ``ValueError``).  A value
that *becomes* non-finite inside a computation (a relu network whose state overflows, a gradient
that explodes past the dtype's range, a frame that overflows in a Lyapunov loop) is reported where
it appears: which quantity, which layer and direction, the first step, the first sequence.

By default the report is an error, :class:`NonFiniteError`.  People who study divergence on
purpose can opt out for a block of code::

    with numrnn.nonfinite("warn"):     # or "ignore"
        out, h_n = net.forward(x)      # may hold inf/NaN; a NonFiniteWarning says where

or for the whole process with ``numrnn.config.NONFINITE = "warn"`` (or the environment variable
``NUMRNN_NONFINITE=warn`` before numrnn is imported).  The setting of a ``with`` block belongs to
the thread (and asyncio task) that entered it.
"""
import contextlib
import contextvars
import warnings

from . import config

__all__ = ["NonFiniteError", "NonFiniteWarning", "nonfinite", "nonfinite_policy"]

POLICIES = ("raise", "warn", "ignore")

_policy = contextvars.ContextVar("numrnn_nonfinite", default=None)


class NonFiniteError(FloatingPointError):
    """A NaN or inf appeared inside a numrnn computation whose inputs were finite.

    The message names the quantity, the layer and direction, the first step and the first
    sequence where it appeared, and how to opt out (:func:`numrnn.nonfinite`).
    """


class NonFiniteWarning(RuntimeWarning):
    """The warning numrnn gives instead of :class:`NonFiniteError` under ``nonfinite("warn")``."""


def _check_policy(policy, name="policy"):
    if policy not in POLICIES:
        raise ValueError(f"{name}: expected one of {POLICIES}, got {policy!r}")
    return policy


def nonfinite_policy():
    """The policy in force in this thread: "raise" (default), "warn" or "ignore"."""
    policy = _policy.get()
    if policy is None:
        return _check_policy(config.NONFINITE, "numrnn.config.NONFINITE")
    return policy


@contextlib.contextmanager
def nonfinite(policy):
    """Choose what a NaN or inf born inside a computation does, for the block of code inside.

    Parameters
    ----------
    policy : {"raise", "warn", "ignore"}
        "raise": :class:`NonFiniteError` (the default outside any block); "warn": a
        :class:`NonFiniteWarning` naming where it appeared, and the results (holding the inf
        or NaN) are returned; "ignore": the results are returned without a word.

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> net = numrnn.RNN(1, 4, cell="linear", init="identity", gain=1e3, bias=False)
    >>> with numrnn.nonfinite("ignore"):
    ...     out, h_n = net.forward(np.ones((200, 1)))
    >>> bool(np.isinf(out[-1]).all())
    True
    """
    token = _policy.set(_check_policy(policy))
    try:
        yield
    finally:
        _policy.reset(token)


def report(message):
    """Raise, warn or stay silent about a non-finite value, as the policy in force says."""
    policy = nonfinite_policy()
    if policy == "ignore":
        return
    hint = (" (to keep the inf/NaN results, run the call inside `with numrnn.nonfinite('warn'):` "
            "or 'ignore')")
    if policy == "raise":
        raise NonFiniteError(message + hint)
    warnings.warn(message, NonFiniteWarning, stacklevel=3)
