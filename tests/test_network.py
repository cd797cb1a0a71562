"""numrnn.RNN: bad input first, then the API's shapes, conventions and parameter handling."""
import numpy as np
import pytest

import numrnn
from tests.problems import CELLS, make_problem
from tests.tolerance import assert_close

# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(cell="elman"), ValueError, ["cell", "'elman'", "tanh"]),
    (dict(cell=3), ValueError, ["cell"]),
    (dict(alpha=0.0), ValueError, ["alpha", "(0.0, 1.0]", "0.0"]),
    (dict(alpha=1.5), ValueError, ["alpha", "1.5"]),
    (dict(alpha=float("nan")), ValueError, ["alpha"]),
    (dict(cell="lstm", alpha=0.5), ValueError, ["alpha", "lstm"]),
    (dict(hidden_size=0), ValueError, ["hidden_size", ">= 1", "0"]),
    (dict(hidden_size=2.5), TypeError, ["hidden_size", "2.5"]),
    (dict(input_size=-1), ValueError, ["input_size", "-1"]),
    (dict(num_layers=0), ValueError, ["num_layers"]),
    (dict(dtype=np.int32), TypeError, ["dtype", "int32"]),
    (dict(dtype=np.complex128), TypeError, ["dtype", "complex128"]),
    (dict(init="xavier"), ValueError, ["init", "'xavier'"]),
    (dict(init="gaussian", gain=-1.0), ValueError, ["gain", "-1.0"]),
    (dict(gain=2.0), ValueError, ["gain", "init='default'", "ignored", "gaussian"]),
    (dict(init="default", gain=1.0), ValueError, ["gain", "init='default'"]),
    (dict(seed=-1), ValueError, ["seed", "negative", "-1"]),
    (dict(seed=2.5), TypeError, ["seed", "2.5"]),
    (dict(seed="abc"), TypeError, ["seed", "'abc'"]),
    (dict(seed=[1, -2]), ValueError, ["seed", "-2"]),
    (dict(cell="rate", nonlinearity="sigmoid"), ValueError, ["nonlinearity", "'sigmoid'"]),
    (dict(cell="tanh", nonlinearity="relu"), ValueError, ["nonlinearity", "'relu'"]),
    (dict(bidirectional="yes"), TypeError, ["bidirectional", "'yes'"]),
])
def test_constructor_rejects_bad_arguments(kwargs, exc, words):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(exc) as info:
        numrnn.RNN(args.pop("input_size"), args.pop("hidden_size"), **args)
    for word in words:
        assert word in str(info.value)


@pytest.fixture(scope="module")
def small_net():
    return numrnn.RNN(3, 4, num_layers=2, seed=0)


@pytest.mark.parametrize("x, exc, words", [
    (np.zeros(3), ValueError, ["x", "rank 2 or 3", "rank 1"]),
    (np.zeros((2, 2, 2, 3)), ValueError, ["x", "rank 4"]),
    (np.zeros((5, 2, 4)), ValueError, ["x", "(*, *, 3)", "(5, 2, 4)"]),
    (np.zeros((5, 2, 3), dtype=np.int64), TypeError, ["x", "int64"]),
    (np.zeros((5, 2, 3), dtype=np.complex128), TypeError, ["x", "complex128"]),
    (np.zeros((5, 2, 3), dtype=np.float32), TypeError, ["x", "float64", "float32", "astype"]),
    (np.full((5, 2, 3), np.nan), ValueError, ["x", "finite", "NaN"]),
    (np.array([[[0.0, np.inf, 0.0]]]), ValueError, ["x", "finite", "1 NaN/inf entry"]),
    (np.zeros((0, 2, 3)), ValueError, ["x", "at least one time step"]),
    ("abc", TypeError, ["x"]),
])
def test_forward_rejects_bad_x(small_net, x, exc, words):
    with pytest.raises(exc) as info:
        small_net.forward(x)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("h0, exc, words", [
    (np.zeros((2, 4)), ValueError, ["h0", "(2, 5, 4)", "(2, 4)"]),
    (np.zeros((1, 5, 4)), ValueError, ["h0", "(2, 5, 4)", "(1, 5, 4)"]),
    (np.zeros((2, 5, 4), np.float32), TypeError, ["h0", "float32"]),
    (np.full((2, 5, 4), np.inf), ValueError, ["h0", "finite"]),
    ((np.zeros((2, 5, 4)), np.zeros((2, 5, 4))), TypeError, ["h0", "one array"]),
])
def test_forward_rejects_bad_h0(small_net, h0, exc, words):
    with pytest.raises(exc) as info:
        small_net.forward(np.zeros((6, 5, 3)), h0)
    for word in words:
        assert word in str(info.value)


def test_lstm_state_must_be_a_pair():
    net = numrnn.RNN(3, 4, cell="lstm", seed=0)
    with pytest.raises(TypeError, match="h0: the lstm cell's state is a pair"):
        net.forward(np.zeros((6, 5, 3)), np.zeros((1, 5, 4)))
    with pytest.raises(ValueError, match=r"c0: expected an array of rank 3 \(shape \(1, 5, 4\)\), got rank 2"):
        net.forward(np.zeros((6, 5, 3)), (None, np.zeros((1, 4))))


@pytest.mark.parametrize("d_out, exc, words", [
    (np.zeros((6, 5)), ValueError, ["d_output", "rank 3", "rank 2"]),
    (np.zeros((6, 5, 3)), ValueError, ["d_output", "(6, 5, 4)", "(6, 5, 3)"]),
    (np.zeros((6, 5, 4), np.int32), TypeError, ["d_output", "int32"]),
    (np.full((6, 5, 4), np.nan), ValueError, ["d_output", "finite"]),
])
def test_vjp_rejects_bad_d_output(small_net, d_out, exc, words):
    with pytest.raises(exc) as info:
        small_net.vjp(np.zeros((6, 5, 3)), d_out)
    for word in words:
        assert word in str(info.value)


def test_vjp_rejects_bad_truncate_and_d_h_n(small_net):
    x, d = np.zeros((6, 5, 3)), np.zeros((6, 5, 4))
    with pytest.raises(ValueError, match="truncate: expected an integer >= 1, got 0"):
        small_net.vjp(x, d, truncate=0)
    with pytest.raises(TypeError, match="truncate"):
        small_net.vjp(x, d, truncate=2.0)
    with pytest.raises(ValueError, match=r"d_h_n: expected an array of rank 3 \(shape \(2, 5, 4\)\)"):
        small_net.vjp(x, d, d_h_n=np.zeros((2, 4)))


def test_load_state_dict_checks_names_shapes_and_dtype(small_net):
    sd = small_net.state_dict()
    bad = dict(sd)
    del bad["bias_hh_l1"]
    with pytest.raises(ValueError, match=r"missing \['bias_hh_l1'\]"):
        small_net.load_state_dict(bad)
    bad = dict(sd, weight_hh_l0=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"weight_hh_l0.*\(4, 4\).*\(4, 3\)"):
        small_net.load_state_dict(bad)
    bad = dict(sd, weight_hh_l0=sd["weight_hh_l0"].astype(np.float32))
    with pytest.raises(TypeError, match="weight_hh_l0.*float32"):
        small_net.load_state_dict(bad)
    bad = dict(sd, extra=np.zeros(3))
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        small_net.load_state_dict(bad)


# --- writing into the parameters: every path is checked before a kernel reads it --------------


def _run_all(net):
    """Every public path that reads the parameters."""
    x = np.zeros((3, 2, net.input_size), net.dtype)
    yield lambda: net.forward(x)
    yield lambda: net.vjp(x, np.zeros((3, 2, net.hidden_size), net.dtype))
    yield lambda: net.forward_pullback(x)
    yield lambda: net.to_torch() if net.cell in ("tanh", "relu", "lstm", "gru") else net.forward(x)
    yield lambda: numrnn.jacobians(net, x)
    yield lambda: numrnn.lyapunov_spectrum(net, n_steps=5, k=1, seed=0)


@pytest.mark.parametrize("cell, name, value, exc, words", [
    ("gru", "bias_hh_l0", np.zeros(3), ValueError, ["parameters['bias_hh_l0']", "(12,)", "(3,)"]),
    ("lstm", "weight_hh_l0", np.zeros((8, 8)), ValueError,
     ["parameters['weight_hh_l0']", "(16, 4)", "(8, 8)"]),
    ("tanh", "weight_hh_l0", np.full((4, 4), np.nan), ValueError,
     ["parameters['weight_hh_l0']", "finite", "16 NaN/inf"]),
    ("tanh", "weight_hh_l0", np.zeros((4, 4), np.float32), TypeError,
     ["parameters['weight_hh_l0']", "float64", "float32"]),
    ("tanh", "weight_hh_l0", np.zeros((4, 4), np.int64), TypeError,
     ["parameters['weight_hh_l0']", "int64"]),
    ("tanh", "weight_hh_l7", np.zeros((4, 4)), ValueError, ["weight_hh_l7", "weight_hh_l0"]),
])
def test_assigning_a_bad_parameter_is_refused(cell, name, value, exc, words):
    net = numrnn.RNN(3, 4, cell=cell, seed=0)
    before = net.state_dict()
    with pytest.raises(exc) as info:
        net.parameters[name] = value
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    for k, v in net.state_dict().items():  # nothing was written
        np.testing.assert_array_equal(v, before[k])


def test_parameters_cannot_be_deleted_and_unknown_names_raise_key_error():
    net = numrnn.RNN(3, 4, seed=0)
    with pytest.raises(TypeError, match="weight_hh_l0.*cannot be deleted"):
        del net.parameters["weight_hh_l0"]
    with pytest.raises(KeyError, match="weight_hh_l9.*weight_hh_l0"):
        net.parameters["weight_hh_l9"]
    assert list(net.parameters) == list(net.state_dict()) and len(net.parameters) == 4
    assert "ParameterDict" in repr(net.parameters)


@pytest.mark.parametrize("edit, exc, words", [
    (lambda p: p["weight_hh_l0"].__setitem__((0, 0), np.nan), ValueError,
     ["parameters['weight_hh_l0']", "1 NaN/inf entry", "in place"]),
    (lambda p: p["bias_ih_l0"].__setitem__(slice(None), np.inf), ValueError,
     ["parameters['bias_ih_l0']", "4 NaN/inf"]),
    (lambda p: setattr(p["weight_hh_l0"], "shape", (2, 8)), ValueError,
     ["parameters['weight_hh_l0']", "(4, 4)", "(2, 8)"]),
    (lambda p: setattr(p["weight_ih_l0"], "dtype", np.int64), TypeError,
     ["parameters['weight_ih_l0']", "float64", "int64"]),
])
def test_in_place_edits_are_checked_before_any_kernel_reads_them(edit, exc, words):
    net = numrnn.RNN(3, 4, seed=0)
    edit(net.parameters)
    for call in _run_all(net):
        with pytest.raises(exc) as info:
            call()
        for word in words:
            assert word in str(info.value), (word, str(info.value))


def test_valid_in_place_edits_take_effect(rng):
    net, x, h0, _, _ = make_problem(rng, "tanh")
    p = net.parameters
    w = p["weight_hh_l0"]
    p["weight_hh_l0"] *= 0.5                 # goes through __setitem__ with the same array
    assert p["weight_hh_l0"] is w
    p["weight_hh_l0"][:] = 2.0 * w            # written into the live array
    p["bias_ih_l0"] = np.zeros(4)             # checked, copied
    ref = numrnn.RNN(3, 4, seed=0)
    ref.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(net.forward(x, h0)[0], ref.forward(x, h0)[0])


def test_pullback_uses_a_copy_of_the_parameters_its_forward_pass_ran_with(rng):
    net, x, h0, d_out, d_h = make_problem(rng, "gru", num_layers=2)
    expected = net.vjp(x, d_out, h0, d_h)
    _, _, pullback = net.forward_pullback(x, h0)
    net.parameters["weight_hh_l0"][:] *= 3.0   # in place, after the forward pass
    got = pullback(d_out, d_h)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])


# --- shapes, names and conventions -------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_parameter_names_and_shapes_follow_pytorch(cell):
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    net = numrnn.RNN(3, 5, cell=cell, num_layers=2, bidirectional=True, seed=0)
    sd = net.state_dict()
    names = []
    for layer in range(2):
        for sfx in ("", "_reverse"):
            names += [f"{p}_l{layer}{sfx}" for p in ("weight_ih", "weight_hh", "bias_ih",
                                                     "bias_hh")]
    assert list(sd) == names
    assert sd["weight_ih_l0"].shape == (G * 5, 3)
    assert sd["weight_ih_l1_reverse"].shape == (G * 5, 10)
    assert sd["weight_hh_l1"].shape == (G * 5, 5)
    assert sd["bias_hh_l0_reverse"].shape == (G * 5,)
    nobias = numrnn.RNN(3, 5, cell=cell, bias=False, seed=0).state_dict()
    assert list(nobias) == ["weight_ih_l0", "weight_hh_l0"]


@pytest.mark.parametrize("cell", ["tanh", "lstm"])
def test_batch_first_and_unbatched_layouts(rng, cell):
    net, x, h0, d_out, d_h = make_problem(rng, cell, num_layers=2, bidirectional=True, T=6, B=3)
    out, h_n = net.forward(x, h0)
    bf = numrnn.RNN(3, 4, cell=cell, num_layers=2, bidirectional=True, batch_first=True)
    bf.load_state_dict(net.state_dict())
    out_bf, h_bf = bf.forward(x.transpose(1, 0, 2).copy(), h0)
    np.testing.assert_array_equal(out_bf, out.transpose(1, 0, 2))
    g = net.vjp(x, d_out, h0, d_h)
    g_bf = bf.vjp(x.transpose(1, 0, 2).copy(), d_out.transpose(1, 0, 2).copy(), h0, d_h)
    assert_close(g_bf["input"], g["input"].transpose(1, 0, 2))
    assert_close(g_bf["weight_hh_l1"], g["weight_hh_l1"])
    assert g_bf["state_grad_norm"].shape == (6, 3)
    # unbatched input: (T, I) and states (L*D, N)
    first = (lambda s: (s[0][:, 0], s[1][:, 0])) if cell == "lstm" else (lambda s: s[:, 0])
    out_u, h_u = net.forward(x[:, 0], first(h0))
    assert out_u.shape == (6, 8)
    assert_close(out_u, out[:, 0])
    g_u = net.vjp(x[:, 0], d_out[:, 0], first(h0), first(d_h))
    assert g_u["input"].shape == (6, 3) and g_u["h0"].shape == (4, 4)
    assert g_u["state_grad_norm"].shape == (6,)


def test_h_n_ordering_and_output_halves(rng):
    """h_n is ordered (layer 0 fwd, layer 0 rev, layer 1 fwd, ...); the reverse half of the output
    at t = 0 is the reverse direction's final state."""
    net, x, h0, _, _ = make_problem(rng, "gru", num_layers=2, bidirectional=True, T=5)
    out, h_n = net.forward(x, h0)
    np.testing.assert_array_equal(h_n[2], out[-1, :, :4])
    np.testing.assert_array_equal(h_n[3], out[0, :, 4:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_keep_the_network_dtype(rng, dtype):
    net, x, h0, d_out, d_h = make_problem(rng, "lstm", dtype=dtype, bidirectional=True)
    out, (h_n, c_n) = net.forward(x, h0)
    grads = net.vjp(x, d_out, h0, d_h)
    assert out.dtype == h_n.dtype == c_n.dtype == dtype
    norm = grads.pop("state_grad_norm")
    assert all(g.dtype == dtype for g in grads.values())
    # a float32 gradient's norm can exceed float32's range (see test_nonfinite.py)
    assert norm.dtype == np.float64


def test_forward_vjp_value_equals_forward(rng):
    net, x, h0, d_out, d_h = make_problem(rng, "gru", num_layers=2)
    out, h_n = net.forward(x, h0)
    out2, h_n2, _ = net.forward_vjp(x, d_out, h0, d_h)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(h_n, h_n2)


def test_vjp_keys(rng):
    net, x, h0, d_out, d_h = make_problem(rng, "lstm", num_layers=2, bias=False)
    grads = net.vjp(x, d_out, h0, d_h)
    assert list(grads) == list(net.state_dict()) + ["input", "h0", "c0", "state_grad_norm"]


# --- initialisation ----------------------------------------------------------------------------


def test_default_init_is_pytorch_uniform():
    net = numrnn.RNN(5, 100, cell="gru", seed=3)
    bound = 1 / np.sqrt(100)
    for v in net.state_dict().values():
        assert np.all(np.abs(v) <= bound) and np.max(np.abs(v)) > 0.95 * bound


def test_recurrent_inits():
    N, g = 200, 1.7
    w = numrnn.RNN(2, N, init="gaussian", gain=g, seed=1).state_dict()["weight_hh_l0"]
    assert abs(np.std(w) * np.sqrt(N) - g) < 0.02 * g
    w = numrnn.RNN(2, N, init="orthogonal", gain=g, seed=1).state_dict()["weight_hh_l0"]
    assert_close(w @ w.T, g**2 * np.eye(N))
    net = numrnn.RNN(2, 8, cell="lstm", init="identity", gain=0.5, seed=1)
    assert_close(net.state_dict()["weight_hh_l0"], np.tile(0.5 * np.eye(8), (4, 1)))
    assert not np.any(net.state_dict()["bias_ih_l0"])
    w = numrnn.RNN(2, N, init="spectral_radius", gain=0.9, seed=1).state_dict()["weight_hh_l0"]
    assert abs(np.max(np.abs(np.linalg.eigvals(w))) - 0.9) < 1e-12


def test_same_seed_same_bits_different_seed_different_bits():
    a = numrnn.RNN(3, 6, cell="lstm", num_layers=2, init="orthogonal", seed=11).state_dict()
    b = numrnn.RNN(3, 6, cell="lstm", num_layers=2, init="orthogonal", seed=11).state_dict()
    c = numrnn.RNN(3, 6, cell="lstm", num_layers=2, init="orthogonal", seed=12).state_dict()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes()
    assert any(a[k].tobytes() != c[k].tobytes() for k in a)


def test_repr_names_the_configuration():
    r = repr(numrnn.RNN(3, 4, cell="rate", alpha=0.1, nonlinearity="relu", dtype=np.float32))
    assert r == "RNN(3, 4, cell='rate', alpha=0.1, nonlinearity='relu', dtype=numpy.float32)"


def test_forward_pullback_equals_vjp_and_keeps_its_parameters(rng):
    net, x, h0, d_out, d_h = make_problem(rng, "lstm", num_layers=2, bidirectional=True)
    out, h_n, pullback = net.forward_pullback(x, h0)
    expected = net.vjp(x, d_out, h0, d_h, truncate=2)
    before = net.state_dict()
    net.load_state_dict({k: v + 1.0 for k, v in before.items()})  # must not leak into pullback
    for _ in range(2):
        grads = pullback(d_out, d_h, truncate=2)
        assert list(grads) == list(expected)
        for k in expected:
            np.testing.assert_array_equal(grads[k], expected[k])
    with pytest.raises(ValueError, match="d_output"):
        pullback(d_out[:, :1])
