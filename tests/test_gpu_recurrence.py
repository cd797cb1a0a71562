"""The GPU kernels (numrnn.gpu) against the CPU engine, under the CUDA simulator.

Run in its own process, with the simulator enabled before numba is imported::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -p no:cacheprovider tests/test_gpu_*.py

Without ``NUMBA_ENABLE_CUDASIM=1`` these tests are skipped and numba.cuda is never imported (the
CPU suite and CI machines without a GPU stay clear of it).  Shapes are tiny: the simulator runs
every thread as a Python thread, and a cooperative grid as one block.  Every path of
:mod:`numrnn.gpu.launch` (block, persistent with W_hh on chip or in global memory, stepwise over
several blocks) and the shared-memory warp sum the simulator needs are checked to 1e-12 in float64.
"""
import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("GPU tests run under the CUDA simulator in their own process: "
                "NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_gpu_*.py",
                allow_module_level=True)

from numrnn import gpu  # noqa: E402
from numrnn.gpu import launch, matmul  # noqa: E402
from tests.problems import make_problem  # noqa: E402
from tests.tolerance import assert_close  # noqa: E402

#: name -> launch tunables; each forces one path of the recurrence kernels.
PATHS = {
    "block": dict(FORCE_PATH="block"),
    "block-2groups": dict(FORCE_PATH="block", BATCH_PER_BLOCK=4, BATCH_TILE_BYTES=1),
    "persistent-onchip": dict(FORCE_PATH="persistent", FORCE_WEIGHTS_ON_CHIP=True),
    "persistent-global": dict(FORCE_PATH="persistent", FORCE_WEIGHTS_ON_CHIP=False),
    "stepwise": dict(FORCE_PATH="stepwise", UNITS_PER_BLOCK=3),
}


@pytest.fixture
def path(request, monkeypatch):
    for k, v in PATHS[request.param].items():
        monkeypatch.setattr(launch, k, v)
    return request.param


def _run_both(net, x, d_out, h0, d_h, truncate):
    ref = net.to("cpu").forward_vjp(x, d_out, h0, d_h, truncate=truncate)
    got = net.to("cuda").forward_vjp(x, d_out, h0, d_h, truncate=truncate)
    net.to("cpu")
    return ref, got


def _assert_same(ref, got, rtol=None):
    (o_r, h_r, g_r), (o, h, g) = ref, got
    assert isinstance(o, np.ndarray)
    assert_close(o, o_r, rtol=rtol, what="output")
    for a, b in zip(h if isinstance(h, tuple) else (h,), h_r if isinstance(h_r, tuple) else (h_r,)):
        assert_close(a, b, rtol=rtol, what="h_n")
    assert list(g) == list(g_r)
    for name in g_r:
        assert g[name].shape == g_r[name].shape, name
        assert_close(g[name], g_r[name], rtol=rtol, what=name)


# --- invalid input first -------------------------------------------------------------------


def test_plan_rejects_what_cannot_run(monkeypatch):
    monkeypatch.setattr(launch, "FORCE_PATH", "persistent")
    monkeypatch.setattr(launch, "UNITS_PER_BLOCK", 1)
    with pytest.raises(ValueError, match="UNITS_PER_BLOCK"):
        launch.plan("forward", 8, 1, 2, 8, lambda smem, threads: 1)


# --- every cell on every path, forward and vjp, equal to the CPU engine ----------------------


CASES = [(c, p) for p in PATHS for c in ("tanh", "relu", "linear", "rate", "lstm", "gru")
         if p != "block-2groups" or c in ("rate", "lstm", "gru")]


@pytest.mark.parametrize("cell, path", CASES, indirect=["path"])
def test_every_cell_and_path_equals_cpu(rng, path, cell):
    alpha = 1.0 if cell in ("lstm", "gru") else 0.7
    B = 5 if path == "block-2groups" else 2
    T = 3 if path == "stepwise" else 4
    net, x, h0, d_out, d_h = make_problem(rng, cell, alpha=alpha, T=T, B=B, N=5,
                                          bidirectional=path != "stepwise")
    ref, got = _run_both(net, x, d_out, h0, d_h, truncate=2)
    _assert_same(ref, got)
    p = gpu.info()
    assert p["forward"]["path"] == launch.FORCE_PATH
    assert p["backward"]["path"] == launch.FORCE_PATH


@pytest.mark.parametrize("cell, kw, truncate", [
    ("lstm", dict(num_layers=2, bidirectional=True), None),
    ("gru", dict(num_layers=2, batch_first=True), 3),
    ("rate", dict(bias=False, alpha=0.4, nonlinearity="relu"), None),
    ("tanh", dict(num_layers=2, bidirectional=True, bias=False, alpha=0.6), 2),
])
def test_layers_directions_and_truncation_equal_cpu(rng, cell, kw, truncate):
    net, x, h0, d_out, d_h = make_problem(rng, cell, T=5, B=3, **kw)
    _assert_same(*_run_both(net, x, d_out, h0, d_h, truncate))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_float32_equals_cpu_to_float32_precision(rng, cell):
    net, x, h0, d_out, d_h = make_problem(rng, cell, T=4, B=2, dtype=np.float32)
    _assert_same(*_run_both(net, x, d_out, h0, d_h, None), rtol=2e-5)


def test_default_state_and_no_state_cotangent(rng):
    net, x, _, d_out, _ = make_problem(rng, "lstm", T=4, B=2)
    _assert_same(*_run_both(net, x, d_out, None, None, None))


def test_split_k_weight_gradients(rng, monkeypatch):
    """The weight gradients' K = T*B split into slices summed in order."""
    monkeypatch.setattr(matmul, "SPLIT_MIN_K", 2)
    monkeypatch.setattr(matmul, "SPLIT_TARGET_BLOCKS", 8)
    net, x, h0, d_out, d_h = make_problem(rng, "gru", T=6, B=3)
    _assert_same(*_run_both(net, x, d_out, h0, d_h, None))


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_and_colsum(rng, ta, tb):
    from numba import cuda

    a = rng.standard_normal((19, 7) if ta else (7, 19))
    b = rng.standard_normal((5, 19) if tb else (19, 5))
    bias = rng.standard_normal(5)
    c0 = rng.standard_normal((7, 5))
    out = cuda.to_device(c0)
    matmul.matmul(cuda.to_device(a), cuda.to_device(b), ta=ta, tb=tb, out=out, accumulate=True,
                  bias=cuda.to_device(bias))
    want = c0 + (a.T if ta else a) @ (b.T if tb else b) + bias
    assert_close(out.copy_to_host(), want)
    assert_close(matmul.colsum(cuda.to_device(a)).copy_to_host(), a.sum(axis=0))


def test_same_inputs_same_bits(rng):
    """No atomics anywhere: two runs give identical bits."""
    net, x, h0, d_out, d_h = make_problem(rng, "lstm", T=4, B=3, num_layers=2)
    net.to("cuda")
    r1 = net.forward_vjp(x, d_out, h0, d_h)[2]
    r2 = net.forward_vjp(x, d_out, h0, d_h)[2]
    for k in r1:
        assert np.array_equal(r1[k], r2[k]), k


def test_recurrence_drivers_match_cpu_kernels(rng):
    """numrnn.gpu.forward/backward against numrnn.cpu.forward/backward directly (GRU, reverse)."""
    from numba import cuda

    from numrnn import cells, cpu

    kind, act, G = cells.CELLS["gru"]
    T, B, N = 4, 3, 5
    xp = rng.standard_normal((T, B, G * N))
    w = rng.standard_normal((G * N, N)) / 2
    b = rng.standard_normal(G * N)
    h0 = rng.standard_normal((B, N))
    c0 = np.zeros((B, N))
    d = cuda.to_device
    oh, oc, aux, bad = cpu.forward(kind, act, 1.0, xp, w, b, h0, c0, True)
    assert (bad == -1).all()
    g = gpu.forward(kind, act, 1.0, d(xp), d(w), d(b), d(h0), d(c0), True)
    for got, want in zip(g, (oh, oc, aux)):
        if want.shape[0] == T:
            assert_close(got.copy_to_host(), want)
    d_out = rng.standard_normal((T, B, N))
    dh = rng.standard_normal((B, N))
    *want, bad = cpu.backward(kind, act, 1.0, w, h0, c0, oh, oc, aux, d_out, dh, dh * 0, True, 2)
    assert (bad == -1).all()
    got = gpu.backward(kind, act, 1.0, d(w), d(h0), d(c0), *g, d(d_out), d(dh), d(dh * 0), True, 2)
    for a, bb in zip(got, want):
        assert_close(a.copy_to_host(), bb)
