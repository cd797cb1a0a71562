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

import numpy as np

from . import _validation as _v
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
    >>> bool(np.isfinite(out[-1]).any())
    False
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


# --- the reports of the engine (both backends) -------------------------------------------------


def first_in_running_order(bad, reverse):
    """(t, b): the earliest of the per-sequence first bad time indices ``bad`` (-1: none), in the
    order a sweep ran (time ascending, or descending when ``reverse``); None if there is none."""
    bad = np.asarray(bad)
    # (a few sequences: a list's max costs 0.1-0.6 us, NumPy's reduction 1-1.6)
    if bad.size == 0 or (max(bad.tolist()) if bad.size <= 64 else bad.max()) < 0:
        return None
    seqs = np.flatnonzero(bad >= 0)
    steps = np.asarray(bad)[seqs]
    i = int(np.argmax(steps) if reverse else np.argmin(steps))
    return int(steps[i]), int(seqs[i])


def layer_name(layer, reverse):
    return f"layer {layer}{' (reverse direction)' if reverse else ''}"


def check_state(bad, layer, reverse):
    """Report the first step where a forward pass's state became non-finite; True if it did."""
    hit = first_in_running_order(bad, reverse)
    if hit is None:
        return False
    t, b = hit
    report(f"forward: the hidden state of {layer_name(layer, reverse)} became NaN or inf at step "
           f"t={t} of sequence b={b}, from finite inputs and parameters: the network's state "
           "diverged (a relu, linear or rate network whose W_hh has a spectral radius above 1 "
           "grows without bound)")
    return True


def check_gradient(bad, layer, reverse, T, dtype):
    """Report the first step where BPTT's dL/dh became non-finite; True if it did.

    ``reverse``: the direction of the layer (its sweep runs forward in time)."""
    hit = first_in_running_order(bad, not reverse)
    if hit is None:
        return False
    t, b = hit
    back = t if reverse else T - 1 - t
    wider = ", or float64" if np.dtype(dtype) == np.float32 else ""
    report(f"vjp: the gradient dL/dh of {layer_name(layer, reverse)} became NaN or inf at step "
           f"t={t} of sequence b={b} ({back} steps back from where the sweep starts), from finite "
           f"inputs, cotangents and parameters: exploding gradients overflowed {dtype} (use "
           f"truncate=... or a shorter sequence{wider})")
    return True


def check_sums(together, named, terms, dtype):
    """After a finite sweep: report the first gradient (a sum over ``terms`` step-sequence terms)
    that holds a NaN or inf.  ``together``: host arrays that hold every gradient (buffers they
    are views of), checked in one reduction each; ``named()``: the (name, host ndarray) pairs,
    made only where one of them holds a NaN or inf (:func:`numrnn._validation.count_nonfinite`:
    one reduction per array, entries counted only where its sum is not finite)."""
    if not any(_v.count_nonfinite(g) for g in together):
        return False
    for name, g in named():
        bad = _v.count_nonfinite(g)
        if bad:
            report(f"vjp: the gradient of {name} holds {bad} NaN/inf entr"
                   f"{'y' if bad == 1 else 'ies'} although dL/dh stayed finite: its sum over "
                   f"{terms} step-sequence terms overflowed {dtype}")
            return True
    return False
