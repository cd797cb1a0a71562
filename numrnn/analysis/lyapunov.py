r"""Lyapunov spectra by Benettin's QR method, along network trajectories or for given matrices."""
import dataclasses
from dataclasses import dataclass

import numpy as np

from .. import _validation as _v
from .. import driver
from ..cpu import jacobians as _k
from .linearisation import (Linearisation, check_net, check_schedule, check_status, fmt_list,
                            frames, generator, local_sums, schedule, state_size)

__all__ = ["LyapunovResult", "lyapunov_spectrum", "lyapunov_from_jacobians"]


@dataclass(frozen=True, repr=False)
class LyapunovResult:
    r"""Lyapunov exponents of a trajectory (or of a sequence of matrices), with error bars.

    Attributes
    ----------
    exponents : ndarray, shape (k,)
        lambda_1 >= ... >= lambda_k (in the order the QR method produces them, which is
        descending up to finite-time fluctuations): the time average of ln|R_ii| over the
        measured steps, pooled over the batch.  Per step (``dt is None``) or per unit time.
        -inf for the exponents that an exactly singular step kills (see Notes).
    stderr : ndarray, shape (k,)
        Standard error of each exponent by batch means: the measured steps of every sequence are
        cut into ``n_segments`` contiguous segments, and stderr is the standard deviation of the
        segment means over sqrt(number of segments) (NaN with fewer than two segments, and for
        an exponent of -inf).
    local : ndarray, shape (n_blocks, k), or (n_blocks, B, k) for a batch
        Finite-time exponents of each orthonormalisation block: ln|R_ii| / block length.
    block_lengths : ndarray of int, shape (n_blocks,)
        Steps in each block (``ons_interval``, shorter where a block meets the end of the
        transient or of the trajectory).
    n_steps : int
        Measured steps per sequence (after the transient).
    transient : int
        Steps discarded at the start (the frame still evolves and is orthonormalised there).
    ons_interval : int
        Steps between orthonormalisations.
    n_segments : int
        Segments per sequence used for ``stderr``.
    state_size : int
        S, the dimension of the state (so ``k == state_size`` is the full spectrum).
    dt : float or None
        None: exponents per step.  Otherwise the time step used by :meth:`per_time`.

    Notes
    -----
    ``kaplan_yorke_dimension`` and ``ks_entropy`` are derived from ``exponents``.

    A step whose Jacobian maps the frame exactly onto fewer than i dimensions (a zero matrix, a
    relu network whose units are all off, an LSTM without recurrence on its h part, a tanh unit
    whose derivative is exactly 0 in float64) makes R_ii exactly 0 in the QR after it, and
    lambda_i, ..., lambda_k are -inf: the volume they measure is gone for good.  This is the
    answer, not a failure; the properties above treat -inf as an exponent like any other (it
    adds nothing to ``ks_entropy`` and ends the Kaplan-Yorke sum).  Where rounding leaves R_ii a
    few ulps above 0 instead, the exponent is finite and very negative.  Only a QR after every
    step (``ons_interval=1``) sees an exactly singular step as such: with longer intervals the
    steps after it mix rounding errors into the lost directions, and the loss of orthogonality
    is refused (see :func:`lyapunov_spectrum`).
    """

    exponents: np.ndarray
    stderr: np.ndarray
    local: np.ndarray
    block_lengths: np.ndarray
    n_steps: int
    transient: int
    ons_interval: int
    n_segments: int
    state_size: int
    dt: float = None

    @property
    def kaplan_yorke_dimension(self):
        r"""Kaplan-Yorke (Lyapunov) dimension D = j + (lambda_1 + ... + lambda_j) / |lambda_{j+1}|.

        j is the largest index with a non-negative partial sum.  0 when lambda_1 < 0; S when
        every partial sum of the full spectrum is non-negative; NaN when only k < S exponents
        were computed and all their partial sums are non-negative (more are needed), or when an
        exponent is NaN.  An exponent of -inf ends the sum: D = j exactly.

        References: Kaplan, J. L. and Yorke, J. A. (1979). Chaotic behavior of multidimensional
        difference equations. Lecture Notes in Mathematics 730.
        """
        if np.isnan(self.exponents).any():
            return float("nan")
        lam = np.sort(self.exponents)[::-1]
        with np.errstate(invalid="ignore"):
            csum = np.cumsum(lam)
        nonneg = np.flatnonzero(csum >= 0.0)
        if nonneg.size == 0:
            return 0.0
        j = int(nonneg[-1]) + 1
        if j == lam.size:
            return float(j) if lam.size == self.state_size else float("nan")
        return float(j + csum[j - 1] / abs(lam[j]))

    @property
    def ks_entropy(self):
        """Sum of the positive exponents: Pesin's upper bound on the Kolmogorov-Sinai entropy
        (same units as ``exponents``; a lower bound on that sum when k < S and lambda_k > 0).

        References: Pesin, Ya. B. (1977). Characteristic Lyapunov exponents and smooth ergodic
        theory. Russian Mathematical Surveys 32(4), 55.

        Exponents of -inf add nothing; NaN if an exponent is NaN (a frame lost to inf or NaN
        under ``numrnn.nonfinite("warn")``).
        """
        lam = self.exponents
        if np.isnan(lam).any():
            return float("nan")
        return float(np.sum(lam[lam > 0.0]))

    def per_time(self, dt):
        """The same result per unit time: every exponent divided by the time step ``dt``.

        For the rate network (``cell="rate"``), one step is dt = alpha * tau in units of the
        time constant tau; pass ``dt`` in the time unit wanted.

        Parameters
        ----------
        dt : float > 0

        Returns
        -------
        LyapunovResult
        """
        dt = _v.check_real("dt", dt, 0.0, low_open=True)
        if self.dt is not None:
            raise ValueError(f"dt: this result is already per unit time (dt={self.dt}); call "
                             "per_time on the per-step result")
        return dataclasses.replace(self, exponents=self.exponents / dt, stderr=self.stderr / dt,
                                   local=self.local / dt, dt=dt)

    def __repr__(self):
        unit = "per step" if self.dt is None else f"per unit time (dt={self.dt:g})"
        lam, se = self.exponents, self.stderr
        k = lam.size
        return (f"LyapunovResult(lambda_1 = {lam[0]:.6g} +- {se[0]:.2g} {unit}; "
                f"k = {k} of S = {self.state_size}, D_KY = {self.kaplan_yorke_dimension:.4g}, "
                f"h_KS = {self.ks_entropy:.4g}; {self.n_steps} steps after a transient of "
                f"{self.transient}, orthonormalised every {self.ons_interval})\n"
                f"  exponents: {fmt_list(lam)}\n  stderr:    {fmt_list(se)}")


# --- shared pieces ----------------------------------------------------------------------------


def _summarise(sums, lengths, transient, m, n_segments, S, unbatched):
    """LyapunovResult from per-block sums of ln|R_ii|, shape (n_blocks, B, k)."""
    n_blocks, B, k = sums.shape
    n_steps = int(lengths.sum())
    with np.errstate(invalid="ignore"):
        exponents = sums.sum(axis=(0, 1)) / (n_steps * B)
        local = sums / lengths[:, None, None]
        if n_segments is None:
            n_segments = int(np.clip(np.sqrt(n_blocks), 1, 32))
        n_segments = min(n_segments, n_blocks)
        groups = np.array_split(np.arange(n_blocks), n_segments)
        means = np.stack([sums[g].sum(axis=0) / lengths[g].sum() for g in groups])  # (seg, B, k)
        means = means.reshape(-1, k)
        if means.shape[0] >= 2:
            stderr = means.std(axis=0, ddof=1) / np.sqrt(means.shape[0])
        else:
            stderr = np.full(k, np.nan)
    return LyapunovResult(exponents=exponents, stderr=stderr, local=local[:, 0] if unbatched
                          else local, block_lengths=lengths, n_steps=n_steps, transient=transient,
                          ons_interval=m, n_segments=n_segments, state_size=S)


# --- public -----------------------------------------------------------------------------------


def _autonomous_input(net, n_steps, h0, rng):
    """Zero input of n_steps, and h0 (random N(0, 1) when None) for the autonomous network."""
    n_steps = _v.check_int("n_steps", n_steps, 1)
    LD, N, I = net.num_layers * net.num_directions, net.hidden_size, net.input_size
    lstm = net.state_count == 2
    if h0 is None:
        h = rng.standard_normal((LD, N)).astype(net.dtype)
        h0 = (h, rng.standard_normal((LD, N)).astype(net.dtype)) if lstm else h
        return np.zeros((n_steps, I), net.dtype), h0
    first = h0[0] if lstm and isinstance(h0, (tuple, list)) else h0
    if first is not None and np.ndim(first) == 3:
        B = np.shape(first)[1]
        shape = (B, n_steps, I) if net.batch_first else (n_steps, B, I)
        return np.zeros(shape, net.dtype), h0
    return np.zeros((n_steps, I), net.dtype), h0


def lyapunov_spectrum(net, x=None, h0=None, *, n_steps=None, k=None, transient=None,
                      ons_interval=1, seed=None, n_segments=None):
    r"""Lyapunov spectrum of a network along the trajectory driven by x (or autonomously).

    Benettin's method: a frame of k orthonormal tangent vectors is advanced with the exact step
    Jacobians (:func:`numrnn.jacobians`, applied as matrix products without forming them) and
    re-orthonormalised by QR every ``ons_interval`` steps; the i-th exponent is the time average
    of ln|R_ii| (QR signs are arbitrary, so only |R_ii| is used).  The loop runs compiled.

    Parameters
    ----------
    net : numrnn.RNN
        Any cell; bidirectional only with one layer (the spectrum is then the union of both
        directions' spectra).
    x : ndarray, shape (T, B, I), (B, T, I) if ``net.batch_first``, or (T, I), optional
        Input driving the network.  None: the autonomous network, zero input for ``n_steps``.
    h0 : ndarray or pair, optional
        Initial state as in :meth:`numrnn.RNN.forward`.  Default: zeros when x is given; when
        x is None, a N(0, 1) state drawn from ``seed`` (the origin is often a fixed point).
    n_steps : int, optional
        Length of the autonomous run; required when x is None, not allowed otherwise.
    k : int, optional
        Number of exponents, 1 <= k <= S (default S, the full spectrum).
    transient : int, optional
        Initial steps discarded (the frame aligns with the Oseledets directions there);
        default T // 10.
    ons_interval : int, default 1
        Steps between orthonormalisations.  Larger is cheaper, but between two QRs the frame's
        columns align with the leading direction (their angles shrink like
        exp(-(lambda_1 - lambda_i) t)) and its size grows or shrinks like exp(lambda_1 t).  An
        interval too long for the spectrum is refused, never answered with a wrong number (see
        Raises).
    seed : int, sequence of int, numpy.random.SeedSequence or numpy.random.Generator, optional
        Draws the initial orthonormal frame (and the autonomous h0, first).
    n_segments : int, optional
        Segments per sequence for the batch-means error (default sqrt(blocks), at most 32).

    Returns
    -------
    LyapunovResult
        Exponents per step pooled over the batch, stderr, local exponents per block,
        ``kaplan_yorke_dimension``, ``ks_entropy`` and ``per_time(dt)``.  Computed in float64
        for a float32 network too (its own trajectory, derivatives evaluated in float64; see
        :mod:`numrnn.analysis.jacobians`).  An exactly singular step gives -inf for the
        exponents it kills (see :class:`LyapunovResult`).

    Raises
    ------
    ValueError
        ``ons_interval`` too long: with ons_interval > 1, when the frame overflows or
        underflows before its QR, or when a column comes within an angle of sqrt(eps) (about
        1.5e-8) of the span of the columns before it, where ln|R_ii| would be mostly rounding
        error.  The message names the step and sequence and suggests an interval, estimated
        from the growth measured there.  With ``ons_interval=1`` nothing better can be done,
        and nothing is refused.
    numrnn.NonFiniteError
        When the frame becomes inf or NaN one step after a QR (a step Jacobian whose product
        overflows), naming the step and sequence; ``with numrnn.nonfinite("warn")`` returns NaN
        exponents for that sequence instead.
    MemoryError
        Before allocating, when the trajectory and its tangent-map coefficients do not fit.

    References
    ----------
    Benettin, G., Galgani, L., Giorgilli, A. and Strelcyn, J.-M. (1980). Lyapunov characteristic
    exponents for smooth dynamical systems and for Hamiltonian systems; a method for computing
    all of them. Meccanica 15, 9-30.
    Shimada, I. and Nagashima, T. (1979). A numerical approach to ergodic problem of dissipative
    dynamical systems. Progress of Theoretical Physics 61(6), 1605.
    Engelken, R., Wolf, F. and Abbott, L. F. (2020). Lyapunov spectra of chaotic recurrent neural
    networks. arXiv:2006.02427.
    Flyvbjerg, H. and Petersen, H. G. (1989). Error estimates on averages of correlated data.
    Journal of Chemical Physics 91, 461 (batch means).

    Examples
    --------
    >>> import numrnn
    >>> net = numrnn.RNN(1, 50, init="gaussian", gain=2.0, bias=False, seed=0)
    >>> res = numrnn.lyapunov_spectrum(net, n_steps=500, k=3, seed=1)
    >>> res.exponents.shape, bool(res.exponents[0] > 0)
    ((3,), True)
    """
    check_net(net, "the Lyapunov spectrum")
    rng = generator(seed)
    if x is None:
        if n_steps is None:
            raise ValueError("n_steps: expected the number of steps of the autonomous run (x is "
                             "None), got None")
        x, h0 = _autonomous_input(net, n_steps, h0, rng)
    elif n_steps is not None:
        raise ValueError(f"n_steps: x fixes the number of steps; expected None, got {n_steps!r}")
    x_tm, unbatched = driver.check_input(net, x)
    h, c = driver.split_state(net, h0, x_tm.shape[1], unbatched)
    T = x_tm.shape[0]
    k, transient, m, n_segments = check_schedule(T, k, state_size(net), transient,
                                                  ons_interval, n_segments)
    B, S = x_tm.shape[1], state_size(net)
    lin = Linearisation(net, x_tm, h, c, caller="lyapunov_spectrum",
                         extra_bytes=(2 * B * S * k + 2 * (T // m + 3) * B * k) * 8,
                         extra_label=f"the frames of k={k} tangent vectors")
    sums, lengths = local_sums(lin, k, transient, m, rng)
    return _summarise(sums, lengths, transient, m, n_segments, lin.S, unbatched)


def lyapunov_from_jacobians(J, *, k=None, transient=None, ons_interval=1, seed=None,
                            n_segments=None):
    r"""Lyapunov spectrum of the product J_{T-1} ... J_1 J_0 of given matrices.

    The same compiled QR loop as :func:`lyapunov_spectrum`, for any sequence of matrices: step
    Jacobians from :func:`numrnn.jacobians` or elsewhere, random matrix products, ...

    Parameters
    ----------
    J : ndarray, shape (T, S, S) or (T, B, S, S)
        float32 or float64 (the frame is carried in J's dtype); J[t] acts on the state after
        step t-1 (rows: new, columns: old).  A batch axis holds independent sequences, pooled as
        in :func:`lyapunov_spectrum`.
    k, transient, ons_interval, seed, n_segments
        As in :func:`lyapunov_spectrum`.

    Returns
    -------
    LyapunovResult
        An exactly singular matrix gives -inf for the exponents it kills (all k for a zero
        matrix).

    Raises
    ------
    ValueError
        ``ons_interval`` too long for the spectrum, as in :func:`lyapunov_spectrum`
        (sqrt(eps) of J's dtype).
    numrnn.NonFiniteError
        When the frame overflows one step after a QR.

    References
    ----------
    Benettin, G., Galgani, L., Giorgilli, A. and Strelcyn, J.-M. (1980). Meccanica 15, 9-30.
    Newman, C. M. (1986). The distribution of Lyapunov exponents: exact results for random
    matrices. Communications in Mathematical Physics 103, 121-126.

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> J = np.tile(np.diag([2.0, 0.5]), (100, 1, 1))
    >>> res = numrnn.lyapunov_from_jacobians(J, seed=0)
    >>> np.round(res.exponents, 6)
    array([ 0.693147, -0.693147])
    >>> numrnn.lyapunov_from_jacobians(np.zeros((10, 2, 2)), k=1).exponents   # singular
    array([-inf])
    """
    if not isinstance(J, np.ndarray):
        raise TypeError(f"J: expected a numpy array of shape (T, S, S) or (T, B, S, S), got "
                        f"{type(J).__name__}")
    if J.dtype not in _v.FLOAT_DTYPES:
        raise TypeError(f"J: expected dtype float32 or float64, got {J.dtype}")
    if J.ndim not in (3, 4) or J.shape[-1] != J.shape[-2] or J.shape[0] < 1 or J.shape[-1] < 1:
        raise ValueError(f"J: expected shape (T, S, S) or (T, B, S, S) with T, S >= 1, got "
                         f"{J.shape}")
    if not np.all(np.isfinite(J)):
        raise ValueError("J: expected finite values, got NaN or inf entries")
    unbatched = J.ndim == 3
    Jb = np.ascontiguousarray(J[:, None] if unbatched else J)
    T, B, S = Jb.shape[:3]
    k, transient, m, n_segments = check_schedule(T, k, S, transient, ons_interval, n_segments)
    rng = generator(seed)
    qr_at, record_at, lengths = schedule(T, transient, m)
    q = np.ascontiguousarray(frames(rng, B, S, k, J.dtype).reshape(B, S, 1, 1, k))
    sums = np.zeros((lengths.size, B, k))
    status = _k.lyapunov_dense(Jb, q, qr_at, record_at, sums, m > 1)
    check_status(status, m, "lyapunov_from_jacobians", J.dtype)
    return _summarise(sums, lengths, transient, m, n_segments, S, unbatched)
