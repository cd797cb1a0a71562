"""Tangent maps: dense step Jacobian, JVP and VJP against finite differences of the step map, and
the chain of VJPs against backpropagation through time (``RNN.vjp``)."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numrnn
from numrnn import driver
from numrnn.analysis import pack_state, state_size, step_jvp, step_vjp, unpack_state
from numrnn.analysis.linearisation import Linearisation, linearise

from .problems import CELL_CASES, CELL_IDS, TEST_OPTIONS, overflowing_net
from .tolerance import assert_close, rel_error

# Central differences with step 1e-6 on O(1) states: truncation ~1e-12, rounding ~1e-10.
FD_EPS = 1e-6
FD_RTOL = 1e-8

CELLS = [("tanh", None, 1.0), ("relu", None, 1.0), ("linear", None, 0.7), ("tanh", None, 0.4),
         ("rate", "tanh", 0.3), ("rate", "relu", 1.0), ("lstm", None, 1.0), ("gru", None, 1.0),
         ("mgu", None, 1.0), ("ugrnn", None, 1.0), ("indrnn", "relu", 1.0),
         ("indrnn", "tanh", 1.0), ("antisymmetric", "tanh", 1.0), ("antisymmetric", "relu", 1.0),
         ("cornn", None, 1.0)]


def two_states(cell, nonlinearity=None):
    """Whether the cell's state is a pair (LSTM's (h, c), coRNN's (y, z))."""
    return numrnn.cells.resolve(cell, nonlinearity)[0].state_count == 2
LAYOUTS = [(1, False), (2, False), (1, True)]


def make_net(cell, nonlinearity, alpha, layers, bidirectional, seed=0, **kw):
    return numrnn.RNN(3, 4, cell=cell, nonlinearity=nonlinearity, alpha=alpha, num_layers=layers,
                      bidirectional=bidirectional, seed=seed, **kw)


def step_map(net, x, t, s):
    """F_t(s): the state after processing step t from state s (B, S), by the engine's forward.

    The reverse direction's processing step t consumes x[T-1-t]."""
    T = x.shape[0]
    state = unpack_state(net, s)
    _, h_n = net.forward(x[t:t + 1], state)
    new = pack_state(net, *(h_n if isinstance(h_n, tuple) else (h_n,)))
    if net.bidirectional:
        _, h_r = net.forward(x[T - 1 - t:T - t], state)
        rev = pack_state(net, *(h_r if isinstance(h_r, tuple) else (h_r,)))
        half = new.shape[1] // 2
        new[:, half:] = rev[:, half:]
    return new


def trajectory(net, x, h0=None):
    """(s_{-1}, s_0, ..., s_{T-1}) via the linearisation's record, shape (T+1, B, S)."""
    x_tm, _ = driver.check_input(net, x)
    h, c = driver.split_state(net, h0, x_tm.shape[1], False)
    lin = Linearisation(net, x_tm, h, c)
    return np.concatenate([lin.initial_state()[None], lin.states()])


def fd_jacobian(net, x, t, s):
    """Central-difference Jacobian of F_t at s (B, S) -> (B, S, S)."""
    S = s.shape[1]
    J = np.empty((s.shape[0], S, S))
    for i in range(S):
        e = np.zeros(S)
        e[i] = FD_EPS
        J[:, :, i] = (step_map(net, x, t, s + e) - step_map(net, x, t, s - e)) / (2 * FD_EPS)
    return J


# --- invalid input first ----------------------------------------------------------------------


def test_rejects_bad_input():
    net = numrnn.RNN(2, 3, seed=0)
    x = np.zeros((4, 2))
    with pytest.raises(TypeError, match="net: expected a numrnn.RNN"):
        numrnn.jacobians("net", x)
    with pytest.raises(TypeError, match="x: expected dtype float64"):
        numrnn.jacobians(net, x.astype(np.float32))
    with pytest.raises(ValueError, match="x: expected shape"):
        numrnn.jacobians(net, np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"v: expected shape \(4, 3\)"):
        step_jvp(net, x, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"u: expected an array of rank 3 \(shape \(4, 2, 3\)\)"):
        step_vjp(net, np.zeros((4, 2, 2)), np.zeros((4, 3)))
    deep_bi = numrnn.RNN(2, 3, num_layers=2, bidirectional=True, seed=0)
    with pytest.raises(ValueError, match="no causal step map"):
        numrnn.jacobians(deep_bi, x)
    lstm = numrnn.RNN(2, 3, cell="lstm", seed=0)
    with pytest.raises(ValueError, match=r"c: the lstm cell's state has a second part \(c\)"):
        pack_state(lstm, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="c: the tanh cell has no cell state"):
        pack_state(net, np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="s: expected an array with last axis of length S = 6"):
        unpack_state(lstm, np.zeros(5))
    net32 = numrnn.RNN(2, 3, seed=0, dtype=np.float32)
    with pytest.raises(TypeError, match="v: expected dtype float32"):
        step_jvp(net32, x.astype(np.float32), np.zeros((4, 3)))


# --- finite differences -----------------------------------------------------------------------


@pytest.mark.parametrize("layers,bidirectional", LAYOUTS)
@pytest.mark.parametrize("cell,nonlinearity,alpha", CELLS)
def test_dense_jvp_vjp_match_finite_differences(cell, nonlinearity, alpha, layers, bidirectional,
                                                rng):
    """Dense J_t = dF_t/ds, J_t v and u^T J_t against central differences of the step map F_t
    (the engine's own one-step forward).  float64, step 1e-6: the truncation error
    O(eps^2 |F'''|) ~ 1e-12 and rounding O(macheps/eps) ~ 1e-10 give rtol 1e-8 on max and mean."""
    net = make_net(cell, nonlinearity, alpha, layers, bidirectional)
    T, B = 3, 2
    x = rng.standard_normal((T, B, 3))
    h0 = rng.standard_normal((layers * net.num_directions, B, 4)) * 0.5
    if two_states(cell, nonlinearity):
        h0 = (h0, rng.standard_normal(h0.shape))
    J = numrnn.jacobians(net, x, h0)
    S = state_size(net)
    assert J.shape == (T, B, S, S)
    traj = trajectory(net, x, h0)
    v = rng.standard_normal((T, B, S))
    u = rng.standard_normal((T, B, S))
    jv = step_jvp(net, x, v, h0)
    uj = step_vjp(net, x, u, h0)
    for t in range(T):
        # the recorded trajectory is the engine's step map iterated
        assert_close(step_map(net, x, t, traj[t]), traj[t + 1], rtol=1e-14)
        fd = fd_jacobian(net, x, t, traj[t])
        assert_close(J[t], fd, rtol=FD_RTOL, what=f"J[{t}]")
        assert np.mean(np.abs(J[t] - fd)) <= FD_RTOL * np.max(np.abs(fd))
        fd_jv = (step_map(net, x, t, traj[t] + FD_EPS * v[t])
                 - step_map(net, x, t, traj[t] - FD_EPS * v[t])) / (2 * FD_EPS)
        assert_close(jv[t], fd_jv, rtol=FD_RTOL, what=f"Jv[{t}]")
        assert_close(uj[t], np.einsum("bs,bsr->br", u[t], fd), rtol=FD_RTOL, what=f"uJ[{t}]")
    # the three forms are one map: exact agreement up to summation order
    assert_close(jv, np.einsum("tbrs,tbs->tbr", J, v), rtol=1e-13)
    assert_close(uj, np.einsum("tbr,tbrs->tbs", u, J), rtol=1e-13)


def wide_cell():
    """A user's cell with five gates (more than the fused loops of the dense Jacobian take):
    h' = h / 2 + tanh(sum_g w_g z_g) / 2."""
    def step(z0, z1, z2, z3, z4, h, one):
        y = math.tanh(1.0 * z0 + 0.5 * z1 - 0.3 * z2 + 0.2 * z3 + 0.1 * z4)
        return 0.5 * h + 0.5 * y, y

    def vjp(dh, h, h_new, y, one):
        dz = 0.5 * (one - y * y) * dh
        return dz, 0.5 * dz, -0.3 * dz, 0.2 * dz, 0.1 * dz, 0.5 * dh

    def jvp(dz0, dz1, dz2, dz3, dz4, dh, h, h_new, y, one):
        return (0.5 * (one - y * y) * (dz0 + 0.5 * dz1 - 0.3 * dz2 + 0.2 * dz3 + 0.1 * dz4)
                + 0.5 * dh)

    return numrnn.cells.Cell("wide", gates=("a", "b", "c", "d", "e"), aux=("y",), step=step,
                             vjp=vjp, jvp=jvp)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (3, False), (1, True)])
@pytest.mark.parametrize("cell,nonlinearity", CELL_CASES + (("wide", None),),
                         ids=CELL_IDS + ("wide",))
def test_dense_jacobians_are_the_tangent_map_of_the_identity(cell, nonlinearity, layers,
                                                             bidirectional, rng):
    """The dense J_t, written entry by entry from the coefficients, is the tangent map applied
    to the identity (the route it replaced: J_t I through the matrix products): every cell
    (structured recurrent weights, read maps, two states, more than four gates), stacked and
    bidirectional layouts, float64 and float32 networks, with noise.  Both sum the same nonzero
    terms in the same order; the products with W_hh and W_ih run on matrices of other shapes in
    BLAS, which can round a sum differently: rtol 1e-13 (measured: the same bits)."""
    if cell == "wide":
        numrnn.check_cell(wide_cell())
        cell = wide_cell()
    options = TEST_OPTIONS.get(cell) if isinstance(cell, str) else None
    for dtype, noise_std in ((np.float64, 0.0), (np.float32, 0.3)):
        net = numrnn.RNN(3, 5, cell=cell, nonlinearity=nonlinearity, cell_options=options,
                         num_layers=layers, bidirectional=bidirectional, dtype=dtype,
                         seed=int(rng.integers(2**31)))
        net.load_state_dict({k: rng.uniform(-0.6, 0.6, v.shape).astype(dtype)
                             for k, v in net.state_dict().items()})
        x = rng.standard_normal((4, 3, 3)).astype(dtype)
        lin, _ = linearise(net, x, None, noise_std=noise_std, seed=7)
        J, first = lin.jacobians()
        assert J.dtype == np.float64 and J.shape == (4, 3, lin.S, lin.S) and first is None
        want = lin.apply(np.eye(lin.S)[None, None], transpose=False)
        assert_close(J, want, rtol=1e-13, what=f"J ({np.dtype(dtype).name})")
        assert np.array_equal(J == 0, want == 0)  # the same structural zeros
        assert np.abs(J).max() > 0.1


@pytest.mark.parametrize("layers,bidirectional", LAYOUTS)
@pytest.mark.parametrize("cell,nonlinearity,alpha", CELLS)
def test_chain_of_vjps_is_bptt(cell, nonlinearity, alpha, layers, bidirectional, rng):
    """d<u, s_{T-1}>/ds_{-1} = u^T J_{T-1} ... J_0 must equal RNN.vjp's gradient of h0 (and c0)
    with d_h_n = u: the analysis and BPTT share the same cell functions, so they agree to
    rounding (rtol 1e-12 over T = 6 steps)."""
    net = make_net(cell, nonlinearity, alpha, layers, bidirectional)
    T, B, LD = 6, 3, layers * net.num_directions
    x = rng.standard_normal((T, B, 3))
    h0 = rng.standard_normal((LD, B, 4)) * 0.5
    d_h = rng.standard_normal((LD, B, 4))
    if two_states(cell, nonlinearity):
        h0 = (h0, rng.standard_normal(h0.shape))
        d_h = (d_h, rng.standard_normal(d_h.shape))
        u = pack_state(net, *d_h)
    else:
        u = pack_state(net, d_h)
    out, _ = net.forward(x, h0)
    grads = net.vjp(x, np.zeros_like(out), h0, d_h_n=d_h)
    want = pack_state(net, grads["h0"], grads.get("c0"))
    J = numrnn.jacobians(net, x, h0)
    g = u
    for t in reversed(range(T)):
        g = np.einsum("br,brs->bs", g, J[t])
    assert_close(g, want, rtol=1e-12, what="u^T J_{T-1}...J_0 vs BPTT")


# --- layouts and dtypes -----------------------------------------------------------------------


def test_unbatched_batch_first_and_float32(rng):
    """Unbatched input gives (T, S, S); batch_first changes only the input layout; a float32
    network's Jacobians are float64 and agree with the float64 network's to float32 rounding of
    its parameters and states (rtol 1e-5 over O(1) entries)."""
    net = numrnn.RNN(3, 5, cell="gru", num_layers=2, seed=3)
    x = rng.standard_normal((4, 2, 3))
    J = numrnn.jacobians(net, x)
    J0 = numrnn.jacobians(net, x[:, 0])
    assert J0.shape == (4, 10, 10)
    assert_close(J0, J[:, 0], rtol=1e-15)
    net_bf = numrnn.RNN(3, 5, cell="gru", num_layers=2, seed=3, batch_first=True)
    assert_close(numrnn.jacobians(net_bf, x.transpose(1, 0, 2)), J, rtol=1e-15)
    net32 = numrnn.RNN(3, 5, cell="gru", num_layers=2, seed=3, dtype=np.float32)
    J32 = numrnn.jacobians(net32, x.astype(np.float32))
    assert J32.dtype == np.float64
    assert rel_error(J32, J) < 1e-5


@given(layers=st.integers(1, 3), batch=st.integers(1, 3), lstm=st.booleans(),
       bidirectional=st.booleans())
def test_pack_unpack_round_trip(layers, batch, lstm, bidirectional):
    """unpack_state inverts pack_state, and the block order is that of h_n."""
    if bidirectional:
        layers = 1
    net = numrnn.RNN(2, 3, cell="lstm" if lstm else "tanh", num_layers=layers,
                     bidirectional=bidirectional, seed=0)
    LD = layers * net.num_directions
    h = np.arange(LD * batch * 3, dtype=float).reshape(LD, batch, 3)
    parts = (h, -h) if lstm else (h,)
    s = pack_state(net, *parts)
    assert s.shape == (batch, state_size(net))
    assert_close(s[:, :3], h[0], rtol=0.0)
    back = unpack_state(net, s)
    for got, want in zip(back if lstm else (back,), parts):
        assert_close(got, want, rtol=0.0)


# --- float32 networks ---------------------------------------------------------------------------


def float64_copy(net32, **kw):
    """The float64 network with exactly the float32 network's parameters."""
    net = numrnn.RNN(net32.input_size, net32.hidden_size, cell=net32.cell,
                     nonlinearity=net32.nonlinearity, cell_options=net32.cell_options,
                     num_layers=net32.num_layers, bias=net32.bias, seed=0, **kw)
    net.load_state_dict({k: v.astype(np.float64) for k, v in net32.state_dict().items()})
    return net


@pytest.mark.parametrize("cell,nonlinearity,alpha,layers,bidirectional", [
    ("tanh", None, 1.0, 1, False), ("rate", "tanh", 0.3, 1, False), ("lstm", None, 1.0, 2, False),
    ("gru", None, 1.0, 2, False), ("relu", None, 0.5, 1, False), ("lstm", None, 1.0, 1, True),
    ("mgu", None, 1.0, 2, False), ("cornn", None, 1.0, 1, True),
    ("antisymmetric", "tanh", 1.0, 1, False), ("indrnn", "tanh", 1.0, 1, False)])
def test_float32_tangent_maps_are_float64_at_the_float32_states(cell, nonlinearity, alpha,
                                                                 layers, bidirectional, rng):
    """A float32 network's J_t is the float64 Jacobian of its step map at its own (float32)
    state s_{t-1}: the float64 network with the same (upcast) parameters, run one step from
    s_{t-1} upcast, gives the same matrix (for a bidirectional network, the reverse block from
    the step that reads x_{T-1-t}).  Both evaluate the same float64 expressions on the same
    numbers; only the input projection's BLAS call differs in size (T*B rows against B), which
    can change a sum's rounding: rtol 1e-13."""
    net32 = numrnn.RNN(3, 4, cell=cell, nonlinearity=nonlinearity, alpha=alpha,
                       num_layers=layers, bidirectional=bidirectional, seed=1, dtype=np.float32)
    net64 = float64_copy(net32, bidirectional=bidirectional)
    T, B = 5, 2
    x = rng.standard_normal((T, B, 3)).astype(np.float32)
    LD = layers * net32.num_directions
    h0 = (rng.standard_normal((LD, B, 4)) * 0.5).astype(np.float32)
    if two_states(cell, nonlinearity):
        h0 = (h0, rng.standard_normal(h0.shape).astype(np.float32))
    J32 = numrnn.jacobians(net32, x, h0)
    traj = trajectory(net32, x, h0)
    assert J32.dtype == np.float64 and traj.dtype == np.float32
    half = J32.shape[-1] // 2 if bidirectional else J32.shape[-1]
    for t in range(T):
        state = unpack_state(net64, traj[t].astype(np.float64))
        J64 = numrnn.jacobians(net64, x[t:t + 1].astype(np.float64), state)[0]
        assert_close(J32[t][:, :half, :half], J64[:, :half, :half], rtol=1e-13, what=f"J[{t}]")
        if bidirectional:
            J64 = numrnn.jacobians(net64, x[T - 1 - t:T - t].astype(np.float64), state)[0]
            assert_close(J32[t][:, half:, half:], J64[:, half:, half:], rtol=1e-13,
                         what=f"J[{t}] (reverse)")
            assert not J32[t][:, :half, half:].any() and not J32[t][:, half:, :half].any()
    v = rng.standard_normal((T, B, J32.shape[-1])).astype(np.float32)
    jv = step_jvp(net32, x, v, h0)
    assert jv.dtype == np.float64
    assert_close(jv, np.einsum("tbrs,tbs->tbr", J32, v), rtol=1e-13)
    uj = step_vjp(net32, x, v, h0)
    assert_close(uj, np.einsum("tbr,tbrs->tbs", v, J32), rtol=1e-13)


def test_float32_saturated_unit_keeps_its_float64_derivative():
    """One tanh unit, h = tanh(12 h_prev) from h_prev = 1: float32 rounds tanh(12) to exactly 1,
    so a float32 derivative 1 - tanh^2 would make J = 0 exactly.  The analysis evaluates it in
    float64 at the float32 state: J = 12 (1 - tanh(12)^2) = 12 sech^2(12) ~ 1.8e-9, bit for bit
    what the float64 network gives (h_prev = 1 and w = 12 are exact in both dtypes).  Against
    the closed form, 1 - y^2 with y = 1 - 7.5e-11 is formed to eps / 1.5e-10 ~ 1.5e-6
    relative: rtol 1e-5."""
    net32 = numrnn.RNN(1, 1, bias=False, seed=0, dtype=np.float32)
    net32.parameters["weight_hh_l0"][:] = 12.0
    x = np.zeros((3, 1), np.float32)
    h0 = np.ones((1, 1), np.float32)
    out, _ = net32.forward(x, h0)
    assert np.all(out == 1.0)  # the float32 state is saturated
    J32 = numrnn.jacobians(net32, x, h0)
    J64 = numrnn.jacobians(float64_copy(net32), x.astype(np.float64), h0.astype(np.float64))
    assert_close(J32[0, 0, 0], 12.0 / np.cosh(12.0) ** 2, rtol=1e-5)
    assert np.array_equal(J32, J64)


# --- non-finite values and memory ---------------------------------------------------------------


def test_nonfinite_products_are_reported():
    """A Jacobian entry, J v or u^T J that overflows from a finite trajectory is reported through
    numrnn.errors, naming the function, the step and the sequence: NonFiniteError by default; a
    NonFiniteWarning and the inf values under nonfinite("warn")."""
    net = overflowing_net()
    x = np.zeros((3, 2, 1))
    with pytest.raises(numrnn.NonFiniteError, match="jacobians: the step Jacobian J_t holds NaN "
                                                    "or inf at step t=0 of sequence b=0"):
        numrnn.jacobians(net, x)
    v = np.ones((3, 2, 4))
    with pytest.raises(numrnn.NonFiniteError, match="step_jvp: J_t v_t holds NaN or inf at step "
                                                    "t=0 of sequence b=0"):
        step_jvp(net, x, v)
    with pytest.raises(numrnn.NonFiniteError, match=r"step_vjp: u_t\^T J_t holds NaN or inf"):
        step_vjp(net, x, v)
    with numrnn.nonfinite("warn"):
        with pytest.warns(numrnn.NonFiniteWarning, match="jacobians: the step Jacobian"):
            J = numrnn.jacobians(net, x)
    # the block W_ih_l1 W_hh_l0 = 1e400 I: inf on its diagonal only
    assert np.isinf(J[:, :, 2:, :2].diagonal(axis1=2, axis2=3)).all()
    assert np.isfinite(J[:, :, :2]).all()


def test_memory_check_names_the_sizes(monkeypatch):
    """jacobians allocates T * B * S * S float64 numbers: compared with the memory available
    before anything is allocated, a request that cannot fit is a MemoryError naming T, B, S,
    the bytes and what would fit."""
    monkeypatch.setattr(numrnn.config, "MEMORY_CHECK", True)
    monkeypatch.setattr(numrnn._memory, "available_bytes", lambda: 64 << 20)
    net = numrnn.RNN(1, 300, seed=0)
    x = np.zeros((5000, 2, 1))
    with pytest.raises(MemoryError, match=r"jacobians: the \(T, B, S, S\) = \(5000, 2, 300, 300\) "
                                          r"step Jacobians and the float64 tangent-map "
                                          r"coefficients for T=5000 steps, B=2 sequences, S=300 "
                                          r"state dimensions, N=300 units \(tanh, 1 layer, "
                                          r"float64\) needs [\d.]+ GiB, but only 64.0 MiB of "
                                          r"memory are available; at most T=4[0-9] "
                                          r"steps"):
        numrnn.jacobians(net, x)
    with pytest.raises(MemoryError, match=r"step_jvp: the \(T, B, S\) = \(5000, 2, 300\) "
                                          r"products .* needs [\d.]+ MiB"):
        step_jvp(net, x, np.zeros((5000, 2, 300)))
