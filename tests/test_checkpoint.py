"""Checkpointed BPTT: the same bits as full BPTT, in bounded memory, for every cell and layout;
the loss on the final state alone; the gradient at chosen steps; the memory-budget policy."""
import tracemalloc

import numpy as np
import pytest

import numrnn
from numrnn import driver
from numrnn.cpu import scratch
from numrnn.experiments import tasks
from numrnn.experiments.training import train

from .problems import CELL_CASES, CELL_IDS, TEST_OPTIONS, paired


@pytest.fixture(autouse=True)
def blocks_of_64_steps(monkeypatch):
    """Blocks of 64 steps for these small networks (the default grows a small network's block
    up to 512 steps, and a checkpoint interval is a multiple of it), so that T of a few hundred
    steps spans several segments and blocks."""
    monkeypatch.setattr(numrnn.config, "STEP_BLOCK_MAX", 64)


def test_the_block_grows_for_small_networks_and_checkpoints_follow_it(monkeypatch):
    monkeypatch.setattr(numrnn.config, "STEP_BLOCK_MAX", 512)
    small = numrnn.RNN(1, 8, seed=0)
    backend = driver.backend_of(small)
    assert driver.step_block(small, backend, 1) == 512
    assert driver.step_block(numrnn.RNN(1, 256, cell="lstm"), backend, 1) == 512  # rows
    assert driver.step_block(numrnn.RNN(1, 256, cell="lstm"), backend, 32) == 64
    assert driver.step_block(small, backend, 64) == 128  # numbers
    with pytest.raises(ValueError, match="checkpoint: expected a multiple of 512 steps"):
        small.vjp(np.zeros((1000, 1)), None, checkpoint=64)
    x = np.random.default_rng(0).standard_normal((1500, 1))
    _grads_equal(small.vjp(x, None, d_h_n=np.ones((1, 8)), checkpoint=512),
                 small.vjp(x, None, d_h_n=np.ones((1, 8))))

# --- invalid input first ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(checkpoint=100), ValueError, "checkpoint: expected a multiple of 64 steps"),
    (dict(checkpoint=0), ValueError, "checkpoint"),
    (dict(checkpoint=-64), ValueError, "checkpoint"),
    (dict(checkpoint=True), TypeError, "checkpoint: expected None, 'auto' or a number"),
    (dict(checkpoint="sqrt"), TypeError, "checkpoint: expected None, 'auto' or a number"),
    (dict(checkpoint=64.0), TypeError, "checkpoint"),
    (dict(checkpoint=64, memory_budget=10**9), ValueError, "memory_budget: chooses the"),
    (dict(checkpoint="auto", memory_budget=0), ValueError, "memory_budget"),
    (dict(checkpoint="auto", memory_budget="1G"), TypeError, "memory_budget"),
    (dict(grad_steps=[-1]), ValueError, r"grad_steps: expected steps in \[0, T\)"),
    (dict(grad_steps=[200]), ValueError, r"grad_steps: expected steps in \[0, T\)"),
    (dict(grad_steps=[3, 3]), ValueError, "grad_steps: expected distinct steps"),
    (dict(grad_steps=[[1, 2]]), ValueError, "grad_steps: expected a non-empty 1-D"),
    (dict(grad_steps=[1.5]), ValueError, "grad_steps"),
    (dict(grad_steps=[]), ValueError, "grad_steps"),
])
def test_bad_arguments_are_refused(kwargs, exc, words):
    net = numrnn.RNN(2, 4, seed=0)
    x = np.zeros((200, 2))
    with pytest.raises(exc, match=words):
        net.vjp(x, None, **kwargs)


def test_a_backend_without_checkpoints_refuses_them():
    net = numrnn.RNN(2, 4, seed=0)

    class NoCheckpoints:
        STEP_BLOCK = False
        CHECKPOINTS = False
    for k in (64, "auto"):
        with pytest.raises(ValueError, match="checkpoint: checkpointed BPTT runs on the CPU"):
            driver.plan_checkpoints(net, NoCheckpoints, 200, 1, k, None)


# --- the same bits ------------------------------------------------------------------------------


def _grads_equal(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize("cell, phi", CELL_CASES, ids=CELL_IDS)
def test_every_cell_gives_the_bits_of_full_bptt(cell, phi, rng):
    """T = 300 (not a multiple of the segments), B = 3, segments of 64 and 128, and truncation
    chunks of 50 that cross the segments' boundaries."""
    net = numrnn.RNN(2, 5, cell=cell, nonlinearity=phi, cell_options=TEST_OPTIONS.get(cell),
                     seed=0)
    x = rng.standard_normal((300, 3, 2))
    out, h_n = net.forward(x)
    w = rng.standard_normal(out.shape)
    d_h_n = (rng.standard_normal((1, 3, 5)), rng.standard_normal((1, 3, 5))) if paired(cell) \
        else rng.standard_normal((1, 3, 5))
    full = net.vjp(x, w, d_h_n=d_h_n)
    for k in (64, 128):
        _grads_equal(net.vjp(x, w, d_h_n=d_h_n, checkpoint=k), full)
    _grads_equal(net.vjp(x, w, d_h_n=d_h_n, truncate=50, checkpoint=64),
                 net.vjp(x, w, d_h_n=d_h_n, truncate=50))


@pytest.mark.parametrize("layers, bidirectional", [(2, False), (1, True), (3, True)])
@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_layers_and_directions_give_the_bits_of_full_bptt(cell, layers, bidirectional, rng):
    net = numrnn.RNN(3, 6, cell=cell, num_layers=layers, bidirectional=bidirectional, seed=1)
    x = rng.standard_normal((257, 2, 3))
    out, _ = net.forward(x)
    w = rng.standard_normal(out.shape)
    full = net.vjp(x, w)
    _grads_equal(net.vjp(x, w, checkpoint=64), full)
    _grads_equal(net.vjp(x, w, checkpoint=256), full)
    _grads_equal(net.vjp(x, w, checkpoint=320), full)  # one segment longer than T
    _grads_equal(net.vjp(x, w, truncate=70, checkpoint=128), net.vjp(x, w, truncate=70))
    o1, h1, g1 = net.forward_vjp(x, w, checkpoint=64)
    o2, h2, g2 = net.forward_vjp(x, w)
    assert np.array_equal(o1, o2)
    _grads_equal(g1, g2)


def test_float32_noise_batch_first_and_unbatched(rng):
    net = numrnn.RNN(2, 7, cell="gru", seed=0, dtype=np.float32, batch_first=True)
    x = rng.standard_normal((3, 200, 2)).astype(np.float32)
    out, _ = net.forward(x, noise_std=0.4, seed=5)
    w = rng.standard_normal(out.shape).astype(np.float32)
    full = net.vjp(x, w, noise_std=0.4, seed=5)
    _grads_equal(net.vjp(x, w, noise_std=0.4, seed=5, checkpoint=64), full)
    single = numrnn.RNN(2, 7, cell="lstm", seed=0)
    xs = rng.standard_normal((150, 2))
    ws = rng.standard_normal((150, 7))
    _grads_equal(single.vjp(xs, ws, checkpoint=64), single.vjp(xs, ws))


def test_a_pullback_runs_its_segments_again_each_time(rng):
    net = numrnn.RNN(2, 4, cell="lstm", seed=0)
    x = rng.standard_normal((200, 2, 2))
    out, _, pullback = net.forward_pullback(x, checkpoint=64)
    w = rng.standard_normal(out.shape)
    _grads_equal(pullback(w), pullback(w))
    _grads_equal(pullback(w, truncate=30), net.vjp(x, w, truncate=30))


# --- the loss on the final state, the gradient at chosen steps ------------------------------------


def test_a_loss_on_the_final_state_alone(rng):
    """d_output=None is a zero cotangent of the outputs (which are then never kept)."""
    net = numrnn.RNN(2, 5, cell="lstm", seed=0)
    x = rng.standard_normal((300, 2, 2))
    d_h_n = (rng.standard_normal((1, 2, 5)), rng.standard_normal((1, 2, 5)))
    ref = net.vjp(x, np.zeros((300, 2, 5)), d_h_n=d_h_n)
    _grads_equal(net.vjp(x, None, d_h_n=d_h_n), ref)
    _grads_equal(net.vjp(x, None, d_h_n=d_h_n, checkpoint=64), ref)


def test_the_gradient_at_chosen_steps(rng):
    """state_grad[i] = dL/dh_t at t = grad_steps[i]: for a linear network without input and
    L = <v, h_{T-1}>, dL/dh_t = (W^T)^(T-1-t) v exactly (to rounding); its norm is
    state_grad_norm[t]; asking for it changes no other bit."""
    net = numrnn.RNN(1, 6, cell="linear", init="orthogonal", gain=0.97, bias=False, seed=0)
    W = net.state_dict()["weight_hh_l0"]
    T = 300
    x = np.zeros((T, 1))
    h0 = rng.standard_normal((1, 6))
    v = rng.standard_normal((1, 6))
    steps = [0, 63, 64, 150, 299]
    plain = net.vjp(x, None, h0, d_h_n=v)
    for k in (None, 64):
        g = net.vjp(x, None, h0, d_h_n=v, grad_steps=steps, checkpoint=k)
        for i, t in enumerate(steps):
            expect = np.linalg.matrix_power(W.T, T - 1 - t) @ v[0]
            assert np.allclose(g["state_grad"][i], expect, rtol=1e-12, atol=1e-14)
        assert np.allclose(np.linalg.norm(g["state_grad"], axis=1),
                           g["state_grad_norm"][steps], rtol=1e-13)
        _grads_equal({key: g[key] for key in plain}, plain)
    bi = numrnn.RNN(2, 3, cell="gru", bidirectional=True, seed=0)
    xb = rng.standard_normal((130, 2, 2))
    w = rng.standard_normal((130, 2, 6))
    a = bi.vjp(xb, w, grad_steps=[0, 64, 129])
    b = bi.vjp(xb, w, grad_steps=[0, 64, 129], checkpoint=64)
    _grads_equal(a, b)
    assert a["state_grad"].shape == (3, 2, 6)
    assert np.allclose(np.linalg.norm(a["state_grad"], axis=2), a["state_grad_norm"][[0, 64, 129]])


# --- memory ---------------------------------------------------------------------------------------


def _peak(fn):
    """The peak of ``fn``'s traced allocations, its scratch arrays taken fresh (the pool's idle
    buffers dropped first: numrnn.cpu.scratch)."""
    scratch.release()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_budget_policy_stays_within_its_budget(rng):
    """checkpoint="auto" with a budget below the full tape: the pass checkpoints, gives the
    bits of full BPTT, and its peak of traced allocations (NumPy's, measured by tracemalloc)
    stays below the budget; the full tape's peak is well above it."""
    net = numrnn.RNN(1, 64, cell="lstm", seed=0)
    T, B = 4000, 4
    x = rng.standard_normal((T, B, 1))
    d_h_n = (rng.standard_normal((1, B, 64)), rng.standard_normal((1, B, 64)))
    full_need = driver.bytes_needed(net, T, B, backward=True)
    budget = full_need // 6
    k = driver.plan_checkpoints(net, driver.backend_of(net), T, B, "auto", budget,
                                keep_output=False)
    assert k is not None
    ref = net.vjp(x, None, d_h_n=d_h_n)
    full_peak = _peak(lambda: net.vjp(x, None, d_h_n=d_h_n))
    got = {}
    ck_peak = _peak(lambda: got.update(net.vjp(x, None, d_h_n=d_h_n, checkpoint="auto",
                                                memory_budget=budget)))
    _grads_equal(got, ref)
    assert ck_peak <= budget < full_peak, (ck_peak, budget, full_peak)
    # a budget the full tape fits: no checkpoints
    assert driver.plan_checkpoints(net, driver.backend_of(net), T, B, "auto", 10 * full_need,
                                   keep_output=False) is None


def test_memory_grows_like_sqrt_t(rng):
    """The auto interval is about sqrt(T) steps: at 16x the steps the checkpointed peak (less
    the T-long arrays: the input, its gradient and the norms) grows like sqrt(T) plus a
    constant (measured 1.9x), far from the full tape's 16x."""
    net = numrnn.RNN(1, 32, seed=0)
    peaks = []
    for T in (2048, 32768):
        x = rng.standard_normal((T, 1, 1))
        peak = _peak(lambda: net.vjp(x, None, d_h_n=np.ones((1, 1, 32)), checkpoint="auto",
                                     memory_budget=10**9 // 1000))
        peaks.append(peak - T * (8 + 8 + 8))
    assert peaks[1] / peaks[0] < 5.0, peaks


def test_training_takes_checkpoints():
    task = tasks.make_task("adding", T=130)
    runs = []
    for k in (None, 64):
        net = numrnn.RNN(2, 8, cell="gru", seed=0)
        runs.append(train(net, task, steps=3, batch_size=4, seed=0, checkpoint=k))
    assert np.array_equal(runs[0].losses, runs[1].losses)
    assert runs[1].config["checkpoint"] == 64
    for name in runs[0].net.parameters:
        assert np.array_equal(runs[0].net.parameters[name], runs[1].net.parameters[name])
