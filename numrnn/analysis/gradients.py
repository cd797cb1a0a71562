r"""How gradients propagate back through time: singular values of d s_T / d s_{T-tau}."""
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .. import errors
from ..cpu import jacobians as _k
from .linearisation import (Linearisation, check_schedule, fmt_list, frames, generator,
                            local_sums, state_size, trajectory)

__all__ = ["GradientPropagationResult", "gradient_propagation"]


@dataclass(frozen=True, repr=False)
class GradientPropagationResult:
    r"""Singular values of the products of step Jacobians that carry gradients back in time.

    For the state s_T after the last step, P_tau = d s_T / d s_{T-tau} = J_T J_{T-1} ...
    J_{T-tau+1} (in 0-based steps: J_{T-1} ... J_{T-tau}, with s_{-1} the initial state).

    Attributes
    ----------
    lags : ndarray of int, shape (L,)
        tau, ascending, 1 <= tau <= T.
    log_singular_values : ndarray, shape (L, S), or (L, B, S) for a batch
        ln sigma_i(P_tau), descending.  Accurate to a relative error of about S * macheps per
        accumulated step however far apart the sigma_i are (the product is kept graded, see
        Notes): the numbers to use for long lags.
    singular_values : ndarray, shape of ``log_singular_values``
        exp of the above; may underflow to 0 or overflow to inf where float64 cannot hold them.
    log_norms : ndarray, shape (L,) or (L, B)
        ln ||P_tau||_2 = ln sigma_1(P_tau).
    norms : ndarray, shape (L,) or (L, B)
        ||P_tau||_2 (may underflow/overflow like ``singular_values``).
    decay_rate : float or ndarray of shape (B,)
        Least-squares slope of ln ||P_tau|| against tau, per step (NaN with a single lag):
        negative for vanishing, positive for exploding gradients; -inf where the product is
        exactly 0 at some lag (an exactly singular step killed every direction).
    lyapunov_max : float or ndarray of shape (B,)
        Largest Lyapunov exponent of the same trajectory, per step (forward QR, discarding
        ``transient`` steps): the asymptotic value of the decay rate.
    n_steps : int
        T.
    transient : int
        Steps discarded for ``lyapunov_max``.
    initial_state : str
        How the trajectory's initial state was chosen ("given", "zeros (x given)" or "N(0, 1)
        drawn from seed (autonomous)").
    noise : str
        The noise in the dynamics ("none", or its std and seed).

    Notes
    -----
    P_tau^T = J_{T-tau}^T P_{tau-1}^T is accumulated with one QR per step (the backward pass of
    BPTT applied to an orthonormal frame), keeping P_tau^T = Q diag(d) U with U unit upper
    triangular up to signs and ln d stored: no product overflows or underflows.  The singular
    values of diag(d) U are then found by unshifted QR sweeps on the graded factor, which converge
    fast exactly where the sigma_i are far apart, then by an SVD of each remaining cluster.

    Everything is float64, for a float32 network too (its own trajectory, derivatives evaluated
    in float64: see :mod:`numrnn.analysis.jacobians`).  An exactly singular step (an R_ii of the
    QR exactly 0) gives ln sigma_i = -inf for the directions it kills.
    """

    lags: np.ndarray
    log_singular_values: np.ndarray
    singular_values: np.ndarray
    log_norms: np.ndarray
    norms: np.ndarray
    decay_rate: object
    lyapunov_max: object
    n_steps: int
    transient: int
    initial_state: str = ""
    noise: str = "none"

    def __repr__(self):
        lags = self.lags
        span = f"{lags[0]}..{lags[-1]} ({lags.size} lags)" if lags.size > 1 else f"{lags[0]}"
        S = self.log_singular_values.shape[-1]
        dr, lm = np.mean(self.decay_rate), np.mean(self.lyapunov_max)
        batch = "" if np.ndim(self.decay_rate) == 0 else \
            f", mean over {np.size(self.decay_rate)} sequences"
        last = self.log_singular_values[-1]
        last = last if last.ndim == 1 else last[0]
        return (f"GradientPropagationResult(decay rate = {dr:.6g} per step, lambda_max = "
                f"{lm:.6g} per step{batch}; lags {span}, S = {S}, T = {self.n_steps}"
                f"{'; h0: ' + self.initial_state if self.initial_state else ''}"
                f"{'; noise: ' + self.noise if self.noise != 'none' else ''})\n"
                f"  ln sigma at tau = {lags[-1]}: {fmt_list(last)}")


def _graded_singular_values(log_d, u, max_sweeps=60):
    """ln of the singular values of diag(exp(log_d)) @ u (u upper triangular, diagonal +-1),
    descending, without forming the product.

    Unshifted QR sweeps: X = D U -> X' = R(U^T) D = D' U' with D' = |diag R| D and
    U' = D^-1 (R / |diag R|) D, which keeps sigma(X) and shrinks U'_ij by about d_j / d_i per
    sweep.  Entries still coupled after ``max_sweeps`` belong to clusters of close sigma_i, whose
    SVD is then taken directly at their common scale.
    """
    log_d = np.array(log_d, dtype=np.float64)
    u = np.array(u, dtype=np.float64)
    S = log_d.size
    tol = S * np.finfo(np.float64).eps
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        for _ in range(max_sweeps):
            if np.max(np.abs(np.triu(u, 1)), initial=0.0) <= tol:
                break
            r = scipy.linalg.qr(u.T, mode="r", check_finite=False)[0]
            dr = np.abs(np.diag(r))
            ratio = np.exp(np.minimum(log_d[None, :] - log_d[:, None], 700.0))
            u = np.triu(np.nan_to_num(r / dr[:, None] * ratio))
            log_d = log_d + np.log(dr)
        coupled = np.abs(np.triu(u, 1)) > tol
        out = log_d.copy()
        i = 0
        while i < S:
            end = i
            j = i
            while j <= end:
                hits = np.flatnonzero(coupled[j])
                if hits.size:
                    end = max(end, int(hits[-1]))
                j += 1
            if end > i:
                blk = slice(i, end + 1)
                top = np.max(log_d[blk])
                m = np.exp(log_d[blk] - top)[:, None] * u[blk, blk]
                out[blk] = np.log(scipy.linalg.svdvals(m, check_finite=False)) + top
            i = end + 1
    return np.sort(out)[::-1]


def _check_lags(lags, T):
    if lags is None:
        return np.unique(np.round(np.linspace(1, T, min(T, 50))).astype(np.int64))
    arr = np.asarray(lags)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu":
        raise TypeError(f"lags: expected a non-empty 1-D sequence of integers, got {lags!r}")
    if arr.min() < 1 or arr.max() > T:
        raise ValueError(f"lags: expected integers in [1, T = {T}] (the trajectory's length), "
                         f"got values from {arr.min()} to {arr.max()}")
    return np.unique(arr.astype(np.int64))


def _decay_rates(lags, log_norms):
    """Least-squares slope of ln ||P_tau|| (L, B) against tau, per sequence: NaN with one lag or
    a NaN norm, -inf where the product is exactly 0 at some lag (it stays 0 after)."""
    L, B = log_norms.shape
    decay = np.full(B, np.nan)
    if L < 2:
        return decay
    tau = lags.astype(np.float64)
    for b in range(B):
        y = log_norms[:, b]
        if np.isnan(y).any():
            continue
        decay[b] = -np.inf if np.isneginf(y).any() else np.polyfit(tau, y, 1)[0]
    return decay


def gradient_propagation(net, x=None, h0=None, *, n_steps=None, lags=None, transient=None,
                         seed=None, noise_std=0.0):
    r"""Singular values of d s_T / d s_{T-tau} at each lag tau: vanishing and exploding gradients.

    Parameters
    ----------
    net : numrnn.RNN or numrnn.Ensemble
        Any cell; bidirectional only with one layer.  An ensemble gives a list, one result per
        member (:meth:`numrnn.Ensemble.gradient_propagation`).
    x : ndarray, shape (T, B, I), (B, T, I) if ``net.batch_first``, or (T, I), optional
        Input driving the trajectory.  None: the autonomous network for ``n_steps``.
    h0 : ndarray or pair, optional
        Initial state as in :meth:`numrnn.RNN.forward`.  Default, as in every trajectory
        analysis: zeros when x is given, a N(0, 1) state drawn from ``seed`` when x is None.
    n_steps : int, optional
        Length of the autonomous run; required when x is None, not allowed otherwise.
    lags : sequence of int, optional
        Lags tau in [1, T] (default: up to 50 evenly spaced from 1 to T).
    transient : int, optional
        Steps discarded by the Lyapunov estimate (default T // 10).
    seed : int, sequence of int, numpy.random.SeedSequence or numpy.random.Generator, optional
        Draws the autonomous h0, the noise realisation and the orthonormal frames of the QR
        loops (the results do not depend on the frames beyond rounding, except through the
        finite-time Lyapunov estimate).
    noise_std : float >= 0, default 0
        Noise in the dynamics, as in :meth:`numrnn.RNN.forward` (the same realisation for the
        same seed).

    Returns
    -------
    GradientPropagationResult
        ``lags``, ``singular_values`` and ``log_singular_values`` (L, [B,] S), ``norms``,
        ``log_norms``, ``decay_rate`` and ``lyapunov_max``.

    Raises
    ------
    MemoryError
        Before allocating, when the graded factors of every lag (lags * B * S * S numbers) and
        the trajectory do not fit in the memory available.
    numrnn.NonFiniteError
        When the accumulated product overflows to inf or NaN from a finite trajectory, naming
        the step, lag and sequence; ``with numrnn.nonfinite("warn")`` returns NaN for that
        sequence's later lags instead.

    References
    ----------
    Pascanu, R., Mikolov, T. and Bengio, Y. (2013). On the difficulty of training recurrent neural
    networks. ICML.
    Bengio, Y., Simard, P. and Frasconi, P. (1994). Learning long-term dependencies with gradient
    descent is difficult. IEEE Transactions on Neural Networks 5(2).
    Stewart, D. E. (1997). A new algorithm for the SVD of a long product of matrices and the
    stability of products. Electronic Transactions on Numerical Analysis 5, 29-47.

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> net = numrnn.RNN(1, 20, cell="linear", init="orthogonal", gain=0.9, bias=False, seed=0)
    >>> res = numrnn.gradient_propagation(net, np.zeros((1000, 1)), lags=[10, 1000])
    >>> np.allclose(res.log_singular_values, np.log(0.9) * res.lags[:, None])
    True
    >>> round(res.decay_rate, 6)          # ln 0.9 per step
    -0.105361
    """
    if getattr(net, "is_ensemble", False):  # numrnn.Ensemble: one result per member
        return net.gradient_propagation(x, h0, n_steps=n_steps, lags=lags, transient=transient,
                                        seed=seed, noise_std=noise_std)
    rng = generator(seed)
    traj = trajectory(net, x, h0, n_steps=n_steps, rng=rng, noise_std=noise_std, seed=seed,
                      what="gradient propagation")
    x_tm, unbatched, h, c = traj.x, traj.unbatched, traj.h, traj.c
    T, B, S = x_tm.shape[0], x_tm.shape[1], state_size(net)
    lags = _check_lags(lags, T)
    _, transient, _, _ = check_schedule(T, 1, S, transient, 1, None)
    n_lags = lags.size
    lin = Linearisation(net, x_tm, h, c, caller="gradient_propagation",
                         extra_bytes=(n_lags * B * S * (S + 3) + 4 * B * S * S) * 8,
                         extra_label=f"the graded factors of {n_lags} lags, (lags, B, S, S) = "
                                     f"({n_lags}, {B}, {S}, {S})",
                         fits=lambda avail: "fewer lags (each holds B * S * S = "
                                            f"{B * S * S} float64 numbers) or fewer sequences "
                                            "at a time may fit", noise=traj.noise)
    slots = np.full(T, -1, np.int64)
    slots[lags - 1] = np.arange(n_lags)
    q = frames(rng, B, S, S, lin.dtype)
    log_d = np.empty((n_lags, B, S))
    u = np.empty((n_lags, B, S, S))
    status = _k.graded_product(lin.kernel_args(), q, slots, log_d, u)
    lost = np.flatnonzero(status[:, 0] != _k.FAIL_NONE)
    if lost.size:
        b = int(lost[0])
        t, tau, part = int(status[b, 1]), int(status[b, 2]), int(status[b, 3])
        what = ("the product J_t^T Q of a step's transposed Jacobian with the orthonormal frame"
                if part == 0 else "the graded triangular factor of the product")
        errors.report(f"gradient_propagation: {what} became NaN or inf at processing step t={t} "
                      f"(lag tau={tau}) of sequence b={b}, from a finite trajectory: it "
                      "overflowed float64 (that sequence's singular values from this lag on "
                      "are NaN)")
    log_sv = np.full_like(log_d, np.nan)
    for i in range(n_lags):
        for b in range(B):
            if not np.isnan(log_d[i, b]).any():
                log_sv[i, b] = _graded_singular_values(log_d[i, b], u[i, b])
    with np.errstate(over="ignore", under="ignore"):
        sv = np.exp(log_sv)
    log_norms = log_sv[..., 0]
    decay = _decay_rates(lags, log_norms)
    sums, lengths = local_sums(lin, 1, transient, 1, rng, caller="gradient_propagation")
    lam = sums[:, :, 0].sum(axis=0) / lengths.sum()
    if unbatched:
        log_sv, sv, log_norms = log_sv[:, 0], sv[:, 0], log_norms[:, 0]
        decay, lam = float(decay[0]), float(lam[0])
    return GradientPropagationResult(lags=lags, log_singular_values=log_sv, singular_values=sv,
                                     log_norms=log_norms, norms=sv[..., 0], decay_rate=decay,
                                     lyapunov_max=lam, n_steps=T, transient=transient,
                                     initial_state=traj.start, noise=traj.noise_description)
