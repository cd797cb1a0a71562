"""A call whose arrays cannot fit fails before allocating, with the sizes; never a silent kill.

main allocated the BPTT tape of LSTM B=32 N=256 T=40000 (34 GiB on a 24 GiB machine) and the
kernel killed the process with no message.
"""
import numpy as np
import pytest

import numrnn
from numrnn import driver
from numrnn import _memory, config


def test_a_tape_larger_than_memory_is_checkpointed_or_refused_before_allocating(monkeypatch):
    """LSTM B=32 N=256 T=40000: the full tape (34 GiB) does not fit 24 GiB, so vjp plans a
    checkpointed pass that does; with 100 MiB even that does not fit, and the call is refused
    with the sizes before anything is allocated."""
    monkeypatch.setattr(_memory, "available_bytes", lambda: 24 * 2**30)
    net = numrnn.RNN(1, 256, cell="lstm", seed=0)
    need = driver.bytes_needed(net, 40000, 32, backward=True)
    assert need > 24 * 2**30
    k = driver.plan_checkpoints(net, driver.backend_of(net), 40000, 32, None, None,
                                keep_output=False)
    assert k is not None and k % 64 == 0
    assert driver.checkpointed_bytes(net, 40000, 32, k, keep_output=False) < 2**30
    monkeypatch.setattr(_memory, "available_bytes", lambda: 100 * 2**20)
    x = np.zeros((40000, 32, 1))
    with pytest.raises(MemoryError) as info:
        net.vjp(x, None, d_h_n=(np.zeros((1, 32, 256)), np.zeros((1, 32, 256))))
    msg = str(info.value)
    for words in ("vjp: even checkpointed BPTT", "T=40000 steps", "B=32 sequences",
                  "N=256 units", "lstm", "MiB", "the full tape would need"):
        assert words in msg, (words, msg)
    # an explicit interval is checked against the memory too
    with pytest.raises(MemoryError, match="the checkpoints and one segment of 64 steps"):
        net.vjp(x, None, checkpoint=64)


def test_a_full_tape_that_does_not_fit_is_refused_on_a_backend_without_checkpoints(
        monkeypatch):
    """The GPU backend has no checkpointed pass: there the full tape is checked as before."""
    monkeypatch.setattr(_memory, "available_bytes", lambda: 24 * 2**30)
    net = numrnn.RNN(1, 256, cell="lstm", seed=0)

    class NoCheckpoints:
        STEP_BLOCK = False
        CHECKPOINTS = False
        check_memory = staticmethod(_memory.check)
    with pytest.raises(MemoryError) as info:
        driver.plan_checkpoints(net, NoCheckpoints, 40000, 32, None, None, caller="forward_vjp")
    msg = str(info.value)
    for words in ("forward_vjp: the BPTT tape", "T=40000 steps", "24.0 GiB of memory are "
                  "available", "at most T="):
        assert words in msg, (words, msg)
    t_max = int(msg.split("at most T=")[1].split()[0])
    assert 20000 < t_max < 40000
    assert driver.bytes_needed(net, t_max, 32, backward=True) <= 24 * 2**30


def test_the_real_limit_applies_without_patching():
    """The same call on this machine, whatever its memory: it fits, or fails with the sizes."""
    avail = _memory.available_bytes()
    if avail is None:
        pytest.skip("the available memory cannot be read here")
    net = numrnn.RNN(1, 256, cell="lstm", seed=0)
    # checkpointed, forward_pullback still keeps the outputs: about 64 KiB a step here
    per_step = (driver.checkpointed_bytes(net, 2 * 10**6, 32, 64)
                - driver.checkpointed_bytes(net, 10**6, 32, 64)) / 10**6
    T = int(2 * avail // per_step) + 1
    with pytest.raises(MemoryError, match=f"T={T} steps"):
        net.forward_pullback(np.zeros((T, 32, 1)), checkpoint=64)


def test_forward_alone_is_checked_too(monkeypatch):
    monkeypatch.setattr(_memory, "available_bytes", lambda: 10 * 2**20)
    net = numrnn.RNN(1, 64, cell="gru", num_layers=2, seed=0)
    with pytest.raises(MemoryError, match=r"forward for T=10000 steps, B=8 sequences"):
        net.forward(np.zeros((10000, 8, 1)))
    net.forward(np.zeros((10, 8, 1)))  # small calls run


def test_the_check_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(_memory, "available_bytes", lambda: 1)
    monkeypatch.setattr(config, "MEMORY_CHECK", False)
    numrnn.RNN(1, 4, seed=0).forward(np.zeros((10, 1)))


def test_available_memory_is_read_from_the_system():
    avail = _memory.available_bytes()
    assert avail is None or 0 < avail < 2**60
    assert _memory.format_bytes(1536) == "1.5 KiB"
    assert _memory.format_bytes(3 * 2**30) == "3.0 GiB"


def test_idle_scratch_buffers_are_let_go_before_a_call_is_refused(own_pool, monkeypatch):
    """The scratch pool's idle buffers (numrnn.cpu.scratch) are memory the call can have: the
    check drops them and asks again before it refuses."""
    from numrnn.cpu import scratch

    monkeypatch.setattr(config, "SCRATCH_BYTES", 256 * 2**20)
    idle = scratch.empty(80 * 2**20, np.uint8)
    del idle
    assert scratch.pooled_bytes() == (80 * 2**20 + 64, 0)
    # the system's free memory, as if the pool's bytes came back to it when dropped
    monkeypatch.setattr(_memory, "available_bytes",
                        lambda: 200 * 2**20 - scratch.pooled_bytes()[0])
    _memory.check("vjp: the BPTT tape", 150 * 2**20, "T=1 steps")  # fits once it is gone
    assert scratch.pooled_bytes() == (0, 0)
    with pytest.raises(MemoryError, match="needs 250.0 MiB, but only 200.0 MiB"):
        _memory.check("vjp: the BPTT tape", 250 * 2**20, "T=1 steps")
