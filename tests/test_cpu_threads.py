"""numrnn's thread pool (numrnn.cpu.threads): compiled jobs started and joined without the GIL.

A job must give the bits of the same blocks run one after another, whatever the thread count;
an error in any block must reach the caller and leave the pool usable; a pool thread asleep in
the OS must wake for the next job; a pool thread that comes late leaves its blocks to the
caller, which does not wait for it; a pool thread that starts its job on its caller's CPU moves
off it; a caller that finds the pool busy (another Python thread's call) runs its blocks alone.
"""
import os
import threading
import time

import numpy as np
import pytest
from numba import njit

from numrnn import config
from numrnn.cpu import blas, products, sync, threads


@njit(nogil=True)
def _fill(out, scale, fail_at, b0, b1):
    """out[b0:b1] = scale * (index + 1), raising at index ``fail_at``."""
    for i in range(b0, b1):
        if i == fail_at:
            raise ValueError("block failed")
        out[i] = scale * (i + 1.0)


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(config, "NUM_THREADS", 2)


def test_run_kernel_covers_every_item_once(two_threads):
    out = np.zeros(1000)
    threads.run_kernel(_fill, (out, 2.0, -1), 1000, 7)
    np.testing.assert_array_equal(out, 2.0 * np.arange(1, 1001))


@pytest.mark.parametrize("fail_at", [3, 997])  # in the caller's share, in the helper's
def test_an_error_in_a_block_reaches_the_caller_and_the_pool_goes_on(two_threads, fail_at):
    out = np.zeros(1000)
    with pytest.raises(ValueError, match="block failed"):
        threads.run_kernel(_fill, (out, 1.0, fail_at), 1000, 2)
    out[:] = 0
    threads.run_kernel(_fill, (out, 3.0, -1), 1000, 2)
    np.testing.assert_array_equal(out, 3.0 * np.arange(1, 1001))


@njit(nogil=True)
def _fill_in_turn(out, started, fail_at, b0, b1):
    """As :func:`_fill` (scale 1), but the block holding item 0 first waits (up to ~10 s) until
    another block has started, so that the other block surely runs on another thread."""
    if b0 > 0:
        sync.store_release(started, 0, 1)
    else:
        for _ in range(10_000_000):
            if sync.load_acquire(started, 0) != 0:
                break
            sync.sched_yield()
    for i in range(b0, b1):
        if i == fail_at:
            raise ValueError("block failed")
        out[i] = i + 1.0


@pytest.mark.parametrize("fail_at", [3, 997])  # in the caller's block, in the helper's
def test_an_error_on_either_thread_reaches_the_caller(two_threads, fail_at):
    out, started = np.zeros(1000), np.zeros(sync.STRIDE, np.int64)
    with pytest.raises(ValueError, match="block failed"):
        threads.run_kernel(_fill_in_turn, (out, started, fail_at), 1000, 2)
    assert started[0] == 1  # the helper's block ran (on the pool thread: the caller waited)
    out[:], started[:] = 0, 0
    threads.run_kernel(_fill_in_turn, (out, started, -1), 1000, 2)
    np.testing.assert_array_equal(out, np.arange(1, 1001.0))


def test_a_late_pool_thread_leaves_its_blocks_to_the_caller(two_threads):
    """The pool thread is held in another job (as a sleeping thread's CPU is held by the
    hypervisor): the caller runs both blocks itself and returns without it; the thread then
    skips the finished job, and the next runs on both threads."""
    out = np.zeros(1000)
    threads.run_kernel(_fill, (out, 1.0, -1), 1000, 2)  # the pool exists
    worker = threads._pool[0]
    running, release = threading.Event(), threading.Event()

    def hold(seq):
        running.set()
        release.wait(60)

    with threads._pool_lock:
        worker.post(hold)
        threads._let_go(threads._board, 1)
    assert running.wait(60)
    try:
        t0 = time.perf_counter()
        threads.run_kernel(_fill, (out, 2.0, -1), 1000, 2)
        alone = time.perf_counter() - t0
        np.testing.assert_array_equal(out, 2.0 * np.arange(1, 1001))
    finally:
        release.set()
    assert alone < 30  # not blocked on the held thread (which is released after 60 s)
    out2, started = np.zeros(1000), np.zeros(sync.STRIDE, np.int64)
    threads.run_kernel(_fill_in_turn, (out2, started, -1), 1000, 2)
    assert started[0] == 1
    np.testing.assert_array_equal(out2, np.arange(1, 1001.0))


def test_a_pool_thread_asleep_in_the_os_wakes_for_the_next_job(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "IDLE_SPIN_SECONDS", 1e-6)  # asleep right after each job
    out = np.zeros(100)
    for k in range(5):
        threads.run_kernel(_fill, (out, float(k), -1), 100, 2)
        np.testing.assert_array_equal(out, k * np.arange(1, 101.0))
        time.sleep(0.02)


def test_a_pool_thread_on_its_callers_cpu_moves_off_it(two_threads, monkeypatch):
    """The CPUs are stood in for: where the pool thread finds the CPU its caller posted from,
    it moves off that one before the job, and only then; the job runs either way."""
    threads.run(lambda b0, b1: None, 2, 2)  # the pool exists
    worker = threads._pool[0]
    main = threading.get_ident()
    left = []
    monkeypatch.setattr(threads, "_leave_cpu",
                        lambda cpu: left.append((cpu, threading.get_ident())) or True)
    ran = []
    for same in (True, False, True):
        monkeypatch.setattr(threads, "_current_cpu", (lambda: 3) if same else (
            lambda: 3 if threading.get_ident() == main else 1))
        moves, left[:], ran[:] = worker.moves, [], []
        threads.run(lambda b0, b1: ran.append((b0, threading.get_ident())), 2, 2)
        assert sorted(ran) == [(0, main), (1, worker.thread.ident)]
        assert left == ([(3, worker.thread.ident)] if same else [])
        assert worker.moves == moves + same


@pytest.mark.skipif(threads._getcpu is None or not hasattr(os, "sched_getaffinity")
                    or len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to move between")
def test_leave_cpu_moves_the_thread_and_gives_its_affinity_back(monkeypatch):
    """The thread's affinity shrinks to the other CPUs, where it then runs (the kernel moves a
    running thread before the call returns), and is set back as it was."""
    me = threading.get_ident()
    seen = []
    set_affinity = os.sched_setaffinity

    def recording(pid, mask):
        set_affinity(pid, mask)
        if threading.get_ident() == me:  # (not a pool thread's own move)
            seen.append((set(mask), threads._current_cpu()))

    monkeypatch.setattr(os, "sched_setaffinity", recording)
    before = os.sched_getaffinity(0)
    cpu = threads._current_cpu()
    assert cpu in before
    assert threads._leave_cpu(cpu)
    (shrunk, there), (restored, _) = seen
    assert shrunk == before - {cpu}
    assert there in shrunk
    assert restored == before == os.sched_getaffinity(0)
    seen.clear()
    assert not threads._leave_cpu(max(before) + 1)  # not a CPU it may run on: nothing moves
    assert seen == [] and os.sched_getaffinity(0) == before


@pytest.fixture
def kernels_run(monkeypatch):
    """The kernels threads.run_kernel is asked to run, in order (it still runs them)."""
    ran = []
    run_kernel = threads.run_kernel
    monkeypatch.setattr(threads, "run_kernel", lambda kernel, *args: (ran.append(kernel),
                                                                       run_kernel(kernel, *args)))
    return ran


def _tn_kernel(split, dot):
    """The kernel matmul_tn runs its blocks with (split "rows" or "k"): "on" takes the compiled
    dot products at every size."""
    if dot == "on":
        return threads._tn_dot_rows if split == "rows" else threads._tn_blocks
    return threads._tn_rows if split == "rows" else threads._tn_blocks


@pytest.mark.parametrize("dot", ["on", "off"])
@pytest.mark.parametrize("tn_split", ["rows", "k"])
def test_products_have_the_same_bits_on_one_and_two_threads(monkeypatch, kernels_run, tn_split,
                                                            dot):
    """matmul (rows split) and matmul_tn (split over the rows of its output, or over K; NumPy's
    own BLAS from compiled code, or compiled dot products) on blocks fixed by the work, not by
    the threads."""
    monkeypatch.setattr(config, "DOT_PRODUCTS", dot)
    monkeypatch.setattr(threads, "TN_MIN_BLOCK_ROWS", 1 if tn_split == "rows" else 10**6)
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 3)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 1)
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        # K = 31 against M = 60 rows of the output: split by rows where allowed
        a = rng.standard_normal((31, 60)).astype(dtype)
        b = rng.standard_normal((60, 30)).astype(dtype)
        c = rng.standard_normal((31, 30)).astype(dtype)
        runs = []
        for n in (1, 2):
            monkeypatch.setattr(config, "NUM_THREADS", n)
            runs.append((threads.matmul(a, b), threads.matmul_tn(a, c)))
        for one, two in zip(*runs):
            assert one.tobytes() == two.tobytes()
        tol = 1e-4 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(runs[0][0], a.astype(float) @ b, rtol=tol, atol=tol)
        np.testing.assert_allclose(runs[0][1], a.T.astype(float) @ c, rtol=tol, atol=tol)
    want = _tn_kernel(tn_split, dot)  # (both dtypes, each run on one and two threads)
    if tn_split == "k" or blas.numpy_blas_controlled() or dot == "on":
        assert kernels_run.count(want) == 4


@pytest.mark.parametrize("dot", ["on", "off"])
def test_matmul_tn_splits_by_rows_where_the_output_is_large_against_k(monkeypatch,
                                                                       kernels_run, dot):
    """Rows where M (n + 1) > K (n - 1) (fewer numbers moved than by partial products), K
    otherwise, and rows for one block; the same product to rounding either way, and into a
    given C-contiguous output in place (float64: through NumPy's BLAS, or compiled dot
    products)."""
    monkeypatch.setattr(config, "DOT_PRODUCTS", dot)
    dot_tn = dot == "on"  # ("on" takes them whatever the machine compiles for)
    if not (blas.numpy_blas_controlled() or dot_tn):
        pytest.skip("the row split needs NumPy's own BLAS or the compiled dot products")
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 2)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 1)
    rng = np.random.default_rng(1)
    rows = threads._tn_dot_rows if dot_tn else threads._tn_rows
    for K, M, want in ((40, 40, rows), (119, 40, rows),
                       (120, 40, threads._tn_blocks), (500, 32, threads._tn_blocks)):
        a = rng.standard_normal((K, M))
        c = rng.standard_normal((K, 7))
        out = np.full((M, 7), np.nan)
        kernels_run.clear()
        assert threads.matmul_tn(a, c, out) is out
        assert kernels_run == [want], (K, M)
        np.testing.assert_allclose(out, a.T @ c, rtol=1e-12, atol=1e-12)
    # one block: rows, whatever K, called directly (no pool run), with the bits of the row
    # kernel run as one block
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 10**12)
    a, c = rng.standard_normal((500, 32)), rng.standard_normal((500, 7))
    kernels_run.clear()
    got = threads.matmul_tn(a, c)
    assert kernels_run == []
    want = np.empty((32, 7))
    threads.run_kernel(rows, (a, c, want), 32, 1)
    np.testing.assert_array_equal(got, want)
    # a zero-sized output is zeros without a BLAS call (cblas refuses ldb = 0)
    kernels_run.clear()
    np.testing.assert_array_equal(threads.matmul_tn(np.ones((5, 3)), np.ones((5, 0))),
                                  np.zeros((3, 0)))
    assert kernels_run == []


@pytest.mark.parametrize("dot", ["on", "off"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_block_products_skip_the_pool_with_the_same_bits(monkeypatch, kernels_run, dtype,
                                                             dot):
    """Below the parallel work (small calls), matmul (BLAS, or compiled dot products),
    matmul_tn and transpose call their one block's kernel directly, not through a pool run: the
    same call, so the same bits."""
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 10**12)
    monkeypatch.setattr(config, "DOT_PRODUCTS", dot)
    rng = np.random.default_rng(2)
    a = rng.standard_normal((70, 33)).astype(dtype)
    w = rng.standard_normal((40, 33)).astype(dtype)
    got = threads.matmul(a, w.T), threads.matmul_tn(a, a), threads.transpose(w)
    # (without NumPy's BLAS or the dot products, matmul_tn splits over K through the pool, one
    # block or not)
    tn = _tn_kernel("rows", dot)
    tn_rows = tn is threads._tn_dot_rows or blas.numpy_blas_controlled()
    assert kernels_run == ([] if tn_rows else [threads._tn_blocks])
    want = np.empty((70, 40), dtype), np.empty((33, 33), dtype), np.empty((33, 40), dtype)
    if dot == "on":  # the rows of w.T's transpose: w's own
        threads.run_kernel(threads._gemm_rows, (a, w, products.PACKED_MIN_ROWS, want[0]),
                           70, 1)
    else:
        threads.run_kernel(threads._dot_rows, (a, w.T, want[0]), 70, 1)
    if tn_rows:
        threads.run_kernel(tn, (a, a, want[1]), 33, 1)
    else:
        want[1][...] = got[1]
    threads.run_kernel(threads._transpose_tiles, (w, want[2]), 2, 1)
    for g, x in zip(got, want):
        assert g.tobytes() == x.tobytes()
    np.testing.assert_array_equal(got[2], w.T)


@pytest.mark.parametrize("dot", ["on", "off"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_on_blocks_gives_each_block_the_bits_of_its_own_product(monkeypatch,
                                                                        kernels_run, dtype, dot):
    """matmul with ``blocks`` (the input projection and the input's gradient, on the blocks of
    steps): one pool run for all blocks, each split by its own work, so its rows get the bits
    of that block's product alone (a checkpointed segment's), the bias added after it; the
    same bits on one and two threads; through the BLAS or compiled dot products."""
    monkeypatch.setattr(config, "DOT_PRODUCTS", dot)
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 2)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 40 * 33 * 24)  # 40 rows and up split
    rng = np.random.default_rng(3)
    a = rng.standard_normal((130, 33)).astype(dtype)
    w = rng.standard_normal((24, 33)).astype(dtype)
    bias = rng.standard_normal(24).astype(dtype)
    blocks = (0, 64, 128, 130)
    runs = []
    for n in (1, 2):
        monkeypatch.setattr(config, "NUM_THREADS", n)
        kernels_run.clear()
        runs.append(threads.matmul(a, w.T, bias=bias, blocks=blocks))
        assert kernels_run == [threads._gemm_rows_bias if dot == "on" else
                               threads._dot_rows_bias]
    assert runs[0].tobytes() == runs[1].tobytes()
    for r0, r1 in zip(blocks[:-1], blocks[1:]):
        alone = threads.matmul(a[r0:r1], w.T) + bias
        assert runs[0][r0:r1].tobytes() == alone.tobytes(), (r0, r1)
    assert threads._row_edges(blocks, 33 * 24).tolist() == [0, 32, 64, 96, 128, 130]
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(runs[0], a.astype(float) @ w.T + bias, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_tn_add_adds_with_the_bits_of_a_separate_product(dtype):
    """out += a.T @ b in the gemm itself (the step where h0 enters a weight gradient) rounds as
    adding the product made on its own; a zero-sized K adds nothing."""
    rng = np.random.default_rng(4)
    for K in (1, 3, 32):
        a = rng.standard_normal((K, 40)).astype(dtype)
        b = rng.standard_normal((K, 24)).astype(dtype)
        out = rng.standard_normal((40, 24)).astype(dtype)
        want = out + threads.matmul_tn(a, b)
        assert threads.matmul_tn_add(a, b, out) is out
        assert out.tobytes() == want.tobytes(), K
    before = out.copy()
    threads.matmul_tn_add(np.ones((0, 40), dtype), np.ones((0, 24), dtype), out)
    assert out.tobytes() == before.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_copies_every_entry_on_one_and_two_threads(monkeypatch, dtype):
    """transpose is an exact copy of a.T (NaN, inf and -0.0 included): rows in bands of eight
    and a rest, columns in bands of 128 and a rest, strided input; the same on one thread, two
    threads, and one block."""
    rng = np.random.default_rng(5)
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 3)
    for rows, cols in ((1, 1), (7, 3), (8, 128), (33, 129), (70, 300), (200, 64)):
        wide = rng.standard_normal((rows, 2 * cols)).astype(dtype)
        wide.flat[::7] = np.nan
        wide.flat[3::11] = -np.inf
        wide[0, 0], wide[-1, -2] = -0.0, np.inf
        for a in (wide[:, ::2], np.ascontiguousarray(wide[:, :cols])):
            want = np.ascontiguousarray(a.T).tobytes()
            for n, min_work in ((1, 1), (2, 1), (2, 10**12)):
                monkeypatch.setattr(config, "NUM_THREADS", n)
                monkeypatch.setattr(config, "PARALLEL_MIN_WORK", min_work)
                got = threads.transpose(a)
                assert got.flags.c_contiguous and got.shape == (cols, rows)
                assert got.tobytes() == want, (rows, cols, n, min_work)


def test_numpy_gemm_is_linked_where_numpy_ships_openblas():
    """The weight-gradient products run NumPy's own BLAS from compiled code where NumPy's
    64-bit-integer OpenBLAS was found (NumPy 2 wheels); else Numba's np.dot (same results to
    rounding)."""
    found = blas.numpy_gemm_addresses()
    assert threads._NUMPY_GEMM == (found is not None)
    if found is not None:
        assert set(found) == {"s", "d"} and all(found.values())


def test_concurrent_callers_each_get_their_own_result(two_threads):
    """Two Python threads call at once: one holds the pool, the other runs its blocks alone."""
    outs = [np.zeros(20000) for _ in range(4)]
    errors = []

    def caller(i):
        try:
            for _ in range(20):
                threads.run_kernel(_fill, (outs[i], float(i + 1), -1), 20000, 4)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in ts)
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, (i + 1) * np.arange(1, 20001.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_colsum_has_the_bits_of_numpys_reduction(dtype):
    """colsum (a bias's gradient) gives np.add.reduce(a, axis=0)'s bits: row by row where it
    runs compiled, NumPy's own pairwise sum for one column and for other layouts."""
    rng = np.random.default_rng(6)
    for rows, cols in ((1, 7), (37, 1), (5000, 1), (2, 2), (6400, 32), (300, 129)):
        a = (rng.standard_normal((rows, cols))
             * 10.0 ** rng.uniform(-4, 4, (rows, cols))).astype(dtype)
        a.flat[::97] = -0.0
        for arr in (a, np.asfortranarray(a)):
            want = np.add.reduce(arr, axis=0)
            out = np.empty(cols, dtype)
            assert threads.colsum(arr, out) is out
            assert out.tobytes() == want.tobytes(), (rows, cols, arr.flags.c_contiguous)
    a = np.array([[1.0, np.inf], [np.nan, -np.inf]], dtype)
    np.testing.assert_array_equal(threads.colsum(a, np.empty(2, dtype)), [np.nan, np.nan])


# --- running(): the block around a pass -----------------------------------------------------------


def _blas_threads():
    return blas.num_threads() if blas.can_limit_threads() else None


def test_running_is_reentrant_and_restores_at_the_outermost_exit():
    """The outermost block holds the BLAS at one thread and silences NumPy's floating-point
    warnings; a nested block changes nothing and its exit restores nothing; the outermost
    exit restores both."""
    from numrnn.cpu import backend

    before_err, before_blas = np.geterr(), _blas_threads()
    with np.errstate(over="warn", invalid="raise"):
        outer_err = np.geterr()
        with backend.running():
            assert set(np.geterr().values()) == {"ignore"}
            if before_blas is not None:
                assert blas.num_threads() == 1
            with backend.running():
                assert set(np.geterr().values()) == {"ignore"}
            assert set(np.geterr().values()) == {"ignore"}  # the nested exit restored nothing
            if before_blas is not None:
                assert blas.num_threads() == 1
        assert np.geterr() == outer_err
    assert np.geterr() == before_err and _blas_threads() == before_blas


def test_running_restores_after_an_exception_in_a_nested_block():
    from numrnn.cpu import backend

    before_err, before_blas = np.geterr(), _blas_threads()
    with pytest.raises(RuntimeError, match="boom"):
        with backend.running():
            with backend.running():
                raise RuntimeError("boom")
    assert np.geterr() == before_err and _blas_threads() == before_blas
    with backend.running():  # the depth went back to 0: the next block sets up again
        assert set(np.geterr().values()) == {"ignore"}
    assert np.geterr() == before_err


def test_running_counts_its_depth_per_thread():
    """A block in another thread sets up for itself (NumPy's error state is per thread), not
    as one nested in this thread's block; it waits for this one's BLAS hold to end."""
    from numrnn.cpu import backend

    seen = []

    def other():
        with backend.running():
            seen.append(np.geterr())

    with backend.running():
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.05)
    t.join(timeout=60)
    assert not t.is_alive() and len(seen) == 1
    assert set(seen[0].values()) == {"ignore"}


def test_a_refused_vjp_leaves_the_error_state_and_the_blas_as_they_were():
    """vjp runs both passes in one running() block; its argument checks run inside it, and a
    refusal leaves NumPy's error state and the BLAS's thread counts as they were."""
    import numrnn

    net = numrnn.RNN(3, 4, seed=0)
    x = np.ones((5, 2, 3))
    before_err, before_blas = np.geterr(), _blas_threads()
    with pytest.raises(ValueError, match="d_output"):
        net.vjp(x, np.ones((5, 2, 7)))
    with pytest.raises(ValueError, match="x: expected finite"):
        net.forward_vjp(np.full((5, 2, 3), np.nan), np.ones((5, 2, 4)))
    assert np.geterr() == before_err and _blas_threads() == before_blas
    grads = net.vjp(x, np.ones((5, 2, 4)))
    assert np.geterr() == before_err and _blas_threads() == before_blas
    assert np.isfinite(grads["weight_hh_l0"]).all()
