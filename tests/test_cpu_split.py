"""One step split over threads by units (small batches: fewer sequences than the machine has
blocks, or a few a block).

The split path (``numrnn.cpu.recurrence.unit_blocks``) must give what the batch-split path gives,
to rounding (its products run on blocks of rows of W_hh), the same bits on any thread count, and
report NaN/inf and gradient norms as the batch path does.  Sizes are forced small here with
``config`` patches: three unit blocks of N = 50 units (edges 0, 16, 32, 50).
"""
import time

import numpy as np
import pytest
from numba import njit

import numrnn
from numrnn import config
from numrnn.cpu import recurrence, sync, threads

from .problems import CELL_CASES, CELL_IDS, as_pair, make_problem


@pytest.fixture
def split(monkeypatch):
    """Force the split for every size: three blocks, no work thresholds, up to four sequences
    a block."""
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 3)
    monkeypatch.setattr(config, "SPLIT_MAX_ROWS", 4)
    monkeypatch.setattr(config, "SPLIT_MIN_SEQUENCE_WORK", 1)
    monkeypatch.setattr(config, "SPLIT_MIN_STEP_WORK", 1)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 1)
    return monkeypatch


def _both(monkeypatch, fn, threads_list=(1, 2, 3)):
    """fn() on the batch path, then on the split path with each thread count."""
    monkeypatch.setattr(config, "SPLIT_MIN_STEP_WORK", 10**18)
    batch = fn()
    monkeypatch.setattr(config, "SPLIT_MIN_STEP_WORK", 1)
    runs = []
    for n in threads_list:
        monkeypatch.setattr(config, "NUM_THREADS", n)
        runs.append(fn())
    return batch, runs


def _flat(result):
    out, h_n, grads = result
    h, c = as_pair(h_n)
    parts = [out, h] + ([] if c is None else [c]) + [grads[k] for k in sorted(grads)]
    return parts


def _close(a, b, rtol):
    for u, v in zip(a, b):
        scale = max(np.max(np.abs(u)), 1e-300)
        np.testing.assert_allclose(u, v, rtol=0, atol=rtol * scale)


def test_the_split_is_taken_and_its_blocks_do_not_depend_on_threads(split):
    for n in (1, 2, 8):
        split.setattr(config, "NUM_THREADS", n)
        for dtype in (np.float32, np.float64):
            np.testing.assert_array_equal(recurrence.unit_blocks(2, 50, 50, 150, 10, dtype),
                                          [0, 16, 32, 50])
    # B = the block count: by sequences
    assert recurrence.unit_blocks(3, 50, 50, 150, 10, np.float64) is None
    # fewer than two 16-unit blocks
    assert recurrence.unit_blocks(1, 31, 31, 31, 10, np.float64) is None
    split.setattr(config, "SPLIT_MIN_STEP_WORK", 10**6)
    # a step too small to pay
    assert recurrence.unit_blocks(1, 50, 50, 150, 10, np.float64) is None


def test_batches_of_a_few_sequences_a_block_are_split_by_units(split):
    """From two sequences a block (at one, B = the block count, the batch split's products are
    gemv) to SPLIT_MAX_ROWS a block, when one sequence's step carries SPLIT_MIN_SEQUENCE_WORK
    (R*N * G*N = 7500 here; float64 counts twice): with three blocks, B = 4 to 12."""
    for B in (4, 6, 9, 12):
        np.testing.assert_array_equal(recurrence.unit_blocks(B, 50, 50, 150, 10, np.float64),
                                      [0, 16, 32, 50])
    for B in (3, 13, 64):
        assert recurrence.unit_blocks(B, 50, 50, 150, 10, np.float64) is None
    split.setattr(config, "SPLIT_MAX_ROWS", 2)
    assert recurrence.unit_blocks(7, 50, 50, 150, 10, np.float64) is None
    split.setattr(config, "SPLIT_MAX_ROWS", 4)
    split.setattr(config, "SPLIT_MIN_STEP_WORK", 10**18)  # (the rule of B < the block count)
    split.setattr(config, "SPLIT_MIN_SEQUENCE_WORK", 15000)
    np.testing.assert_array_equal(recurrence.unit_blocks(6, 50, 50, 150, 10, np.float64),
                                  [0, 16, 32, 50])
    assert recurrence.unit_blocks(6, 50, 50, 150, 10, np.float32) is None
    assert recurrence.unit_blocks(2, 50, 50, 150, 10, np.float64) is None
    split.setattr(config, "SPLIT_MIN_SEQUENCE_WORK", 15001)
    assert recurrence.unit_blocks(6, 50, 50, 150, 10, np.float64) is None
    split.setattr(config, "SPLIT_MIN_SEQUENCE_WORK", 1)
    split.setattr(config, "PARALLEL_MIN_WORK", 6 * 7500 * 10 + 1)  # the call must pay too
    assert recurrence.unit_blocks(6, 50, 50, 150, 10, np.float64) is None
    split.setattr(config, "PARALLEL_MIN_WORK", 1)
    for n in (1, 2, 8):  # never the thread count
        split.setattr(config, "NUM_THREADS", n)
        np.testing.assert_array_equal(recurrence.unit_blocks(6, 50, 50, 150, 10, np.float32),
                                      [0, 16, 32, 50])


def test_a_float64_step_counts_its_weight_times_the_work_of_a_float32_one(split):
    """A small batch's step is bound by reading M: float64 splits from a third of the
    multiply-adds (B * R*N * G*N = 7500 here; ``config.SPLIT_FLOAT64_WEIGHT`` = 3)."""
    assert config.SPLIT_FLOAT64_WEIGHT == 3
    split.setattr(config, "SPLIT_MIN_STEP_WORK", 22500)
    assert recurrence.unit_blocks(1, 50, 50, 150, 10, np.float32) is None
    np.testing.assert_array_equal(recurrence.unit_blocks(1, 50, 50, 150, 10, np.float64),
                                  [0, 16, 32, 50])
    split.setattr(config, "SPLIT_MIN_STEP_WORK", 22501)
    assert recurrence.unit_blocks(1, 50, 50, 150, 10, np.float64) is None
    split.setattr(config, "SPLIT_FLOAT64_WEIGHT", 2)  # the weight is read at every call
    split.setattr(config, "SPLIT_MIN_STEP_WORK", 15000)
    np.testing.assert_array_equal(recurrence.unit_blocks(1, 50, 50, 150, 10, np.float64),
                                  [0, 16, 32, 50])
    split.setattr(config, "SPLIT_MIN_STEP_WORK", 15001)
    assert recurrence.unit_blocks(1, 50, 50, 150, 10, np.float64) is None
    split.setattr(config, "SPLIT_MIN_STEP_WORK", 7500)
    np.testing.assert_array_equal(recurrence.unit_blocks(1, 50, 50, 150, 10, np.float32),
                                  [0, 16, 32, 50])


@pytest.mark.parametrize("B, dot", [(1, "auto"), (2, "auto"), (7, "on"), (7, "off")])
@pytest.mark.parametrize("cell,nonlinearity", CELL_CASES, ids=CELL_IDS)
def test_every_cell_matches_the_batch_path_with_the_same_bits_on_any_thread_count(
        split, cell, nonlinearity, B, dot):
    """B = 7 (three sequences a block) with each step's products as compiled dot products and
    through the BLAS, whatever the machine would choose."""
    split.setattr(config, "DOT_PRODUCTS", dot)
    rng = np.random.default_rng(7)
    net, x, h0, d_out, d_h = make_problem(rng, cell, nonlinearity=nonlinearity, T=9, B=B, I=5,
                                          N=50)
    batch, runs = _both(split, lambda: _flat(net.forward_vjp(x, d_out, h0, d_h)))
    bits = [[a.tobytes() for a in r] for r in runs]
    assert bits[0] == bits[1] == bits[2]
    _close(batch, runs[0], 1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_directions_truncation_and_checkpoints(split, dtype):
    split.setattr(config, "STEP_BLOCK_MIN", 16)
    split.setattr(config, "STEP_BLOCK_MAX", 16)
    rng = np.random.default_rng(3)
    net, x, h0, d_out, d_h = make_problem(rng, "lstm", num_layers=2, bidirectional=True, T=70,
                                          B=1, I=4, N=40, dtype=dtype)

    def run():
        return [net.vjp(x, d_out, h0, d_h, truncate=7),
                net.vjp(x, d_out, h0, d_h, checkpoint=16),
                net.vjp(x, d_out, h0, d_h)]

    batch, runs = _both(split, run, (1, 2))
    truncated, checkpointed, full = runs[0]
    for k in full:
        assert checkpointed[k].tobytes() == full[k].tobytes()  # checkpoints: the same bits
        for r in runs[1:]:
            assert r[0][k].tobytes() == truncated[k].tobytes()
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for b_run, s_run in zip(batch, runs[0]):
        _close([b_run[k] for k in sorted(b_run)], [s_run[k] for k in sorted(s_run)], tol)


def test_nonfinite_states_are_reported_at_the_same_step(split):
    """An input of 1e308 at t = 5 makes the linear cell overflow soon after (sequence 1)."""
    rng = np.random.default_rng(0)
    net, x, h0, d_out, d_h = make_problem(rng, "linear", T=12, B=2, I=3, N=50)
    x[5, 1, :] = 1e308
    messages = []
    for path in (10**18, 1):
        split.setattr(config, "SPLIT_MIN_STEP_WORK", path)
        with pytest.raises(numrnn.NonFiniteError) as info:
            net.forward(x, h0)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "of sequence b=1" in messages[1]


def test_gradient_norms_match_the_batch_path_and_survive_overflow(split):
    """The norms of dL/dh_t combine the blocks' parts: to rounding what one pass gives, and
    finite where the squares overflow or underflow float64 (cotangents of 1e200, 1e-200)."""
    rng = np.random.default_rng(1)
    net, x, h0, d_out, _ = make_problem(rng, "tanh", T=20, B=1, I=3, N=50)
    for scale in (1.0, 1e200, 1e-200):
        d = d_out * scale
        batch, runs = _both(split, lambda: net.vjp(x, d, h0)["state_grad_norm"], (1, 2))
        assert np.all(np.isfinite(runs[0])) and np.all(runs[0] > 0)
        np.testing.assert_allclose(runs[0], batch, rtol=1e-13)
        assert runs[0].tobytes() == runs[1].tobytes()


@njit(nogil=True)
def _meet_or_fail(seen, failing, flags, me, n_threads):
    """Participant ``me``: marks ``seen``, raises if it is ``failing``, else waits at the
    barrier for 10 phases (returns only if every participant arrives or it is released)."""
    seen[me] = 1
    if me == failing:
        raise RuntimeError("participant failed")
    for phase in range(1, 11):
        sync.arrive_and_wait(flags, me, n_threads, phase)


@pytest.mark.parametrize("failing", [0, 1])
def test_a_failing_participant_does_not_hang_the_others(monkeypatch, failing):
    """The caller's participant (0) or a pool thread's (1) raises: the other is released, the
    error reaches the caller, and the pool runs the next call."""
    monkeypatch.setattr(threads, "_alone_until", 0.0)  # two threads, whatever ran before
    monkeypatch.setattr(config, "NUM_THREADS", 2)
    seen = np.zeros(2, np.int64)
    with pytest.raises(RuntimeError, match="participant failed"):
        threads.together(_meet_or_fail, (seen, failing), 2)
    assert seen.tolist() == [1, 1]
    again = np.zeros(2, np.int64)
    threads.together(_meet_or_fail, (again, -1), 2)
    assert again.tolist() == [1, 1]


def test_runs_that_mostly_waited_send_the_next_calls_to_one_thread(split, monkeypatch):
    """On a loaded machine the split falls back to one thread for a while (after two runs in a
    row that mostly waited; one alone is a moment's hiccup): the same bits."""
    rng = np.random.default_rng(5)
    net, x, h0, d_out, d_h = make_problem(rng, "lstm", T=30, B=1, I=3, N=50)
    split.setattr(config, "NUM_THREADS", 2)
    monkeypatch.setattr(threads, "_alone_until", 0.0)
    before = net.vjp(x, d_out, h0, d_h)
    # from here on the shares are the test's, whatever the machine's load did to the vjp's runs
    monkeypatch.setattr(threads, "_alone_until", 0.0)
    monkeypatch.setattr(threads, "_waited_runs", 0)
    shares = iter([0.9, 0.1, 0.9, 0.9])  # waited, not, then twice in a row
    monkeypatch.setattr(threads, "waited_share", lambda *args: next(shares))
    for waited_twice in (False, False, False, True):
        net.forward(x, h0)  # one split run each
        assert (threads._alone_until > time.monotonic()) is waited_twice
    after = net.vjp(x, d_out, h0, d_h)  # on one thread
    assert all(before[k].tobytes() == after[k].tobytes() for k in before)
    assert next(shares, None) is None  # the vjp's runs, on one thread, were not measured


def test_waited_share_reads_the_threads_slots():
    from numrnn.cpu import sync

    flags = np.zeros(2 * sync.STRIDE, np.int64)
    flags[1], flags[sync.STRIDE + 1] = 30, 10
    assert threads.waited_share(flags, 2, 100) == 0.2
    assert threads.waited_share(flags, 1, 100) == 0.0
