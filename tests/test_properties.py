"""Hypothesis properties of the engine (profiles in conftest.py; deterministic by default)."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import numrnn
from tests.problems import CELLS, make_problem
from tests.tolerance import assert_close

cells = st.sampled_from(CELLS)
seeds = st.integers(0, 2**31 - 1)


@st.composite
def problems(draw, bidirectional=st.booleans(), batch=st.integers(1, 4)):
    cell = draw(cells)
    leak = cell not in ("lstm", "gru") and draw(st.booleans())
    rng = np.random.default_rng(draw(seeds))
    return make_problem(rng, cell, num_layers=draw(st.integers(1, 2)),
                        bidirectional=draw(bidirectional), bias=draw(st.booleans()),
                        alpha=0.7 if leak else 1.0, T=draw(st.integers(1, 7)),
                        B=draw(batch), I=2, N=draw(st.integers(1, 4)))


def _row(state, b, lstm):
    return (state[0][:, b:b + 1], state[1][:, b:b + 1]) if lstm else state[:, b:b + 1]


@given(problems(batch=st.integers(2, 4)), st.sampled_from([None, 1, 3]))
def test_sequences_in_a_batch_are_independent(problem, truncate):
    net, x, h0, d_out, d_h = problem
    lstm = net.cell == "lstm"
    out, h_n, g = net.forward_vjp(x, d_out, h0, d_h, truncate=truncate)
    total = {k: np.zeros_like(v) for k, v in net.state_dict().items()}
    for b in range(x.shape[1]):
        out_b, h_b, g_b = net.forward_vjp(x[:, b:b + 1], d_out[:, b:b + 1], _row(h0, b, lstm),
                                          _row(d_h, b, lstm), truncate=truncate)
        assert_close(out_b, out[:, b:b + 1])
        assert_close(g_b["input"], g["input"][:, b:b + 1])
        assert_close(g_b["h0"], g["h0"][:, b:b + 1])
        assert_close(g_b["state_grad_norm"], g["state_grad_norm"][:, b:b + 1])
        for k in total:
            total[k] += g_b[k]
    for k in total:
        assert_close(g[k], total[k], what=k)


@given(problems(), st.integers(0, 3))
def test_truncate_at_least_T_is_full_bptt(problem, extra):
    net, x, h0, d_out, d_h = problem
    full = net.vjp(x, d_out, h0, d_h)
    cut = net.vjp(x, d_out, h0, d_h, truncate=x.shape[0] + extra)
    for k in full:
        np.testing.assert_array_equal(cut[k], full[k])


@given(problems(bidirectional=st.just(False)), st.data())
def test_continuing_from_h_n_equals_one_long_forward_to_rounding(problem, data):
    """Promised to rounding, not bitwise (RNN.forward's Notes): the input projection is one
    matrix product over all steps, and BLAS may round a row differently in a product with
    another number of rows (it did on an AVX-512 machine).  The tolerance is a few ulps of
    float64 grown over <= 7 steps and 2 layers."""
    net, x, h0, _, _ = problem
    T = x.shape[0]
    t1 = data.draw(st.integers(1, max(T - 1, 1)))
    out, h_n = net.forward(x, h0)
    out1, h_mid = net.forward(x[:t1], h0)
    out2, h_end = net.forward(x[t1:], h_mid) if t1 < T else (out1[:0], h_mid)
    assert_close(np.concatenate([out1, out2]), out, rtol=1e-13)
    for a, b in zip(h_end if isinstance(h_end, tuple) else (h_end,),
                    h_n if isinstance(h_n, tuple) else (h_n,)):
        assert_close(a, b, rtol=1e-13)


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


@given(cells, seeds, st.sampled_from(["default", "gaussian", "orthogonal", "spectral_radius"]))
def test_same_seed_gives_identical_bits(cell, seed, init):
    def run():
        net = numrnn.RNN(2, 3, cell=cell, num_layers=2, init=init, seed=seed)
        x = np.random.default_rng(seed).standard_normal((5, 2, 2))
        out, _, g = net.forward_vjp(x, np.ones((5, 2, 3)))
        return [out] + list(g.values())

    for a, b in zip(run(), run()):
        assert a.tobytes() == b.tobytes()


@given(problems())
def test_float32_agrees_with_float64(problem):
    """Working in float32 changes results by float32 rounding only. The tolerance, 1e-4 relative,
    is a few hundred float32 ulps: room for error growth over <= 7 steps and 2 layers."""
    net, x, h0, d_out, d_h = problem
    lstm = net.cell == "lstm"
    f32 = lambda a: tuple(v.astype(np.float32) for v in a) if lstm else a.astype(np.float32)
    net32 = numrnn.RNN(2, net.hidden_size, cell=net.cell, num_layers=net.num_layers,
                       bidirectional=net.bidirectional, bias=net.bias, alpha=net.alpha,
                       dtype=np.float32)
    net32.load_state_dict({k: v.astype(np.float32) for k, v in net.state_dict().items()})
    out, _, g = net.forward_vjp(x, d_out, h0, d_h)
    out32, _, g32 = net32.forward_vjp(x.astype(np.float32), d_out.astype(np.float32), f32(h0),
                                      f32(d_h))
    assert out32.dtype == np.float32
    assert_close(out32, out, rtol=1e-4)
    for k in g:
        assert g32[k].dtype == (np.float64 if k == "state_grad_norm" else np.float32)
        assert_close(g32[k], g[k], rtol=1e-4, atol=1e-5, what=k)
