"""numrnn.init and RNN's initialisation options: bad input first, then the seed streams (each
parameter from a stream of its own), the kinds of seed, the zero diagonal, zero biases and the
variance of the Gaussian ensemble."""
import numpy as np
import pytest

import numrnn
from tests.problems import rejects_construction
from numrnn.init import INITS, init_parameters, parameter_rng, root_seed_sequence
from tests.tolerance import assert_close

#: the inits that draw random numbers for weight_hh ("identity" draws none)
RANDOM_INITS = ("default", "gaussian", "orthogonal", "spectral_radius")

# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(zero_diagonal=1), TypeError, ["zero_diagonal", "True or False", "1"]),
    (dict(zero_diagonal="yes"), TypeError, ["zero_diagonal", "'yes'"]),
    (dict(zero_diagonal=True), ValueError, ["zero_diagonal", "init='default'"]),
    (dict(init="identity", zero_diagonal=True), ValueError, ["zero_diagonal", "init='identity'"]),
    (dict(init="orthogonal", zero_diagonal=True), ValueError,
     ["zero_diagonal", "init='orthogonal'", "no longer be orthogonal"]),
    (dict(cell="indrnn", init="gaussian", zero_diagonal=True), ValueError,
     ["zero_diagonal", "indrnn", "vector", "(4,)"]),
    (dict(hidden_size=1, init="spectral_radius", zero_diagonal=True), ValueError,
     ["zero_diagonal", "hidden_size=1"]),
    (dict(bias_init="normal"), ValueError, ["bias_init", "'uniform'", "'zeros'", "'normal'"]),
    (dict(bias_init=0), ValueError, ["bias_init", "0"]),
    (dict(bias=False, bias_init="zeros"), ValueError, ["bias_init", "bias=False", "ignored"]),
    (dict(init="identity", bias=False, bias_init="zeros"), ValueError, ["bias_init", "bias=False"]),
    (dict(seed=True), TypeError, ["seed", "True"]),
    (dict(seed=[]), ValueError, ["seed", "empty"]),
    (dict(seed=np.random.RandomState(0)), TypeError, ["seed", "RandomState"]),
])
def test_constructor_rejects_bad_init_arguments(kwargs, exc, words):
    rejects_construction(kwargs, exc, words)


@pytest.mark.parametrize("name", ["weight_hh", "weight_hh_l", "bias_l0", "weight_xx_l0",
                                  "weight_hh_l0_forward", "weight_hh_l-1"])
def test_parameter_rng_rejects_names_that_are_not_pytorchs(name):
    with pytest.raises(ValueError, match=f"name: .*{name!r}"):
        parameter_rng(np.random.SeedSequence(0), name)


def test_init_parameters_refuses_what_rnn_refuses():
    shapes = {"weight_hh_l0": (4, 4), "bias_ih_l0": (4,)}
    with pytest.raises(ValueError, match="bias_init: .*'normal'"):
        init_parameters(0, shapes, 4, "gaussian", 1.0, np.float64, bias_init="normal")
    for init in ("default", "identity", "orthogonal"):
        with pytest.raises(ValueError, match=f"zero_diagonal: .*init='{init}'"):
            init_parameters(0, shapes, 4, init, 1.0, np.float64, zero_diagonal=True)
    with pytest.raises(ValueError, match="seed: .*negative"):
        root_seed_sequence(-1)


# --- seed streams ------------------------------------------------------------------------------


def _params(input_size=1, hidden_size=6, seed=7, **kw):
    return numrnn.RNN(input_size, hidden_size, seed=seed, **kw).state_dict()


@pytest.mark.parametrize("variant", [dict(input_size=5), dict(num_layers=3),
                                     dict(bidirectional=True), dict(bias=False),
                                     dict(input_size=4, num_layers=2, bidirectional=True,
                                          bias=False)])
@pytest.mark.parametrize("init", RANDOM_INITS)
@pytest.mark.parametrize("cell", ["tanh", "lstm"])
def test_weight_hh_l0_does_not_depend_on_input_size_depth_direction_or_bias(cell, init, variant):
    """The autonomous (input_size=1) and the driven network of one seed are the same network."""
    gain = {} if init == "default" else dict(gain=1.3)
    base = _params(cell=cell, init=init, **gain)["weight_hh_l0"]
    other = _params(cell=cell, init=init, **gain, **variant)["weight_hh_l0"]
    assert base.tobytes() == other.tobytes()


def test_weight_ih_l0_and_the_biases_do_not_depend_on_depth_direction_or_bias():
    base = _params(input_size=3, init="gaussian")
    deep = _params(input_size=3, init="gaussian", num_layers=3, bidirectional=True)
    no_bias = _params(input_size=3, init="gaussian", bias=False)
    for name in base:
        assert base[name].tobytes() == deep[name].tobytes(), name
    assert base["weight_ih_l0"].tobytes() == no_bias["weight_ih_l0"].tobytes()
    # deeper layers: their shapes do not involve input_size, nor do their draws
    a = _params(input_size=1, num_layers=2, init="gaussian")
    b = _params(input_size=5, num_layers=3, init="gaussian")
    for name in ("weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"):
        assert a[name].tobytes() == b[name].tobytes(), name


def test_every_parameter_has_a_stream_of_its_own():
    p = _params(hidden_size=5, input_size=5, num_layers=2, bidirectional=True, init="gaussian")
    flat = [v.tobytes() for v in p.values()]
    assert len(set(flat)) == len(flat)


def test_streams_are_the_documented_children_of_the_seed():
    """weight_hh_l1_reverse of seed 11 is U(-1/sqrt(N), 1/sqrt(N)) drawn from
    SeedSequence(11's entropy, spawn_key=(0, 1, 1)) (kind 0 = weight_hh, layer 1, reverse)."""
    N = 5
    net = numrnn.RNN(2, N, num_layers=2, bidirectional=True, seed=11)
    root = np.random.SeedSequence(11)
    for name, key, shape in [("weight_hh_l1_reverse", (0, 1, 1), (N, N)),
                             ("weight_ih_l0", (1, 0, 0), (N, 2)),
                             ("bias_ih_l1", (2, 1, 0), (N,)),
                             ("bias_hh_l0_reverse", (3, 0, 1), (N,))]:
        rng = np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=key))
        expected = rng.uniform(-1 / np.sqrt(N), 1 / np.sqrt(N), size=shape)
        assert net.state_dict()[name].tobytes() == expected.tobytes(), name


def test_cells_of_one_shape_share_weight_hh_and_the_gain_only_scales_it():
    """tanh, relu and rate networks of one seed share J; gain 2 is exactly 2 x gain 1."""
    nets = [_params(cell=c, init="gaussian", gain=1.0) for c in ("tanh", "relu", "rate")]
    assert len({p["weight_hh_l0"].tobytes() for p in nets}) == 1
    double = _params(init="gaussian", gain=2.0)["weight_hh_l0"]
    assert double.tobytes() == (2.0 * nets[0]["weight_hh_l0"]).tobytes()


def test_float32_parameters_are_the_float64_draws_rounded():
    p64 = _params(cell="gru", init="orthogonal")
    p32 = _params(cell="gru", init="orthogonal", dtype=np.float32)
    for name in p64:
        assert p32[name].tobytes() == p64[name].astype(np.float32).tobytes(), name


# --- kinds of seed -----------------------------------------------------------------------------


def test_int_sequence_and_seed_sequence_seeds_are_one_root():
    w = _params(seed=3)["weight_hh_l0"]
    ss = np.random.SeedSequence(3)
    assert _params(seed=ss)["weight_hh_l0"].tobytes() == w.tobytes()
    assert _params(seed=ss)["weight_hh_l0"].tobytes() == w.tobytes()  # used again: same net
    assert ss.n_children_spawned == 0  # nothing spawned from the caller's sequence
    seq = _params(seed=[3, 4])["weight_hh_l0"]
    assert _params(seed=np.array([3, 4]))["weight_hh_l0"].tobytes() == seq.tobytes()
    assert _params(seed=(3, 4))["weight_hh_l0"].tobytes() == seq.tobytes()
    assert seq.tobytes() != w.tobytes()
    child = np.random.SeedSequence(3).spawn(1)[0]
    assert _params(seed=child)["weight_hh_l0"].tobytes() != w.tobytes()


def test_a_generator_seeds_the_network_with_128_bits_drawn_from_it():
    """Deterministic in the generator's state; successive networks of one generator differ."""
    g = np.random.default_rng(5)
    first, second = _params(seed=g)["weight_hh_l0"], _params(seed=g)["weight_hh_l0"]
    assert first.tobytes() != second.tobytes()
    again = np.random.default_rng(5)
    assert _params(seed=again)["weight_hh_l0"].tobytes() == first.tobytes()
    replay = np.random.default_rng(5)
    root = np.random.SeedSequence(replay.integers(0, 2**32, size=4, dtype=np.uint32))
    assert _params(seed=root)["weight_hh_l0"].tobytes() == first.tobytes()
    assert again.bit_generator.state == replay.bit_generator.state  # advanced by those bits


def test_no_seed_draws_fresh_entropy():
    a, b = _params(seed=None), _params(seed=None)
    assert a["weight_hh_l0"].tobytes() != b["weight_hh_l0"].tobytes()


# --- zero diagonal -----------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["gaussian", "spectral_radius"])
@pytest.mark.parametrize("cell", ["tanh", "rate", "lstm", "cornn"])
def test_zero_diagonal_zeros_each_n_by_n_block(cell, init):
    N, g = 6, 1.4
    net = numrnn.RNN(2, N, cell=cell, num_layers=2, init=init, gain=g, zero_diagonal=True, seed=3)
    plain = numrnn.RNN(2, N, cell=cell, num_layers=2, init=init, gain=g, seed=3)
    for layer in range(2):
        w = net.state_dict()[f"weight_hh_l{layer}"]
        w_plain = plain.state_dict()[f"weight_hh_l{layer}"]
        for i in range(0, w.shape[0], N):
            for j in range(0, w.shape[1], N):
                block, block_plain = w[i:i + N, j:j + N], w_plain[i:i + N, j:j + N]
                assert not np.any(np.diag(block))
                off = ~np.eye(N, dtype=bool)
                assert np.all(block[off] != 0)
                if init == "gaussian":  # the same draw, its diagonal set to 0 after drawing
                    assert block[off].tobytes() == block_plain[off].tobytes()
                else:  # rescaled after zeroing: the radius is still the gain
                    assert abs(np.max(np.abs(np.linalg.eigvals(block))) - g) < 1e-12
                    assert_close(block[off] / block_plain[off],
                                 np.full(N * N - N, block[0, 1] / block_plain[0, 1]))
    x = np.random.default_rng(0).standard_normal((4, 2, 2))
    assert np.all(np.isfinite(net.forward(x)[0]))


@pytest.mark.parametrize("zero_diagonal", [False, True])
def test_gaussian_entries_have_variance_gain_squared_over_n(zero_diagonal):
    """init="gaussian": J_ij ~ N(0, g^2/N) (Sompolinsky, Crisanti and Sommers 1988), with or
    without J_ii = 0.  One seed, N = 400, g = 1.5: the M = N^2 (or N^2 - N) drawn entries have
    sample mean with standard deviation g/sqrt(N M) and sample variance with relative standard
    deviation sqrt(2/(M-1)) (0.35%); both must lie within 5 of those standard deviations."""
    N, g = 400, 1.5
    w = numrnn.RNN(1, N, init="gaussian", gain=g, zero_diagonal=zero_diagonal,
                   seed=0).state_dict()["weight_hh_l0"]
    entries = w[~np.eye(N, dtype=bool)] if zero_diagonal else w.ravel()
    M, var = entries.size, g**2 / N
    assert abs(entries.mean()) < 5 * np.sqrt(var / M)
    assert abs(entries.var(ddof=1) / var - 1) < 5 * np.sqrt(2 / (M - 1))


# --- biases ------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", INITS)
def test_bias_init_zeros_keeps_bias_parameters_at_zero_and_the_weights_as_they_were(init):
    gain = {} if init == "default" else dict(gain=1.5)
    zero = _params(cell="gru", num_layers=2, init=init, bias_init="zeros", **gain)
    plain = _params(cell="gru", num_layers=2, init=init, **gain)
    assert list(zero) == list(plain)
    for name, v in zero.items():
        if name.startswith("bias"):
            assert v.shape == plain[name].shape and not np.any(v)
        else:
            assert v.tobytes() == plain[name].tobytes(), name


def test_bias_init_default_is_the_inits_own_and_uniform_overrides_it():
    bound = 1 / np.sqrt(6)
    gaussian = _params(init="gaussian")
    identity = _params(init="identity")
    uniform_identity = _params(init="identity", bias_init="uniform")
    for name in ("bias_ih_l0", "bias_hh_l0"):
        assert np.all(np.abs(gaussian[name]) <= bound) and np.any(gaussian[name])
        assert not np.any(identity[name])
        assert uniform_identity[name].tobytes() == gaussian[name].tobytes()
    assert _params(init="gaussian", bias_init="uniform")["bias_ih_l0"].tobytes() == \
        gaussian["bias_ih_l0"].tobytes()


def test_the_textbook_chaotic_network():
    """The README's: tanh, J_ij ~ N(0, 4/N), J_ii = 0, zero biases; repr says so."""
    net = numrnn.RNN(1, 50, init="gaussian", gain=2.0, zero_diagonal=True, bias_init="zeros",
                     seed=0)
    p = net.state_dict()
    assert not np.any(np.diag(p["weight_hh_l0"]))
    assert not np.any(p["bias_ih_l0"]) and not np.any(p["bias_hh_l0"])
    assert repr(net) == ("RNN(1, 50, cell='tanh', init='gaussian', gain=2.0, zero_diagonal=True, "
                         "bias_init='zeros', dtype=numpy.float64)")
    assert repr(numrnn.RNN(1, 5, init="gaussian", seed=0)) == \
        "RNN(1, 5, cell='tanh', init='gaussian', dtype=numpy.float64)"
