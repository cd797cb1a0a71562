"""Fixed points: exact for a linear network, F(s) = s to 1e-10 for nonlinear ones, stability
against direct simulation, and the eigen-decomposition's defining relations."""
import dataclasses

import numpy as np
import pytest

import numrnn
from numrnn.analysis import FixedPointsResult, fixed_points, pack_state, unpack_state

from .tolerance import assert_close


def step(net, x_const, s, n=1):
    """n steps of the engine's forward from state s (S,) with constant input."""
    state = unpack_state(net, s)
    _, h_n = net.forward(np.tile(x_const, (n, 1)), state)
    return pack_state(net, *(h_n if isinstance(h_n, tuple) else (h_n,)))


def bistable_tanh(rng):
    """h = tanh(W h + b) with W = 1.6 I + small coupling: several attractors and saddles (how
    many depends on the biases b, the seed's: seed 5's leave 5 attractors and 3 saddles)."""
    net = numrnn.RNN(1, 3, cell="tanh", seed=5)
    net.parameters["weight_hh_l0"][:] = 1.6 * np.eye(3) + 0.2 * rng.standard_normal((3, 3))
    return net


def test_rejects_bad_input():
    net = numrnn.RNN(2, 3, seed=0)
    with pytest.raises(TypeError, match="net: expected a numrnn.RNN"):
        fixed_points(object())
    with pytest.raises(ValueError, match=r"x_const: expected shape \(2,\), got \(3,\)"):
        fixed_points(net, np.zeros(3))
    with pytest.raises(TypeError, match="x_const: expected dtype float64"):
        fixed_points(net, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="n_initial: expected an integer >= 1, got 0"):
        fixed_points(net, n_initial=0)
    with pytest.raises(ValueError, match=r"tol: expected a finite number in \(0.0, inf\]"):
        fixed_points(net, tol=-1.0)
    with pytest.raises(ValueError, match=r"initial_states: expected shape \(\*, 3\)"):
        fixed_points(net, initial_states=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="no causal step map"):
        fixed_points(numrnn.RNN(2, 3, num_layers=2, bidirectional=True))
    with pytest.raises(ValueError, match="seed: .* got the negative integer -1"):
        fixed_points(net, seed=-1)
    with pytest.raises(TypeError, match="seed: expected None, a non-negative integer"):
        fixed_points(net, seed=1.5)


def test_linear_network_single_exact_fixed_point(rng):
    """Linear leaky cell: F(s) = (1 - a) s + a (W s + W_ih x + b), whose only fixed point is
    s* = (I - W)^-1 (W_ih x + b_ih + b_hh), found exactly (rtol 1e-12: cond(I - W) ~ 10) from
    every candidate, with eigenvalues 1 - a + a mu(W), one of them unstable (|mu| = 1.4)."""
    N, a = 4, 0.5
    net = numrnn.RNN(2, N, cell="linear", alpha=a, seed=1)
    mu = np.array([1.4, 0.5, -0.3, 0.2])
    V = rng.standard_normal((N, N)) + 2 * np.eye(N)
    W = V @ np.diag(mu) @ np.linalg.inv(V)
    p = net.parameters
    p["weight_hh_l0"][:] = W
    x = np.array([0.3, -1.0])
    want = np.linalg.solve(np.eye(N) - W, p["weight_ih_l0"] @ x + p["bias_ih_l0"]
                           + p["bias_hh_l0"])
    res = fixed_points(net, x, n_initial=8, seed=0)
    assert res.points.shape == (1, N) and res.n_converged == 8
    assert_close(res.points[0], want, rtol=1e-12)
    lam = 1 - a + a * mu
    assert_close(np.abs(res.eigenvalues[0]), np.sort(np.abs(lam))[::-1], rtol=1e-12)
    assert not res.stable[0] and res.n_unstable[0] == 1
    assert_close(res.time_constants[0], -1 / np.log(np.sort(np.abs(lam))[::-1]), rtol=1e-12)


def test_tanh_fixed_points_and_their_stability_by_simulation(rng):
    """Small tanh network with several attractors and saddles: every point found satisfies
    F(s) = s to 1e-10 (checked with the engine's forward, independently of the solver), and its
    linear stability agrees with simulation (Sussillo and Barak 2013): a 1e-4 kick off a stable
    point decays (|lambda|_max <= 0.9, so 0.9^400 ~ 1e-18 of the kick is left; assert < 1e-10);
    a 1e-7 kick along the leading right eigenvector of an unstable point grows by |lambda_1| per
    step to first order (relative error ~ the kick, assert 1e-4) and escapes (> 1e-2 away
    after 400 steps)."""
    net = bistable_tanh(rng)
    x0 = np.zeros(1)
    res = fixed_points(net, n_initial=64, seed=0)
    assert res.stable.any() and (~res.stable).any()
    for m, s in enumerate(res.points):
        assert np.linalg.norm(step(net, x0, s) - s) <= 1e-10
        if res.stable[m]:
            assert np.abs(res.eigenvalues[m, 0]) <= 0.9
            kick = 1e-4 * rng.standard_normal(3)
            assert np.linalg.norm(step(net, x0, s + kick, 400) - s) < 1e-10
        else:
            lam = res.eigenvalues[m, 0]
            assert abs(lam.imag) == 0.0  # the leading mode of these saddles is real
            r = res.right_eigenvectors[m, :, 0].real
            d1 = np.linalg.norm(step(net, x0, s + 1e-7 * r) - s)
            assert_close(d1 / 1e-7, abs(lam), rtol=1e-4)
            assert np.linalg.norm(step(net, x0, s + 1e-7 * r, 400) - s) > 1e-2


@pytest.mark.parametrize("cell", ["lstm", "gru", "mgu", "ugrnn", "cornn"])
def test_gated_cells(cell, rng):
    """LSTM (state (h, c)), GRU and the gated and oscillator cells of the literature (coRNN's
    state (y, z)): F(s*) = s* to 1e-10 by the engine's forward; the eigenvalues
    are those of numrnn.jacobians at s*; J r_i = lambda_i r_i, l_i^H J = lambda_i l_i^H and
    l_i^H r_i = 1 to rounding (1e-10 relative to ||J||)."""
    net = numrnn.RNN(2, 4, cell=cell, init="orthogonal", gain=2.0, seed=0)
    x = np.array([0.3, -0.2])
    res = fixed_points(net, x, n_initial=24, seed=1)
    assert isinstance(res, FixedPointsResult) and res.points.shape[0] >= 1
    S = res.points.shape[1]
    assert S == 4 * net.state_count
    for m, s in enumerate(res.points):
        assert np.linalg.norm(step(net, x, s) - s) <= 1e-10
        state = unpack_state(net, s)
        J = numrnn.jacobians(net, x[None], state)[0]
        lam, L, R = res.eigenvalues[m], res.left_eigenvectors[m], res.right_eigenvectors[m]
        assert_close(np.sort(np.abs(lam)), np.sort(np.abs(np.linalg.eigvals(J))), rtol=1e-10)
        scale = np.linalg.norm(J)
        assert np.max(np.abs(J @ R - R * lam)) <= 1e-10 * scale
        assert np.max(np.abs(L.conj().T @ J - lam[:, None] * L.conj().T)) <= 1e-10 * scale
        assert_close(np.einsum("si,si->i", L.conj(), R).real, np.ones(S), rtol=1e-10)


def test_result_object(rng):
    """Frozen; prints the count and stability first; ordered stable first; an honest empty
    result where no fixed point exists."""
    net = bistable_tanh(rng)
    res = fixed_points(net, initial_states=rng.uniform(-1, 1, (40, 3)), max_iter=50)
    assert repr(res).startswith("FixedPointsResult(")
    assert np.all(np.diff(res.n_unstable) >= 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.points = None
    # F(s) = s + b (W = I, b != 0) has no fixed point at all
    drift = numrnn.RNN(1, 2, cell="linear", seed=0)
    drift.parameters["weight_hh_l0"][:] = np.eye(2)
    none = fixed_points(drift, n_initial=3, max_iter=5, seed=0)
    assert none.points.shape == (0, 2) and none.n_converged == 0
    assert "no fixed point found" in repr(none)


def test_float32_network(rng):
    """A float32 network: its fixed points satisfy F(s) = s to the float32 default tol (1e-5) by
    the engine's own float32 forward, and the eigenvalues are those of its float64 Jacobian at
    the point (numrnn.jacobians, float64 for either dtype: rtol 1e-10 as in the gated cells).
    The biases of seed 5, as in bistable_tanh, leave more than one fixed point."""
    net32 = numrnn.RNN(1, 3, cell="tanh", seed=5, dtype=np.float32)
    net32.parameters["weight_hh_l0"][:] = (1.6 * np.eye(3)
                                           + 0.2 * rng.standard_normal((3, 3))).astype(np.float32)
    res = fixed_points(net32, n_initial=32, seed=0)
    assert res.points.dtype == np.float32 and res.points.shape[0] >= 2
    for m, s in enumerate(res.points):
        assert np.linalg.norm(step(net32, np.zeros(1, np.float32), s) - s) <= 1e-5
        J = numrnn.jacobians(net32, np.zeros((1, 1), np.float32), unpack_state(net32, s))[0]
        assert J.dtype == np.float64
        assert_close(np.sort(np.abs(res.eigenvalues[m])),
                     np.sort(np.abs(np.linalg.eigvals(J))), rtol=1e-10)
