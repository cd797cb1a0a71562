r"""Fixed points of the step map under constant input, and their linear stability."""
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize

from .. import _validation as _v
from .linearisation import Linearisation, check_net, generator, state_size, unpack_state

__all__ = ["FixedPointsResult", "fixed_points"]


@dataclass(frozen=True, repr=False)
class FixedPointsResult:
    r"""Fixed points s* = F(s*) of the step map with constant input, with their linearisation.

    M is the number of distinct fixed points found; S the state size (stacked as in
    :func:`numrnn.analysis.pack_state`).  Points are ordered by number of unstable directions,
    then by spectral radius (most stable first).

    Attributes
    ----------
    points : ndarray, shape (M, S)
    residuals : ndarray, shape (M,)
        ||F(s*) - s*||_2 in the network's dtype.
    eigenvalues : ndarray of complex, shape (M, S)
        Eigenvalues of the step Jacobian J = dF/ds at each point, by descending modulus
        (J in float64 for a float32 network too: see :mod:`numrnn.analysis.jacobians`).
    right_eigenvectors : ndarray of complex, shape (M, S, S)
        Column i of ``right_eigenvectors[m]`` is r_i with J r_i = lambda_i r_i, ||r_i|| = 1.
    left_eigenvectors : ndarray of complex, shape (M, S, S)
        Column i is l_i with l_i^H J = lambda_i l_i^H, scaled so that l_i^H r_i = 1 (the
        projection onto mode i is l_i^H delta_s); unit norm where J is defective there.
    stable : ndarray of bool, shape (M,)
        All |lambda_i| < 1 (an attractor of the discrete-time map).
    n_unstable : ndarray of int, shape (M,)
        Number of |lambda_i| > 1.
    time_constants : ndarray, shape (M, S)
        -1 / ln|lambda_i| in steps: the e-folding time of mode i; positive for decaying modes,
        negative for growing ones (|lambda| > 1), inf for |lambda| = 1, 0 for lambda = 0.
    x_const : ndarray, shape (I,)
        The constant input.
    n_candidates : int
        Starting points optimised.
    n_converged : int
        Candidates that reached ``tol`` before de-duplication.
    tol : float
        Residual below which a candidate counts as a fixed point.
    initial_states : str
        Where the candidates came from: states along trajectories started from N(0, 1) states
        drawn from ``seed`` (the default initial state of every autonomous analysis), or
        "given".
    """

    points: np.ndarray
    residuals: np.ndarray
    eigenvalues: np.ndarray
    left_eigenvectors: np.ndarray
    right_eigenvectors: np.ndarray
    stable: np.ndarray
    n_unstable: np.ndarray
    time_constants: np.ndarray
    x_const: np.ndarray
    n_candidates: int
    n_converged: int
    tol: float
    initial_states: str = ""

    def __repr__(self):
        M = self.points.shape[0]
        if M == 0:
            return (f"FixedPointsResult(no fixed point found: 0 of {self.n_candidates} "
                    f"candidates reached residual {self.tol:g}; try more candidates "
                    "(n_initial) or a larger tol)")
        n_stable = int(np.sum(self.stable))
        lines = [f"FixedPointsResult({M} fixed point{'s' if M != 1 else ''}: {n_stable} stable, "
                 f"{M - n_stable} unstable; max residual {np.max(self.residuals):.2g} (tol "
                 f"{self.tol:g}); {self.n_converged} of {self.n_candidates} candidates "
                 f"converged{'; candidates: ' + self.initial_states if self.initial_states else ''}"
                 ")"]
        for m in range(min(M, 8)):
            lines.append(f"  [{m}] |lambda|_max = {np.abs(self.eigenvalues[m, 0]):.6g}, "
                         f"{self.n_unstable[m]} unstable, residual {self.residuals[m]:.2g}")
        if M > 8:
            lines.append(f"  ... {M - 8} more")
        return "\n".join(lines)


class _StepMap:
    """F(s) = state after one step with input x_const, for a batch of states (M, S)."""

    def __init__(self, net, x_const):
        self.net = net
        self.x = x_const
        self.S = state_size(net)

    def _lin(self, s, coefficients=True):
        s = np.ascontiguousarray(s, dtype=self.net.dtype)
        M = s.shape[0]
        state = unpack_state(self.net, s)
        h, c = state if isinstance(state, tuple) else (state, np.zeros_like(state))
        x = np.ascontiguousarray(np.broadcast_to(self.x, (1, M, self.x.size)))
        return Linearisation(self.net, x, np.ascontiguousarray(h), np.ascontiguousarray(c),
                              coefficients=coefficients, caller="fixed_points")

    def value(self, s):
        return self._lin(s, coefficients=False).states()[0]

    def q_and_grad(self, s):
        """sum of q = 0.5 |F(s) - s|^2 over the batch, and its gradient (J - I)^T (F(s) - s)."""
        lin = self._lin(s)
        r = lin.states()[0].astype(np.float64) - s
        jt_r = lin.apply(r[None, :, :, None], transpose=True)[0, :, :, 0]
        return 0.5 * float(np.sum(r * r)), jt_r - r

    def residual_and_jacobian(self, s):
        """F(s) - s and J - I for one state s (S,)."""
        lin = self._lin(s[None])
        eye = np.eye(self.S, dtype=self.net.dtype)[None, None]
        J = lin.apply(eye, transpose=False)[0, 0].astype(np.float64)
        return lin.states()[0, 0] - s, J - np.eye(self.S)


def _sample_candidates(net, step, n_initial, steps, rng):
    """States at a random step of trajectories from N(0, 1) initial states (Sussillo and Barak)."""
    S = step.S
    s = rng.standard_normal((n_initial, S))
    pick = rng.integers(0, steps, size=n_initial)
    out = np.empty_like(s)
    for t in range(steps):
        s = step.value(s).astype(np.float64)
        out[pick == t] = s[pick == t]
    return out


def _modes(J):
    """Eigenvalues by descending modulus, unit right and biorthonormal left eigenvectors."""
    lam, vl, vr = scipy.linalg.eig(J, left=True, right=True)
    order = np.lexsort((-lam.imag, -lam.real, -np.abs(lam)))
    lam, vl, vr = lam[order], vl[:, order], vr[:, order]
    c = np.einsum("si,si->i", vl.conj(), vr)
    ok = np.abs(c) > np.sqrt(np.finfo(np.float64).eps)
    vl[:, ok] = vl[:, ok] / c[ok].conj()
    return lam, vl, vr


def fixed_points(net, x_const=None, *, n_initial=64, seed=None, tol=None, initial_states=None,
                 trajectory_steps=20, max_iter=200, unique_tol=1e-6):
    r"""Find fixed points s* = F(s*) of a network's step map under constant input.

    Candidates are states sampled along trajectories (or given).  They are first moved toward
    slow regions by minimising q(s) = 0.5 |F(s) - s|^2 with L-BFGS, all at once (Sussillo and
    Barak 2013), then each is polished by a Newton-type root solve of F(s) - s = 0 with the exact
    Jacobian J - I (MINPACK's hybrid method through ``scipy.optimize.root``).  Those with
    residual <= ``tol`` are de-duplicated and linearised.

    Parameters
    ----------
    net : numrnn.RNN
        Any cell, including LSTM (state (h, c)) and GRU; bidirectional only with one layer.
    x_const : ndarray, shape (I,), optional
        The constant input (zeros by default), of the network's dtype.
    n_initial : int, default 64
        Number of candidates sampled along trajectories.
    seed : int, sequence of int, numpy.random.SeedSequence or numpy.random.Generator, optional
        For the initial states of the trajectories and the sampled steps.
    tol : float, optional
        Largest residual ||F(s) - s||_2 accepted (default 1e-10 for float64 networks, 1e-5 for
        float32).
    initial_states : ndarray, shape (M, S), optional
        Start from these states instead of sampling (e.g. states of a task trajectory, packed
        with :func:`numrnn.analysis.pack_state`).
    trajectory_steps : int, default 20
        Length of the sampling trajectories; each candidate is the state at a step drawn
        uniformly from them, so that transients (near saddles) are sampled as well as the
        attractors they settle on.
    max_iter : int, default 200
        L-BFGS iterations of the warm start.
    unique_tol : float, default 1e-6
        Two points closer than unique_tol * (1 + ||s||) count as one.

    Returns
    -------
    FixedPointsResult
        ``points``, ``residuals``, ``eigenvalues``, ``left_eigenvectors``,
        ``right_eigenvectors``, ``stable``, ``n_unstable``, ``time_constants``.

    References
    ----------
    Sussillo, D. and Barak, O. (2013). Opening the black box: low-dimensional dynamics in
    high-dimensional recurrent neural networks. Neural Computation 25(3), 626-649.
    Golub, M. D. and Sussillo, D. (2018). FixedPointFinder: a TensorFlow toolbox for identifying
    and characterizing fixed points in recurrent neural networks. JOSS 3(31), 1003.

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> net = numrnn.RNN(1, 2, cell="tanh", bias=False, seed=0)
    >>> net.parameters["weight_hh_l0"][:] = 2.0 * np.eye(2)
    >>> res = numrnn.fixed_points(net, n_initial=32, seed=0)
    >>> int(res.stable.sum()), res.points.shape[1]      # four attractors of tanh(2 h) = h
    (4, 2)
    """
    check_net(net, "a fixed point of the step map")
    S = state_size(net)
    if x_const is None:
        x_const = np.zeros(net.input_size, net.dtype)
    x_const = _v.check_float_array("x_const", x_const, net.dtype, [(net.input_size,)])
    n_initial = _v.check_int("n_initial", n_initial, 1)
    trajectory_steps = _v.check_int("trajectory_steps", trajectory_steps, 1)
    max_iter = _v.check_int("max_iter", max_iter, 0)
    if tol is None:
        tol = 1e-10 if net.dtype == np.float64 else 1e-5
    tol = _v.check_real("tol", tol, 0.0, low_open=True)
    unique_tol = _v.check_real("unique_tol", unique_tol, 0.0, low_open=True)
    rng = generator(seed)
    step = _StepMap(net, x_const)
    if initial_states is None:
        cand = _sample_candidates(net, step, n_initial, trajectory_steps, rng)
    else:
        dt = net.dtype if getattr(initial_states, "dtype", None) == net.dtype else np.float64
        cand = _v.check_float_array("initial_states", initial_states, dt,
                                    [(None, S)]).astype(np.float64)
        if cand.shape[0] < 1:
            raise ValueError(f"initial_states: expected at least one state (M, {S}), got shape "
                             f"{cand.shape}")
    M = cand.shape[0]

    if max_iter > 0:
        def total_q(flat):
            q, g = step.q_and_grad(flat.reshape(M, S))
            return q, g.ravel()
        warm = scipy.optimize.minimize(total_q, cand.ravel(), jac=True, method="L-BFGS-B",
                                       options=dict(maxiter=max_iter, gtol=0.0, ftol=0.0))
        cand = warm.x.reshape(M, S)

    found, res_norms = [], []
    for s0 in cand:
        sol = scipy.optimize.root(step.residual_and_jacobian, s0, jac=True, method="hybr",
                                  options=dict(xtol=1e-14))
        s = sol.x
        r = float(np.linalg.norm(step.value(s[None])[0] - s.astype(net.dtype)))
        if np.all(np.isfinite(s)) and r <= tol:
            found.append(s)
            res_norms.append(r)
    n_converged = len(found)
    kept, kept_res = [], []
    for i in np.argsort(res_norms, kind="stable"):
        s = found[i]
        if all(np.linalg.norm(s - k) > unique_tol * (1.0 + np.linalg.norm(k)) for k in kept):
            kept.append(s)
            kept_res.append(res_norms[i])

    K = len(kept)
    points = np.array(kept, dtype=np.float64).reshape(K, S)
    lam = np.empty((K, S), np.complex128)
    left = np.empty((K, S, S), np.complex128)
    right = np.empty((K, S, S), np.complex128)
    for m in range(K):
        J = step.residual_and_jacobian(points[m])[1] + np.eye(S)
        lam[m], left[m], right[m] = _modes(J)
    mod = np.abs(lam)
    with np.errstate(divide="ignore"):
        tau = -1.0 / np.log(mod)
    n_unstable = np.sum(mod > 1.0, axis=1)
    radius = mod[:, 0] if S else np.zeros(K)
    order = np.lexsort((radius, n_unstable))
    return FixedPointsResult(
        points=points[order].astype(net.dtype), residuals=np.array(kept_res)[order],
        eigenvalues=lam[order], left_eigenvectors=left[order], right_eigenvectors=right[order],
        stable=np.all(mod < 1.0, axis=1)[order], n_unstable=n_unstable[order],
        time_constants=tau[order], x_const=x_const, n_candidates=M, n_converged=n_converged,
        tol=tol, initial_states=(f"states along {trajectory_steps}-step trajectories from N(0, 1) "
                                 "states drawn from seed" if initial_states is None
                                 else "given"))
