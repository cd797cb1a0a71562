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
                                                       ("gru", 1, True)])
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
