"""Checks of the pure-NumPy reference (tests/reference.py) itself.

* the reference covers every cell numrnn registers (tests/problems.py's list),
  with the same nonlinearities, options, states and parameter shapes,
* ref_vjp against central finite differences of ref_loss (every cell, layers,
  directions, bias on/off, alpha < 1),
* truncated BPTT against finite differences of a "detached" loss whose
  chunk-entry states are fixed numbers, and against PyTorch run chunk by chunk
  with .detach(),
* state_grad_norm against finite differences w.r.t. additive perturbations of
  the hidden state,
* forward and gradients against torch.nn.RNN / LSTM / GRU in float64.
"""

import zlib

import numpy as np
import pytest

import numrnn

from . import reference as ref
from .problems import CELL_CASES, CELL_IDS, CELLS, TEST_OPTIONS, TORCH_CELLS, definition
from .reference import (
    LEAKY,
    PAIRED,
    init_params,
    param_names,
    ref_forward,
    ref_loss,
    ref_vjp,
)
from .tolerance import assert_close  # the project's one tolerance helper

FD_EPS = 1e-6
FD_RTOL = 1e-7
TORCH_RTOL = 1e-12


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def seed_of(*parts):
    """a stable per-case seed (no global seeding)."""
    return zlib.crc32(repr(parts).encode())


def make_case(seed, cell, *, T, B, I, N, L, bidirectional, bias, with_h_n_grad=True):
    """random params ~ U(-0.5, 0.5), inputs, nonzero initial states, cotangents."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    params = init_params(rng, cell, I, N, L, bidirectional, bias, scale=0.5)
    x = rng.standard_normal((T, B, I))
    h0 = rng.uniform(-0.8, 0.8, (L * D, B, N))
    c0 = rng.uniform(-0.8, 0.8, (L * D, B, N)) if cell in PAIRED else None
    d_out = rng.standard_normal((T, B, D * N))
    d_h_n = rng.standard_normal((L * D, B, N)) if with_h_n_grad else None
    d_c_n = rng.standard_normal((L * D, B, N)) if (cell in PAIRED and with_h_n_grad) else None
    return params, x, h0, c0, d_out, d_h_n, d_c_n


def fd_grads(loss_of, arrays, eps=FD_EPS):
    """central differences of loss_of(arrays) w.r.t. every entry of every array.

    arrays: dict name -> float64 array (perturbed in place, then restored).
    """
    out = {}
    for name, a in arrays.items():
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            lp = loss_of(arrays)
            a[idx] = old - eps
            lm = loss_of(arrays)
            a[idx] = old
            g[idx] = (lp - lm) / (2.0 * eps)
        out[name] = g
    return out


def check_vjp_against_fd(cell, params, x, h0, c0, d_out, d_h_n, d_c_n, kw,
                         truncate=None, state_in_factory=None):
    """compare ref_vjp with finite differences of ref_loss (or a detached variant).

    state_in_factory(), if given, returns the state_in hook of the detached loss.
    """
    arrays = {name: np.array(p, dtype=np.float64) for name, p in params.items()}
    arrays["input"] = x.copy()
    arrays["h0"] = h0.copy()
    if c0 is not None:
        arrays["c0"] = c0.copy()
    names = list(params)
    hook = state_in_factory() if state_in_factory is not None else None

    def loss_of(a):
        extra = {"state_in": hook} if hook is not None else {}
        return ref_loss(cell, {n: a[n] for n in names}, a["input"], d_out, a["h0"],
                        a.get("c0"), d_h_n, d_c_n, **kw, **extra)

    numeric = fd_grads(loss_of, arrays)
    analytic = ref_vjp(cell, params, x, d_out, h0, c0, d_h_n, d_c_n, truncate=truncate, **kw)
    expected_keys = set(names) | {"input", "h0", "state_grad_norm"} | ({"c0"} if c0 is not None else set())
    assert set(analytic) == expected_keys
    for name in arrays:
        assert_close(analytic[name], numeric[name], rtol=FD_RTOL, what=f"{cell} d{name}")
    return analytic


def extra_of(cell, phi):
    """the reference's keyword arguments of a case: nonlinearity and TEST_OPTIONS."""
    return dict(nonlinearity=phi, cell_options=TEST_OPTIONS.get(cell))


def leaky(cell):
    return cell in LEAKY


# every registered cell with each nonlinearity, as (cell, reference keyword arguments)
CASES = [(cell, extra_of(cell, phi)) for cell, phi in CELL_CASES]
LEAKY_CASES = [case for case in zip(CASES, CELL_IDS) if leaky(case[0][0])]
# one case per cell (its default nonlinearity), directions alternating, for the long checks
ONE_PER_CELL = [(cell, i % 2 == 1) for i, cell in enumerate(CELLS)]


# ----------------------------------------------------------------------------
# 0. the reference covers every registered cell
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("cell, phi", CELL_CASES, ids=CELL_IDS)
def test_reference_covers_every_registered_cell(cell, phi):
    """Every (cell, nonlinearity) numrnn registers is one the reference implements, with the
    same gates, parameter shapes, states, leak, nonlinearities and options (defaults)."""
    assert cell in ref.CELLS, f"tests/reference.py does not implement the registered cell {cell!r}"
    made = definition(cell, phi)
    assert ref.GATES[cell] == made.gate_count
    assert (cell in PAIRED) == (made.state_count == 2)
    assert leaky(cell) == ("alpha" in made.options)
    if phi is not None:
        assert phi in ref.NONLINEARITIES[cell]
        assert numrnn.cells.choices(cell) == (ref.NONLINEARITIES[cell],
                                              ref.NONLINEARITIES[cell][0])
    else:
        assert cell not in ref.NONLINEARITIES
    assert ref.OPTIONS.get(cell, {}) == {k: v for k, v in made.options.items() if k != "alpha"}
    net = numrnn.RNN(3, 5, cell=cell, nonlinearity=phi, num_layers=2, bidirectional=True,
                     seed=0)
    assert {k: v.shape for k, v in net.state_dict().items()} == \
        ref.param_shapes(cell, 3, 5, num_layers=2, bidirectional=True)


def test_reference_cell_list_has_no_unregistered_cell():
    assert set(ref.CELLS) == set(CELLS) == set(ref.GATES)


@pytest.mark.parametrize("cell, kw, exc, words", [
    ("elman", {}, ValueError, ["unknown cell", "'elman'"]),
    ("lstm", dict(alpha=0.5), ValueError, ["alpha", "lstm"]),
    ("cornn", dict(alpha=0.5), ValueError, ["alpha", "cornn"]),
    ("tanh", dict(alpha=0.0), ValueError, ["alpha"]),
    ("rate", dict(nonlinearity="linear"), ValueError, ["nonlinearity", "'linear'"]),
    ("indrnn", dict(nonlinearity="linear"), ValueError, ["nonlinearity", "'linear'"]),
    ("mgu", dict(nonlinearity="tanh"), ValueError, ["takes no nonlinearity"]),
    ("tanh", dict(nonlinearity="relu"), ValueError, ["takes no nonlinearity"]),
    ("mgu", dict(cell_options={"dt": 0.1}), ValueError, ["no option", "dt"]),
    ("cornn", dict(cell_options={"tau": 0.1}), ValueError, ["no option", "tau"]),
    ("cornn", dict(cell_options={"dt": 0.0}), ValueError, ["dt > 0"]),
    ("cornn", dict(cell_options={"dt": "0.1"}), TypeError, ["'dt'", "number"]),
    ("cornn", dict(cell_options={"gamma": float("nan")}), ValueError, ["'gamma'", "finite"]),
    ("antisymmetric", dict(cell_options={"epsilon": 0.0}), ValueError, ["epsilon > 0"]),
    ("antisymmetric", dict(cell_options={"gamma": -0.1}), ValueError, ["gamma >= 0"]),
])
def test_reference_rejects_bad_arguments(cell, kw, exc, words):
    params = init_params(np.random.default_rng(0), "tanh", 2, 3)
    with pytest.raises(exc) as info:
        ref_forward(cell, params, np.zeros((2, 1, 2)), hidden_size=3, **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("cell, shape", [("indrnn", (4, 4)), ("cornn", (4, 4)), ("mgu", (4, 4))])
def test_reference_rejects_a_weight_hh_of_another_cell(cell, shape):
    params = init_params(np.random.default_rng(0), cell, 2, 4)
    params["weight_hh_l0"] = np.zeros(shape)
    with pytest.raises(ValueError, match="weight_hh_l0 has shape"):
        ref_forward(cell, params, np.zeros((2, 1, 2)), hidden_size=4)


# ----------------------------------------------------------------------------
# 1. full BPTT against finite differences
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("cell,extra", CASES, ids=CELL_IDS)
def test_vjp_matches_finite_differences(cell, extra, num_layers, bidirectional, bias):
    N = 3
    params, x, h0, c0, d_out, d_h_n, d_c_n = make_case(
        seed_of("fd", cell, extra, num_layers, bidirectional, bias), cell,
        T=3, B=2, I=2, N=N, L=num_layers, bidirectional=bidirectional, bias=bias)
    kw = dict(hidden_size=N, num_layers=num_layers, bidirectional=bidirectional,
              alpha=0.6 if leaky(cell) else 1.0, **extra)
    check_vjp_against_fd(cell, params, x, h0, c0, d_out, d_h_n, d_c_n, kw)


@pytest.mark.parametrize("cell,extra", [c for c, _ in LEAKY_CASES],
                         ids=[i for _, i in LEAKY_CASES])
def test_vjp_alpha_one(cell, extra):
    """alpha = 1 for the leaky cells (the main grid uses alpha < 1)."""
    N, L = 3, 2
    params, x, h0, c0, d_out, d_h_n, d_c_n = make_case(
        seed_of("alpha1", cell, extra), cell, T=4, B=2, I=2, N=N, L=L,
        bidirectional=True, bias=True)
    kw = dict(hidden_size=N, num_layers=L, bidirectional=True, alpha=1.0, **extra)
    check_vjp_against_fd(cell, params, x, h0, c0, d_out, d_h_n, d_c_n, kw)


@pytest.mark.parametrize("cell,extra", CASES, ids=CELL_IDS)
def test_missing_states_mean_zeros(cell, extra):
    """h0/c0 None == zeros; d_h_n/d_c_n None == zero cotangents (no finite differences here:
    a zero h0 sits on the relu kink of the rate cell, where relu'(0) = 0 is used)."""
    N, L, B = 3, 2, 2
    params, x, _, _, d_out, _, _ = make_case(
        seed_of("zeros", cell, extra), cell, T=4, B=B, I=2, N=N, L=L,
        bidirectional=True, bias=True, with_h_n_grad=False)
    kw = dict(hidden_size=N, num_layers=L, bidirectional=True,
              alpha=0.6 if leaky(cell) else 1.0, **extra)
    zeros = np.zeros((2 * L, B, N))
    c_zeros = zeros if cell in PAIRED else None
    fwd_default = ref_forward(cell, params, x, **kw)
    fwd_zeros = ref_forward(cell, params, x, zeros, c_zeros, **kw)
    for a, b in zip(fwd_default, fwd_zeros):
        if b is None:
            assert a is None
        else:
            assert_close(a, b, rtol=0.0, what="forward with default states")
    g_default = ref_vjp(cell, params, x, d_out, **kw)
    g_zeros = ref_vjp(cell, params, x, d_out, zeros, c_zeros, zeros, c_zeros, **kw)
    assert set(g_default) == set(g_zeros)
    for name in g_zeros:
        assert_close(g_default[name], g_zeros[name], rtol=0.0, what=f"default states d{name}")


def test_forward_shapes_and_defaults():
    N, L, T, B, I = 4, 2, 5, 3, 2
    params, x, h0, c0, *_ = make_case(1, "lstm", T=T, B=B, I=I, N=N, L=L,
                                      bidirectional=True, bias=True)
    out, h_n, c_n = ref_forward("lstm", params, x, h0, c0, hidden_size=N, num_layers=L,
                                bidirectional=True)
    assert out.shape == (T, B, 2 * N) and h_n.shape == (2 * L, B, N) and c_n.shape == h_n.shape
    # last layer: forward final state = output at T-1, reverse final state = output at 0
    assert_close(h_n[2], out[-1, :, :N], rtol=0.0, what="h_n fwd")
    assert_close(h_n[3], out[0, :, N:], rtol=0.0, what="h_n rev")
    out_g, h_n_g, c_n_g = ref_forward("gru", init_params(np.random.default_rng(2), "gru", I, N),
                                      x, hidden_size=N)
    assert c_n_g is None and out_g.shape == (T, B, N)
    with pytest.raises(ValueError):
        ref_forward("lstm", params, x, hidden_size=N, num_layers=L, bidirectional=True, alpha=0.5)
    with pytest.raises(ValueError):
        ref_forward("lstm", params, x, hidden_size=N, num_layers=1, bidirectional=True)
    # coRNN's state is a pair (y, z) like LSTM's; IndRNN's weight_hh is a vector
    rng = np.random.default_rng(3)
    p_co = init_params(rng, "cornn", I, N, L, bidirectional=True)
    assert p_co["weight_hh_l1_reverse"].shape == (N, 2 * N)
    out_c, y_n, z_n = ref_forward("cornn", p_co, x, h0, c0, hidden_size=N, num_layers=L,
                                  bidirectional=True)
    assert out_c.shape == (T, B, 2 * N) and y_n.shape == z_n.shape == (2 * L, B, N)
    assert_close(y_n[2], out_c[-1, :, :N], rtol=0.0, what="y_n fwd")
    g_co = ref_vjp("cornn", p_co, x, np.ones_like(out_c), h0, c0, hidden_size=N, num_layers=L,
                   bidirectional=True)
    assert g_co["c0"].shape == c0.shape and g_co["weight_hh_l0"].shape == (N, 2 * N)
    p_ind = init_params(rng, "indrnn", I, N)
    assert p_ind["weight_hh_l0"].shape == (N,)
    g_ind = ref_vjp("indrnn", p_ind, x, np.ones((T, B, N)), hidden_size=N)
    assert g_ind["weight_hh_l0"].shape == (N,) and "c0" not in g_ind


def test_options_change_the_result_and_defaults_are_the_documented_ones():
    """cell_options reach the step; None gives OPTIONS (the papers' defaults)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 2, 2))
    for cell, changed in [("cornn", {"dt": 0.1}), ("cornn", {"gamma": 1.0}),
                          ("cornn", {"epsilon": 1.0}), ("antisymmetric", {"epsilon": 0.1}),
                          ("antisymmetric", {"gamma": 0.5})]:
        params = init_params(rng, cell, 2, 3)
        h0 = rng.uniform(-0.8, 0.8, (1, 2, 3))
        c0 = h0.copy() if cell in PAIRED else None
        default = ref_forward(cell, params, x, h0, c0, hidden_size=3)[0]
        explicit = ref_forward(cell, params, x, h0, c0, hidden_size=3,
                               cell_options=ref.OPTIONS[cell])[0]
        other = ref_forward(cell, params, x, h0, c0, hidden_size=3, cell_options=changed)[0]
        assert_close(explicit, default, rtol=0.0, what=f"{cell} defaults")
        assert np.max(np.abs(other - default)) > 1e-6, (cell, changed)
    assert ref.OPTIONS == {"antisymmetric": {"epsilon": 0.01, "gamma": 0.01},
                           "cornn": {"dt": 0.042, "gamma": 2.7, "epsilon": 4.7}}


# ----------------------------------------------------------------------------
# 2. truncated BPTT
# ----------------------------------------------------------------------------

def detached_state_in_factory(cell, params, x, h0, c0, kw, k):
    """returns a factory of a state_in hook that feeds the UNPERTURBED chunk-entry states.

    Chunks are [0,k), [k,2k), ... in absolute time.  The forward direction's
    state entering step t (t % k == 0, t > 0) and the reverse direction's state
    entering step t from step t+1 ((t+1) % k == 0, t+1 < T) are recorded once
    from the unperturbed run and then substituted as constants.
    """
    T = x.shape[0]

    def is_chunk_entry(d, t):
        if d == 0:
            return t > 0 and t % k == 0
        return t + 1 < T and (t + 1) % k == 0

    recorded = {}

    def record(layer, d, t, h, c):
        if is_chunk_entry(d, t):
            recorded[(layer, d, t)] = (h.copy(), None if c is None else c.copy())
        return h, c

    ref_forward(cell, params, x, h0, c0, state_in=record, **kw)
    assert recorded or k >= T

    def replace(layer, d, t, h, c):
        if (layer, d, t) in recorded:
            h_const, c_const = recorded[(layer, d, t)]
            return h_const.copy(), None if c_const is None else c_const.copy()
        return h, c

    return lambda: replace


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("cell,bidirectional", ONE_PER_CELL)
def test_truncated_vjp_matches_detached_finite_differences(cell, bidirectional, k):
    N, L = 3, 2
    params, x, h0, c0, d_out, d_h_n, d_c_n = make_case(
        seed_of("trunc", cell, bidirectional, k), cell, T=7, B=2, I=2, N=N, L=L,
        bidirectional=bidirectional, bias=True)
    kw = dict(hidden_size=N, num_layers=L, bidirectional=bidirectional,
              alpha=0.7 if leaky(cell) else 1.0, cell_options=TEST_OPTIONS.get(cell))
    factory = detached_state_in_factory(cell, params, x, h0, c0, kw, k)
    truncated = check_vjp_against_fd(cell, params, x, h0, c0, d_out, d_h_n, d_c_n, kw,
                                     truncate=k, state_in_factory=factory)
    full = ref_vjp(cell, params, x, d_out, h0, c0, d_h_n, d_c_n, **kw)
    # truncation must actually change the recurrent weight gradient
    diff = np.max(np.abs(truncated["weight_hh_l0"] - full["weight_hh_l0"]))
    assert diff > 1e-6


@pytest.mark.parametrize("cell,extra", CASES, ids=CELL_IDS)
def test_truncate_at_least_T_equals_full(cell, extra):
    N, L, T = 3, 2, 5
    params, x, h0, c0, d_out, d_h_n, d_c_n = make_case(
        seed_of("truncT", cell, extra), cell, T=T, B=2, I=2, N=N, L=L, bidirectional=True,
        bias=True)
    kw = dict(hidden_size=N, num_layers=L, bidirectional=True, **extra)
    full = ref_vjp(cell, params, x, d_out, h0, c0, d_h_n, d_c_n, **kw)
    for k in (T, T + 3):
        tr = ref_vjp(cell, params, x, d_out, h0, c0, d_h_n, d_c_n, truncate=k, **kw)
        assert set(tr) == set(full)
        for name in full:
            assert_close(tr[name], full[name], rtol=0.0, what=f"truncate={k} {name}")
    with pytest.raises(ValueError):
        ref_vjp(cell, params, x, d_out, h0, c0, truncate=0, **kw)


# ----------------------------------------------------------------------------
# 3. state_grad_norm
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("truncate", [None, 2], ids=["full", "trunc2"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_state_grad_norm_matches_finite_differences(cell, bidirectional, num_layers, truncate):
    """dL/dh_t of the last layer by perturbing the state produced at step t and continuing.

    With truncation the loss is the detached one (chunk-entry states fixed).
    """
    N, T, B = 3, 5, 2
    L, D = num_layers, 2 if bidirectional else 1
    params, x, h0, c0, d_out, d_h_n, d_c_n = make_case(
        seed_of("sgn", cell, bidirectional, num_layers, truncate), cell, T=T, B=B, I=2, N=N,
        L=L, bidirectional=bidirectional, bias=True)
    kw = dict(hidden_size=N, num_layers=L, bidirectional=bidirectional,
              alpha=0.8 if leaky(cell) else 1.0, cell_options=TEST_OPTIONS.get(cell))
    state_in = None
    if truncate is not None:
        state_in = detached_state_in_factory(cell, params, x, h0, c0, kw, truncate)()

    dh = np.zeros((D, T, B, N))
    for d in range(D):
        for t in range(T):
            for b in range(B):
                for j in range(N):
                    vals = []
                    for sign in (1.0, -1.0):
                        def bump(layer, dd, tt, h, c, sign=sign, d=d, t=t, b=b, j=j):
                            if (layer, dd, tt) == (L - 1, d, t):
                                h = h.copy()
                                h[b, j] += sign * FD_EPS
                            return h, c
                        vals.append(ref_loss(cell, params, x, d_out, h0, c0, d_h_n, d_c_n,
                                             state_in=state_in, state_out=bump, **kw))
                    dh[d, t, b, j] = (vals[0] - vals[1]) / (2 * FD_EPS)
    numeric = np.sqrt(np.sum(dh ** 2, axis=(0, 3)))
    got = ref_vjp(cell, params, x, d_out, h0, c0, d_h_n, d_c_n, truncate=truncate, **kw)
    assert got["state_grad_norm"].shape == (T, B)
    assert_close(got["state_grad_norm"], numeric, rtol=FD_RTOL, what="state_grad_norm")


# ----------------------------------------------------------------------------
# 4. PyTorch parity
# ----------------------------------------------------------------------------

def torch_module(cell, I, N, L, bidirectional, bias, params):
    """the torch.nn module numrnn names as the cell's twin ("RNN_TANH", "LSTM", ...)."""
    torch = pytest.importorskip("torch")
    common = dict(num_layers=L, bias=bias, bidirectional=bidirectional, dtype=torch.float64)
    mode = definition(cell).torch
    if mode.startswith("RNN_"):
        mod = torch.nn.RNN(I, N, nonlinearity=mode[4:].lower(), **common)
    else:
        mod = getattr(torch.nn, mode)(I, N, **common)
    names = [n for n, _ in mod.named_parameters()]
    assert names == param_names(L, bidirectional, bias)
    with torch.no_grad():
        for n, p in mod.named_parameters():
            p.copy_(torch.from_numpy(params[n]))
    return mod


def torch_loss_and_grads(torch, mod, cell, x, h0, c0, d_out, d_h_n, d_c_n, chunk=None):
    """L and its gradients in torch; chunk=k runs BPTT(k,k) with .detach() between chunks."""
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True) if c0 is not None else None
    T = x.shape[0]
    k = chunk or T
    state = (h0t, c0t) if cell == "lstm" else h0t
    outs = []
    for start in range(0, T, k):
        if start > 0:
            state = tuple(s.detach() for s in state) if cell == "lstm" else state.detach()
        o, state = mod(xt[start:start + k], state)
        outs.append(o)
    out = torch.cat(outs, dim=0)
    h_n, c_n = state if cell == "lstm" else (state, None)
    loss = (out * torch.from_numpy(d_out)).sum() + (h_n * torch.from_numpy(d_h_n)).sum()
    if cell == "lstm":
        loss = loss + (c_n * torch.from_numpy(d_c_n)).sum()
    mod.zero_grad()
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in mod.named_parameters()}
    grads["input"] = xt.grad.numpy()
    grads["h0"] = h0t.grad.numpy()
    if cell == "lstm":
        grads["c0"] = c0t.grad.numpy()
    res = (out.detach().numpy(), h_n.detach().numpy(),
           None if c_n is None else c_n.detach().numpy())
    return float(loss.detach()), res, grads


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_torch_parity(cell, bias):
    torch = pytest.importorskip("torch")
    N, L, I, T, B = 4, 2, 3, 6, 3
    params, x, h0, c0, d_out, d_h_n, d_c_n = make_case(
        seed_of("torch", cell, bias), cell, T=T, B=B, I=I, N=N, L=L, bidirectional=True, bias=bias)
    mod = torch_module(cell, I, N, L, True, bias, params)
    t_loss, (t_out, t_hn, t_cn), t_grads = torch_loss_and_grads(
        torch, mod, cell, x, h0, c0, d_out, d_h_n, d_c_n)

    kw = dict(hidden_size=N, num_layers=L, bidirectional=True)
    out, h_n, c_n = ref_forward(cell, params, x, h0, c0, **kw)
    assert_close(out, t_out, rtol=TORCH_RTOL, what="output")
    assert_close(h_n, t_hn, rtol=TORCH_RTOL, what="h_n")
    if cell == "lstm":
        assert_close(c_n, t_cn, rtol=TORCH_RTOL, what="c_n")
    else:
        assert c_n is None
    assert_close(ref_loss(cell, params, x, d_out, h0, c0, d_h_n, d_c_n, **kw), t_loss,
                 rtol=TORCH_RTOL, what="loss")
    grads = ref_vjp(cell, params, x, d_out, h0, c0, d_h_n, d_c_n, **kw)
    assert set(grads) == set(t_grads) | {"state_grad_norm"}
    for name, g in t_grads.items():
        assert_close(grads[name], g, rtol=TORCH_RTOL, what=f"torch d{name}")


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_torch_truncated_parity(cell, k):
    """truncate=k equals torch run chunk by chunk with the state .detach()ed (unidirectional)."""
    torch = pytest.importorskip("torch")
    N, L, I, T, B = 4, 2, 3, 7, 2
    params, x, h0, c0, d_out, d_h_n, d_c_n = make_case(
        seed_of("torch-trunc", cell, k), cell, T=T, B=B, I=I, N=N, L=L,
        bidirectional=False, bias=True)
    mod = torch_module(cell, I, N, L, False, True, params)
    _, _, t_grads = torch_loss_and_grads(torch, mod, cell, x, h0, c0, d_out, d_h_n, d_c_n,
                                         chunk=k)
    grads = ref_vjp(cell, params, x, d_out, h0, c0, d_h_n, d_c_n, truncate=k,
                    hidden_size=N, num_layers=L)
    for name, g in t_grads.items():
        assert_close(grads[name], g, rtol=TORCH_RTOL, what=f"torch truncated d{name}")
