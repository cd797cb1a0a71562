r"""Lyapunov spectra by Benettin's QR method, along network trajectories or for given matrices."""
import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .. import _validation as _v
from .. import errors
from ..cpu import jacobians as _k
from .jacobians import _check_net, _Linearisation, state_size

__all__ = ["LyapunovResult", "lyapunov_spectrum", "lyapunov_from_jacobians"]


def _fmt_list(values, head=5, tail=2):
    vals = [f"{v:.6g}" for v in values]
    if len(vals) > head + tail + 1:
        vals = vals[:head] + ["..."] + vals[-tail:]
    return "[" + ", ".join(vals) + "]"


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
                f"  exponents: {_fmt_list(lam)}\n  stderr:    {_fmt_list(se)}")


# --- shared pieces ----------------------------------------------------------------------------


def _rng(seed):
    """A numpy Generator from ``seed`` (see :func:`numrnn._validation.check_seed`)."""
    return _v.check_seed(seed)


def _schedule(T, transient, m):
    """When to orthonormalise (qr_at), which block each QR records into (-1: transient), and
    the block lengths."""
    qr_at = np.zeros(T, np.bool_)
    record_at = np.full(T, -1, np.int64)
    lengths = []
    count = 0
    for t in range(T):
        count += 1
        if count == m or t == T - 1 or t == transient - 1:
            qr_at[t] = True
            if t >= transient:
                record_at[t] = len(lengths)
                lengths.append(count)
            count = 0
    return qr_at, record_at, np.array(lengths, np.int64)


def _frames(rng, B, S, k, dtype):
    """B random orthonormal (S, k) frames (QR of Gaussian matrices)."""
    q = np.empty((B, S, k))
    for b in range(B):
        q[b] = np.linalg.qr(rng.standard_normal((S, k)))[0]
    return q.astype(dtype)


def _check_schedule(T, k, S, transient, ons_interval, n_segments):
    if k is None:
        k = S
    k = _v.check_int("k", k, 1)
    if k > S:
        raise ValueError(f"k: expected at most S = {S} exponents (the state size), got {k}")
    if transient is None:
        transient = T // 10
    transient = _v.check_int("transient", transient, 0)
    if transient >= T:
        raise ValueError(f"transient: expected fewer steps than the trajectory's T = {T}, got "
                         f"{transient}")
    m = _v.check_int("ons_interval", ons_interval, 1)
    if n_segments is not None:
        n_segments = _v.check_int("n_segments", n_segments, 1)
    return k, transient, m, n_segments


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


def _local_sums(lin, k, transient, m, rng, caller="lyapunov_spectrum"):
    """Benettin's loop on a linearised trajectory; returns (sums (n_blocks, B, k), lengths).

    Raises ValueError when ``m`` (ons_interval) is too long, and reports a frame lost to inf or
    NaN (numrnn.errors), naming ``caller``."""
    qr_at, record_at, lengths = _schedule(lin.T, transient, m)
    q = _frames(rng, lin.B, lin.S, k, lin.dtype)
    qb = np.ascontiguousarray(q.reshape(lin.B, lin.LD, lin.P, lin.N, k))
    sums = np.zeros((lengths.size, lin.B, k))
    status = _k.lyapunov(lin.kernel_args(), qb, qr_at, record_at, sums, m > 1)
    _check_status(status, m, caller, lin.dtype)
    return sums, lengths


def _suggest(n, gap, top, bottom, dtype):
    """An ons_interval (>= 1, below the refused block's length n) from the growth rates per step
    measured on the refused block: the largest gap lambda_1 - lambda_i, lambda_1 and lambda_k.

    Each limit keeps a margin of a factor 2 in the logarithm: the columns stay apart by an angle
    of about eps^(1/4) (the check is sqrt(eps)), and the frame within the square root of the
    largest and of the smallest number the check allows."""
    info = np.finfo(dtype)
    _, log_tiny = _k.qr_limits(dtype)
    limits = [n - 1.0]
    if not (np.isfinite(gap) and np.isfinite(top) and np.isfinite(bottom)):
        return 1
    if gap > 0.0:
        limits.append(-0.25 * math.log(float(info.eps)) / gap)
    if top > 0.0:
        limits.append(0.5 * math.log(float(info.max)) / top)
    if bottom < 0.0:
        limits.append(0.5 * log_tiny / bottom)
    return max(1, int(math.floor(min(limits))))


def _ons_message(row, b, m, dtype):
    """ValueError text for an ons_interval that the QR loop caught as too long; ``row`` is the
    kernel's status of sequence b (kind, t, n, measure, column, gap, lambda_1, lambda_k)."""
    kind, t, n, measure, col = int(row[0]), int(row[1]), int(row[2]), float(row[3]), int(row[4])
    gap, top, bottom = (float(v) for v in row[5:8])
    sugg = _suggest(n, gap, top, bottom, dtype)
    ortho_tol, _ = _k.qr_limits(dtype)
    head = (f"ons_interval: {m} steps between orthonormalisations is too long here: at step "
            f"t={t} of sequence b={b}, {n} steps after the last orthonormalisation, ")
    if kind == _k.FAIL_OVERFLOW:
        what = "the propagated frame J_t ... J_1 Q overflowed to inf or NaN"
    elif kind == _k.FAIL_UNDERFLOW:
        frame = "the propagated frame" if col < 0 else f"column {col + 1} of the propagated frame"
        if np.isfinite(measure):
            what = (f"{frame} shrank to {math.exp(measure):.3g}, where its smallest parts would "
                    "lose digits to subnormal numbers")
        else:
            what = (f"{frame} became exactly 0 (underflow, or an exactly singular step that "
                    "killed part of the frame)")
    else:
        what = (f"column {col + 1} of the propagated frame J_t ... J_1 Q lay within an angle of "
                f"sin = {measure:.3g} of the span of the columns before it, below sqrt(eps) = "
                f"{ortho_tol:.2g}: the QR would return exponent {col + 1}'s ln|R_ii| mostly as "
                "rounding error")
    if np.isfinite(gap) and np.isfinite(top):
        apart = f" and its directions separated by up to {gap:.3g} per step" if gap > 0 else ""
        rates = (f" (replayed with a QR after every step, that block grew by lambda_1 = "
                 f"{top:.3g} per step{apart})")
    else:
        rates = (" (replayed with a QR after every step, that block has an exactly singular "
                 "step: only ons_interval=1 measures it, and the exponents it kills are -inf)")
    advice = "Use ons_interval=1." if sugg == 1 else f"Use ons_interval={sugg} or less."
    return f"{head}{what}{rates}. {advice}"


def _check_status(status, m, caller, dtype):
    """Raise ValueError for an ons_interval the QR loop found too long; report (numrnn.errors)
    a frame lost to inf or NaN."""
    failed = np.flatnonzero(status[:, 0] != _k.FAIL_NONE)
    for b in failed:
        if int(status[b, 0]) != _k.FAIL_NONFINITE:  # the kernel stopped there
            raise ValueError(_ons_message(status[b], int(b), m, dtype))
    if failed.size:
        b = int(failed[0])
        t = int(status[b, 1])
        errors.report(
            f"{caller}: the tangent frame became NaN or inf at step t={t} of sequence b={b}, "
            f"one step after an orthonormalisation, from a finite trajectory: the step "
            f"Jacobian's product with the frame overflowed {np.dtype(dtype)} (the exponents of "
            "that sequence are NaN)")


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
    _check_net(net, "the Lyapunov spectrum")
    rng = _rng(seed)
    if x is None:
        if n_steps is None:
            raise ValueError("n_steps: expected the number of steps of the autonomous run (x is "
                             "None), got None")
        x, h0 = _autonomous_input(net, n_steps, h0, rng)
    elif n_steps is not None:
        raise ValueError(f"n_steps: x fixes the number of steps; expected None, got {n_steps!r}")
    x_tm, unbatched = net._check_input(x)
    h, c = net._split_state(h0, x_tm.shape[1], unbatched)
    T = x_tm.shape[0]
    k, transient, m, n_segments = _check_schedule(T, k, state_size(net), transient,
                                                  ons_interval, n_segments)
    B, S = x_tm.shape[1], state_size(net)
    lin = _Linearisation(net, x_tm, h, c, caller="lyapunov_spectrum",
                         extra_bytes=(2 * B * S * k + 2 * (T // m + 3) * B * k) * 8,
                         extra_label=f"the frames of k={k} tangent vectors")
    sums, lengths = _local_sums(lin, k, transient, m, rng)
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
    k, transient, m, n_segments = _check_schedule(T, k, S, transient, ons_interval, n_segments)
    rng = _rng(seed)
    qr_at, record_at, lengths = _schedule(T, transient, m)
    q = np.ascontiguousarray(_frames(rng, B, S, k, J.dtype).reshape(B, S, 1, 1, k))
    sums = np.zeros((lengths.size, B, k))
    status = _k.lyapunov_dense(Jb, q, qr_at, record_at, sums, m > 1)
    _check_status(status, m, "lyapunov_from_jacobians", J.dtype)
    return _summarise(sums, lengths, transient, m, n_segments, S, unbatched)
