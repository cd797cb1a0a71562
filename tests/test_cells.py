"""The cell protocol (numrnn.cells): a definition is checked when it is made, check_cell tests its
derivatives, and a user's cell runs, registers and recompiles like a built-in one.

Invalid definitions first; then check_cell; then cells written in this file as a user writes
them (from the protocol's docstring alone), against the built-in cells with the same math; then
the registry; then fingerprints and compiled kernels (an edited cell is never served the kernel
of the cell it replaced).
"""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numrnn
from numrnn import cells
from numrnn.cells import Cell, CellCheckError, check_cell
from tests.problems import CELL_CASES, CELL_IDS, TEST_OPTIONS, definition, make_problem
from tests.tolerance import assert_close

# --- cells as a user writes them -------------------------------------------------------------
#
# Scalar functions of one unit; ``one`` is 1 in the kernel's dtype.  x_g, h_g: the gate's input
# and recurrent projections, z_g = x_g + h_g; the derivative functions see the previous states,
# the new states and the aux values step returned.


def _sig(z, one):
    return one / (one + math.exp(-z))


def leaky_tanh_step(z, h, leak, one):
    y = math.tanh(z)
    return (one - leak) * h + leak * y, y


def leaky_tanh_vjp(dh, h, h_new, y, leak, one):
    return dh * leak * (one - y * y), (one - leak) * dh


def leaky_tanh_jvp(dz, dh, h, h_new, y, leak, one):
    return leak * (one - y * y) * dz + (one - leak) * dh


def check_leak(options):
    if not 0.0 < options["leak"] <= 1.0:
        raise ValueError(f"cell_options['leak']: expected a leak in (0, 1], got "
                         f"{options['leak']!r}")


LEAKY_TANH = Cell("leaky_tanh", gates=("z",), aux=("y",), step=leaky_tanh_step,
                  vjp=leaky_tanh_vjp, jvp=leaky_tanh_jvp, options={"leak": 0.5},
                  check_options=check_leak, doc="h = (1 - leak) h_prev + leak tanh(z)")


def gru_step(xr, xz, xn, hr, hz, hn, h, one):
    r = _sig(xr + hr, one)
    z = _sig(xz + hz, one)
    n = math.tanh(xn + r * hn)
    return (one - z) * n + z * h, r, z, n, hn


def gru_vjp(dh, h, h_new, r, z, n, hn, one):
    d_npre = dh * (one - z) * (one - n * n)
    d_rpre = d_npre * hn * r * (one - r)
    d_zpre = dh * (h - n) * z * (one - z)
    return d_rpre, d_zpre, d_npre, d_rpre, d_zpre, d_npre * r, dh * z


def gru_jvp(dxr, dxz, dxn, dhr, dhz, dhn, dh, h, h_new, r, z, n, hn, one):
    dr = r * (one - r) * (dxr + dhr)
    dz = z * (one - z) * (dxz + dhz)
    dn = (one - n * n) * (dxn + r * dhn + hn * dr)
    return (one - z) * dn + (h - n) * dz + z * dh


MY_GRU = Cell("my_gru", gates=("r", "z", "n"), aux=("r", "z", "n", "hn"),
              projections="separate", step=gru_step, vjp=gru_vjp, jvp=gru_jvp,
              doc="torch.nn.GRU, written by hand")


def cornn_step(u, y, z, dt, gamma, epsilon, one):
    s = math.tanh(u)
    z_new = z + dt * (s - gamma * y - epsilon * z)
    return y + dt * z_new, z_new, s


def cornn_vjp(dy, dz, y, z, y_new, z_new, s, dt, gamma, epsilon, one):
    dz_new = dz + dt * dy
    return dz_new * dt * (one - s * s), dy - dz_new * dt * gamma, dz_new * (one - dt * epsilon)


def cornn_jvp(du, dy, dz, y, z, y_new, z_new, s, dt, gamma, epsilon, one):
    dz_new = dz + dt * ((one - s * s) * du - gamma * dy - epsilon * dz)
    return dy + dt * dz_new, dz_new


MY_CORNN = Cell("my_cornn", gates=("u",), states=("y", "z"), aux=("s",), reads=("y", "z"),
                step=cornn_step, vjp=cornn_vjp, jvp=cornn_jvp,
                options={"dt": 0.042, "gamma": 2.7, "epsilon": 4.7},
                doc="coRNN written by hand: two states, both read by the recurrent product")


def relu_step(z, h, one):
    y = z if z > 0 else one - one
    return y, y


def relu_vjp(dh, h, h_new, y, one):
    return (dh if y > 0 else one - one), one - one


def relu_jvp(dz, dh, h, h_new, y, one):
    return dz if y > 0 else one - one


MY_INDRNN = Cell("my_indrnn", gates=("z",), aux=("y",), step=relu_step, vjp=relu_vjp,
                 jvp=relu_jvp, weight_hh_shape=lambda n: (n,),
                 matrix=(lambda u, n, options: np.diag(u),
                         lambda d_matrix, n, options: np.diagonal(d_matrix).copy()),
                 doc="IndRNN written by hand: weight_hh is a vector, the product diag(u) h")

USER_CELLS = [LEAKY_TANH, MY_GRU, MY_CORNN, MY_INDRNN]


def _parts(**changes):
    """The arguments of LEAKY_TANH, with ``changes``."""
    kw = dict(gates=("z",), aux=("y",), step=leaky_tanh_step, vjp=leaky_tanh_vjp,
              jvp=leaky_tanh_jvp, options={"leak": 0.5})
    kw.update(changes)
    return kw


# --- invalid definitions -----------------------------------------------------------------------


def _step_without_aux(z, h, leak, one):
    return (one - leak) * h + leak * math.tanh(z)


def _vjp_one_short(dh, h, h_new, y, leak, one):
    return dh * leak * (one - y * y)


def _jvp_two(dz, dh, h, h_new, y, leak, one):
    return dz, dh


def _step_of_one_state(z, h, leak, one):  # the cell below declares two states
    return h, z, z


def _step_returning_text(z, h, leak, one):
    return "h", z


class _Callable:
    def __call__(self, *args):
        return args[0]


@pytest.mark.parametrize("name, changes, exc, words", [
    ("", {}, TypeError, ["name", "non-empty str"]),
    ("c", dict(gates=()), ValueError, ["gates", "at least 1"]),
    ("c", dict(gates="z"), TypeError, ["gates", "sequence of names"]),
    ("c", dict(gates=("z", "z")), ValueError, ["gates", "distinct identifiers"]),
    ("c", dict(states=("h", "c", "m")), ValueError, ["states", "1 to 2"]),
    ("c", dict(projections="both"), ValueError, ["projections", "'both'"]),
    ("c", dict(reads=("c",)), ValueError, ["reads", "'c'", "states"]),
    ("c", dict(step=math.tanh), TypeError, ["step", "Python function"]),
    ("c", dict(vjp=np.tanh), TypeError, ["vjp", "Python function"]),
    ("c", dict(jvp=_Callable()), TypeError, ["jvp", "Python function"]),
    ("c", dict(step=_step_without_aux), ValueError, ["step", "expected 2 returned value(s)",
                                                     "got 1"]),
    ("c", dict(vjp=_vjp_one_short), ValueError, ["vjp", "expected 2 returned value(s)",
                                                 "got 1"]),
    ("c", dict(jvp=_jvp_two), ValueError, ["jvp", "expected 1 returned value(s)", "got 2"]),
    ("c", dict(step=_step_of_one_state, states=("h", "c")), ValueError,
     ["step", "calling it with 5 scalar arguments failed"]),
    ("c", dict(step=_step_returning_text), ValueError, ["step", "scalar numbers", "str"]),
    ("c", dict(read_map=leaky_tanh_step), TypeError, ["read_map", "pair"]),
    ("c", dict(read_map=(math.tanh, leaky_tanh_step)), TypeError, ["read_map[0]"]),
    ("c", dict(weight_hh_shape=(4, 4)), TypeError, ["weight_hh_shape", "function"]),
    ("c", dict(matrix=(np.diag,)), TypeError, ["matrix", "pair"]),
    ("c", dict(options={"1leak": 0.5}), ValueError, ["options", "identifiers", "'1leak'"]),
    ("c", dict(options={"leak": "0.5"}), ValueError, ["options['leak']", "finite number"]),
    ("c", dict(options={"leak": float("nan")}), ValueError, ["options['leak']", "nan"]),
    ("c", dict(options={"leak": True}), ValueError, ["options['leak']", "True"]),
    ("c", dict(check_options="leak > 0"), TypeError, ["check_options", "function"]),
])
def test_bad_definitions_are_refused_naming_the_argument(name, changes, exc, words):
    with pytest.raises(exc) as info:
        Cell(name, **_parts(**changes))
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_a_recurrent_matrix_of_the_wrong_shape_is_refused_when_the_network_runs():
    bad = Cell("bad_matrix", **_parts(options={}, step=relu_step, vjp=relu_vjp, jvp=relu_jvp,
                                      weight_hh_shape=lambda n: (n,),
                                      matrix=(lambda u, n, o: u[:, None],
                                              lambda d, n, o: d[:, 0])))
    net = numrnn.RNN(2, 3, cell=bad, seed=0)
    assert net.state_dict()["weight_hh_l0"].shape == (3,)
    with pytest.raises(ValueError, match=r"matrix\[0\] returned shape \(3, 1\); expected \(3, 3\)"):
        net.forward(np.zeros((2, 1, 2)))


@pytest.mark.parametrize("options, exc, words", [
    ({"lek": 0.3}, ValueError, ["cell_options", "'leaky_tanh'", "'lek'", "'leak'"]),
    ({"leak": 1.5}, ValueError, ["leak", "(0, 1]", "1.5"]),
    ({"leak": "0.3"}, TypeError, ["cell_options['leak']", "number", "'0.3'"]),
    ({"leak": float("inf")}, ValueError, ["cell_options['leak']", "finite"]),
    ([("leak", 0.3)], TypeError, ["cell_options", "dict"]),
])
def test_a_user_cell_checks_its_options(options, exc, words):
    with pytest.raises(exc) as info:
        numrnn.RNN(2, 3, cell=LEAKY_TANH, cell_options=options)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_a_user_cell_without_a_leak_or_a_choice_of_nonlinearity_refuses_them():
    with pytest.raises(ValueError, match="alpha: the my_gru cell has no leak"):
        numrnn.RNN(2, 3, cell=MY_GRU, alpha=0.5)
    with pytest.raises(ValueError, match="nonlinearity: the cell 'my_gru' was defined with None"):
        numrnn.RNN(2, 3, cell=MY_GRU, nonlinearity="relu")


def test_the_protocol_is_public_api():
    """``numrnn.Cell`` and ``numrnn.check_cell``, as the protocol's docstring calls them."""
    assert numrnn.Cell is Cell
    assert numrnn.check_cell is check_cell
    assert numrnn.CellCheckError is CellCheckError
    assert issubclass(CellCheckError, AssertionError)


# --- check_cell --------------------------------------------------------------------------------


@pytest.mark.parametrize("cell, phi", CELL_CASES, ids=CELL_IDS)
def test_check_cell_passes_every_registered_cell(cell, phi):
    made = definition(cell, phi)
    assert check_cell(made) < 1.0
    if cell in TEST_OPTIONS:
        assert check_cell(made, options=TEST_OPTIONS[cell], seed=1) < 1.0


@pytest.mark.parametrize("cell", USER_CELLS, ids=lambda c: c.name)
def test_check_cell_passes_the_user_cells(cell):
    assert check_cell(cell) < 1.0


def _vjp_without_the_leak_on_h(dh, h, h_new, y, leak, one):
    return dh * leak * (one - y * y), dh  # dh_prev should be (1 - leak) dh


def _jvp_with_a_wrong_sign(dz, dh, h, h_new, y, leak, one):
    return leak * (one - y * y) * dz - (one - leak) * dh


def _read_grad_of_sin(s, one):
    return math.cos(s)


@pytest.mark.parametrize("changes, words", [
    (dict(vjp=_vjp_without_the_leak_on_h), ["vjp gives dh'/dh", "transpose of jvp"]),
    (dict(jvp=_jvp_with_a_wrong_sign), ["jvp gives dh'/dh", "finite differences of step"]),
    (dict(options={}, step=relu_step, vjp=relu_vjp, jvp=relu_jvp,
          read_map=(lambda s, one: math.tanh(s), _read_grad_of_sin)),
     ["read_map's derivative"]),
])
def test_check_cell_finds_a_wrong_derivative(changes, words):
    bad = Cell("wrong", **_parts(**changes))
    with pytest.raises(CellCheckError) as info:
        check_cell(bad)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_check_cell_checks_its_arguments():
    with pytest.raises(TypeError, match="cell: expected a numrnn.Cell"):
        check_cell("gru")
    with pytest.raises(ValueError, match="has no option"):
        check_cell(LEAKY_TANH, options={"alpha": 0.5})
    with pytest.raises(ValueError, match="leak"):
        check_cell(LEAKY_TANH, options={"leak": 0.0})


def test_signature_names_every_argument():
    sig = cells.signature(MY_CORNN)
    assert sig["step"] == ["z_u", "y_prev", "z_prev", "dt", "gamma", "epsilon", "one"]
    assert sig["vjp"][:2] == ["dy", "dz"] and len(sig["vjp"]) == 11
    assert sig["jvp"][:3] == ["dz_u", "dy_prev", "dz_prev"] and len(sig["jvp"]) == 12
    assert cells.signature(MY_GRU)["step"][:6] == ["x_r", "x_z", "x_n", "h_r", "h_z", "h_n"]


# --- user cells on the CPU, against the built-in cell with the same math -------------------


def _same_networks(rng, user, builtin, user_options=None, **kw):
    """user's network loaded with builtin's parameters: output, final states and every
    gradient (full BPTT and truncated) equal to 1e-13 (two layers, both directions)."""
    net, x, h0, d_out, d_h = make_problem(rng, builtin, num_layers=2, bidirectional=True, T=6,
                                          B=3, **kw)
    mine = numrnn.RNN(3, 4, cell=user, num_layers=2, bidirectional=True,
                      cell_options=user_options)
    mine.load_state_dict(net.state_dict())
    for truncate in (None, 2):
        out, h_n, g = net.forward_vjp(x, d_out, h0, d_h, truncate=truncate)
        out_m, h_m, g_m = mine.forward_vjp(x, d_out, h0, d_h, truncate=truncate)
        assert_close(out_m, out, rtol=1e-13, what="output")
        for a, b in zip(h_m if isinstance(h_m, tuple) else (h_m,),
                        h_n if isinstance(h_n, tuple) else (h_n,)):
            assert_close(a, b, rtol=1e-13, what="h_n")
        assert list(g_m) == list(g)
        for k in g:
            assert_close(g_m[k], g[k], rtol=1e-13, what=f"{k} (truncate={truncate})")
    return mine


def test_a_hand_written_gru_equals_the_built_in_gru(rng):
    _same_networks(rng, MY_GRU, "gru")


def test_a_leaky_tanh_cell_with_an_option_equals_the_leaky_elman_cell(rng):
    mine = _same_networks(rng, LEAKY_TANH, "tanh", user_options={"leak": 0.35}, alpha=0.35)
    assert mine.cell_options == {"leak": 0.35}
    assert mine.alpha == 1.0  # "leak" is the user's option, not numrnn's alpha


def test_a_hand_written_two_state_cell_equals_the_built_in_cornn(rng):
    mine = _same_networks(rng, MY_CORNN, "cornn", user_options=TEST_OPTIONS["cornn"],
                          cell_options=TEST_OPTIONS["cornn"])
    assert mine.state_dict()["weight_hh_l1_reverse"].shape == (4, 8)


def test_a_hand_written_vector_weight_cell_equals_the_built_in_indrnn(rng):
    mine = _same_networks(rng, MY_INDRNN, "indrnn", nonlinearity="relu")
    assert mine.state_dict()["weight_hh_l0"].shape == (4,)


def test_a_user_cell_network_rebuilds_from_its_config(rng):
    net = numrnn.RNN(3, 4, cell=LEAKY_TANH, cell_options={"leak": 0.2}, seed=0)
    config = net.config()
    assert config["cell"] is LEAKY_TANH and config["cell_options"] == {"leak": 0.2}
    again = numrnn.RNN.from_config(config)
    again.load_state_dict(net.state_dict())
    x = rng.standard_normal((4, 2, 3))
    np.testing.assert_array_equal(again.forward(x)[0], net.forward(x)[0])
    assert "cell='leaky_tanh'" in repr(net) and "'leak': 0.2" in repr(net)


# --- the registry ------------------------------------------------------------------------------


@pytest.fixture
def registry():
    """numrnn.cells, with the cells a test registers unregistered after it."""
    before = cells.names()
    yield cells
    for name in cells.names():
        if name not in before:
            cells.unregister(name)
    assert cells.names() == before


def _leaky(nonlinearity):
    """A factory: the leaky cell with phi chosen by RNN(..., nonlinearity=...)."""
    phi = {"tanh": math.tanh, "sin": math.sin}[nonlinearity]
    dphi = {"tanh": lambda z: 1 - math.tanh(z) ** 2, "sin": math.cos}[nonlinearity]

    def step(z, h, leak, one):
        return (one - leak) * h + leak * phi(z), z

    def vjp(dh, h, h_new, z, leak, one):
        return dh * leak * dphi(z), (one - leak) * dh

    def jvp(dz, dh, h, h_new, z, leak, one):
        return leak * dphi(z) * dz + (one - leak) * dh

    return Cell("leaky", gates=("z",), aux=("z",), step=step, vjp=vjp, jvp=jvp,
                options={"leak": 0.5}, nonlinearity=nonlinearity)


def test_register_makes_a_user_cell_selectable_by_name(registry, rng):
    registry.register("leaky_tanh", LEAKY_TANH)
    assert "leaky_tanh" in registry.names()
    net = numrnn.RNN(3, 4, cell="leaky_tanh", cell_options={"leak": 0.35}, seed=0)
    assert net.definition is LEAKY_TANH and net.config()["cell"] == "leaky_tanh"
    ref = numrnn.RNN(3, 4, cell="tanh", alpha=0.35)
    ref.load_state_dict(net.state_dict())
    x = rng.standard_normal((5, 2, 3))
    assert_close(net.forward(x)[0], ref.forward(x)[0], rtol=1e-13)
    assert numrnn.RNN.from_config(net.config()).definition is LEAKY_TANH


def test_register_a_factory_with_a_choice_of_nonlinearity(registry, rng):
    registry.register("leaky", _leaky, nonlinearities=("tanh", "sin"))
    default = numrnn.RNN(2, 3, cell="leaky", seed=0)
    assert default.nonlinearity == "tanh"
    sin = numrnn.RNN(2, 3, cell="leaky", nonlinearity="sin", seed=0)
    assert sin.definition.nonlinearity == "sin" and sin.definition is not default.definition
    x = rng.standard_normal((4, 2, 2))
    assert np.max(np.abs(sin.forward(x)[0] - default.forward(x)[0])) > 1e-3
    with pytest.raises(ValueError, match="nonlinearity: the leaky cell's phi must be 'tanh' or "
                                         "'sin', got 'relu'"):
        numrnn.RNN(2, 3, cell="leaky", nonlinearity="relu")


def test_unregister_removes_the_name_and_networks_keep_working(registry, rng):
    registry.register("leaky_tanh", LEAKY_TANH)
    net = numrnn.RNN(2, 3, cell="leaky_tanh", seed=0)
    registry.unregister("leaky_tanh")
    assert "leaky_tanh" not in registry.names()
    with pytest.raises(ValueError, match="cell: expected one of"):
        numrnn.RNN(2, 3, cell="leaky_tanh")
    assert net.forward(rng.standard_normal((3, 1, 2)))[0].shape == (3, 1, 3)
    with pytest.raises(ValueError, match="name: expected one of"):
        registry.unregister("leaky_tanh")


def test_register_refuses_bad_names_and_factories(registry):
    with pytest.raises(ValueError, match="name: expected an identifier"):
        registry.register("my cell", LEAKY_TANH)
    with pytest.raises(TypeError, match="factory: expected a Cell or a function"):
        registry.register("mine", "leaky_tanh")
    registry.register("broken", lambda nonlinearity: "not a cell")
    with pytest.raises(TypeError, match="cell 'broken': its factory returned str"):
        numrnn.RNN(2, 3, cell="broken")


# --- fingerprints: an edited cell gets its own kernels -----------------------------------------

_CELL_SOURCE = '''
import math

{extra}

def step(z, h, one{default}):
    y = {expr}
    return y, y

def vjp(dh, h, h_new, y, one{default}):
    return dh * {grad}, one - one

def jvp(dz, dh, h, h_new, y, one{default}):
    return {grad} * dz
'''


def _cell_from_source(expr, grad, extra="", default=""):
    """A cell as a user's file ``mycell.py`` defines it (compiled from source, as an import
    would: a fresh module each time, the same file name)."""
    namespace = {"__name__": "mycell"}
    src = _CELL_SOURCE.format(expr=expr, grad=grad, extra=extra, default=default)
    exec(compile(src, "mycell.py", "exec"), namespace)
    return Cell("mycell", gates=("z",), aux=("y",), step=namespace["step"],
                vjp=namespace["vjp"], jvp=namespace["jvp"])


def _numpy_forward(net, x, phi):
    """h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) from h_0 = 0, in NumPy."""
    p = net.state_dict()
    h = np.zeros((x.shape[1], net.hidden_size))
    out = []
    for t in range(x.shape[0]):
        h = phi(x[t] @ p["weight_ih_l0"].T + p["bias_ih_l0"] + h @ p["weight_hh_l0"].T
                + p["bias_hh_l0"])
        out.append(h)
    return np.stack(out)


# (description, first version, second version, phi of the first, phi of the second); a version
# is the keyword arguments of _cell_from_source
EDITS = [
    ("the step's code",
     dict(expr="math.tanh(z)", grad="(one - y * y)"),
     dict(expr="z / (one + abs(z))", grad="(one - abs(y)) ** 2"),
     np.tanh, lambda z: z / (1 + np.abs(z))),
    ("a helper the step calls",
     dict(extra="def act(z):\n    return math.tanh(z)", expr="act(z)", grad="(one - y * y)"),
     dict(extra="def act(z):\n    return math.tanh(2.0 * z)", expr="act(z)",
          grad="2.0 * (one - y * y)"),
     np.tanh, lambda z: np.tanh(2 * z)),
    ("a global number",
     dict(extra="SCALE = 1.0", expr="math.tanh(SCALE * z)", grad="SCALE * (one - y * y)"),
     dict(extra="SCALE = 3.0", expr="math.tanh(SCALE * z)", grad="SCALE * (one - y * y)"),
     np.tanh, lambda z: np.tanh(3 * z)),
    ("a default argument",
     dict(default=", k=1.0", expr="math.tanh(k * z)", grad="k * (one - y * y)"),
     dict(default=", k=3.0", expr="math.tanh(k * z)", grad="k * (one - y * y)"),
     np.tanh, lambda z: np.tanh(3 * z)),
    ("a global tuple",
     dict(extra="SCALES = (1.0,)", expr="math.tanh(SCALES[0] * z)",
          grad="SCALES[0] * (one - y * y)"),
     dict(extra="SCALES = (3.0,)", expr="math.tanh(SCALES[0] * z)",
          grad="SCALES[0] * (one - y * y)"),
     np.tanh, lambda z: np.tanh(3 * z)),
    ("a global flag",
     dict(extra="SATURATE = True", expr="math.tanh(z) if SATURATE else z",
          grad="((one - y * y) if SATURATE else one)"),
     dict(extra="SATURATE = False", expr="math.tanh(z) if SATURATE else z",
          grad="((one - y * y) if SATURATE else one)"),
     np.tanh, lambda z: z),
]


@pytest.mark.parametrize("what, first, second, phi1, phi2", EDITS, ids=[e[0] for e in EDITS])
def test_an_edited_cell_gets_a_new_fingerprint_and_its_own_kernels(rng, what, first, second,
                                                                   phi1, phi2):
    """Editing ``what`` in a user's cell (same name, same file) changes ``fingerprint()``, and
    each version computes its own math: compiled kernels are cached on disk under the
    fingerprint, so two versions sharing one would run the first version's kernel."""
    old, new = _cell_from_source(**first), _cell_from_source(**second)
    assert check_cell(old) < 1 and check_cell(new) < 1
    x = rng.standard_normal((4, 2, 2))
    runs = []
    for cell, phi in ((old, phi1), (new, phi2)):
        net = numrnn.RNN(2, 3, cell=cell, seed=1)
        runs.append((net.forward(x)[0], _numpy_forward(net, x, phi)))
    assert old.fingerprint() != new.fingerprint(), \
        f"editing {what} left the fingerprint as it was: the edited cell runs the old kernel"
    for version, (got, want) in zip(("first", "edited"), runs):
        assert_close(got, want, rtol=1e-13, what=f"{what}, {version} version: output")


@pytest.mark.parametrize("expr, grad, phi", [
    ("math.sin(z)", "math.cos(z)", np.sin),
    ("math.atan(z)", "one / (one + z * z)", np.arctan),
    ("math.log1p(z * z)", "2.0 * z / (one + z * z)", lambda z: np.log1p(z * z)),
    ("math.sqrt(one + z * z)", "z / math.sqrt(one + z * z)", lambda z: np.sqrt(1 + z * z)),
])
def test_a_user_cell_may_call_any_math_function(rng, expr, grad, phi):
    """The protocol allows ``math`` functions: the CPU kernels swap in their own exp and tanh,
    and every other function of ``math`` must still be there."""
    namespace = {"__name__": "mycell"}
    exec(compile(textwrap.dedent(f'''
        import math

        def step(z, h, one):
            return {expr}, z

        def vjp(dh, h, h_new, z, one):
            return dh * {grad}, one - one

        def jvp(dz, dh, h, h_new, z, one):
            return {grad} * dz
        '''), "mycell.py", "exec"), namespace)
    cell = Cell("mathcell", gates=("z",), aux=("z",), step=namespace["step"],
                vjp=namespace["vjp"], jvp=namespace["jvp"])
    assert check_cell(cell) < 1
    net = numrnn.RNN(2, 3, cell=cell, seed=1)
    x = 0.5 * rng.standard_normal((4, 2, 2))
    assert_close(net.forward(x)[0], _numpy_forward(net, x, phi), rtol=1e-13)
    g = net.vjp(x, np.ones((4, 2, 3)))
    assert np.all(np.isfinite(g["weight_hh_l0"]))


def test_the_same_definition_twice_has_one_fingerprint():
    a = _cell_from_source(expr="math.tanh(z)", grad="(one - y * y)")
    b = _cell_from_source(expr="math.tanh(z)", grad="(one - y * y)")
    assert a is not b and a.fingerprint() == b.fingerprint()
    assert definition("rate", "tanh").fingerprint() != definition("rate", "relu").fingerprint()


_RUN_CELLS = '''
import sys
import numpy as np
import numrnn

x = np.random.default_rng(0).standard_normal((3, 2, 2))
h0 = 0.5 * np.random.default_rng(1).standard_normal((1, 2, 3))
for spec in sys.argv[1:]:
    cell, phi = spec.split(":")
    net = numrnn.RNN(2, 3, cell=cell, nonlinearity=phi or None, seed=1)
    print(spec, repr(net.forward(x, h0)[0].tolist()))
'''


@pytest.mark.slow
def test_kernels_cached_by_different_processes_do_not_mix(tmp_path):
    """Two cells' kernels, each compiled and cached by its own process, then both loaded from
    the disk cache by a third: each network still runs its own cell.

    Numba names a compiled function by its qualified name and a per-process counter; the
    kernels of every cell share one qualified name, so two processes that compile the same
    sequence of functions (here: after a first process cached the helpers every cell uses)
    give two cells' kernels the same symbol, and a process that loads both from the cache
    then runs the first one's code for the second.  The rate network with phi = tanh and
    with phi = relu differ only in phi, so their kernels are compiled in the same order."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"),
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    script = tmp_path / "run_cells.py"
    script.write_text(textwrap.dedent(_RUN_CELLS))

    def run(*specs):
        done = subprocess.run([sys.executable, str(script), *specs], env=env, cwd=root,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return dict(line.split(" ", 1) for line in done.stdout.splitlines())

    run("linear:")  # caches the helpers every cell's kernels call
    alone = {}
    for spec in ("rate:tanh", "rate:relu"):  # compiled and cached, each by a fresh process
        alone.update(run(spec))
    assert alone["rate:tanh"] != alone["rate:relu"]
    assert run("rate:tanh", "rate:relu") == alone  # both loaded from the cache
