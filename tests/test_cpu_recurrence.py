"""The CPU kernels against the slow NumPy reference (tests/reference.py), every cell and option."""
import numpy as np
import pytest

import numrnn
from tests import reference as ref
from tests.problems import (CELL_CASES, CELL_IDS, CELLS, as_pair, has_leak, make_problem,
                            reference_kwargs)
from tests.tolerance import RTOL, assert_close

CONFIGS = [  # (num_layers, bidirectional, bias, alpha)
    (1, False, True, 1.0),
    (2, True, True, 0.6),
    (2, False, False, 0.6),
    (1, True, False, 1.0),
]


def _assert_equal_reference(net, x, h0, d_out, d_h, truncate=None, layout=None):
    """forward and every gradient of ``net`` against tests/reference.py; ``layout`` maps the
    reference's time-major (T, B, F) arrays (and (L*D, B, N) states) to the net's layout."""
    cell = net.cell
    kw = reference_kwargs(net)
    to_net = layout or {"x": lambda a: a, "state": lambda a: a}
    (hh, cc), (dh, dc) = as_pair(h0), as_pair(d_h)
    params = net.state_dict()
    out_r, h_r, c_r = ref.ref_forward(cell, params, x, hh, cc, **kw)
    g_r = ref.ref_vjp(cell, params, x, d_out, hh, cc, dh, dc, truncate=truncate, **kw)

    tx, ts = to_net["x"], to_net["state"]

    def state(a, b):  # the net's state argument: one array, or a pair
        return ts(a) if b is None else (ts(a), ts(b))

    out, h_n, g = net.forward_vjp(tx(x), tx(d_out), state(hh, cc), state(dh, dc),
                                  truncate=truncate)
    assert_close(out, tx(out_r), what="output")
    h_n, c_n = as_pair(h_n)
    assert_close(h_n, ts(h_r), what="h_n")
    if c_r is None:
        assert c_n is None
    else:
        assert_close(c_n, ts(c_r), what="c_n")
    assert set(g) == set(g_r)
    for name in g_r:
        if name == "input":
            want = tx(g_r[name])
        elif name in ("h0", "c0"):
            want = ts(g_r[name])
        elif name == "state_grad_norm":
            want = g_r[name][:, 0] if to_net.get("unbatched") else g_r[name]
        else:
            want = g_r[name]
        assert_close(g[name], want, what=name)


@pytest.mark.parametrize("cell, phi", CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize("layers, bidir, bias, alpha", CONFIGS)
@pytest.mark.parametrize("truncate", [None, 2])
def test_forward_and_vjp_equal_reference(rng, cell, phi, layers, bidir, bias, alpha, truncate):
    if not has_leak(cell):
        alpha = 1.0
    net, x, h0, d_out, d_h = make_problem(rng, cell, num_layers=layers, bidirectional=bidir,
                                          bias=bias, alpha=alpha, nonlinearity=phi, T=6, B=2)
    _assert_equal_reference(net, x, h0, d_out, d_h, truncate)


@pytest.mark.parametrize("cell, phi", CELL_CASES, ids=CELL_IDS)
def test_batch_first_and_unbatched_equal_reference(rng, cell, phi):
    """The (B, T, F) layout and unbatched (T, F) input (states (L*D, N)) against the reference
    run time major, two layers, both directions, truncated."""
    net, x, h0, d_out, d_h = make_problem(rng, cell, nonlinearity=phi, num_layers=2,
                                          bidirectional=True, T=5, B=3)
    bf = numrnn.RNN.from_config(dict(net.config(), batch_first=True))
    bf.load_state_dict(net.state_dict())
    _assert_equal_reference(bf, x, h0, d_out, d_h, truncate=2,
                            layout={"x": lambda a: a.transpose(1, 0, 2).copy(),
                                    "state": lambda a: a})

    def first(s):  # sequence 0 alone, still (T, 1, F) / (L*D, 1, N) for the reference
        return tuple(a[:, :1] for a in s) if isinstance(s, tuple) else s[:, :1]

    _assert_equal_reference(net, first(x), first(h0), first(d_out), first(d_h), truncate=2,
                            layout={"x": lambda a: a[:, 0], "state": lambda a: a[:, 0],
                                    "unbatched": True})


@pytest.mark.parametrize("cell, phi", [("antisymmetric", "tanh"), ("cornn", None)])
def test_default_options_equal_reference(rng, cell, phi):
    """The cells' own default options (the engine tests use larger TEST_OPTIONS)."""
    net, x, h0, d_out, d_h = make_problem(rng, cell, nonlinearity=phi, cell_options={},
                                          num_layers=2, bidirectional=True, T=6)
    assert reference_kwargs(net)["cell_options"] == ref.OPTIONS[cell]
    _assert_equal_reference(net, x, h0, d_out, d_h, truncate=4)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype, mode", [(np.float64, 1), (np.float32, 2), (np.float32, 1),
                                         (np.float64, 3), (np.float32, 3)])
def test_threaded_and_blas_variants_equal_reference(rng, monkeypatch, cell, dtype, mode):
    """The per-step BLAS product (direct, or on the transposes in float32), the compiled dot
    products (mode 3, chosen for AVX-512; here forced on whatever the machine, with the
    loops compiled for it), the batch split over threads and the split matrix products, forced
    on at a small size (3 pieces for B = 3; 2 for mode 3, whose blocks hold two rows or more:
    B = 5, blocks of 2 and 3)."""
    from numrnn import config
    from numrnn.cpu import recurrence

    B, blocks = (5, 2) if mode == 3 else (3, 3)
    monkeypatch.setattr(config, "BLAS_MIN_WORK", 1)
    monkeypatch.setattr(config, "NUM_THREADS", blocks)
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", blocks)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 1)
    monkeypatch.setattr(config, "TRANSPOSED_GEMM_FLOAT32", mode == 2)
    monkeypatch.setattr(config, "DOT_PRODUCTS", "on" if mode == 3 else "off")
    assert recurrence.product_mode(np.dtype(dtype), B, 4, 4, B // blocks) == mode
    net, x, h0, d_out, d_h = make_problem(rng, cell, num_layers=2, bidirectional=True, T=5, B=B,
                                          dtype=dtype)
    kw = reference_kwargs(net)
    (hh, cc), (dh, dc) = as_pair(h0), as_pair(d_h)
    g_r = ref.ref_vjp(cell, net.state_dict(), x, d_out, hh, cc, dh, dc, truncate=2, **kw)
    g = net.vjp(x, d_out, h0, d_h, truncate=2)
    for name in g_r:
        assert g[name].dtype == (np.float64 if name == "state_grad_norm" else dtype)
        assert_close(g[name], g_r[name], rtol=RTOL[np.dtype(dtype)], what=name)


def test_product_mode_with_avx512(monkeypatch):
    """Under "auto" with AVX-512, a step's product of a whole register tile of rows or more runs
    as the packed products; of two to five rows as dot products where its sums are four
    vectors deep, else as the compiled loops (not the BLAS); one row keeps the loops or the
    BLAS by its work."""
    from numrnn import config
    from numrnn.cpu import products, recurrence

    monkeypatch.setattr(config, "DOT_PRODUCTS", "auto")
    monkeypatch.setattr(products, "WIDE", True)
    monkeypatch.setattr(config, "BLAS_MIN_WORK", 1)
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    tile = products.TILE_ROWS
    assert recurrence.product_mode(f32, 32, 32, 128, 16) == 4  # an LSTM's forward, N = 32
    assert recurrence.product_mode(f64, 32, 32, 128, tile) == 4
    assert recurrence.product_mode(f32, 8, 32, 128, tile - 1) == 0
    assert recurrence.product_mode(f32, 8, 128, 32, tile - 1) == 3  # its backward
    assert recurrence.product_mode(f32, 4, 64, 256, 2) == 3
    assert recurrence.product_mode(f64, 4, 32, 128, 2) == 3
    assert recurrence.product_mode(f64, 1, 32, 128, 1) == 1
    monkeypatch.setattr(products, "WIDE", False)
    assert recurrence.product_mode(f32, 32, 128, 128, 16) == 2  # no AVX-512: the BLAS


@pytest.mark.parametrize("cell", ["tanh", "rate", "lstm", "cornn"])
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("reverse", [False, True])
def test_recurrent_weight_grad_equals_the_product_with_the_recurrent_inputs(rng, cell, T,
                                                                           reverse):
    """M's gradient read from the stored states in place (h0 entering at the first step in
    running order; T = 1 has no stored state to read) equals dhpᵀ r with r built explicitly
    (r = phi(h) for the rate network, [y | z] for coRNN, h for the others)."""
    from numrnn import cells, cpu

    definition, _ = cells.resolve(cell)
    opts = np.array(list(definition.options.values()))
    B, N, G, R = 3, 5, definition.gate_count, definition.read_count
    h0, c0 = rng.standard_normal((B, N)), rng.standard_normal((B, N))
    out_h = rng.standard_normal((T, B, N))
    out_c = rng.standard_normal((T, B, N))
    dhp = rng.standard_normal((T, B, G * N))
    r = cpu.recurrent_inputs(definition, opts, h0, c0, out_h, out_c, reverse)
    first = T - 1 if reverse else 0
    want_first = {"rate": np.tanh(h0), "cornn": np.concatenate([h0, c0], axis=1)}.get(cell, h0)
    assert_close(r[first], want_first)
    want = np.einsum("tbg,tbn->gn", dhp, r)
    got = cpu.recurrent_weight_grad(definition, opts, dhp, h0, c0, out_h, out_c, reverse)
    assert got.shape == (G * N, R * N)
    assert_close(got, want, rtol=1e-13)


def test_unmanaged_arrays_view_the_same_memory():
    """The kernels' views without reference counting (recurrence._unmanaged) read and write the
    arrays' own memory, with their shapes and strides, in any layout."""
    from numba import njit

    from numrnn.cpu.recurrence import _keep, _unmanaged

    @njit
    def poke(a, b):
        u, v = _unmanaged((a, b))
        row = u[1]
        row[2] = 5.0
        v[0] = 7
        return u.shape, u.strides, u.ctypes.data == a.ctypes.data, u[1, 2] + u[0, 0]

    @njit
    def scratch(n):
        owned = (np.empty(n), np.empty(n))
        u, w = _unmanaged(owned)
        for i in range(n):
            u[i] = i
            w[i] = 1.0
        total = owned[0].sum() + owned[1].sum()
        _keep(owned)
        return total

    a = np.zeros((3, 4))
    a[0, 0] = 1.0
    b = np.zeros(2, np.int64)
    assert poke(a, b) == ((3, 4), (32, 8), True, 6.0) and a[1, 2] == 5.0 and b[0] == 7
    f = np.asfortranarray(np.zeros((3, 4)))
    assert poke(f, b)[:3] == ((3, 4), (8, 24), True) and f[1, 2] == 5.0
    assert scratch(100) == 5050.0
