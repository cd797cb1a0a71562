"""numrnn.RNN: bad input first, then the API's shapes, conventions and parameter handling."""
import re

import numpy as np
import pytest

import numrnn
from tests import reference as ref
from tests.problems import CELL_CASES, CELL_IDS, CELLS, make_problem, rejects_construction
from tests.tolerance import assert_close

#: the cells of numrnn.cells.literature
LITERATURE = ("mgu", "ugrnn", "indrnn", "antisymmetric", "cornn")

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
    # the cells of the literature: leak, nonlinearity and cell_options
    (dict(cell="mgu", alpha=0.5), ValueError, ["alpha", "mgu cell has no leak", "0.5"]),
    (dict(cell="cornn", alpha=0.9), ValueError, ["alpha", "cornn cell has no leak"]),
    (dict(cell="antisymmetric", alpha=0.5), ValueError, ["alpha", "antisymmetric"]),
    (dict(cell="cornn", cell_options={"alpha": 0.5}), ValueError,
     ["cell_options", "'cornn'", "no option(s) ['alpha']", "'dt'"]),
    (dict(cell="indrnn", nonlinearity="linear"), ValueError,
     ["nonlinearity", "indrnn", "'relu' or 'tanh'", "'linear'"]),
    (dict(cell="antisymmetric", nonlinearity="sigmoid"), ValueError,
     ["nonlinearity", "'sigmoid'"]),
    (dict(cell="mgu", nonlinearity="tanh"), ValueError,
     ["nonlinearity", "'mgu' cell fixes its own nonlinearity", "'tanh'"]),
    (dict(cell="cornn", cell_options={"tau": 1.0}), ValueError,
     ["cell_options", "'cornn'", "'tau'", "'dt'", "'gamma'", "'epsilon'"]),
    (dict(cell="mgu", cell_options={"dt": 0.1}), ValueError,
     ["cell_options", "'mgu'", "'dt'", "none"]),
    (dict(cell="ugrnn", cell_options={"epsilon": 0.1}), ValueError, ["cell_options", "'ugrnn'"]),
    (dict(cell="cornn", cell_options={"dt": 0.0}), ValueError, ["'dt'", "> 0", "0.0"]),
    (dict(cell="cornn", cell_options={"dt": -0.1}), ValueError, ["'dt'", "> 0", "-0.1"]),
    (dict(cell="antisymmetric", cell_options={"epsilon": 0.0}), ValueError,
     ["'epsilon'", "> 0", "0.0"]),
    (dict(cell="antisymmetric", cell_options={"epsilon": -1.0}), ValueError, ["'epsilon'"]),
    (dict(cell="antisymmetric", cell_options={"gamma": -0.1}), ValueError,
     ["'gamma'", ">= 0", "-0.1"]),
    (dict(cell="cornn", cell_options={"dt": "0.1"}), TypeError,
     ["cell_options['dt']", "number", "'0.1'"]),
    (dict(cell="cornn", cell_options={"gamma": None}), TypeError, ["cell_options['gamma']"]),
    (dict(cell="cornn", cell_options={"epsilon": True}), TypeError,
     ["cell_options['epsilon']", "True"]),
    (dict(cell="antisymmetric", cell_options={"gamma": np.array([0.1])}), TypeError,
     ["cell_options['gamma']"]),
    (dict(cell="cornn", cell_options={"dt": float("nan")}), ValueError,
     ["cell_options['dt']", "finite"]),
    (dict(cell="antisymmetric", cell_options={"epsilon": float("inf")}), ValueError,
     ["cell_options['epsilon']", "finite"]),
    (dict(cell="cornn", cell_options=[("dt", 0.1)]), TypeError, ["cell_options", "dict", "list"]),
    (dict(cell="tanh", alpha=0.5, cell_options={"alpha": 0.5}), ValueError,
     ["alpha", "given twice"]),
    (dict(cell="rate", cell_options={"alpha": 1.5}), ValueError, ["alpha", "1.5"]),
])
def test_constructor_rejects_bad_arguments(kwargs, exc, words):
    rejects_construction(kwargs, exc, words)


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
    yield lambda: net.to_torch() if net.definition.torch else net.forward(x)
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


@pytest.mark.parametrize("cell, phi", CELL_CASES, ids=CELL_IDS)
def test_parameter_names_and_shapes_follow_pytorch(cell, phi):
    """PyTorch's names and order; the shapes tests/reference.py gives (its own rules)."""
    net = numrnn.RNN(3, 5, cell=cell, nonlinearity=phi, num_layers=2, bidirectional=True,
                     seed=0)
    sd = net.state_dict()
    names = []
    for layer in range(2):
        for sfx in ("", "_reverse"):
            names += [f"{p}_l{layer}{sfx}" for p in ("weight_ih", "weight_hh", "bias_ih",
                                                     "bias_hh")]
    assert list(sd) == names
    assert {k: v.shape for k, v in sd.items()} == ref.param_shapes(cell, 3, 5, 2, True)
    assert all(v.dtype == np.float64 and np.all(np.isfinite(v)) for v in sd.values())
    nobias = numrnn.RNN(3, 5, cell=cell, nonlinearity=phi, bias=False, seed=0).state_dict()
    assert list(nobias) == ["weight_ih_l0", "weight_hh_l0"]


@pytest.mark.parametrize("cell, gates, weight_hh", [
    ("mgu", 2, (10, 5)), ("ugrnn", 2, (10, 5)), ("indrnn", 1, (5,)),
    ("antisymmetric", 1, (5, 5)), ("cornn", 1, (5, 10)),
])
def test_parameter_shapes_of_the_literature_cells(cell, gates, weight_hh):
    """N = 5: MGU (f, n) and UGRNN (c, g) stack two gates; IndRNN's recurrent weight is the
    vector u; the antisymmetric cell's W is unconstrained (N, N); coRNN's is [W | W_z]."""
    net = numrnn.RNN(3, 5, cell=cell, seed=0)
    sd = net.state_dict()
    assert net.gate_count == gates
    assert sd["weight_ih_l0"].shape == (gates * 5, 3)
    assert sd["weight_hh_l0"].shape == weight_hh
    assert sd["bias_ih_l0"].shape == sd["bias_hh_l0"].shape == (gates * 5,)
    assert net.state_count == (2 if cell == "cornn" else 1)
    assert net.alpha == 1.0


@pytest.mark.parametrize("cell, wrong", [("indrnn", (5, 5)), ("indrnn", (1, 5)),
                                         ("cornn", (5, 5)), ("cornn", (10, 5)),
                                         ("mgu", (5, 5)), ("antisymmetric", (5,))])
def test_state_dict_round_trip_and_wrong_recurrent_shapes(rng, cell, wrong):
    net = numrnn.RNN(3, 5, cell=cell, num_layers=2, seed=0)
    sd = {k: rng.uniform(-0.5, 0.5, v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict(sd)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    want = ref.param_shapes(cell, 3, 5)["weight_hh_l0"]
    with pytest.raises(ValueError, match=f"weight_hh_l1.*{re.escape(str(want))}.*"
                                         f"{re.escape(str(wrong))}"):
        net.load_state_dict(dict(sd, weight_hh_l1=np.zeros(wrong)))
    with pytest.raises(ValueError, match="parameters\\['weight_hh_l0'\\]"):
        net.parameters["weight_hh_l0"] = np.zeros(wrong)
    for k, v in net.state_dict().items():  # nothing was written
        np.testing.assert_array_equal(v, sd[k])


# --- cell options ------------------------------------------------------------------------------


def test_cell_options_defaults_are_the_papers():
    assert numrnn.RNN(2, 3, cell="cornn").cell_options == {"dt": 0.042, "gamma": 2.7,
                                                           "epsilon": 4.7}
    for phi in ("tanh", "relu", "linear"):
        net = numrnn.RNN(2, 3, cell="antisymmetric", nonlinearity=phi)
        assert net.cell_options == {"epsilon": 0.01, "gamma": 0.01}
    for cell in ("mgu", "ugrnn", "indrnn", "lstm", "gru"):
        assert numrnn.RNN(2, 3, cell=cell).cell_options == {}
    assert numrnn.RNN(2, 3, cell="tanh", alpha=0.3).cell_options == {"alpha": 0.3}


@pytest.mark.parametrize("cell, options", [
    ("cornn", {"dt": 0.1}), ("cornn", {"gamma": 1.0}), ("cornn", {"epsilon": 1.0}),
    ("cornn", {"dt": 1, "gamma": 0, "epsilon": 0}),  # integers; zero gamma and epsilon
    ("antisymmetric", {"epsilon": 0.5}), ("antisymmetric", {"gamma": 0}),
    ("antisymmetric", {"gamma": np.float32(0.25)}),
])
def test_cell_options_are_used_kept_and_rebuilt(rng, cell, options):
    """Given options change the results (and explicit defaults do not), are reported as floats
    in cell_options, config() and repr, and come back through from_config."""
    net = numrnn.RNN(3, 4, cell=cell, num_layers=2, bidirectional=True, cell_options=options,
                     seed=0)
    default = numrnn.RNN(3, 4, cell=cell, num_layers=2, bidirectional=True, seed=0)
    explicit = numrnn.RNN(3, 4, cell=cell, num_layers=2, bidirectional=True, seed=0,
                          cell_options=dict(default.cell_options))
    for k, v in options.items():
        assert net.cell_options[k] == float(v) and type(net.cell_options[k]) is float
    assert net.config()["cell_options"] == net.cell_options
    assert f"cell_options={ {k: float(v) for k, v in options.items()}!r}" in repr(net)
    x = rng.standard_normal((6, 2, 3))
    h0 = (0.5 * rng.standard_normal((4, 2, 4)),) * (2 if cell == "cornn" else 1)
    h0 = h0 if cell == "cornn" else h0[0]
    out = net.forward(x, h0)[0]
    out_default = default.forward(x, h0)[0]
    np.testing.assert_array_equal(explicit.forward(x, h0)[0], out_default)
    assert np.max(np.abs(out - out_default)) > 1e-6
    again = numrnn.RNN.from_config(net.config())
    again.load_state_dict(net.state_dict())
    assert again.cell_options == net.cell_options
    np.testing.assert_array_equal(again.forward(x, h0)[0], out)


@pytest.mark.parametrize("cell, phi", CELL_CASES, ids=CELL_IDS)
def test_batch_first_and_unbatched_layouts(rng, cell, phi):
    net, x, h0, d_out, d_h = make_problem(rng, cell, nonlinearity=phi, num_layers=2,
                                          bidirectional=True, T=6, B=3)
    out, h_n = net.forward(x, h0)
    bf = numrnn.RNN.from_config(dict(net.config(), batch_first=True))
    bf.load_state_dict(net.state_dict())
    out_bf, h_bf = bf.forward(x.transpose(1, 0, 2).copy(), h0)
    np.testing.assert_array_equal(out_bf, out.transpose(1, 0, 2))
    g = net.vjp(x, d_out, h0, d_h)
    g_bf = bf.vjp(x.transpose(1, 0, 2).copy(), d_out.transpose(1, 0, 2).copy(), h0, d_h)
    assert_close(g_bf["input"], g["input"].transpose(1, 0, 2))
    assert_close(g_bf["weight_hh_l1"], g["weight_hh_l1"])
    assert g_bf["state_grad_norm"].shape == (6, 3)
    # unbatched input: (T, I) and states (L*D, N)
    first = (lambda s: (s[0][:, 0], s[1][:, 0])) if net.state_count == 2 else (lambda s: s[:, 0])
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


@pytest.mark.parametrize("cell", CELLS)
def test_vjp_keys(rng, cell):
    """"c0" (the second state's gradient: LSTM's c0, coRNN's z0) for the paired cells only."""
    net, x, h0, d_out, d_h = make_problem(rng, cell, num_layers=2, bias=False)
    grads = net.vjp(x, d_out, h0, d_h)
    second = ["c0"] if cell in ref.PAIRED else []
    assert list(grads) == list(net.state_dict()) + ["input", "h0"] + second + ["state_grad_norm"]
    assert all(grads[k].shape == v.shape for k, v in net.state_dict().items())


def test_cornn_state_is_a_pair_like_lstm():
    net = numrnn.RNN(3, 4, cell="cornn", seed=0)
    with pytest.raises(TypeError, match=r"h0: the cornn cell's state is a pair \(y0, z0\)"):
        net.forward(np.zeros((6, 5, 3)), np.zeros((1, 5, 4)))
    with pytest.raises(TypeError, match=r"d_h_n: the cornn cell's final state is a pair"):
        net.vjp(np.zeros((6, 5, 3)), np.zeros((6, 5, 4)), d_h_n=np.zeros((1, 5, 4)))
    out, (y_n, z_n) = net.forward(np.ones((6, 5, 3)), (None, np.ones((1, 5, 4))))
    np.testing.assert_array_equal(y_n[0], out[-1])
    with pytest.raises(TypeError, match="h0: the mgu cell's state is one array"):
        numrnn.RNN(3, 4, cell="mgu").forward(np.zeros((2, 1, 3)), (None, None))


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


@pytest.mark.parametrize("init", ["gaussian", "orthogonal", "identity", "spectral_radius"])
@pytest.mark.parametrize("cell", LITERATURE)
def test_recurrent_inits_of_the_literature_cells(rng, cell, init):
    """Each N x N block of weight_hh (coRNN: W and W_z side by side; MGU, UGRNN: the gates
    stacked) is drawn by the scheme; IndRNN's vector u can only be "identity" (u = gain)."""
    N, g = 6, 0.7
    if cell == "indrnn" and init != "identity":
        with pytest.raises(ValueError, match=f"init: .*vector of shape \\(6,\\).*'{init}'"):
            numrnn.RNN(2, N, cell=cell, init=init, gain=g, seed=1)
        return
    net = numrnn.RNN(2, N, cell=cell, num_layers=2, init=init, gain=g, seed=1)
    shapes = {k: v.shape for k, v in numrnn.RNN(2, N, cell=cell, num_layers=2).state_dict().items()}
    sd = net.state_dict()
    assert {k: v.shape for k, v in sd.items()} == shapes
    w = sd["weight_hh_l1"]
    if w.ndim == 1:
        np.testing.assert_array_equal(w, np.full(N, g))
        blocks = []
    else:
        blocks = [w[i:i + N, j:j + N] for i in range(0, w.shape[0], N)
                  for j in range(0, w.shape[1], N)]
    for b in blocks:
        if init == "identity":
            np.testing.assert_array_equal(b, g * np.eye(N))
        elif init == "orthogonal":
            assert_close(b @ b.T, g**2 * np.eye(N))
        elif init == "spectral_radius":
            assert abs(np.max(np.abs(np.linalg.eigvals(b))) - g) < 1e-12
    if init != "identity" and len(blocks) > 1:
        assert not np.array_equal(blocks[0], blocks[1])  # independent draws
    if init == "identity":
        assert not any(np.any(v) for k, v in sd.items() if k.startswith("bias"))
    x = rng.standard_normal((5, 2, 2))
    out, _, grads = net.forward_vjp(x, np.ones((5, 2, N)))
    assert np.all(np.isfinite(out)) and all(np.all(np.isfinite(v)) for v in grads.values())


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
