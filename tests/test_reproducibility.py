"""Same inputs, same numrnn, same machine: the same bits, whatever the thread count.

What is promised (and tested here): outputs and gradients are bitwise equal for any
``numrnn.config.NUM_THREADS`` (work is cut into blocks by ``PARALLEL_BLOCKS``, never by the thread
count), from run to run, and in a forked child (``multiprocessing``'s "fork" start method, with
numrnn's thread pool already running in the parent).  What is not bitwise: one call against the
same sequence split over two calls (tests/test_properties.py checks that to rounding).
"""
import multiprocessing
import os
import warnings

import numpy as np
import pytest

import numrnn
from numrnn import config
from numrnn.cpu import threads
from tests.problems import CELLS


def _case(cell, dtype, B, N=128, T=40, seed=0):
    rng = np.random.default_rng(seed)
    net = numrnn.RNN(N, N, cell=cell, dtype=dtype, seed=seed)
    x = rng.standard_normal((T, B, N)).astype(dtype)
    d_out = rng.standard_normal((T, B, N)).astype(dtype)
    return net, x, d_out


def _bits(net, x, d_out):
    out, h_n, grads = net.forward_vjp(x, d_out)
    arrays = [out] + list(h_n if isinstance(h_n, tuple) else (h_n,)) + list(grads.values())
    return [a.tobytes() for a in arrays]


@pytest.mark.parametrize("B", [1, 32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", CELLS)
def test_thread_counts_give_the_same_bits(monkeypatch, cell, dtype, B):
    """1, 2 and 4 threads over 4 blocks (main split the work by the thread count, and the weight
    gradients' K-split partial sums changed by an ulp at B = 32, N = 128)."""
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 4, raising=False)
    T = 160 if B == 1 else 40
    net, x, d_out = _case(cell, dtype, B, T=T)
    results = {}
    for n in (1, 2, 4):
        monkeypatch.setattr(config, "NUM_THREADS", n)
        results[n] = _bits(net, x, d_out)
    assert results[1] == results[2] == results[4]
    assert threads.pieces(B * T, B * T * 128 * 128) == 4  # the products were split


def test_blocks_do_not_depend_on_threads(monkeypatch):
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 3)
    for n in (1, 2, 8):
        monkeypatch.setattr(config, "NUM_THREADS", n)
        assert threads.pieces(32, 10**9) == 3
        seen = []
        threads.run(lambda a, b: seen.append((a, b)), 32, 3)
        assert sorted(seen) == [(0, 10), (10, 21), (21, 32)]


def _child_bits(args):
    cell, dtype, B = args
    return _bits(*_case(cell, dtype, B))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_pool_gives_the_same_bits_as_serial():
    """After a call that used numrnn's thread pool, forked children run numrnn too (main hung
    forever: the child inherited the pool object but none of its threads)."""
    cases = [("lstm", np.float64, 32), ("gru", np.float32, 32)]
    serial = [_child_bits(c) for c in cases]  # the pool is running in this process now
    assert threads._pool is not None
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        # Python >= 3.12 warns that forking a multi-threaded process may deadlock: numrnn's
        # at-fork handler is what makes it safe
        warnings.simplefilter("ignore", DeprecationWarning)
        with ctx.Pool(2) as pool:
            forked = pool.map_async(_child_bits, cases).get(timeout=300)
    assert forked == serial


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_os_fork_child_finishes_its_call():
    net, x, d_out = _case("tanh", np.float64, 32)
    expected = _bits(net, x, d_out)
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: one call, then report whether it matched
        try:
            ok = _bits(net, x, d_out) == expected
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    import select

    ready, _, _ = select.select([read], [], [], 300)
    got = os.read(read, 1) if ready else b""
    os.close(read)
    if not ready:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert got == b"1", "the forked child hung or gave other bits"
