"""The CPU kernels against the slow NumPy reference (tests/reference.py), every cell and option."""
import numpy as np
import pytest

from tests import reference as ref
from tests.problems import make_problem
from tests.tolerance import RTOL, assert_close

CONFIGS = [  # (num_layers, bidirectional, bias, alpha)
    (1, False, True, 1.0),
    (2, True, True, 0.6),
    (2, False, False, 0.6),
    (1, True, False, 1.0),
]
CELL_CASES = [("tanh", None), ("relu", None), ("linear", None), ("rate", "tanh"),
              ("rate", "relu"), ("lstm", None), ("gru", None)]


def _split(cell, h0):
    return (h0[0], h0[1]) if cell == "lstm" else (h0, None)


@pytest.mark.parametrize("cell, phi", CELL_CASES)
@pytest.mark.parametrize("layers, bidir, bias, alpha", CONFIGS)
@pytest.mark.parametrize("truncate", [None, 2])
def test_forward_and_vjp_equal_reference(rng, cell, phi, layers, bidir, bias, alpha, truncate):
    if cell in ("lstm", "gru"):
        alpha = 1.0
    net, x, h0, d_out, d_h = make_problem(rng, cell, num_layers=layers, bidirectional=bidir,
                                          bias=bias, alpha=alpha, nonlinearity=phi, T=6, B=2)
    kw = dict(hidden_size=4, num_layers=layers, bidirectional=bidir, alpha=alpha,
              nonlinearity=phi or "tanh")
    hh, cc = _split(cell, h0)
    dh, dc = _split(cell, d_h)
    params = net.state_dict()
    out_r, h_r, c_r = ref.ref_forward(cell, params, x, hh, cc, **kw)
    g_r = ref.ref_vjp(cell, params, x, d_out, hh, cc, dh, dc, truncate=truncate, **kw)
    out, h_n, g = net.forward_vjp(x, d_out, h0, d_h, truncate=truncate)
    assert_close(out, out_r, what="output")
    if cell == "lstm":
        assert_close(h_n[0], h_r, what="h_n")
        assert_close(h_n[1], c_r, what="c_n")
    else:
        assert_close(h_n, h_r, what="h_n")
    assert set(g) == set(g_r)
    for name in g_r:
        assert_close(g[name], g_r[name], what=name)


@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru", "rate"])
@pytest.mark.parametrize("dtype, transposed", [(np.float64, False), (np.float32, True),
                                               (np.float32, False)])
def test_threaded_and_blas_variants_equal_reference(rng, monkeypatch, cell, dtype, transposed):
    """The per-step BLAS product (direct, or on the transposes in float32), the batch split over
    threads and the split matrix products, forced on at a small size (3 pieces for B = 3)."""
    from numrnn import config
    from numrnn.cpu import recurrence

    monkeypatch.setattr(config, "BLAS_MIN_WORK", 1)
    monkeypatch.setattr(config, "NUM_THREADS", 3)
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 3)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 1)
    monkeypatch.setattr(config, "TRANSPOSED_GEMM_FLOAT32", transposed)
    assert recurrence._mode(np.dtype(dtype), 3, 4, 4) == (2 if transposed else 1)
    net, x, h0, d_out, d_h = make_problem(rng, cell, num_layers=2, bidirectional=True, T=5, B=3,
                                          dtype=dtype)
    kw = dict(hidden_size=4, num_layers=2, bidirectional=True)
    hh, cc = _split(cell, h0)
    dh, dc = _split(cell, d_h)
    g_r = ref.ref_vjp(cell, net.state_dict(), x, d_out, hh, cc, dh, dc, truncate=2, **kw)
    g = net.vjp(x, d_out, h0, d_h, truncate=2)
    for name in g_r:
        assert g[name].dtype == (np.float64 if name == "state_grad_norm" else dtype)
        assert_close(g[name], g_r[name], rtol=RTOL[np.dtype(dtype)], what=name)


@pytest.mark.parametrize("cell", ["tanh", "rate", "lstm"])
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("reverse", [False, True])
def test_recurrent_weight_grad_equals_the_product_with_the_recurrent_inputs(rng, cell, T,
                                                                           reverse):
    """W_hh's gradient read from the stored states in place (h0 entering at the first step in
    running order; T = 1 has no stored state to read) equals dhpᵀ r with r built explicitly."""
    from numrnn import cells, cpu

    kind = {"tanh": cells.KIND_ELMAN, "rate": cells.KIND_RATE, "lstm": cells.KIND_LSTM}[cell]
    B, N, G = 3, 5, 4 if cell == "lstm" else 1
    h0 = rng.standard_normal((B, N))
    out_h = rng.standard_normal((T, B, N))
    dhp = rng.standard_normal((T, B, G * N))
    r = cpu.recurrent_inputs(kind, cells.ACT_TANH, h0, out_h, reverse)
    first = T - 1 if reverse else 0
    assert_close(r[first], np.tanh(h0) if cell == "rate" else h0)
    want = np.einsum("tbg,tbn->gn", dhp, r)
    got = cpu.recurrent_weight_grad(kind, cells.ACT_TANH, dhp, h0, out_h, reverse)
    assert got.shape == (G * N, N)
    assert_close(got, want, rtol=1e-13)
