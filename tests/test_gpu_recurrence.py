"""The GPU kernels (numrnn.gpu) against the CPU engine, under the CUDA simulator.

Run in its own process, with the simulator enabled before numba is imported::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -p no:cacheprovider tests/test_gpu_*.py

Without ``NUMBA_ENABLE_CUDASIM=1`` these tests are skipped and numba.cuda is never imported (the
CPU suite and CI machines without a GPU stay clear of it).  Shapes are tiny: the simulator runs
every thread as a Python thread, and a cooperative grid as one block.  Every registered cell (with
every nonlinearity it offers) runs on every path of :mod:`numrnn.gpu.launch` (block, persistent
with M on chip or in global memory, stepwise over several blocks), with the shared-memory warp sum
the simulator needs, and equals the CPU engine to 1e-12 in float64.
"""
import math
import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("GPU tests run under the CUDA simulator in their own process: "
                "NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_gpu_*.py",
                allow_module_level=True)

import numrnn  # noqa: E402
from numrnn import gpu  # noqa: E402
from numrnn.cells import sigmoid, sigmoid_grad  # noqa: E402
from numrnn.gpu import launch, matmul  # noqa: E402
from tests.problems import CELL_CASES, CELL_IDS, definition, make_problem  # noqa: E402
from tests.tolerance import assert_close  # noqa: E402


pytestmark = pytest.mark.usefixtures("simulator_thread_switches")

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
    """Output, final states (both of a pair) and every entry of the vjp dict: the parameters'
    gradients, "input", "h0" (and "c0"), "state_grad_norm"."""
    (o_r, h_r, g_r), (o, h, g) = ref, got
    assert isinstance(o, np.ndarray)
    assert_close(o, o_r, rtol=rtol, what="output")
    assert isinstance(h, tuple) == isinstance(h_r, tuple)
    for a, b in zip(h if isinstance(h, tuple) else (h,), h_r if isinstance(h_r, tuple) else (h_r,)):
        assert_close(a, b, rtol=rtol, what="h_n")
    assert list(g) == list(g_r)
    for name in g_r:
        assert g[name].shape == g_r[name].shape, name
        assert g[name].dtype == g_r[name].dtype, name
        assert_close(g[name], g_r[name], rtol=rtol, what=name)


# --- invalid input first -------------------------------------------------------------------


def test_plan_rejects_what_cannot_run(monkeypatch):
    monkeypatch.setattr(launch, "FORCE_PATH", "persistent")
    monkeypatch.setattr(launch, "UNITS_PER_BLOCK", 1)
    with pytest.raises(ValueError, match="UNITS_PER_BLOCK"):
        launch.plan("forward", 8, 1, 2, 8, lambda smem, threads: 1)
    monkeypatch.setattr(launch, "UNITS_PER_BLOCK", None)
    monkeypatch.setattr(launch, "FORCE_WEIGHTS_ON_CHIP", True)
    monkeypatch.setattr(launch, "MAX_SHARED_BYTES", 64 * 8)
    with pytest.raises(ValueError, match="2 reads"):
        launch.plan("backward", 8, 1, 2, 8, lambda smem, threads: 8, reads=2)


# --- the launch arithmetic ------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["forward", "backward"])
@pytest.mark.parametrize("G, R", [(1, 1), (4, 1), (1, 2), (6, 2)])
def test_shared_memory_of_the_plan_is_what_the_kernel_carves(monkeypatch, stage, G, R):
    """The kernels lay out their dynamic shared memory as (M's slice, the batch tile, the warp
    sums' buffer, the per-warp scratch); the plan must ask for exactly that, with rows of R*N
    (forward: M's rows) or G*N (BPTT: M's columns) and BR*G scratch values per warp forward."""
    monkeypatch.setattr(launch, "FORCE_PATH", "block")
    N, B = 5, 6
    p = launch.plan(stage, N, G, B, 8, lambda smem, threads: 1, reads=R)
    warps = p.threads // 32
    red = warps * launch.BR * 32  # the simulator's warp sums
    if stage == "forward":
        want = G * N * R * N + p.batch_tile * R * N + red + warps * launch.BR * G
    else:
        want = R * N * G * N + p.batch_tile * G * N + red
    assert p.weights_on_chip
    assert p.shared_bytes == 8 * want
    items = (1 if stage == "forward" else R) * N * (p.batch_tile // launch.BR)
    assert p.threads == max(launch.MIN_THREADS_PER_BLOCK, min(launch.THREADS_PER_BLOCK,
                                                              32 * items))


# --- every cell on every path, forward and vjp, equal to the CPU engine ----------------------


@pytest.mark.parametrize("path", list(PATHS), indirect=True)
@pytest.mark.parametrize("cell, phi", CELL_CASES, ids=CELL_IDS)
def test_every_cell_and_path_equals_cpu(rng, path, cell, phi):
    """Bidirectional (the reverse direction and the strided output views; the stepwise path,
    the slowest in the simulator, runs one direction), truncated BPTT with a cut inside the
    sequence, a leak where the cell has one; B = 5 over two blocks of rows on the block-2groups
    path, N = 4 over two blocks of units (3 and 1) on the stepwise path."""
    alpha = 0.7 if "alpha" in definition(cell, phi).options else 1.0
    B = 5 if path == "block-2groups" else 2
    stepwise = path == "stepwise"
    net, x, h0, d_out, d_h = make_problem(rng, cell, nonlinearity=phi, alpha=alpha, T=3, B=B,
                                          N=4 if stepwise else 3, I=2,
                                          bidirectional=not stepwise)
    ref, got = _run_both(net, x, d_out, h0, d_h, truncate=2)
    _assert_same(ref, got)
    p = gpu.info()
    assert p["forward"]["path"] == launch.FORCE_PATH
    assert p["backward"]["path"] == launch.FORCE_PATH
    if path == "stepwise":
        assert p["forward"]["grid"] == p["backward"]["grid"] == 2


@pytest.mark.parametrize("cell, kw, truncate", [
    ("lstm", dict(num_layers=2, bidirectional=True), None),
    ("gru", dict(num_layers=2, batch_first=True), 3),
    ("rate", dict(bias=False, alpha=0.4, nonlinearity="relu"), None),
    ("tanh", dict(num_layers=2, bidirectional=True, bias=False, alpha=0.6), 2),
    ("cornn", dict(num_layers=2, bidirectional=True), 2),
    ("mgu", dict(num_layers=2, bias=False), None),
    ("indrnn", dict(num_layers=2, bidirectional=True, nonlinearity="tanh"), 3),
    ("antisymmetric", dict(num_layers=2, cell_options={"epsilon": 0.5, "gamma": 0.05}), None),
])
def test_layers_directions_and_truncation_equal_cpu(rng, cell, kw, truncate):
    net, x, h0, d_out, d_h = make_problem(rng, cell, T=4, B=3, N=3, **kw)
    _assert_same(*_run_both(net, x, d_out, h0, d_h, truncate))


@pytest.mark.parametrize("cell", ["lstm", "gru", "cornn"])
def test_float32_equals_cpu_to_float32_precision(rng, cell):
    net, x, h0, d_out, d_h = make_problem(rng, cell, T=4, B=2, N=3, dtype=np.float32)
    _assert_same(*_run_both(net, x, d_out, h0, d_h, None), rtol=2e-5)


@pytest.mark.parametrize("cell", ["lstm", "cornn"])
def test_default_state_and_no_state_cotangent(rng, cell):
    net, x, _, d_out, _ = make_problem(rng, cell, T=4, B=2, N=3)
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


# --- a user's cell: more gates than any built-in one ------------------------------------------


def _five_step(z0, z1, z2, z3, z4, h, beta, one):
    a = math.tanh(z0)
    b = sigmoid(z1, one)
    c = sigmoid(z2, one)
    d = math.tanh(z3)
    e = sigmoid(z4, one)
    return b * a + beta * c * h + e * d, a, b, c, d, e


def _five_vjp(dh, h, h_new, a, b, c, d, e, beta, one):
    return (dh * b * (one - a * a), dh * a * sigmoid_grad(b, one),
            dh * beta * h * sigmoid_grad(c, one), dh * e * (one - d * d),
            dh * d * sigmoid_grad(e, one), dh * beta * c)


def _five_jvp(dz0, dz1, dz2, dz3, dz4, dh, h, h_new, a, b, c, d, e, beta, one):
    return (b * (one - a * a) * dz0 + a * sigmoid_grad(b, one) * dz1
            + beta * h * sigmoid_grad(c, one) * dz2 + e * (one - d * d) * dz3
            + d * sigmoid_grad(e, one) * dz4 + beta * c * dh)


FIVE_GATES = numrnn.cells.Cell("five", gates=("a", "b", "c", "d", "e"),
                               aux=("a", "b", "c", "d", "e"), step=_five_step, vjp=_five_vjp,
                               jvp=_five_jvp, options={"beta": 0.9})


@pytest.mark.parametrize("path", ["block", "persistent-onchip", "persistent-global", "stepwise"],
                         indirect=True)
def test_a_user_cell_with_five_gates_equals_cpu(rng, path):
    """G = 5: the per-gate values live in the warp's scratch and the generated code, not in a
    fixed set of registers."""
    assert numrnn.cells.check_cell(FIVE_GATES) < 1
    net, x, h0, d_out, d_h = make_problem(rng, FIVE_GATES, cell_options={"beta": 0.8}, T=3, B=2,
                                          N=3, bidirectional=True)
    _assert_same(*_run_both(net, x, d_out, h0, d_h, 2))


# --- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(PATHS), indirect=True)
def test_every_path_gives_the_same_bits_twice(rng, path):
    """No atomics anywhere: two runs of the kernels give identical bits, for a cell with two
    states that reads both (coRNN) and one that sees the projections apart (GRU)."""
    from numba import cuda

    for name in ("cornn", "gru"):
        cell = definition(name)
        T, B, N, G, R = 3, 5 if path == "block-2groups" else 2, 3, cell.gate_count, \
            cell.read_count
        d = cuda.to_device
        opts = d(np.array(list(cell.options.values())))
        xp = d(rng.standard_normal((T, B, G * N)))
        w = d(rng.standard_normal((G * N, R * N)) / 2)
        b = d(rng.standard_normal(G * N))
        h0, c0 = d(rng.standard_normal((B, N))), d(rng.standard_normal((B, N)))
        d_out = d(rng.standard_normal((T, B, N)))
        dh, dc = d(rng.standard_normal((B, N))), d(rng.standard_normal((B, N)))
        runs = []
        for _ in range(2):
            fwd = gpu.forward(cell, opts, xp, w, b, h0, c0, False)
            bwd = gpu.backward(cell, opts, w, h0, c0, *fwd, d_out, dh, dc, False, 2)
            if cell.state_count == 1:  # out_c is a placeholder then, never written
                fwd = (fwd[0], fwd[2])
            runs.append([a.copy_to_host() for a in fwd + bwd])
        for first, second in zip(*runs):
            assert first.tobytes() == second.tobytes(), name


def test_same_inputs_same_bits_through_the_network(rng):
    """The whole vjp (products, split sums, column sums included) gives identical bits twice."""
    net, x, h0, d_out, d_h = make_problem(rng, "lstm", T=4, B=3, num_layers=2)
    net.to("cuda")
    r1 = net.forward_vjp(x, d_out, h0, d_h)[2]
    r2 = net.forward_vjp(x, d_out, h0, d_h)[2]
    for k in r1:
        assert np.array_equal(r1[k], r2[k]), k


# --- the drivers, against the CPU kernels ----------------------------------------------------


@pytest.mark.parametrize("name", ["gru", "cornn", "rate"])
def test_recurrence_drivers_match_cpu_kernels(rng, name):
    """numrnn.gpu.forward/backward/recurrent_inputs against numrnn.cpu's directly (reverse, with
    truncation): every output, the aux record and the direct state cotangents included."""
    from numba import cuda

    from numrnn import cpu

    cell = definition(name)
    G, R, P = cell.gate_count, cell.read_count, cell.state_count
    T, B, N = 4, 3, 5
    opts = np.array([0.5 * v for v in cell.options.values()])
    xp = rng.standard_normal((T, B, G * N))
    w = rng.standard_normal((G * N, R * N)) / 2
    b = rng.standard_normal(G * N)
    h0 = rng.standard_normal((B, N))
    c0 = rng.standard_normal((B, N)) if P == 2 else np.zeros((B, N))
    d = cuda.to_device
    dopts = d(opts)
    oh, oc, aux, bad = cpu.forward(cell, opts, xp, w, b, h0, c0, True)
    assert (bad == -1).all()
    g = gpu.forward(cell, dopts, d(xp), d(w), d(b), d(h0), d(c0), True)
    assert_close(g[0].copy_to_host(), oh, what="out_h")
    if P == 2:
        assert_close(g[1].copy_to_host(), oc, what="out_c")
    # the CPU keeps aux unit-major (aux[t, b, j*A + k], for its vectorised row loops), the GPU
    # gate-major (aux[t, b, k*N + j])
    A = cell.aux_count
    assert_close(g[2].copy_to_host(),
                 aux.reshape(T, B, N, A).transpose(0, 1, 3, 2).reshape(T, B, A * N), what="aux")
    r = gpu.recurrent_inputs(cell, dopts, d(h0), d(c0), *g[:2], True)
    assert_close(r.copy_to_host(), cpu.recurrent_inputs(cell, opts, h0, c0, oh, oc, True),
                 what="recurrent inputs")
    d_out = rng.standard_normal((T, B, N))
    dh = rng.standard_normal((B, N))
    dc = rng.standard_normal((B, N)) if P == 2 else np.zeros((B, N))
    *want, bad = cpu.backward(cell, opts, w, h0, c0, oh, oc, aux, d_out, dh, dc, True, 3)
    assert (bad == -1).all()
    got = gpu.backward(cell, dopts, d(w), d(h0), d(c0), *g, d(d_out), d(dh), d(dc), True, 3)
    assert (got[0] is got[1]) == (not cell.separate)
    for what, a, bb in zip(("dxp", "dhp", "dh0", "dc0", "norm"), got, want):
        assert_close(a.copy_to_host(), bb, what=what)
