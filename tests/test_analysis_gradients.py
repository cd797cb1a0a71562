"""Gradient propagation: singular values of long Jacobian products against closed forms and
against a direct SVD, and the decay rate against the largest Lyapunov exponent."""
import dataclasses

import numpy as np
import pytest

import numrnn
from numrnn.analysis import GradientPropagationResult, gradient_propagation
from numrnn.analysis.gradients import _graded_singular_values
from numrnn.init import haar_orthogonal

from .tolerance import assert_close


def linear_net(w):
    net = numrnn.RNN(1, w.shape[0], cell="linear", bias=False, seed=0)
    net.parameters["weight_hh_l0"][:] = w
    return net


def test_rejects_bad_input():
    net = numrnn.RNN(1, 3, seed=0)
    x = np.zeros((10, 1))
    with pytest.raises(TypeError, match="net: expected a numrnn.RNN"):
        gradient_propagation(None, x)
    with pytest.raises(ValueError, match=r"lags: expected integers in \[1, T = 10\]"):
        gradient_propagation(net, x, lags=[0, 3])
    with pytest.raises(ValueError, match=r"lags: expected integers in \[1, T = 10\]"):
        gradient_propagation(net, x, lags=[11])
    with pytest.raises(TypeError, match="lags: expected a non-empty 1-D sequence of integers"):
        gradient_propagation(net, x, lags=[1.5])
    with pytest.raises(TypeError, match="lags: expected a non-empty 1-D sequence of integers"):
        gradient_propagation(net, x, lags=[])
    with pytest.raises(ValueError, match="no causal step map"):
        gradient_propagation(numrnn.RNN(1, 3, num_layers=2, bidirectional=True), x)
    with pytest.raises(ValueError, match="transient: expected fewer steps"):
        gradient_propagation(net, x, transient=10)
    with pytest.raises(ValueError, match="seed: .* got the negative integer -1"):
        gradient_propagation(net, x, seed=-1)
    with pytest.raises(TypeError, match="seed: expected None, a non-negative integer"):
        gradient_propagation(net, x, seed="0")


@pytest.mark.parametrize("a", [0.3, 3.0])
def test_scaled_orthogonal_thousand_steps(a, rng):
    """Linear cell with W_hh = a O: d s_T / d s_{T-tau} = (a O)^tau, so every singular value is
    a^tau.  At tau = 1000, a^tau = 10^-523 (a = 0.3) or 10^477 (a = 3): outside float64, so only
    the graded log-space accumulation can return it.  Rounding grows like tau * S * macheps
    relative to |ln sigma| ~ 1000, hence rtol 1e-12 on the logs; the decay rate and lambda_max
    are ln a to 1e-12."""
    N = 10
    net = linear_net(a * haar_orthogonal(rng, N))
    lags = np.array([1, 10, 500, 1000])
    res = gradient_propagation(net, np.zeros((1000, 1)), lags=lags, seed=0)
    assert_close(res.log_singular_values, np.log(a) * lags[:, None] * np.ones(N), rtol=1e-12)
    assert_close(res.decay_rate, np.log(a), atol=1e-12, rtol=0.0)
    assert_close(res.lyapunov_max, np.log(a), atol=1e-12, rtol=0.0)
    assert res.norms[-1] == (0.0 if a < 1 else np.inf)  # out of float64 range, as documented
    assert_close(res.singular_values[1], a ** 10 * np.ones(N), rtol=1e-12)


def test_graded_spectrum_far_below_machine_precision(rng):
    """Symmetric W = O diag(mu) O^T: the product is O diag(mu^tau) O^T, singular values
    |mu_i|^tau exactly.  At tau = 300, sigma_4 / sigma_1 = (0.1 / 1.2)^300 ~ 1e-324: a direct SVD
    sees zero, the graded accumulation resolves every ln sigma_i to rounding (1e-11 absolute,
    ~300 steps of macheps-level error in log space)."""
    mu = np.array([1.2, 0.9, -0.5, 0.1])
    O = haar_orthogonal(rng, 4)
    net = linear_net(O @ np.diag(mu) @ O.T)
    lags = np.array([1, 5, 100, 300])
    res = gradient_propagation(net, np.zeros((300, 1)), lags=lags, seed=0)
    assert_close(res.log_singular_values, np.log(np.abs(mu)) * lags[:, None], atol=1e-11,
                 rtol=0.0)


@pytest.mark.parametrize("cell,layers,bidirectional", [("tanh", 2, False), ("lstm", 1, False),
                                                       ("gru", 1, True), ("mgu", 2, False),
                                                       ("cornn", 1, True), ("ugrnn", 1, False),
                                                       ("antisymmetric", 1, False)])
def test_matches_direct_svd_of_the_product(cell, layers, bidirectional, rng):
    """Against np.linalg.svd of the explicit product J_{T-1} ... J_{T-tau} of the dense step
    Jacobians, for every tau <= 30.  A direct SVD is accurate to macheps * sigma_1 in absolute
    terms, so only sigma_i >= 1e-6 sigma_1 are compared, where its relative error is <= 1e-10:
    rtol 1e-9 on sigma, i.e. 1e-9 absolute on ln sigma."""
    net = numrnn.RNN(2, 5, cell=cell, num_layers=layers, bidirectional=bidirectional, seed=1)
    T = 30
    x = rng.standard_normal((T, 2, 2))
    J = numrnn.jacobians(net, x)
    res = gradient_propagation(net, x, lags=np.arange(1, T + 1), seed=0)
    assert res.log_singular_values.shape == (T, 2, J.shape[-1])
    for b in range(2):
        P = np.eye(J.shape[-1])
        for tau in range(1, T + 1):
            P = P @ J[T - tau, b]
            s = np.linalg.svd(P, compute_uv=False)
            ok = s >= 1e-6 * s[0]
            assert_close(res.log_singular_values[tau - 1, b][ok], np.log(s[ok]), atol=1e-9,
                         rtol=0.0, what=f"tau={tau}")


def test_decay_rate_tracks_lyapunov_max():
    """ln ||d s_T / d s_{T-tau}|| = lambda_1 tau + O(1) (Oseledets), so the fitted slope over
    tau in [1, 400] approaches lambda_1 with an O(1)/T error; 0.02 covers it for this ordered
    random tanh network (lambda_1 ~ -0.20, observed difference ~ 0.002)."""
    net = numrnn.RNN(1, 50, init="gaussian", gain=0.8, seed=4)
    x = np.random.default_rng(0).standard_normal((400, 1))
    res = gradient_propagation(net, x, seed=0)
    assert res.lyapunov_max < 0
    assert abs(res.decay_rate - res.lyapunov_max) < 0.02, (res.decay_rate, res.lyapunov_max)


def test_graded_singular_values_clusters(rng):
    """The graded SVD on hand-made factors: strongly graded (converges by sweeps), exactly
    degenerate (a cluster resolved by a direct SVD at its own scale) and mixed, against
    np.linalg.svd where the product is representable (rtol 1e-12 on sigma ~ 1e-12 on ln)."""
    S = 6
    for log_d in (np.array([50.0, 20.0, 0.0, -10.0, -40.0, -90.0]), np.zeros(S),
                  np.array([3.0, 3.0, 3.0, -5.0, -5.0, -30.0])):
        u = np.triu(rng.standard_normal((S, S)) * 0.3, 1) + np.diag(rng.choice([-1.0, 1.0], S))
        want = np.log(np.linalg.svd(np.exp(log_d)[:, None] * u, compute_uv=False))
        good = want >= want[0] - 30.0  # where the direct SVD can be trusted
        got = _graded_singular_values(log_d, u)
        assert_close(got[good], want[good], atol=1e-11, rtol=0.0)


def test_result_object(rng):
    """Frozen, prints the decay rate and lambda_max first, unbatched shapes."""
    net = numrnn.RNN(2, 3, cell="gru", seed=0)
    res = gradient_propagation(net, rng.standard_normal((20, 2)), lags=[1, 5, 20])
    assert isinstance(res, GradientPropagationResult)
    assert repr(res).startswith("GradientPropagationResult(decay rate = ")
    assert res.singular_values.shape == (3, 3) and res.norms.shape == (3,)
    assert np.all(np.diff(res.log_singular_values, axis=1) <= 0)
    assert isinstance(res.decay_rate, float) and isinstance(res.lyapunov_max, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.lags = None


def test_exactly_singular_steps():
    """J_t = diag(2, 0, 0.5) (linear cell): the product over tau steps has singular values
    2^tau, 0.5^tau and exactly 0, so ln sigma = (tau ln 2, tau ln 0.5, -inf) to rounding (1e-12),
    with no NaN.  J_t = 0: every singular value is 0 at every lag, and the decay rate is -inf
    (not a NaN from a fit through -inf)."""
    net = linear_net(np.diag([2.0, 0.0, 0.5]))
    lags = np.array([1, 2, 5, 10])
    res = gradient_propagation(net, np.zeros((10, 1)), lags=lags, seed=0)
    assert_close(res.log_singular_values[:, :2], np.log([2.0, 0.5]) * lags[:, None], atol=1e-12,
                 rtol=0.0)
    assert np.array_equal(res.log_singular_values[:, 2], np.full(4, -np.inf))
    assert_close(res.decay_rate, np.log(2.0), atol=1e-12, rtol=0.0)
    res = gradient_propagation(linear_net(np.zeros((3, 3))), np.zeros((10, 1)), lags=lags,
                               seed=0)
    assert np.array_equal(res.log_singular_values, np.full((4, 3), -np.inf))
    assert res.decay_rate == -np.inf and res.lyapunov_max == -np.inf


def test_float32_network_is_analysed_in_float64():
    """One float32 tanh unit, h = tanh(12 h_prev) from h_prev = 1: float32 rounds tanh(12) to 1
    and its derivative 1 - tanh^2 to 0, so a float32 product of Jacobians would be exactly 0
    (ln sigma = -inf).  The derivatives are float64 at the float32 state, every step the same
    12 (1 - tanh(12)^2) = 12 sech^2(12), so ln sigma(tau) = tau ln(12 sech^2(12)) (about -20.1
    tau).  1 - y^2 with y = 1 - 7.5e-11 is formed to ~1.5e-6 relative, i.e. ~1e-7 relative on
    the log: rtol 1e-6."""
    net = numrnn.RNN(1, 1, bias=False, seed=0, dtype=np.float32)
    net.parameters["weight_hh_l0"][:] = 12.0
    lags = np.array([1, 5, 10])
    res = gradient_propagation(net, np.zeros((10, 1), np.float32), np.ones((1, 1), np.float32),
                               lags=lags, seed=0)
    assert res.log_singular_values.dtype == np.float64
    want = lags[:, None] * np.log(12.0 / np.cosh(12.0) ** 2)
    assert_close(res.log_singular_values, want, rtol=1e-6)


def overflowing_net():
    """Two linear layers with weights 1e200: the states stay 0, but the step Jacobian's block
    W_ih_l1 W_hh_l0 = 1e400 overflows float64."""
    net = numrnn.RNN(1, 2, cell="linear", num_layers=2, bias=False, seed=0)
    net.parameters["weight_hh_l0"][:] = 1e200 * np.eye(2)
    net.parameters["weight_ih_l1"][:] = 1e200 * np.eye(2)
    return net


def test_nonfinite_product_is_reported():
    """A product that overflows inside the graded accumulation is reported through
    numrnn.errors with the step, the lag and the sequence: NonFiniteError by default; under
    nonfinite("warn") a warning, and NaN for that sequence's lags from there on."""
    net = overflowing_net()
    x = np.zeros((6, 1))
    with pytest.raises(numrnn.NonFiniteError,
                       match=r"gradient_propagation: the product J_t\^T Q .* became NaN or inf "
                             r"at processing step t=5 \(lag tau=1\) of sequence b=0"):
        gradient_propagation(net, x, lags=[1, 3], seed=0)
    with numrnn.nonfinite("warn"):
        with pytest.warns(numrnn.NonFiniteWarning, match="gradient_propagation"):
            res = gradient_propagation(net, x, lags=[1, 3], seed=0)
    assert np.isnan(res.log_singular_values).all() and np.isnan(res.decay_rate)


def test_memory_check_names_the_sizes(monkeypatch):
    """The graded factors of every lag, (lags, B, S, S) float64 numbers, are compared with the
    memory available before anything is allocated: MemoryError naming T, B, S and the bytes."""
    monkeypatch.setattr(numrnn.config, "MEMORY_CHECK", True)
    monkeypatch.setattr(numrnn._memory, "available_bytes", lambda: 32 << 20)
    net = numrnn.RNN(1, 200, seed=0)
    with pytest.raises(MemoryError, match=r"gradient_propagation: the graded factors of 50 lags, "
                                          r"\(lags, B, S, S\) = \(50, 4, 200, 200\) and the "
                                          r"float64 tangent-map coefficients for T=1000 steps, "
                                          r"B=4 sequences, S=200 state dimensions, .* needs "
                                          r"[\d.]+ MiB, but only 32.0 MiB .*; fewer lags"):
        gradient_propagation(net, np.zeros((1000, 4, 1)), seed=0)
