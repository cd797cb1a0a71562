"""Hypothesis properties of the engine (profiles in conftest.py; deterministic by default).

The general properties run for every registered cell and nonlinearity (tests/problems.py's
CELL_CASES, one pytest case each, Hypothesis drawing the rest); the closed forms and symmetries
after them are each about one cell."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numrnn
from tests.problems import CELL_CASES, CELL_IDS, TEST_OPTIONS, definition, has_leak, make_problem
from tests.tolerance import assert_close

seeds = st.integers(0, 2**31 - 1)
by_case = pytest.mark.parametrize("case", CELL_CASES, ids=CELL_IDS)


@st.composite
def problems(draw, case, bidirectional=st.booleans(), batch=st.integers(1, 4)):
    cell, phi = case
    leak = has_leak(cell) and draw(st.booleans())
    rng = np.random.default_rng(draw(seeds))
    return make_problem(rng, cell, nonlinearity=phi, num_layers=draw(st.integers(1, 2)),
                        bidirectional=draw(bidirectional), bias=draw(st.booleans()),
                        alpha=0.7 if leak else 1.0, T=draw(st.integers(1, 7)),
                        B=draw(batch), I=2, N=draw(st.integers(1, 4)))


def _row(state, b):
    return tuple(s[:, b:b + 1] for s in state) if isinstance(state, tuple) else state[:, b:b + 1]


@by_case
@given(data=st.data(), truncate=st.sampled_from([None, 1, 3]))
def test_sequences_in_a_batch_are_independent(case, data, truncate):
    net, x, h0, d_out, d_h = data.draw(problems(case, batch=st.integers(2, 4)))
    out, h_n, g = net.forward_vjp(x, d_out, h0, d_h, truncate=truncate)
    total = {k: np.zeros_like(v) for k, v in net.state_dict().items()}
    for b in range(x.shape[1]):
        out_b, h_b, g_b = net.forward_vjp(x[:, b:b + 1], d_out[:, b:b + 1], _row(h0, b),
                                          _row(d_h, b), truncate=truncate)
        assert_close(out_b, out[:, b:b + 1])
        assert_close(g_b["input"], g["input"][:, b:b + 1])
        assert_close(g_b["h0"], g["h0"][:, b:b + 1])
        if "c0" in g:
            assert_close(g_b["c0"], g["c0"][:, b:b + 1])
        assert_close(g_b["state_grad_norm"], g["state_grad_norm"][:, b:b + 1])
        for k in total:
            total[k] += g_b[k]
    for k in total:
        assert_close(g[k], total[k], what=k)


@by_case
@given(data=st.data(), extra=st.integers(0, 3))
def test_truncate_at_least_T_is_full_bptt(case, data, extra):
    net, x, h0, d_out, d_h = data.draw(problems(case))
    full = net.vjp(x, d_out, h0, d_h)
    cut = net.vjp(x, d_out, h0, d_h, truncate=x.shape[0] + extra)
    for k in full:
        np.testing.assert_array_equal(cut[k], full[k])


@by_case
@given(data=st.data())
def test_continuing_from_h_n_equals_one_long_forward_to_rounding(case, data):
    """Promised to rounding, not bitwise (RNN.forward's Notes): the input projection is one
    matrix product over all steps, and BLAS may round a row differently in a product with
    another number of rows (it did on an AVX-512 machine).  The tolerance is a few ulps of
    float64 grown over <= 7 steps and 2 layers."""
    net, x, h0, _, _ = data.draw(problems(case, bidirectional=st.just(False)))
    T = x.shape[0]
    t1 = data.draw(st.integers(1, max(T - 1, 1)))
    out, h_n = net.forward(x, h0)
    out1, h_mid = net.forward(x[:t1], h0)
    out2, h_end = net.forward(x[t1:], h_mid) if t1 < T else (out1[:0], h_mid)
    assert_close(np.concatenate([out1, out2]), out, rtol=1e-13)
    for a, b in zip(h_end if isinstance(h_end, tuple) else (h_end,),
                    h_n if isinstance(h_n, tuple) else (h_n,)):
        assert_close(a, b, rtol=1e-13)


@by_case
@given(seed=seeds, data=st.data())
def test_same_seed_gives_identical_bits(case, seed, data):
    cell, phi = case
    # a vector weight_hh (IndRNN's u) has no Gaussian, orthogonal or spectral-radius draw
    vector = len(definition(cell, phi).weight_hh_shape(3)) == 1
    init = data.draw(st.sampled_from(["default", "identity"] if vector else
                                     ["default", "gaussian", "orthogonal", "spectral_radius"]))

    def run():
        net = numrnn.RNN(2, 3, cell=cell, nonlinearity=phi, num_layers=2, init=init, seed=seed)
        x = np.random.default_rng(seed).standard_normal((5, 2, 2))
        out, _, g = net.forward_vjp(x, np.ones((5, 2, 3)))
        return [out] + list(g.values())

    for a, b in zip(run(), run()):
        assert a.tobytes() == b.tobytes()


@by_case
@given(data=st.data())
def test_float32_agrees_with_float64(case, data):
    """Working in float32 changes results by float32 rounding only. The tolerance, 1e-4 relative,
    is a few hundred float32 ulps: room for error growth over <= 7 steps and 2 layers."""
    net, x, h0, d_out, d_h = data.draw(problems(case))

    def f32(a):
        return tuple(v.astype(np.float32) for v in a) if isinstance(a, tuple) \
            else a.astype(np.float32)

    net32 = numrnn.RNN.from_config(dict(net.config(), dtype="float32"))
    assert net32.cell_options == net.cell_options
    net32.load_state_dict({k: v.astype(np.float32) for k, v in net.state_dict().items()})
    out, _, g = net.forward_vjp(x, d_out, h0, d_h)
    out32, _, g32 = net32.forward_vjp(f32(x), f32(d_out), f32(h0), f32(d_h))
    assert out32.dtype == np.float32
    assert_close(out32, out, rtol=1e-4)
    for k in g:
        assert g32[k].dtype == (np.float64 if k == "state_grad_norm" else np.float32)
        assert_close(g32[k], g[k], rtol=1e-4, atol=1e-5, what=k)


# --- closed forms and symmetries of single cells ------------------------------------------------


@given(seeds, st.integers(1, 6), st.floats(0.1, 1.0), st.booleans())
def test_linear_cell_equals_closed_form(seed, T, alpha, bias):
    r"""h_t = A h_{t-1} + a (W_ih x_t + b), A = (1-a) I + a W_hh, so
    h_T = A^T h_0 + \sum_s A^{T-1-s} a (W_ih x_s + b)."""
    rng = np.random.default_rng(seed)
    net, x, h0, _, _ = make_problem(rng, "linear", alpha=alpha, bias=bias, T=T, B=3, N=4)
    p = net.state_dict()
    b = p["bias_ih_l0"] + p["bias_hh_l0"] if bias else 0.0
    A = (1 - alpha) * np.eye(4) + alpha * p["weight_hh_l0"]
    h = np.linalg.matrix_power(A, T) @ h0[0].T
    for s in range(T):
        u = alpha * (p["weight_ih_l0"] @ x[s].T + (b[:, None] if bias else 0.0))
        h = h + np.linalg.matrix_power(A, T - 1 - s) @ u
    out, h_n = net.forward(x, h0)
    assert_close(h_n[0], h.T, rtol=1e-12)
    assert_close(out[-1], h.T, rtol=1e-12)


@given(seeds, st.integers(1, 6), st.floats(0.05, 0.5), st.floats(0.0, 1.0), st.booleans())
def test_linear_antisymmetric_cell_equals_closed_form(seed, T, eps, gamma, bias):
    r"""With phi = identity, h_t = A h_{t-1} + eps (W_ih x_t + b) with A = I + eps (W - W^T -
    gamma I) (Chang et al. 2019, eq. 4 without the nonlinearity), so
    h_T = A^T h_0 + \sum_s A^{T-1-s} eps (W_ih x_s + b)."""
    rng = np.random.default_rng(seed)
    net, x, h0, _, _ = make_problem(rng, "antisymmetric", nonlinearity="linear", bias=bias,
                                    cell_options={"epsilon": eps, "gamma": gamma}, T=T, B=3,
                                    N=4)
    p = net.state_dict()
    w = p["weight_hh_l0"]
    b = (p["bias_ih_l0"] + p["bias_hh_l0"])[:, None] if bias else 0.0
    A = np.eye(4) + eps * (w - w.T - gamma * np.eye(4))
    h = np.linalg.matrix_power(A, T) @ h0[0].T
    for s in range(T):
        h = h + np.linalg.matrix_power(A, T - 1 - s) @ (eps * (p["weight_ih_l0"] @ x[s].T + b))
    out, h_n = net.forward(x, h0)
    assert_close(h_n[0], h.T, rtol=1e-12)
    assert_close(out[-1], h.T, rtol=1e-12)


@given(seeds, st.sampled_from(["tanh", "relu", "linear"]))
def test_antisymmetric_cell_sees_only_the_antisymmetric_part_of_its_weight(seed, phi):
    """M = W - W^T - gamma I: adding a symmetric matrix to W changes nothing (to rounding), and
    the gradient of W is antisymmetric, dL/dW = G - G^T (exactly: (a - b) + (b - a) = 0)."""
    rng = np.random.default_rng(seed)
    net, x, h0, d_out, d_h = make_problem(rng, "antisymmetric", nonlinearity=phi,
                                          num_layers=2, T=5)
    out, h_n, g = net.forward_vjp(x, d_out, h0, d_h)
    s = rng.standard_normal((4, 4))
    shifted = net.state_dict()
    shifted["weight_hh_l0"] = shifted["weight_hh_l0"] + (s + s.T)
    net.load_state_dict(shifted)
    out2, h_n2, _ = net.forward_vjp(x, d_out, h0, d_h)
    assert_close(out2, out, rtol=1e-13)
    assert_close(h_n2, h_n, rtol=1e-13)
    for name in ("weight_hh_l0", "weight_hh_l1"):
        np.testing.assert_array_equal(g[name], -g[name].T)


@given(seeds, st.sampled_from(["relu", "tanh"]), st.integers(1, 6))
def test_indrnn_layer_is_n_independent_one_unit_networks(seed, phi, T):
    """IndRNN's units do not interact within a layer (Li et al. 2018): unit j of an N-unit
    layer is the one-unit network with row j of every parameter, forward and gradient (to
    rounding, 1e-13: the N-unit network may order its sums over steps and sequences another
    way)."""
    rng = np.random.default_rng(seed)
    N = 4
    net, x, h0, d_out, d_h = make_problem(rng, "indrnn", nonlinearity=phi, T=T, N=N)
    out, h_n, g = net.forward_vjp(x, d_out, h0, d_h)
    p = net.state_dict()
    d_input = np.zeros_like(x)
    for j in range(N):
        unit = numrnn.RNN(net.input_size, 1, cell="indrnn", nonlinearity=phi, seed=0)
        unit.load_state_dict({k: v[j:j + 1] for k, v in p.items()})
        out_j, h_j, g_j = unit.forward_vjp(x, d_out[:, :, j:j + 1], h0[:, :, j:j + 1],
                                           d_h[:, :, j:j + 1])
        assert_close(out_j, out[:, :, j:j + 1], rtol=1e-13)
        assert_close(g_j["h0"], g["h0"][:, :, j:j + 1], rtol=1e-13)
        for k in p:  # to rounding: the sums over steps and sequences may run in another order
            assert_close(g_j[k], g[k][j:j + 1], rtol=1e-13, what=k)
        d_input += g_j["input"]
    assert_close(d_input, g["input"], rtol=1e-14, what="input: the sum over the units")


@given(seeds, st.integers(1, 8))
def test_cornn_without_recurrent_weights_is_a_driven_damped_oscillator(seed, T):
    r"""With W = W_z = 0 the drive s_t = tanh(W_ih x_t + b) does not depend on the state, and
    each unit is the linear recursion (Rusch and Mishra 2021, eq. 3 discretised)
    [y_t, z_t] = A [y_{t-1}, z_{t-1}] + s_t [dt^2, dt], with
    A = [[1 - dt^2 gamma, dt (1 - dt eps)], [-dt gamma, 1 - dt eps]]."""
    rng = np.random.default_rng(seed)
    dt, gamma, eps = 0.3, 1.5, 0.8
    net, x, (y0, z0), _, _ = make_problem(rng, "cornn", T=T, B=3, N=4,
                                          cell_options={"dt": dt, "gamma": gamma,
                                                        "epsilon": eps})
    p = net.state_dict()
    p["weight_hh_l0"][:] = 0.0
    net.load_state_dict(p)
    A = np.array([[1 - dt * dt * gamma, dt * (1 - dt * eps)], [-dt * gamma, 1 - dt * eps]])
    y, z = y0[0], z0[0]
    for t in range(T):
        s = np.tanh(x[t] @ p["weight_ih_l0"].T + p["bias_ih_l0"] + p["bias_hh_l0"])
        y, z = A[0, 0] * y + A[0, 1] * z + dt * dt * s, A[1, 0] * y + A[1, 1] * z + dt * s
    out, (y_n, z_n) = net.forward(x, (y0, z0))
    assert_close(y_n[0], y, rtol=1e-13)
    assert_close(z_n[0], z, rtol=1e-13)
    assert_close(out[-1], y, rtol=1e-13)


@pytest.mark.parametrize("cell, block, bias", [("gru", 1, 60.0), ("mgu", 0, -60.0),
                                               ("ugrnn", 1, 60.0)])
@given(seed=seeds, truncate=st.sampled_from([None, 2]))
def test_a_closed_update_gate_copies_the_state(cell, block, bias, seed, truncate):
    """Bias 60 on the update gate (GRU's z, UGRNN's g; -60 on MGU's f), far above the few
    units W_ih x + W_hh h reaches here: the gate is 1 (0) to float64 precision, h_t = h_0 for
    every t, and dL/dh_0 = dL/dh_n + sum_t dL/dout_t; truncated at k, sum_{t<k} dL/dout_t
    (the copy is the only path, and truncation cuts it at k)."""
    rng = np.random.default_rng(seed)
    N = 4
    net, x, h0, d_out, d_h = make_problem(rng, cell, T=6, B=2, N=N)
    p = net.state_dict()
    p["bias_ih_l0"][block * N:(block + 1) * N] = bias
    net.load_state_dict(p)
    out, h_n, g = net.forward_vjp(x, d_out, h0, d_h)
    assert_close(out, np.broadcast_to(h0[0], out.shape), rtol=1e-14)
    assert_close(h_n, h0, rtol=1e-14)
    assert_close(g["h0"][0], d_h[0] + d_out.sum(axis=0), rtol=1e-14)
    if truncate is not None:
        g_cut = net.vjp(x, d_out, h0, d_h, truncate=truncate)
        assert_close(g_cut["h0"][0], d_out[:truncate].sum(axis=0), rtol=1e-14)


def test_test_options_are_not_the_defaults():
    """Guard: TEST_OPTIONS really moves the cells away from their defaults."""
    for cell, options in TEST_OPTIONS.items():
        defaults = definition(cell).options
        assert options and all(defaults[k] != v for k, v in options.items())
