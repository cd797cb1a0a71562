"""The CPU backend's scratch pool (numrnn.cpu.scratch): buffers reused between calls.

A buffer must never be handed out while an array made from it is alive (a caller's result, a
view of it, a tape another thread still reads); the pool must stay within its bytes; arrays too
small or too large for it, or with the pool off, are plain ones; threads share it and never an
array in use; a call's bits must not depend on
the pool; repeated calls of one size must reuse the buffers of the last instead of taking new
memory.
"""
import gc
import os
import signal
import threading
import weakref

import numpy as np
import pytest

import numrnn
from numrnn import config
from numrnn.cpu import scratch

KIB = 2**10


@pytest.fixture
def fresh_pool(own_pool, monkeypatch):
    """An empty pool of 1 MiB at most, arrays of 64 KiB and up pooled."""
    monkeypatch.setattr(config, "SCRATCH_BYTES", 2**20)
    monkeypatch.setattr(config, "SCRATCH_MIN_BYTES", 64 * KIB)


def _address(a):
    return a.__array_interface__["data"][0]


def test_array_has_the_shape_dtype_and_alignment_asked_for(fresh_pool):
    a = scratch.empty((3, 100, 60), np.float32)
    assert a.shape == (3, 100, 60) and a.dtype == np.float32
    assert a.flags.c_contiguous and a.flags.writeable
    assert _address(a) % 64 == 0
    assert scratch.pooled_bytes() == (3 * 100 * 60 * 4 + 64,) * 2
    b = scratch.empty(20000, np.float64)  # an int shape
    assert b.shape == (20000,)


def test_buffer_is_reused_only_when_nothing_refers_to_it(fresh_pool):
    a = scratch.empty((100, 100), np.float64)
    a[...] = 1.0
    b = scratch.empty((100, 100), np.float64)  # a is alive: another buffer
    assert not np.shares_memory(a, b)
    where = _address(a)
    row = a[7]  # a view keeps the buffer in use after a is gone
    del a
    c = scratch.empty((100, 100), np.float64)
    assert not np.shares_memory(c, row) and not np.shares_memory(c, b)
    np.testing.assert_array_equal(row, 1.0)
    del row, c
    d = scratch.empty((100, 100), np.float64)  # now idle: the same memory again
    assert _address(d) in (where, _address(b)) or scratch.pooled_bytes()[0] <= 2**20


def test_idle_buffer_of_the_same_size_is_taken_again(fresh_pool):
    a = scratch.empty((200, 100), np.float32)
    where = _address(a)
    del a
    assert _address(scratch.empty((200, 100), np.float32)) == where
    total = scratch.pooled_bytes()[0]
    del_me = scratch.empty((100, 200), np.float32)  # same bytes, another shape: the same buffer
    assert _address(del_me) == where and scratch.pooled_bytes()[0] == total


def test_small_large_and_off_arrays_are_plain(fresh_pool, monkeypatch):
    small = scratch.empty(64 * KIB // 8 - 1, np.float64)
    large = scratch.empty(2**20 // 8, np.float64)  # with the alignment above the pool's bytes
    assert small.base is None and large.base is None
    assert scratch.pooled_bytes() == (0, 0)
    monkeypatch.setattr(config, "SCRATCH_BYTES", 0)
    assert scratch.empty(100 * KIB, np.uint8).base is None
    assert scratch.empty((0, 5), np.float64).shape == (0, 5)


def test_pool_stays_within_its_bytes(fresh_pool):
    held = [scratch.empty(300 * KIB, np.uint8) for _ in range(3)]  # 3 * (300 KiB + 64) pooled
    total, busy = scratch.pooled_bytes()
    assert total == busy == 3 * (300 * KIB + 64)
    over = scratch.empty(300 * KIB, np.uint8)  # a fourth would pass 1 MiB: a plain array
    assert over.base is None and scratch.pooled_bytes()[0] == total
    first = weakref.ref(held[0].base)  # (not its address: malloc may hand that out again)
    del held[0]  # the least recently handed out is idle: dropped to make room for another size
    other = scratch.empty(310 * KIB, np.uint8)
    assert other.base is not None and first() is None
    assert scratch.pooled_bytes() == (2 * (300 * KIB + 64) + 310 * KIB + 64,) * 2
    del held, other
    assert scratch.release() == 2 * (300 * KIB + 64) + 310 * KIB + 64
    assert scratch.pooled_bytes() == (0, 0)


def test_threads_share_the_pool_and_never_an_array_in_use(fresh_pool):
    mine = scratch.empty(100 * KIB, np.uint8)
    where = _address(mine)
    seen = {}

    def busy():
        seen["busy"] = _address(scratch.empty(100 * KIB, np.uint8))  # mine is in use

    def idle():
        seen["idle"] = _address(scratch.empty(100 * KIB, np.uint8))

    for target in (busy, idle):
        t = threading.Thread(target=target)
        t.start()
        t.join()
        if target is busy:
            assert seen["busy"] != where
            del mine  # now both buffers are idle: the least recently handed out is taken
    assert seen["idle"] == where
    assert scratch.pooled_bytes() == (2 * (100 * KIB + 64), 0)


def test_arrays_taken_at_once_by_many_threads_never_overlap(fresh_pool):
    errors = []
    start = threading.Barrier(4)

    def work(k):
        start.wait()
        for i in range(300):
            a = scratch.empty(64 * KIB + 8 * (i % 5), np.uint8)
            a.fill(k)
            b = scratch.empty(100 * KIB, np.uint8)
            b.fill(k + 10)
            if not (np.all(a == k) and np.all(b == k + 10)):
                errors.append((k, i))

    workers = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert errors == []
    total, busy = scratch.pooled_bytes()
    assert busy == 0 and total <= 2**20


@pytest.mark.parametrize("cell, dtype, B, N", [("lstm", "float32", 1, 128),
                                                ("gru", "float64", 4, 64),
                                                ("tanh", "float64", 8, 48)])
def test_results_kept_by_the_caller_survive_later_calls(cell, dtype, B, N, own_pool,
                                                        monkeypatch):
    """The tape and the projections of a call are pooled and reused by the next; the arrays a
    caller keeps (outputs, gradients, an analysis' coefficients) must not be overwritten."""
    monkeypatch.setattr(config, "SCRATCH_MIN_BYTES", 1)  # every array through the pool
    net = numrnn.RNN(N, N, cell=cell, dtype=dtype, num_layers=2, seed=1)
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((40, B, N)).astype(dtype) for _ in range(2))
    d = rng.standard_normal((40, B, N)).astype(dtype)
    out1, _ = net.forward(x1)
    g1 = net.vjp(x1, d)
    kept_out, kept_g = out1.copy(), {k: v.copy() for k, v in g1.items()}
    for _ in range(3):  # other inputs: every pooled buffer free again is written
        net.forward(x2)
        net.vjp(x2, d)
    np.testing.assert_array_equal(out1, kept_out)
    for k, v in g1.items():
        np.testing.assert_array_equal(v, kept_g[k])


def test_bits_do_not_depend_on_the_pool(own_pool, monkeypatch):
    net = numrnn.RNN(64, 96, cell="gru", dtype="float32", num_layers=2, seed=3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 3, 64)).astype(np.float32)
    d = rng.standard_normal((50, 3, 96)).astype(np.float32)
    monkeypatch.setattr(config, "SCRATCH_MIN_BYTES", 1)
    pooled = [net.vjp(x, d) for _ in range(2)]
    monkeypatch.setattr(config, "SCRATCH_BYTES", 0)
    plain = net.vjp(x, d)
    for g in pooled:
        for k in plain:
            np.testing.assert_array_equal(g[k], plain[k])


def test_repeated_calls_reuse_the_buffers_of_the_last(fresh_pool, monkeypatch):
    """From the second call on, the pool takes no new memory: every array the call drops is
    made from a buffer an earlier call dropped.  On one thread: a pool thread holds the
    operands of its last job until its next one comes or it stops spinning, and a buffer taken
    meanwhile is another one (a second generation, taken once or twice: timing decides)."""
    monkeypatch.setattr(config, "NUM_THREADS", 1)
    monkeypatch.setattr(config, "SCRATCH_BYTES", 64 * 2**20)
    net = numrnn.RNN(64, 64, cell="lstm", dtype="float64", seed=0)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 4, 64))
    d = rng.standard_normal((200, 4, 64))
    net.vjp(x, d)
    gc.collect()  # a process's first call (loading its kernels) leaves cycles that may hold one
    total = scratch.pooled_bytes()[0]
    assert total > 200 * 4 * 4 * 64 * 8  # at least the input projection pooled
    for _ in range(4):
        net.vjp(x, d)
        assert scratch.pooled_bytes()[0] == total, (scratch.pooled_bytes(), total)


def test_step_jacobians_come_from_the_pool_and_a_kept_one_survives(fresh_pool, monkeypatch):
    """numrnn.jacobians' output (T * B * S * S float64: 65 MB at the benchmark's size, where a
    fresh array took a page fault per 4 KiB) is pooled: one the caller keeps stays busy and is
    never written again; one it drops is taken again by the next call (no new memory)."""
    monkeypatch.setattr(config, "NUM_THREADS", 1)
    monkeypatch.setattr(config, "SCRATCH_BYTES", 64 * 2**20)
    net = numrnn.RNN(3, 24, cell="gru", seed=0)
    rng = np.random.default_rng(3)
    x1, x2 = rng.standard_normal((150, 3)), rng.standard_normal((150, 3))
    kept = numrnn.jacobians(net, x1)
    gc.collect()
    assert kept.nbytes == 150 * 24 * 24 * 8 and scratch.pooled_bytes()[1] >= kept.nbytes
    copy = kept.copy()
    numrnn.jacobians(net, x2)
    gc.collect()
    total = scratch.pooled_bytes()[0]
    for _ in range(3):
        J = numrnn.jacobians(net, x2)
        assert not np.shares_memory(J, kept)
        del J
        assert scratch.pooled_bytes()[0] == total, (scratch.pooled_bytes(), total)
    np.testing.assert_array_equal(kept, copy)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_another_thread_holds_the_pool_can_use_it(fresh_pool):
    """A child forked while another thread was taking a buffer must not wait forever for that
    thread (which does not exist in the child): the child gets a free lock."""
    held, go = threading.Event(), threading.Event()

    def hold():
        with scratch._lock:
            held.set()
            go.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: killed by the alarm if it hangs
        try:
            signal.alarm(10)
            a = scratch.empty(100 * KIB, np.uint8)
            a.fill(1)
            os._exit(0 if a.base is not None and int(a.sum()) == 100 * KIB else 1)
        except BaseException:
            os._exit(1)
    go.set()
    t.join()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
