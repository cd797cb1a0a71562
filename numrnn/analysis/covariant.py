r"""Covariant Lyapunov vectors by Ginelli's method, along network trajectories or for given
matrices, and the hyperbolicity measure built on them (the angle between the unstable and the
stable subspaces)."""
import contextlib
import errno
import numbers
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from .. import _memory, errors
from .. import _validation as _v
from ..cpu import jacobians as _k
from .linearisation import (Linearisation, check_jacobians, check_net, check_schedule,
                            check_status, fmt_list, frames, generator, schedule, state_size,
                            trajectory)
from .lyapunov import summarise

__all__ = ["CovariantLyapunovResult", "covariant_lyapunov_vectors",
           "covariant_lyapunov_vectors_from_jacobians"]

#: With ``storage="auto"`` and no ``memory_budget``, the R factors stay in memory while they take
#: at most this share of the memory available when the call starts (the rest is for the vectors
#: returned, the trajectory and everything else), and go to a temporary file otherwise.
MEMORY_FRACTION = 0.5

STORAGES = ("auto", "memory", "disk")


@dataclass(frozen=True, repr=False)
class CovariantLyapunovResult:
    r"""Covariant Lyapunov vectors (CLVs) of a trajectory at chosen times, with the exponents.

    Attributes
    ----------
    exponents : ndarray, shape (k,)
        lambda_1 >= ... >= lambda_k per step: the forward QR's time average of ln|R_ii| over the
        steps after ``transient``, pooled over the batch, exactly as
        :func:`numrnn.lyapunov_spectrum` with ``ons_interval=1`` computes them (the same bits
        for the same trajectory, transient and seed).  CLV i belongs to exponent i.
    stderr : ndarray, shape (k,)
        Standard error of each exponent by batch means (see :class:`numrnn.LyapunovResult`).
    times : ndarray of int, shape (n_times,)
        The steps t at which the vectors are given (the state s_t after step t), increasing,
        in [transient, T - backward_transient).
    vectors : ndarray, shape (n_times, B, S, k)
        ``vectors[i, b, :, j]`` is v_{j+1}(times[i]) of sequence b: a unit vector in the
        tangent space of s_t (stacked as in :func:`numrnn.analysis.pack_state`), defined up to
        its sign, with J_{t+1} v_j(t) parallel to v_j(t+1).  Always with the batch axis:
        B = 1 for an unbatched input, an autonomous run or a (T, S, S) sequence of matrices.
        float64 for every network (its tangent maps are float64); the dtype of J for matrices.
    angles : ndarray, shape (n_times, B)
        The smallest principal angle, in [0, pi/2], between the unstable subspace
        span(v_1 .. v_nu) and the rest span(v_nu+1 .. v_k) (nu = ``n_unstable``): near 0 at a
        near-tangency of the two, which a hyperbolic system keeps away from.  NaN when
        nu = 0 or nu = k (no such pair of subspaces).  With k < S the second subspace holds
        only the k - nu computed stable directions.
    local : ndarray, shape (n_times, B, k)
        One-step growth rate of each CLV, ln|J_{t+1} v_j(t)| at t = times[i] (NaN at t = T - 1,
        which has no next step).  Their time average over a long window tends to the
        exponents.
    n_unstable : int
        nu: the number of positive exponents, or the ``n_unstable`` asked for.
    n_steps : int
        Steps the exponents average over (T - transient per sequence).
    transient : int
        Initial steps that only align the forward frame with the Oseledets directions.
    backward_transient : int
        Steps of the backward iteration before the last time that can be given (T - 1 -
        backward_transient), where the coefficients have converged from their random start.
    state_size : int
        S.
    storage : str
        Where the R factors were kept: "memory" or "disk" (a temporary file, removed).
    initial_state : str
        How the trajectory's initial state was chosen ("" for given matrices).
    noise : str
        The noise in the dynamics ("none", or its std and seed): the vectors and exponents of a
        noisy trajectory are those of that realisation.

    Notes
    -----
    A CLV is only defined up to sign, and only where the spectrum is non-degenerate: with
    lambda_i = lambda_{i+1} the pair spans a well-defined plane but the vectors within it depend
    on the random start of the backward iteration.
    """

    exponents: np.ndarray
    stderr: np.ndarray
    times: np.ndarray
    vectors: np.ndarray
    angles: np.ndarray
    local: np.ndarray
    n_unstable: int
    n_steps: int
    transient: int
    backward_transient: int
    state_size: int
    storage: str
    initial_state: str = ""
    noise: str = "none"

    def split_angles(self, n):
        """The smallest principal angle between span(v_1 .. v_n) and span(v_n+1 .. v_k) at
        every time, for any split n (``angles`` is ``split_angles(n_unstable)``).

        For a flow (or a small step of one, such as the rate network's), one exponent is 0
        along the trajectory; with n at either side of it, the two splits separate the unstable
        from the centre-stable, and the centre-unstable from the stable subspaces.

        Parameters
        ----------
        n : int, 0 < n < k

        Returns
        -------
        ndarray, shape (n_times, B)
            In [0, pi/2]; NaN where the vectors are (a sequence lost to inf or NaN).
        """
        k = self.vectors.shape[3]
        n = _v.check_int("n", n, 1)
        if n >= k:
            raise ValueError(f"n: expected fewer than k = {k} vectors in the first subspace, "
                             f"got {n}")
        return _k.subspace_angles(self.vectors, n)

    def __repr__(self):
        lam = self.exponents
        n_times, B, S, k = self.vectors.shape
        nu = self.n_unstable
        if np.isnan(self.angles).all():
            why = "no unstable" if nu == 0 else "no stable"
            angle = f"unstable-stable angle undefined ({why} direction among the k)"
        else:
            a = self.angles[np.isfinite(self.angles)]
            angle = (f"min unstable-stable angle {a.min():.4g} rad (median {np.median(a):.4g}"
                     f", over {a.size} times x sequences)")
        start = f"; h0: {self.initial_state}" if self.initial_state else ""
        start += f"; noise: {self.noise}" if self.noise != "none" else ""
        return (f"CovariantLyapunovResult(lambda_1 = {lam[0]:.6g} +- {self.stderr[0]:.2g} "
                f"per step; nu = {nu} unstable of k = {k} CLVs, S = {S}; {angle}; "
                f"{n_times} times x B = {B}; transients {self.transient} forward, "
                f"{self.backward_transient} backward; R in {self.storage}{start})\n"
                f"  exponents: {fmt_list(lam)}\n  stderr:    {fmt_list(self.stderr)}")


# --- checks -------------------------------------------------------------------------------------


def _check_options(n_unstable, storage, memory_budget):
    """The options that do not depend on T, checked first."""
    if not isinstance(storage, str):
        raise TypeError(f"storage: expected one of {STORAGES}, got {storage!r} "
                        f"({type(storage).__name__})")
    if storage not in STORAGES:
        raise ValueError(f"storage: expected one of {STORAGES}, got {storage!r}")
    if memory_budget is not None:
        memory_budget = _v.check_int("memory_budget", memory_budget, 0)
        if storage != "auto":
            raise ValueError(f"memory_budget: only storage='auto' chooses between memory and "
                             f"disk; expected None with storage={storage!r}, got "
                             f"{memory_budget}")
    if n_unstable is not None:
        n_unstable = _v.check_int("n_unstable", n_unstable, 0)
    return n_unstable, memory_budget


def _check_times(times, lo, hi):
    if times is None:
        return np.arange(lo, hi, dtype=np.int64)
    if isinstance(times, (bool, np.bool_)):
        raise TypeError(f"times: expected integer steps, got {times!r}")
    if isinstance(times, numbers.Integral):
        times = [times]
    arr = np.asarray(times)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"times: expected a non-empty 1-D sequence of steps, got shape "
                         f"{arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"times: expected integer steps, got dtype {arr.dtype}")
    if np.any(np.diff(arr) <= 0):
        raise ValueError("times: expected strictly increasing steps, got "
                         f"{fmt_list(arr, 4, 2)}")
    if arr[0] < lo or arr[-1] >= hi:
        raise ValueError(f"times: expected steps in [transient, T - backward_transient) = "
                         f"[{lo}, {hi}), where both the forward frame and the backward "
                         f"iteration have converged; got steps from {arr[0]} to {arr[-1]}")
    return arr.astype(np.int64)


def _check_window(T, k, S, transient, backward_transient, times, n_unstable):
    """k, transient, backward_transient, times and n_unstable checked against T and S."""
    k, transient, _, _ = check_schedule(T, k, S, transient, 1, None)
    if backward_transient is None:
        backward_transient = T // 10
    backward_transient = _v.check_int("backward_transient", backward_transient, 0)
    if backward_transient >= T - transient:
        raise ValueError(f"backward_transient: expected fewer than T - transient = "
                         f"{T - transient} steps (T = {T}, transient = {transient}), so that "
                         f"the window [transient, T - backward_transient) of times is not "
                         f"empty; got {backward_transient}")
    times = _check_times(times, transient, T - backward_transient)
    if n_unstable is not None and n_unstable > k:
        raise ValueError(f"n_unstable: expected at most k = {k} (the number of vectors), got "
                         f"{n_unstable}")
    return k, transient, backward_transient, times


# --- sizes and the R store ----------------------------------------------------------------------


class _Plan:
    """The sizes of a call and where its R factors go."""

    def __init__(self, T, B, S, k, dtype, transient, backward_transient, times, storage,
                 memory_budget):
        self.T, self.B, self.S, self.k, self.dtype = T, B, S, k, np.dtype(dtype)
        self.transient, self.backward_transient, self.times = transient, backward_transient, times
        self.r_from = int(times[0]) + 1  # R_t is needed for t = times[0] + 1 .. T - 1
        self.r_shape = (T - self.r_from, B, k, k)
        size = self.dtype.itemsize
        self.r_bytes = int(np.prod(self.r_shape)) * size
        n = times.size
        # the vectors returned, their growth rates and angles, the per-step ln|R_ii|, scratch
        self.out_bytes = (n * B * S * k * size + n * B * (k + 1) * 8 + (T - transient) * B * k * 8
                          + 4 * B * S * k * size + 2 * B * k * k * size)
        self.storage = self._where(storage, memory_budget)
        self.memory_bytes = self.out_bytes + (self.r_bytes if self.storage == "memory" else 0)

    def _where(self, storage, budget):
        if storage != "auto":
            return storage
        if self.r_bytes == 0:
            return "memory"
        if budget is None:
            avail = _memory.available_bytes()
            if avail is None:
                return "memory"
            budget = MEMORY_FRACTION * avail
        return "memory" if self.r_bytes <= budget else "disk"

    def label(self):
        n, B, S, k = self.times.size, self.B, self.S, self.k
        what = (f"the (n_times, B, S, k) = ({n}, {B}, {S}, {k}) covariant vectors "
                f"({_memory.format_bytes(n * B * S * k * self.dtype.itemsize)})")
        if self.storage == "memory":
            what += (f", the R factors of {self.r_shape[0]} steps "
                     f"({_memory.format_bytes(self.r_bytes)})")
        return what

    def fits(self, avail):
        advice = "pass fewer times, or a smaller k"
        if self.storage == "memory":
            advice += (", or keep the R factors on disk (storage='disk' or 'auto'; they take "
                       f"{_memory.format_bytes(self.r_bytes)})")
        return advice

    def check_disk(self, caller):
        if self.storage != "disk" or self.r_bytes == 0:
            return
        folder = tempfile.gettempdir()
        free = shutil.disk_usage(folder).free
        if self.r_bytes > free:
            raise OSError(errno.ENOSPC, f"{caller}: the R factors of {self.r_shape[0]} steps "
                          f"(B={self.B}, k={self.k}) need {_memory.format_bytes(self.r_bytes)} "
                          f"on disk in {folder}, but only {_memory.format_bytes(free)} are free "
                          "(set TMPDIR to a larger disk, pass fewer or later times, or a smaller "
                          "k)")


@contextlib.contextmanager
def _r_store(plan):
    """The (T - r_from, B, k, k) array of R factors: in memory, or a memory-mapped file in a
    temporary folder that is removed however the call ends."""
    if plan.storage == "memory" or plan.r_bytes == 0:
        yield np.empty(plan.r_shape, plan.dtype)
        return
    folder = tempfile.TemporaryDirectory(prefix="numrnn-clv-")
    try:
        store = np.memmap(os.path.join(folder.name, "r_factors.bin"), dtype=plan.dtype,
                          mode="w+", shape=plan.r_shape)
        try:
            yield store
        finally:
            del store  # the last reference (the caller drops its own): the mapping closes
    finally:
        folder.cleanup()


# --- the two phases -----------------------------------------------------------------------------


def _ginelli(caller, plan, rng, jac=None, lin=None):
    """Both phases; returns (vectors, local growth rates, per-step ln|R_ii|, step lengths)."""
    T, B, S, k, dt = plan.T, plan.B, plan.S, plan.k, plan.dtype
    times, t_first = plan.times, int(plan.times[0])
    _, record_at, lengths = schedule(T, plan.transient, 1)
    q = frames(rng, B, S, k, dt)
    args = None if lin is None else lin.kernel_args()
    c = np.triu(rng.standard_normal((B, k, k)))
    c = np.ascontiguousarray(c / np.linalg.norm(c, axis=1, keepdims=True), dtype=dt)
    q_slot = np.full(T, -1, np.int64)
    q_slot[times] = np.arange(times.size)
    vectors = np.empty((times.size, B, S, k), dt)
    growth = np.full((times.size, B, k), np.nan)
    log_r = np.zeros((lengths.size, B, k))
    with _r_store(plan) as r_store:
        status = _k.covariant_forward(jac, args, q, record_at, plan.r_from, r_store, q_slot,
                                      vectors, log_r)
        check_status(status, 1, caller, dt)
        lost = np.where(status[:, 0] != _k.FAIL_NONE, status[:, 1], -1).astype(np.int64)
        back = _k.covariant_backward(r_store, plan.r_from, t_first, c, q_slot, lost, vectors,
                                     growth)
        del r_store
    failed = np.flatnonzero(back[:, 0] != 0)
    if failed.size:
        b = int(failed[0])
        t = int(back[b, 1])
        why = ("R_t has a zero diagonal entry (an exactly singular step on the frame: an "
               "exponent of -inf), so C_{t-1} = R_t^{-1} C_t is not defined"
               if back[b, 0] == 1 else
               "C_{t-1} = R_t^{-1} C_t overflowed (a diagonal entry of R_t within rounding of 0)")
        errors.report(f"{caller}: in the backward iteration at step t={t} of sequence b={b}, "
                      f"{why}; the CLVs of that sequence before step t are NaN")
    return vectors, growth, log_r, lengths


def _result(plan, vectors, growth, log_r, lengths, n_unstable, initial_state, noise="none"):
    spectrum = summarise(log_r, lengths, plan.transient, 1, None, plan.S)
    lam = spectrum.exponents
    nu = int(np.count_nonzero(lam > 0.0)) if n_unstable is None else n_unstable
    if 0 < nu < plan.k:
        angles = _k.subspace_angles(vectors, nu)
    else:
        angles = np.full(vectors.shape[:2], np.nan)
    return CovariantLyapunovResult(
        exponents=lam, stderr=spectrum.stderr, times=plan.times, vectors=vectors, angles=angles,
        local=growth, n_unstable=nu, n_steps=spectrum.n_steps, transient=plan.transient,
        backward_transient=plan.backward_transient, state_size=plan.S, storage=plan.storage,
        initial_state=initial_state, noise=noise)


# --- public -------------------------------------------------------------------------------------


def covariant_lyapunov_vectors(net, x=None, h0=None, *, n_steps=None, k=None, transient=None,
                               backward_transient=None, times=None, seed=None, n_unstable=None,
                               storage="auto", memory_budget=None, noise_std=0.0):
    r"""Covariant Lyapunov vectors of a network along the trajectory driven by x (or
    autonomously), and the angle between its unstable and stable subspaces.

    Ginelli's method.  Forward: Benettin's QR loop with a QR after every step (Y_t = J_t Q_{t-1}
    = Q_t R_t) over the whole trajectory; the first ``transient`` steps only align the frame;
    the R factors are kept from the first time asked for, and the frames Q_t at the times.
    Backward: from a random upper triangular C at the last step, C_{t-1} = R_t^{-1} C_t (a
    triangular solve) with unit columns; after ``backward_transient`` steps C_t holds the CLVs'
    coordinates in the frame, V_t = Q_t C_t.  Both loops run compiled; the tangent maps are
    those of :func:`numrnn.lyapunov_spectrum`, applied without forming J_t.

    Parameters
    ----------
    net : numrnn.RNN
        Any cell; bidirectional only with one layer (see :func:`numrnn.lyapunov_spectrum`).
    x : ndarray, shape (T, B, I), (B, T, I) if ``net.batch_first``, or (T, I), optional
        Input driving the network.  None: the autonomous network, zero input for ``n_steps``.
    h0 : ndarray or pair, optional
        Initial state as in :meth:`numrnn.RNN.forward`; the default is that of
        :func:`numrnn.lyapunov_spectrum` (zeros when x is given, N(0, 1) from ``seed`` when
        autonomous).
    n_steps : int, optional
        Length T of the autonomous run; required when x is None, not allowed otherwise.
    k : int, optional
        Number of vectors, 1 <= k <= S (default S).  The first k CLVs need only the first k
        forward directions, so a few leading vectors are cheap.
    transient : int, optional
        Forward steps that only align the frame (default T // 10).
    backward_transient : int, optional
        Backward steps between the last step and the last time that can be given (default
        T // 10); the CLVs converge there at the rate of the smallest gap lambda_i -
        lambda_{i+1} among the first k exponents.
    times : sequence of int, shape (n_times,), optional
        Strictly increasing steps in [transient, T - backward_transient) (default: every one of
        them).  The R factors are kept from times[0] + 1 on, so later and fewer times cost less.
    seed : int, sequence of int, numpy.random.SeedSequence or numpy.random.Generator, optional
        Draws the autonomous h0, then the initial frame (the same draws as
        :func:`numrnn.lyapunov_spectrum`), then the backward iteration's start.
    n_unstable : int, optional
        nu, the dimension of the unstable subspace for ``angles``, 0 <= nu <= k (default: the
        number of positive exponents).
    storage : {"auto", "memory", "disk"}, default "auto"
        Where the (T - times[0] - 1, B, k, k) R factors are kept: "disk" is a memory-mapped
        file in a temporary folder (``tempfile``, so ``TMPDIR``), removed when the call ends,
        however it ends.  "auto": in memory when they fit ``memory_budget``.  The results are
        the same bits either way.
    memory_budget : int, optional
        Bytes the R factors may take in memory under ``storage="auto"`` (default: half of
        the memory available when the call starts).
    noise_std : float >= 0, default 0
        Noise in the dynamics, as in :func:`numrnn.lyapunov_spectrum` (the realisation drawn
        from ``seed``): the CLVs of the trajectory driven by that realisation.

    Returns
    -------
    CovariantLyapunovResult
        ``exponents``, ``stderr``, ``times``, ``vectors`` (n_times, B, S, k), ``angles``
        (n_times, B), ``local`` (n_times, B, k), ``n_unstable``, ...; float64 for float32
        networks too.

    Raises
    ------
    MemoryError
        Before allocating, when the trajectory's coefficients, the vectors asked for and (in
        memory) the R factors do not fit; the message gives the sizes.
    OSError
        Before allocating, when ``storage`` puts the R factors on a disk with too little space.
    numrnn.NonFiniteError
        When the forward frame overflows (as in :func:`numrnn.lyapunov_spectrum`), or when the
        backward iteration meets an exactly singular step (an exponent of -inf, whose CLVs are
        not defined); under ``numrnn.nonfinite("warn")`` that sequence's vectors are NaN.

    References
    ----------
    Ginelli, F., Poggi, P., Turchi, A., Chate, H., Livi, R. and Politi, A. (2007). Characterizing
    dynamics with covariant Lyapunov vectors. Physical Review Letters 99, 130601.
    Kuptsov, P. V. and Parlitz, U. (2012). Theory and computation of covariant Lyapunov vectors.
    Journal of Nonlinear Science 22, 727-762.

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> net = numrnn.RNN(1, 30, init="gaussian", gain=2.0, bias=False, seed=0)
    >>> res = numrnn.covariant_lyapunov_vectors(net, n_steps=400, k=6, times=[200, 201], seed=1)
    >>> res.vectors.shape, res.angles.shape, res.n_unstable     # (n_times, B, S, k); 3 unstable
    ((2, 1, 30, 6), (2, 1), 3)
    >>> bool(np.all((res.angles > 0) & (res.angles <= np.pi / 2)))
    True
    """
    check_net(net, "covariant Lyapunov vectors")
    n_unstable, memory_budget = _check_options(n_unstable, storage, memory_budget)
    rng = generator(seed)
    traj = trajectory(net, x, h0, n_steps=n_steps, rng=rng, noise_std=noise_std, seed=seed,
                      what="covariant Lyapunov vectors")
    T, B = traj.x.shape[:2]
    S = state_size(net)
    k, transient, backward_transient, times = _check_window(
        T, k, S, transient, backward_transient, times, n_unstable)
    plan = _Plan(T, B, S, k, np.float64, transient, backward_transient, times, storage,
                 memory_budget)
    caller = "covariant_lyapunov_vectors"
    plan.check_disk(caller)
    lin = Linearisation(net, traj.x, traj.h, traj.c, caller=caller,
                        extra_bytes=plan.memory_bytes, extra_label=plan.label(), fits=plan.fits,
                        noise=traj.noise)
    out = _ginelli(caller, plan, rng, lin=lin)
    return _result(plan, *out, n_unstable, traj.start, traj.noise_description)


def covariant_lyapunov_vectors_from_jacobians(J, *, k=None, transient=None,
                                              backward_transient=None, times=None, seed=None,
                                              n_unstable=None, storage="auto",
                                              memory_budget=None):
    r"""Covariant Lyapunov vectors of the product J_{T-1} ... J_1 J_0 of given matrices.

    The same compiled loops as :func:`covariant_lyapunov_vectors`, for any sequence of
    matrices (step Jacobians from :func:`numrnn.jacobians`, a constant map, random products).

    Parameters
    ----------
    J : ndarray, shape (T, S, S) or (T, B, S, S)
        float32 or float64 (the computation runs in J's dtype); J[t] maps the tangent space
        after step t-1 to that after step t (rows: new, columns: old).  A batch axis holds
        independent sequences, their exponents pooled.
    k, transient, backward_transient, times, seed, n_unstable, storage, memory_budget
        As in :func:`covariant_lyapunov_vectors` (``seed`` draws the initial frame, then the
        backward start).

    Returns
    -------
    CovariantLyapunovResult
        ``vectors`` (n_times, B, S, k) with B = 1 for a (T, S, S) J.  For a constant J with
        real eigenvalues of distinct moduli, the CLVs are its eigenvectors and the exponents
        the logs of their moduli.

    Raises
    ------
    MemoryError, OSError, numrnn.NonFiniteError
        As in :func:`covariant_lyapunov_vectors`.

    References
    ----------
    Ginelli, F., Poggi, P., Turchi, A., Chate, H., Livi, R. and Politi, A. (2007). Characterizing
    dynamics with covariant Lyapunov vectors. Physical Review Letters 99, 130601.
    Kuptsov, P. V. and Parlitz, U. (2012). Theory and computation of covariant Lyapunov vectors.
    Journal of Nonlinear Science 22, 727-762.

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> A = np.array([[2.0, 3.0], [0.0, 0.5]])   # eigenvectors (1, 0) and (2, -1) / sqrt(5)
    >>> res = numrnn.covariant_lyapunov_vectors_from_jacobians(
    ...     np.tile(A, (100, 1, 1)), transient=40, backward_transient=40, seed=0)
    >>> np.round(res.exponents, 6)
    array([ 0.693147, -0.693147])
    >>> v = res.vectors[0, 0]                     # (S, k) at the first time, up to sign
    >>> np.round(np.abs(v) * np.sqrt([[1, 5], [1, 5]]), 6)
    array([[1., 2.],
           [0., 1.]])
    """
    n_unstable, memory_budget = _check_options(n_unstable, storage, memory_budget)
    Jb = check_jacobians(J)
    T, B, S = Jb.shape[:3]
    k, transient, backward_transient, times = _check_window(
        T, k, S, transient, backward_transient, times, n_unstable)
    rng = generator(seed)
    plan = _Plan(T, B, S, k, J.dtype, transient, backward_transient, times, storage,
                 memory_budget)
    caller = "covariant_lyapunov_vectors_from_jacobians"
    plan.check_disk(caller)
    _memory.check(f"{caller}: {plan.label()}", plan.memory_bytes,
                  f"T={T} steps, B={B} sequences, S={S}", plan.fits)
    out = _ginelli(caller, plan, rng, jac=Jb)
    return _result(plan, *out, n_unstable, "")
