r"""Lyapunov spectra by Benettin's QR method, along network trajectories or for given matrices."""
import dataclasses
from dataclasses import dataclass

import numpy as np

from .. import _validation as _v
from ..cpu import jacobians as _k
from .linearisation import (Linearisation, check_net, check_schedule, check_status, fmt_list,
                            check_jacobians, frames, generator, local_sums, schedule, state_size,
                            trajectory)

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
    local : ndarray, shape (n_blocks, B, k)
        Finite-time exponents of each orthonormalisation block: ln|R_ii| / block length.
        Always with the batch axis (B = 1 for an unbatched input or an autonomous run).
    block_lengths : ndarray of int, shape (n_blocks,)
        Steps in each block (``ons_interval``, shorter where a block meets the end of the
        transient or of the trajectory).
    segment_exponents : ndarray, shape (n_segments * B, k)
        The batch means: the exponents measured on each segment of each sequence (segment-major
        within a sequence, sequences in order).  ``stderr`` and the stderr of every derived
        quantity come from them.
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
    units : int
        The number of units the per-unit quantities divide by: L * D * N hidden units of a
        network (N for one layer; an LSTM's S = 2N state dimensions are N units), S for
        :func:`lyapunov_from_jacobians`.
    time_step : float or None
        The length of one step in the network's time unit (alpha = dt/tau for the leaky and
        rate cells, dt for coRNN, epsilon for the antisymmetric RNN: the cell's
        :attr:`numrnn.Cell.time_step`); None for a cell without one, or for given matrices.
    dt : float or None
        None: exponents per step.  Otherwise the time step :meth:`per_time` divided by.
    initial_state : str
        Where the trajectory started: "given", "zeros" (the default when ``x`` is given) or
        "N(0, 1) drawn from seed" (the default of an autonomous run), "" for given matrices.
    noise : str
        The noise the trajectory was driven with ("none", or its std and seed): the exponents
        of a noisy trajectory are conditional on that realisation.

    Notes
    -----
    ``kaplan_yorke_dimension`` and ``ks_entropy`` are derived from ``exponents``; their
    standard errors (``kaplan_yorke_dimension_stderr``, ``ks_entropy_stderr``) from the same
    quantity computed on each batch mean (``segment_exponents``): the standard deviation of the
    segment values over sqrt(number of segments), as for ``stderr``.  The ``*_per_unit`` forms
    divide by ``units``.

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
    segment_exponents: np.ndarray
    n_steps: int
    transient: int
    ons_interval: int
    n_segments: int
    state_size: int
    units: int
    time_step: float = None
    dt: float = None
    initial_state: str = ""
    noise: str = "none"

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
        return kaplan_yorke(self.exponents, self.state_size)

    @property
    def ks_entropy(self):
        """Sum of the positive exponents: Pesin's upper bound on the Kolmogorov-Sinai entropy
        (same units as ``exponents``; a lower bound on that sum when k < S and lambda_k > 0).

        References: Pesin, Ya. B. (1977). Characteristic Lyapunov exponents and smooth ergodic
        theory. Russian Mathematical Surveys 32(4), 55.

        Exponents of -inf add nothing; NaN if an exponent is NaN (a frame lost to inf or NaN
        under ``numrnn.nonfinite("warn")``).
        """
        return ks_entropy(self.exponents)

    @property
    def kaplan_yorke_dimension_stderr(self):
        """Standard error of ``kaplan_yorke_dimension`` by batch means (NaN with fewer than two
        segments, or where a segment's dimension is NaN)."""
        return _segment_stderr([kaplan_yorke(lam, self.state_size)
                                for lam in self.segment_exponents])

    @property
    def ks_entropy_stderr(self):
        """Standard error of ``ks_entropy`` by batch means (same units as ``exponents``)."""
        return _segment_stderr([ks_entropy(lam) for lam in self.segment_exponents])

    @property
    def kaplan_yorke_dimension_per_unit(self):
        """``kaplan_yorke_dimension / units``: the attractor's dimension density (D_KY/N)."""
        return self.kaplan_yorke_dimension / self.units

    @property
    def kaplan_yorke_dimension_per_unit_stderr(self):
        return self.kaplan_yorke_dimension_stderr / self.units

    @property
    def ks_entropy_per_unit(self):
        """``ks_entropy / units``: the entropy rate per unit (h_KS/N)."""
        return self.ks_entropy / self.units

    @property
    def ks_entropy_per_unit_stderr(self):
        return self.ks_entropy_stderr / self.units

    def per_time(self, dt=None):
        """The same result per unit time: every exponent divided by the time step ``dt``.

        Parameters
        ----------
        dt : float > 0, optional
            The length of one step in the time unit wanted.  Default: ``time_step``, the
            network's own (alpha = dt/tau for the rate and leaky cells, so the result is per
            time constant tau).  Required where the cell has no time step.

        Returns
        -------
        LyapunovResult
        """
        if dt is None:
            if self.time_step is None:
                raise ValueError("dt: this result's network has no time step of its own (its "
                                 "cell has no leak or step-size option), so per_time needs the "
                                 "length of one step; got None")
            dt = self.time_step
        dt = _v.check_real("dt", dt, 0.0, low_open=True)
        if self.dt is not None:
            raise ValueError(f"dt: this result is already per unit time (dt={self.dt}); call "
                             "per_time on the per-step result")
        return dataclasses.replace(self, exponents=self.exponents / dt, stderr=self.stderr / dt,
                                   local=self.local / dt,
                                   segment_exponents=self.segment_exponents / dt, dt=dt)

    def __repr__(self):
        unit = "per step" if self.dt is None else f"per unit time (dt={self.dt:g})"
        lam, se = self.exponents, self.stderr
        k = lam.size
        start = f"; h0: {self.initial_state}" if self.initial_state else ""
        noise = f"; noise: {self.noise}" if self.noise != "none" else ""
        return (f"LyapunovResult(lambda_1 = {lam[0]:.6g} +- {se[0]:.2g} {unit}; "
                f"k = {k} of S = {self.state_size}, "
                f"D_KY = {self.kaplan_yorke_dimension:.4g} +- "
                f"{self.kaplan_yorke_dimension_stderr:.2g}, "
                f"h_KS = {self.ks_entropy:.4g} +- {self.ks_entropy_stderr:.2g}; {self.n_steps} "
                f"steps after a transient of {self.transient}, orthonormalised every "
                f"{self.ons_interval}{start}{noise})\n"
                f"  exponents: {fmt_list(lam)}\n  stderr:    {fmt_list(se)}")


def kaplan_yorke(exponents, S):
    """Kaplan-Yorke dimension of a spectrum (see :attr:`LyapunovResult.kaplan_yorke_dimension`)."""
    if np.isnan(exponents).any():
        return float("nan")
    lam = np.sort(exponents)[::-1]
    with np.errstate(invalid="ignore"):
        csum = np.cumsum(lam)
    nonneg = np.flatnonzero(csum >= 0.0)
    if nonneg.size == 0:
        return 0.0
    j = int(nonneg[-1]) + 1
    if j == lam.size:
        return float(j) if lam.size == S else float("nan")
    return float(j + csum[j - 1] / abs(lam[j]))


def ks_entropy(exponents):
    """Sum of the positive exponents (NaN if one is NaN)."""
    if np.isnan(exponents).any():
        return float("nan")
    return float(np.sum(exponents[exponents > 0.0]))


def _segment_stderr(values):
    values = np.asarray(values, np.float64)
    if values.size < 2 or not np.all(np.isfinite(values)):
        return float("nan")
    return float(values.std(ddof=1) / np.sqrt(values.size))


# --- shared pieces ----------------------------------------------------------------------------


def summarise(sums, lengths, transient, m, n_segments, S, units=None, time_step=None,
               initial_state="", noise="none"):
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
        means = np.ascontiguousarray(means.transpose(1, 0, 2)).reshape(-1, k)  # sequence-major
        if means.shape[0] >= 2:
            stderr = means.std(axis=0, ddof=1) / np.sqrt(means.shape[0])
        else:
            stderr = np.full(k, np.nan)
    return LyapunovResult(exponents=exponents, stderr=stderr, local=local, block_lengths=lengths,
                          segment_exponents=means, n_steps=n_steps, transient=transient,
                          ons_interval=m, n_segments=n_segments, state_size=S,
                          units=S if units is None else units, time_step=time_step,
                          initial_state=initial_state, noise=noise)


# --- public -----------------------------------------------------------------------------------


def lyapunov_spectrum(net, x=None, h0=None, *, n_steps=None, k=None, transient=None,
                      ons_interval=1, seed=None, n_segments=None, noise_std=0.0, units="step"):
    r"""Lyapunov spectrum of a network along the trajectory driven by x (or autonomously).

    Benettin's method: a frame of k orthonormal tangent vectors is advanced with the exact step
    Jacobians (:func:`numrnn.jacobians`, applied as matrix products without forming them; for
    the full spectrum with ``ons_interval=1``, each J_t formed in turn and multiplied by Q kept
    as its Householder reflectors, which is cheaper than forming Q) and re-orthonormalised by QR
    every ``ons_interval`` steps; the i-th exponent is the time average of ln|R_ii| (QR signs
    are arbitrary, so only |R_ii| is used).  The loop runs compiled; where a step's tangent
    products are large enough, they are split over numrnn's threads by blocks of vectors
    (``numrnn.cpu.jacobians.vector_blocks``), and the full spectrum's steps (product and QR)
    by blocks of rows and columns from S = 128 on (``numrnn.cpu.jacobians.factored_blocks``),
    with the same bits whatever the thread count.

    Parameters
    ----------
    net : numrnn.RNN or numrnn.Ensemble
        Any cell; bidirectional only with one layer (the spectrum is then the union of both
        directions' spectra).  An ensemble gives a list, one result per member
        (:meth:`numrnn.Ensemble.lyapunov_spectrum`).
    x : ndarray, shape (T, B, I), (B, T, I) if ``net.batch_first``, or (T, I), optional
        Input driving the network.  None: the autonomous network, zero input for ``n_steps``.
    h0 : ndarray or pair, optional
        Initial state as in :meth:`numrnn.RNN.forward`.  Default, as in every trajectory
        analysis (:func:`numrnn.analysis.linearisation.trajectory`): zeros when x is given;
        when x is None, a N(0, 1) state drawn from ``seed`` (the origin is often a fixed
        point).  The result's repr says which.
    n_steps : int, optional
        Length of the autonomous run; required when x is None, not allowed otherwise.
    k : int, optional
        Number of exponents, 1 <= k <= S (default S, the full spectrum).
    transient : int or float, optional
        Initial steps discarded (the frame aligns with the Oseledets directions there);
        default T // 10 steps.  In time units with ``units="time"`` (rounded to whole steps).
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
    noise_std : float >= 0, default 0
        Additive Gaussian noise in the dynamics (:meth:`numrnn.RNN.forward`, Euler-Maruyama
        scaling by the cell's time step), its realisation drawn from ``seed`` (the same
        realisation as ``net.forward(..., noise_std=noise_std, seed=seed)``).  The exponents
        are then *conditional* exponents: those of the trajectory driven by that one noise
        realisation (and by x), which is how chaos is measured in driven systems.  The same
        holds for a given input x: its exponents are conditional on x.
    units : {"step", "time"}, default "step"
        "time": ``transient`` is in the network's time unit and the result is per unit time
        (:meth:`LyapunovResult.per_time` with the network's :attr:`numrnn.RNN.time_step`,
        alpha = dt/tau for the rate network); refused for a cell without a time step.

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
    if getattr(net, "is_ensemble", False):  # numrnn.Ensemble: every member, in one call
        return net.lyapunov_spectrum(x, h0, n_steps=n_steps, k=k, transient=transient,
                                     ons_interval=ons_interval, seed=seed, n_segments=n_segments,
                                     noise_std=noise_std, units=units)
    check_net(net, "the Lyapunov spectrum")
    time_step = _time_step(net, units)
    rng = generator(seed)
    traj = trajectory(net, x, h0, n_steps=n_steps, rng=rng, noise_std=noise_std, seed=seed,
                      what="the Lyapunov spectrum")
    x_tm = traj.x
    T = x_tm.shape[0]
    if units == "time" and transient is not None:
        transient = _steps("transient", transient, time_step)
    k, transient, m, n_segments = check_schedule(T, k, state_size(net), transient,
                                                  ons_interval, n_segments)
    B, S = x_tm.shape[1], state_size(net)
    lin = Linearisation(net, x_tm, traj.h, traj.c, caller="lyapunov_spectrum",
                        extra_bytes=((2 * B * S * k + 2 * (T // m + 3) * B * k) * 8
                                     + _k.workspace_bytes(k, S, m > 1)),
                        extra_label=f"the frames of k={k} tangent vectors", noise=traj.noise)
    sums, lengths = local_sums(lin, k, transient, m, rng)
    res = summarise(sums, lengths, transient, m, n_segments, lin.S, units=units_of(net),
                     time_step=net.time_step, initial_state=traj.start,
                     noise=traj.noise_description)
    return res.per_time() if units == "time" else res


def units_of(net):
    """The number of hidden units L * D * N that per-unit quantities divide by."""
    return net.num_layers * net.num_directions * net.hidden_size


def _time_step(net, units):
    if units not in ("step", "time"):
        raise ValueError(f"units: expected 'step' or 'time', got {units!r}")
    if units == "time" and net.time_step is None:
        raise ValueError(f"units: the {net.cell} cell has no time step (no leak or step-size "
                         "option), so its steps are the unit of time; expected units='step', "
                         "got 'time'")
    return net.time_step


def _steps(name, value, time_step):
    """A duration in time units as a whole number of steps of length ``time_step``."""
    value = _v.check_real(name, value, 0.0)
    steps = int(round(value / time_step))
    return steps


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
    Jb = check_jacobians(J)
    T, B, S = Jb.shape[:3]
    k, transient, m, n_segments = check_schedule(T, k, S, transient, ons_interval, n_segments)
    rng = generator(seed)
    qr_at, record_at, lengths = schedule(T, transient, m)
    q = frames(rng, B, S, k, J.dtype)
    sums = np.zeros((lengths.size, B, k))
    status = _k.lyapunov_dense(Jb, q, qr_at, record_at, sums, m > 1)
    check_status(status, m, "lyapunov_from_jacobians", J.dtype)
    return summarise(sums, lengths, transient, m, n_segments, S)
