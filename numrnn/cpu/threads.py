"""numrnn's own CPU parallelism: a small pool of Python threads running ``nogil`` kernels.

Why not Numba's ``parallel=True`` or a multi-threaded BLAS: on a machine with few cores, the
OpenMP workers of a Numba parallel region and the pool threads of OpenBLAS (NumPy and SciPy each
ship one) keep spinning for a while after their work is done, and starve whatever runs next: a
3.5 ms gemm measured 210 ms right after a parallel region on 2 cores.  So inside a numrnn call
every BLAS call is single-threaded (:func:`numrnn.cpu.blas.single_threaded`), and the parallel
work is split here into independent pieces.  Idle pool threads sleep in the OS after a short
spin (below).

Reproducibility.  Work is first cut into *blocks* whose number depends only on the size of the
work and on ``config.PARALLEL_BLOCKS`` (default: the machine's usable cores), never on the number
of threads: disjoint ranges of sequences for the recurrence (no per-step barrier), row blocks or
K-blocks for matrix products, with the K-block partial sums added in block order.  The threads
then share out whole blocks.  Each block's arithmetic is fixed, so the bits of every result are
the same with 1, 2 or 16 threads, and from run to run.

Dispatch.  On this 2-core virtual machine every hand-off that goes through the OS costs 30-40
microseconds (a condition-variable round trip between two threads measured 70), and a Python
thread hands off twice per job: it waits for the GIL to start, and the caller waits for it to
finish.  A ``concurrent.futures`` pool took 72 microseconds to run two empty blocks, and a
parallel split of a 3M multiply-add product lost to one thread.  So a kernel's blocks run as
*compiled jobs* (:func:`run_kernel`, :func:`together`): the caller posts the job on a board of
counters (:mod:`numrnn.cpu.sync`), enters compiled code (releasing the GIL) and only then lets
the pool thread take the GIL to start; the pool thread runs its blocks, publishes that it is
done and waits for its next job without leaving compiled code, so the caller never waits for
its GIL either.  An idle pool thread spins ``IDLE_SPIN_SECONDS`` (with the x86 ``pause``, and
yielding the core every ~100 us), then sleeps on a futex, still in compiled code; a call wakes
it at its start and at each one-block run (:func:`wake`), so it is awake when the call's next
parallel work comes.  Measured: 5-15 microseconds to run two small blocks on two threads; the
split 3M multiply-add product 86 -> 54 us (float32 200 x 128 x 128).  A thread woken from that
sleep can still take up to a millisecond to run (its virtual CPU descheduled by the host), so
:func:`run_kernel`'s blocks are claimed, not assigned: the caller runs the blocks a late thread
has not started, and never waits for it (tanh float32, B = 1, N = 128, forward + vjp called
after 5 ms idle: 2.08 ms on two threads with assigned blocks, 1.20-1.26 claimed, 1.10-1.23 on one
thread).  Python callables
(:func:`run`) still go through the GIL: the ensemble's members and other coarse work.

Fork.  A forked child (``os.fork``, ``multiprocessing``'s "fork" start method) inherits the pool
object but none of its threads; the pool is dropped in the child (``os.register_at_fork``) and
rebuilt at its first use there.
"""
import contextlib
import ctypes
import hashlib
import os
import threading
import time

import numpy as np
from numba import njit
from numba import types as nb_types

from .. import config
from . import blas, products, scratch, sync

_pool = None  # the _Worker threads, grown on demand
_pool_lock = threading.Lock()  # held by the one run using the pool


_cores = None


def _forget_pool_in_child():
    global _pool, _pool_lock, _cores, _board
    _pool = _board = None  # its threads do not exist in the child; a job posted there would wait forever
    _pool_lock = threading.Lock()
    _cores = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _find_getcpu():
    """libc's ``sched_getcpu`` (the CPU the calling thread runs on), or None where there is
    none or threads cannot be moved (``os.sched_setaffinity``)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=False).sched_getcpu
    except (OSError, AttributeError):  # pragma: no cover - not glibc / musl
        return None
    fn.restype, fn.argtypes = ctypes.c_int, []
    return fn


_getcpu = _find_getcpu()


def _current_cpu():
    """The CPU the calling thread runs on (-1 where that cannot be known)."""
    return _getcpu() if _getcpu is not None else -1


def _leave_cpu(cpu):
    """Move the calling thread off ``cpu``: its affinity shrinks to the others (the kernel
    migrates a running thread at once), then is set back as it was, which moves nothing.
    False where there is no other CPU to go to."""
    try:
        mask = os.sched_getaffinity(0)
        others = mask - {cpu}
        if not others or cpu not in mask:
            return False
        os.sched_setaffinity(0, others)
        os.sched_setaffinity(0, mask)
    except OSError:  # pragma: no cover - a policy forbids it
        return False
    return True


def _usable_cores():
    """The cores this process may run on, read once (a system call costs a microsecond at
    every one of a call's many products)."""
    global _cores
    if _cores is None:
        try:
            _cores = max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            _cores = max(1, os.cpu_count() or 1)
    return _cores


_serial = threading.local()  # non-empty in a thread inside serial()


def num_threads():
    """Threads numrnn uses for one call (``config.NUM_THREADS``, default: the usable cores;
    1 inside :func:`serial`)."""
    if _serial.__dict__:
        return 1
    if config.NUM_THREADS:
        return max(1, int(config.NUM_THREADS))
    return _usable_cores()


def num_blocks():
    """Blocks parallel work is cut into (``config.PARALLEL_BLOCKS``, default: the usable cores).

    Independent of :func:`num_threads`: results depend on this number, not on the threads.
    """
    if config.PARALLEL_BLOCKS:
        return max(1, int(config.PARALLEL_BLOCKS))
    return _usable_cores()


@contextlib.contextmanager
def serial():
    """Run the block's parallel work in the calling thread alone: the same blocks (so the same
    bits), one after another.  For work that is itself one of several run in parallel (an
    :class:`numrnn.Ensemble`'s members); a pool thread waiting on the pool could deadlock it."""
    nested = bool(_serial.__dict__)
    _serial.on = True
    try:
        yield
    finally:
        if not nested:
            del _serial.on


#: After its job a pool thread spins this long for the next before it blocks in the OS (a
#: numrnn call's parallel pieces are tens to hundreds of microseconds apart, and every
#: one-block run in between wakes the pool again: see :func:`wake`).
IDLE_SPIN_SECONDS = 1e-3
#: The caller waiting for the pool's jobs spins (yielding the core every ~100 microseconds,
#: see :mod:`numrnn.cpu.sync`) this long at a time between checks from Python.
JOIN_SPIN_SECONDS = 20e-3
#: Pool threads at most (rows of the board).
MAX_WORKERS = 255

_board = None  # the job board (numrnn.cpu.sync.ROW int64 per pool thread)
_cycles_per_second = None


@njit(cache=True, nogil=True)
def _await_job(board, me, seen, cycles):
    return sync.await_job(board, me, seen, cycles)


@njit(cache=True)
def _let_go(board, n_threads):
    sync.let_go(board, n_threads)


@njit(cache=True)
def _post(board, me):
    sync.post(board, me)


@njit(cache=True)
def _wake_thread(board, me):
    sync.wake(board, me)


@njit(cache=True, nogil=True)
def _join(board, n_threads, cycles):
    return sync.join(board, n_threads, cycles)


def _cycles_for(seconds):
    """``seconds`` in units of the cycle counter (measured once per process)."""
    global _cycles_per_second
    if _cycles_per_second is None:
        _cycles()  # compiled (or loaded) before the clock starts
        t0, c0 = time.perf_counter(), _cycles()
        time.sleep(0.002)
        t1, c1 = time.perf_counter(), _cycles()
        _cycles_per_second = max((c1 - c0) / (t1 - t0), 1e6)
    return int(seconds * _cycles_per_second)


class _Worker:
    """Pool thread ``me``: runs the jobs posted to it, one at a time.

    A job is ``job(seq) -> ok``: a compiled one (:class:`_Members`) runs its blocks, publishes
    its DONE and waits for the next job inside compiled code, and returns whether one came; a
    Python one returns None, and DONE is published here.  After ``IDLE_SPIN_SECONDS`` with no
    job the thread sleeps in the OS: on Linux on a futex, still inside compiled code (so an
    idle thread never takes the GIL, and never makes the caller wait for it; see
    :func:`numrnn.cpu.sync.post`); elsewhere it returns to Python and blocks on ``_wake``: it
    says so (``asleep``), then reads POSTED once more, and the poster bumps POSTED, then reads
    ``asleep``, both holding the GIL, so either the thread sees the job or the poster sees it
    asleep and wakes it.
    """

    def __init__(self, me, board):
        self.me, self.board = me, board
        self.job = None
        self.error = None
        self.asleep = False
        self.caller_cpu = -1  # the CPU of the thread that posted the job (see post)
        self.moves = 0  # the times this thread moved off its caller's CPU
        self._wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, args=(_cycles_for(IDLE_SPIN_SECONDS),),
                                       name=f"numrnn-{me + 1}", daemon=True)
        self.thread.start()

    def _loop(self, idle):
        board, me = self.board, self.me
        seen = 0
        ok = _await_job(board, me, seen, idle)
        while True:
            if not ok:
                self.asleep = True
                if board[me * sync.ROW + sync.POSTED] <= seen:
                    self._wake.wait()
                self._wake.clear()
                self.asleep = False
                ok = _await_job(board, me, seen, idle)
                continue
            # the newest job (with the GIL held, as the poster wrote both): a run_kernel job
            # whose blocks the caller took while this thread was late may be skipped
            seen = int(board[me * sync.ROW + sync.POSTED])
            job, self.job = self.job, None
            if job is None:  # withdrawn by its caller (see run_kernel)
                ok = _await_job(board, me, seen, idle)
                continue
            if self.caller_cpu >= 0 and _current_cpu() == self.caller_cpu:
                self.moves += _leave_cpu(self.caller_cpu)  # see post
            try:
                ok = job(seen)
            except BaseException as exc:  # raised again in the caller's thread
                self.error = exc
                ok = None
            del job
            if ok is None:
                ok = _await_job(board, me, seen, idle)

    def post(self, job):
        """Give the thread ``job``.  The caller's CPU goes with it: after the process idled,
        Linux can wake the thread on the waker's CPU, busy as it is, with the other CPU idle
        (on a virtual machine); the two then share one CPU, and every barrier of a
        :func:`together` run waits for the scheduler until the load balancer moves one
        (measured: tanh T = 500, N = 128, the forward of ``numrnn.jacobians`` after a 30 ms
        sleep: 10 and 7 of 30 runs took 14-24 ms against 0.7-1.4, and in every one the helper
        had started on the caller's CPU, in none of the others).  So a thread that finds
        itself there moves off it (:func:`_leave_cpu`; ``benchmarks/wake_cpu.py``)."""
        self.job = job
        self.caller_cpu = _current_cpu()
        _post(self.board, self.me)
        if self.asleep:
            self._wake.set()

    def wake(self):
        _wake_thread(self.board, self.me)
        if self.asleep:
            self._wake.set()


def _join_all(helpers):
    """Wait for every helper's job, then raise the first one's error (the others still ran to
    their end: no job outlives the call that posted it)."""
    cycles = _cycles_for(JOIN_SPIN_SECONDS)
    while not _join(_board, len(helpers), cycles):
        time.sleep(1e-4)
    first = None
    for w in helpers:
        error, w.error = w.error, None
        first = first or error
    if first is not None:
        raise first


def _workers(n):
    """At least ``n`` pool threads (the pool is made, or grown, here)."""
    global _pool, _board
    if _board is None:
        _board = np.zeros(MAX_WORKERS * sync.ROW, np.int64)
    pool = _pool
    if pool is None or len(pool) < n:
        pool = list(pool or [])
        pool += [_Worker(i, _board) for i in range(len(pool), n)]
        _pool = pool
    return pool


def wake():
    """Wake the pool's blocked threads, to be spinning when a call's first parallel work comes
    (a blocked thread takes 30-300 microseconds to start on a virtual machine)."""
    pool = _pool
    if pool is not None:
        for w in pool[:num_threads() - 1]:
            if w.asleep or _board[w.me * sync.ROW + sync.ASLEEP]:  # (a compiled call costs 1 us)
                w.wake()


@contextlib.contextmanager
def _shared(n_threads):
    """Pool threads for ``n_threads - 1`` helpers, or an empty list when another run holds the
    pool (a concurrent caller, or a job that runs parallel work itself): that work then runs on
    the calling thread alone, the same blocks, so the same bits."""
    n_threads = min(n_threads, MAX_WORKERS + 1)
    if n_threads <= 1 or not _pool_lock.acquire(blocking=False):
        yield []
        return
    try:
        yield _workers(n_threads - 1)[:n_threads - 1]
    finally:
        _pool_lock.release()


# --- compiled jobs: a kernel's blocks started and joined without the GIL ------------------------
#
# A kernel runs on the pool inside a compiled job (:func:`_member`) whose global KERNEL is bound
# to it (see :class:`_Members`): the job lets the helpers go, runs its blocks, and joins or waits
# for the next job, all without the GIL.

#: Bound per kernel in the globals :class:`_Members` gives these functions.
KERNEL = None


_MEMBER = """
def _make(fingerprint):
    def {name}(board, lead, me, seq, n_helpers, {params}, cycles):
        fingerprint  # in the cache key
        if lead:
            sync.let_go(board, n_helpers)
        {body}
        if lead:
            return {lead_end}
        return 1 if sync.await_job(board, me, seq, cycles) else 0
    return {name}
"""
# run_kernel: participant ``part`` (0: the caller; pool thread ``me`` is me + 1) runs the blocks
# it claims, its share's first (``shares``), then any left free; the caller then waits for the
# blocks still running (1: all finished, -1: one failed, 0: still running after ``cycles``)
_BLOCKS = ("edges, shares, claims, part", """p = sync.run_claims(claims, shares[part], part + 1)
        while p >= 0:
            KERNEL({args}, edges[p], edges[p + 1])
            sync.store_release(claims, p * sync.STRIDE, sync.FINISHED)
            p = sync.run_claims(claims, p + 1, part + 1)
        if lead:  # every block is taken: a pool thread that has not come need not
            sync.withdraw(board, n_helpers)""",
           "sync.wait_claims(claims, cycles)")
# together: participant ``member`` of ``n_threads``; the caller then joins the pool threads
_TOGETHER = ("member, n_threads", "KERNEL({args}, member, n_threads)",
             "1 if sync.join(board, n_helpers, cycles) else 0")


def _member(kind, arity, fingerprint, glob):
    """The compiled job of a kernel taking ``arity`` arguments before its last two: the caller
    (``lead``: lets the helpers go, since this runs without the GIL, runs its share, waits for
    them) or pool thread ``me`` (runs its share of job ``seq``, publishes it and waits for its
    next job).  Written out per arity (Numba inlines a call only with its arguments spelled
    out), and compiled under this file's name, so Numba caches it."""
    extra, body, lead_end = kind
    args = ", ".join(f"a{i}" for i in range(arity))
    name = f"_member_{extra.split(',')[0]}_{arity}_{fingerprint}"
    src = _MEMBER.format(name=name, params=f"{args}, {extra}",
                         body=body.format(args=args), lead_end=lead_end)
    namespace = {}
    exec(compile(src, __file__, "exec"), glob, namespace)
    return namespace["_make"](fingerprint)


_package_digest = None


def _package_sources():
    """A digest of numrnn's sources: a compiled job embeds its kernel's code (and what that
    inlines), but Numba's cache checks only this file, so a change anywhere must change the
    job's cache key."""
    global _package_digest
    if _package_digest is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        h = hashlib.sha1()
        for folder, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            for f in sorted(files):
                if f.endswith(".py"):
                    with open(os.path.join(folder, f), "rb") as fh:
                        h.update(fh.read())
        _package_digest = h.hexdigest()[:12]
    return _package_digest


class _Members:
    """The compiled jobs of one kernel (:func:`_member`), made on first use per arity.  The
    kernel should be declared ``inline="always"``: then it is compiled once, inside its job,
    with the kernel's options (fastmath, error model), instead of on its own and again where
    it is linked in."""

    def __init__(self, kernel):
        self.kernel = kernel
        f = kernel.py_func
        key = hashlib.sha1(f"{f.__module__}.{f.__qualname__}{_package_sources()}".encode())
        try:  # a kernel defined outside numrnn: its own file too
            with open(f.__code__.co_filename, "rb") as fh:
                key.update(fh.read())
        except OSError:
            pass
        self._fingerprint = key.hexdigest()[:16]
        self._glob = dict(globals(), KERNEL=kernel)
        self._options = {k: v for k, v in kernel.targetoptions.items()
                         if k in ("fastmath", "error_model", "boundscheck")}
        self._made = {}

    def get(self, kind, arity):
        fn = self._made.get((kind, arity))
        if fn is None:
            fn = self._made[(kind, arity)] = njit(cache=True, nogil=True, **self._options)(
                _member(kind, arity, self._fingerprint, self._glob))
        return fn


_MEMBERS = {}


def _members(kernel):
    made = _MEMBERS.get(id(kernel))
    if made is None or made.kernel is not kernel:
        made = _MEMBERS[id(kernel)] = _Members(kernel)
    return made


def run_kernel(kernel, args, n_items, n_blocks, edges=None):
    """``kernel(*args, start, stop)`` (a ``nogil`` Numba kernel) on each of ``n_blocks``
    disjoint ranges covering range(n_items), started and joined in compiled code (a few
    microseconds, against 70 for a Python job).  ``edges``: the ranges given instead (an int64
    array, start of each range and the end; ``n_items`` and ``n_blocks`` are then unused).

    The blocks are claimed, not handed out (:func:`numrnn.cpu.sync.run_claims`): each thread
    takes its share's blocks first, then any still free, so a pool thread that comes late (a
    sleeping thread's virtual CPU can take a millisecond to run again) leaves its blocks to the
    caller, which never waits for a thread that has not started.  The caller returns once no
    block runs; the first exception of a block propagates, and no block starts after that.

    A run of one block still goes through the job (a kernel called on its own would be compiled
    a second time, outside it: seconds for a recurrence kernel); the small products, whose
    kernels compile in well under a second, call theirs directly below (``_dot_into``,
    ``_tn_into``, ``_transpose_into``)."""
    run = _members(kernel).get(_BLOCKS, len(args))
    if edges is None:
        edges = _edges(n_items, n_blocks)
    else:
        n_blocks = len(edges) - 1
    claims = np.zeros(n_blocks * sync.STRIDE, np.int64)
    n_threads = min(num_threads(), n_blocks, MAX_WORKERS + 1)
    if n_threads <= 1 or not _pool_lock.acquire(blocking=False):  # alone (see _shared)
        wake()  # a call in progress keeps the pool awake for its next parallel work
        run(_board_or_empty(), True, 0, 0, 0, *args, edges, _edges(n_blocks, 1), claims, 0, 0)
        return
    try:
        helpers = _workers(n_threads - 1)[:n_threads - 1]
        shares = _edges(n_blocks, n_threads)
        errors = []
        idle = _cycles_for(IDLE_SPIN_SECONDS)
        for w in helpers:
            w.post(_claiming(run, w.me, args, edges, shares, claims, errors, idle))
        cycles = _cycles_for(JOIN_SPIN_SECONDS)
        try:
            status = run(_board, True, 0, 0, len(helpers), *args, edges, shares, claims, 0,
                         cycles)
            while status == 0:
                status = _wait_claims(claims, cycles)
        except BaseException:
            _abandon_claims(claims, 1)  # no block of this call starts once it has returned
            while _wait_claims(claims, cycles) == 0:
                pass
            raise
        finally:
            for w in helpers:  # a job not yet taken is not run, nor are its arrays kept
                w.job = None
        if status < 0:
            raise errors[0]
    finally:
        _pool_lock.release()


def _claiming(run, me, args, edges, shares, claims, errors, idle):
    """Pool thread ``me``'s job in a :func:`run_kernel` run: an exception is kept for the
    caller, and the blocks the thread held, and those still free, are marked failed."""
    def job(seq):
        try:
            return run(_board, False, me, seq, 0, *args, edges, shares, claims, me + 1, idle)
        except BaseException as exc:
            errors.append(exc)
            _abandon_claims(claims, me + 2)
            return None
    return job


@njit(cache=True, nogil=True)
def _wait_claims(claims, cycles):
    return sync.wait_claims(claims, cycles)


@njit(cache=True, nogil=True)
def _abandon_claims(claims, tag):
    sync.abandon_claims(claims, tag)


_EDGES = {}


def _edges(n_items, n_blocks):
    """:func:`bounds` as an int64 array (kept: the same few sizes come back at every call)."""
    key = (n_items, n_blocks)
    edges = _EDGES.get(key)
    if edges is None:
        if len(_EDGES) > 256:
            _EDGES.clear()
        edges = _EDGES[key] = np.array(bounds(n_items, n_blocks), np.int64)
        edges.flags.writeable = False
    return edges


_EMPTY_BOARD = np.zeros(sync.ROW, np.int64)


def _board_or_empty():
    return _board if _board is not None else _EMPTY_BOARD


def pieces(total, work):
    """Into how many blocks to cut ``total`` independent items carrying ``work`` multiply-adds.

    A function of the work alone (and of the machine's block count): 1 below
    ``config.PARALLEL_MIN_WORK`` or where the BLAS cannot be held to one thread.
    """
    if work < config.PARALLEL_MIN_WORK or not blas.can_limit_threads():
        return 1
    return max(1, min(total, num_blocks()))


def bounds(n_items, n_blocks):
    """Start of each of ``n_blocks`` near-equal ranges covering range(n_items), and the end."""
    return [n_items * p // n_blocks for p in range(n_blocks + 1)]


def run(fn, n_items, n_blocks):
    """Call ``fn(start, stop)`` on each of ``n_blocks`` disjoint ranges covering range(n_items).

    The blocks are shared out over at most :func:`num_threads` threads, each taking a contiguous
    run of whole blocks (the first in the calling thread); exceptions propagate.  Which thread runs
    a block changes nothing in its result.
    """
    edges = bounds(n_items, n_blocks)
    with _shared(min(num_threads(), n_blocks)) as helpers:
        if not helpers:
            for p in range(n_blocks):
                fn(edges[p], edges[p + 1])
            return
        shares = bounds(n_blocks, len(helpers) + 1)

        def work(i):
            for p in range(shares[i], shares[i + 1]):
                fn(edges[p], edges[p + 1])

        for i, w in enumerate(helpers, 1):
            w.post(lambda seq, i=i: work(i))
        _let_go(_board, len(helpers))
        try:
            work(0)
        finally:
            _join_all(helpers)


#: Until this time.monotonic(), together() runs its work on one thread (see there).
_alone_until = 0.0
#: WAITED_RUNS runs in a row whose threads spent more than WAITED_SHARE of their time waiting
#: at the barrier send the next ALONE_SECONDS of calls to one thread.
WAITED_SHARE = 0.5
WAITED_RUNS = 2
ALONE_SECONDS = 2.0
_waited_runs = 0  # the runs in a row, up to the last, that waited that much


@njit(cache=True, nogil=True)
def _release(flags, n_threads):
    sync.release_all(flags, n_threads)


@njit(cache=True, nogil=True)
def _cycles():
    return sync.cycles()


def waited_share(flags, n_threads, cycles):
    """The share of ``n_threads`` threads' ``cycles`` (the run's length) spent waiting at the
    barrier, from the waiting cycles each thread left in ``flags``."""
    if n_threads <= 1 or cycles <= 0:
        return 0.0
    waited = sum(int(flags[i * sync.STRIDE + 1]) for i in range(n_threads))
    return waited / (n_threads * cycles)


def together(kernel, args, n_threads):
    """Call ``kernel(*args, flags, i, n_threads)`` (a ``nogil`` Numba kernel) for i in
    range(n_threads), all running at once (the first in the calling thread), for kernels that
    meet at a barrier (:func:`numrnn.cpu.sync.arrive_and_wait` on ``flags``).

    Every participant must run at the same time, or the others spin until it starts: the pool
    is grown to ``n_threads - 1`` workers, and one run holds them at a time (a call that finds
    them held runs every block on its own thread, the same bits).  A
    participant that raises releases the barrier for good, so the others finish (their results
    are then discarded: the exception propagates).

    On a loaded machine a thread that shares its core with another process is descheduled for
    milliseconds, and every step waits for it (measured: 10-30x slower than one thread).  So
    ``WAITED_RUNS`` runs in a row whose threads spent more than ``WAITED_SHARE`` of their time
    waiting send the calls of the next ``ALONE_SECONDS`` to one thread, which runs every block
    in turn: the same blocks, so the same bits.  One such run is not enough: a virtual machine's
    host takes a core away for a moment now and then, and with one run as the trigger such
    moments sent 6 and 7 of 15 calls of a benchmark turn (B = 1, LSTM N = 128 float32 and GRU
    N = 512 float64) to one thread, on an otherwise idle machine.
    """
    global _alone_until, _waited_runs
    if n_threads > 1 and time.monotonic() < _alone_until:
        n_threads = 1
    run = _members(kernel).get(_TOGETHER, len(args) + 1)
    cycles = _cycles_for(JOIN_SPIN_SECONDS)
    with _shared(n_threads) as helpers:
        n_threads = len(helpers) + 1
        flags = np.zeros(n_threads * sync.STRIDE, np.int64)
        full = args + (flags,)
        if n_threads == 1:
            run(_board_or_empty(), True, 0, 0, 0, *full, 0, 1, cycles)
            return
        idle = _cycles_for(IDLE_SPIN_SECONDS)

        def helper(seq, me):
            try:
                return run(_board, False, me, seq, 0, *full, me + 1, n_threads, idle)
            except BaseException:
                _release(flags, n_threads)
                raise

        start = _cycles()
        for w in helpers:
            w.post(lambda seq, me=w.me: helper(seq, me))
        try:
            run(_board, True, 0, 0, len(helpers), *full, 0, n_threads, cycles)
        except BaseException:
            _release(flags, n_threads)
            raise
        finally:
            _join_all(helpers)
        if waited_share(flags, n_threads, _cycles() - start) <= WAITED_SHARE:
            _waited_runs = 0
            return
        _waited_runs += 1
        if _waited_runs >= WAITED_RUNS:
            _waited_runs = 0
            _alone_until = time.monotonic() + ALONE_SECONDS


_RUN_BEFORE = set()


def split_threads(kernel, dtype, n_blocks):
    """Threads for a run of a :func:`together` kernel: one for its first run in the process (it
    compiles, or loads from the cache, while its peers would wait at the first barrier, and the
    run would look like one on a loaded machine), then min(threads, blocks).  The same blocks
    either way, so the same bits."""
    key = (id(kernel), np.dtype(dtype).char)
    if key not in _RUN_BEFORE:
        _RUN_BEFORE.add(key)
        return 1
    return min(num_threads(), n_blocks)


@njit(cache=True, nogil=True, inline="always")
def _dot_rows(a, b, out, r0, r1):
    """out[r0:r1] = a[r0:r1] @ b."""
    np.dot(a[r0:r1], b, out[r0:r1])


@njit(cache=True, nogil=True)
def _dot_into(a, b, out):
    """out = a @ b in one block: :func:`_dot_rows` over all rows, without a pool run."""
    _dot_rows(a, b, out, 0, a.shape[0])


@njit(cache=True, nogil=True, inline="always")
def _add_bias(out, bias, r0, r1):
    """out[r0:r1] += bias (one entry per column)."""
    p = out.shape[1]
    for i in range(r0, r1):
        row = out[i]
        for q in range(p):
            row[q] += bias[q]


@njit(cache=True, nogil=True, inline="always")
def _dot_rows_bias(a, b, bias, out, r0, r1):
    """out[r0:r1] = a[r0:r1] @ b + bias (bias: one entry per column of b)."""
    np.dot(a[r0:r1], b, out[r0:r1])
    _add_bias(out, bias, r0, r1)


@njit(cache=True, nogil=True)
def _dot_bias_into(a, b, bias, out):
    """:func:`_dot_rows_bias` over all rows, without a pool run."""
    _dot_rows_bias(a, b, bias, out, 0, a.shape[0])


@njit(cache=True, nogil=True, inline="always")
def _gemm_rows(a, m, min_rows, out, r0, r1):
    """out[r0:r1] = a[r0:r1] @ m.T by compiled products (:func:`products.gemm_nt`: packed from
    ``min_rows`` rows)."""
    products.gemm_nt(a[r0:r1], m, out[r0:r1], min_rows)


@njit(cache=True, nogil=True, inline="always")
def _gemm_rows_bias(a, m, min_rows, bias, out, r0, r1):
    """out[r0:r1] = a[r0:r1] @ m.T + bias by compiled products."""
    products.gemm_nt(a[r0:r1], m, out[r0:r1], min_rows)
    _add_bias(out, bias, r0, r1)


@njit(cache=True, nogil=True)
def _gemm_into(a, m, min_rows, out):
    """:func:`_gemm_rows` over all rows, without a pool run."""
    _gemm_rows(a, m, min_rows, out, 0, a.shape[0])


@njit(cache=True, nogil=True)
def _gemm_bias_into(a, m, min_rows, bias, out):
    """:func:`_gemm_rows_bias` over all rows, without a pool run."""
    _gemm_rows_bias(a, m, min_rows, bias, out, 0, a.shape[0])


_ROW_EDGES = {}


def _row_edges(blocks, row_work):
    """The ranges of rows a product runs on: each of ``blocks`` (row edges: start of each block
    and the end) cut into :func:`pieces` by its own work (``row_work`` multiply-adds a row), so
    that a block's sub-ranges, and the bits of its rows, do not depend on the other blocks."""
    if (blocks[-1] - blocks[0]) * row_work < config.PARALLEL_MIN_WORK:
        # every block is one piece (pieces() says 1 below that work): the blocks' own edges
        key, cuts = (tuple(blocks), None), blocks
    else:
        spans = tuple(zip(blocks[:-1], blocks[1:]))
        counts = tuple(pieces(r1 - r0, (r1 - r0) * row_work) for r0, r1 in spans)
        key, cuts = (spans, counts), None  # (the counts follow the configuration: not kept)
    edges = _ROW_EDGES.get(key)
    if edges is None:
        if len(_ROW_EDGES) > 256:
            _ROW_EDGES.clear()
        if cuts is None:
            cuts = [blocks[0]]
            for (r0, r1), n in zip(spans, counts):
                cuts += [r0 + e for e in bounds(r1 - r0, n)[1:]]
        edges = _ROW_EDGES[key] = np.array(cuts, np.int64)
        edges.flags.writeable = False
    return edges


def matmul(a, b, out=None, bias=None, blocks=None):
    """a @ b (+ ``bias``, one entry per column of b) (2-D, same float dtype) on numrnn's
    threads, split over the rows of ``a``; into ``out`` (C-contiguous, (rows of a, columns of
    b)) if given, else a new scratch array (:mod:`numrnn.cpu.scratch`).

    ``blocks``: row edges (0, ..., rows of a) of blocks that are each split as a product of
    their own would be (the blocks of steps of :func:`numrnn.driver.step_blocks`: a block's
    rows then get the same bits whether the product covers the whole sequence or a segment);
    all blocks run in one pool run.

    ``b`` may be C- or Fortran-contiguous (a weight's transpose ``w.T`` goes to the BLAS as a
    transposed operand: copying it cost 3-7 ms per call for a 2048 x 512 LSTM weight).

    Where the products run as compiled dot products (:func:`products.use_dot_products`:
    AVX-512, with sums as deep as :func:`products.gemm_nt_pays` asks), each block is
    :func:`products.gemm_nt` with the rows of ``b.T`` (a view of a weight's transpose ``w.T``,
    else a transposed copy)."""
    if out is None:
        out = scratch.empty((a.shape[0], b.shape[1]), a.dtype)
    a = np.ascontiguousarray(a)
    if not (b.flags.c_contiguous or b.flags.f_contiguous):
        b = np.ascontiguousarray(b)
    edges = _row_edges((0, a.shape[0]) if blocks is None else blocks, a.shape[1] * b.shape[1])
    if (a.dtype == b.dtype and a.dtype.kind == "f"
            and products.use_dot_products(products.gemm_nt_pays(a.dtype, a.shape[1]))):
        # the rows of b.T: a weight's own for its transpose w.T, else a transposed copy
        operand = (b.T if b.flags.f_contiguous else transpose(b), products.PACKED_MIN_ROWS)
        kernels = _gemm_into, _gemm_bias_into, _gemm_rows, _gemm_rows_bias
        held = contextlib.nullcontext()
    else:
        operand = (b,)
        kernels = _dot_into, _dot_bias_into, _dot_rows, _dot_rows_bias
        held = blas.single_threaded()
    into, bias_into, rows, rows_bias = kernels
    with held:
        if len(edges) == 2:  # the one block's call itself (the same product): no pool run
            if bias is None:
                into(a, *operand, out)
            else:
                bias_into(a, *operand, bias, out)
        elif bias is None:
            run_kernel(rows, (a, *operand, out), 0, 0, edges)
        else:
            run_kernel(rows_bias, (a, *operand, bias, out), 0, 0, edges)
    return out


@njit(cache=True, nogil=True)
def _colsum_into(a, out):
    """out = 0 + a[0] + a[1] + ... in row order (C-contiguous a; from +0, as NumPy's add.reduce
    starts, so a column of -0.0 sums to +0.0)."""
    p = a.shape[1]
    for q in range(p):
        out[q] = 0
    for i in range(a.shape[0]):
        row = a[i]
        for q in range(p):
            out[q] += row[q]


def colsum(a, out):
    """out = the sum of the rows of the 2-D ``a``, in row order: the bits of
    ``np.add.reduce(a, axis=0)``, which adds a C-contiguous array row by row when a row has two
    or more entries (otherwise NumPy reduces along contiguous memory, pairwise, and is called
    here).  Compiled, since NumPy's reduction pays its inner loop's overhead per row: 147 ->
    29 us for 6400 x 32 float32 (2-core Zen 3 VM)."""
    if (a.ndim != 2 or a.shape[0] == 0 or a.shape[1] < 2 or not a.flags.c_contiguous
            or a.dtype != out.dtype):
        np.add.reduce(a, axis=0, out=out)
    else:
        _colsum_into(a, out)
    return out


#: Columns of ``a`` per pass of :func:`_transpose_tiles` over eight rows (compiled in).
_TRANSPOSE_BAND = 128


@njit(cache=True, nogil=True, inline="always")
def _transpose_tiles(a, out, t0, t1):
    """out[:, r0:r1] = a[r0:r1].T for the rows of tiles t0 <= t < t1 (32 rows each).

    Eight rows of ``a`` at a time, read along a band of ``_TRANSPOSE_BAND`` columns: each column
    of the band stores eight neighbours of a row of ``out`` (the eight read streams stay in
    cache).  512 x 512 on one thread of the 2-core Zen 3 VM: 0.7-1.4 ns an element, against
    2.3-4.3 for the 32 x 32 tiles read down their columns that this replaced."""
    rows, n = a.shape
    i_end = min(t1 * 32, rows)
    i8 = t0 * 32 + (i_end - t0 * 32) // 8 * 8
    for j0 in range(0, n, _TRANSPOSE_BAND):
        j1 = min(j0 + _TRANSPOSE_BAND, n)
        for i0 in range(t0 * 32, i8, 8):
            a0, a1, a2, a3 = a[i0], a[i0 + 1], a[i0 + 2], a[i0 + 3]
            a4, a5, a6, a7 = a[i0 + 4], a[i0 + 5], a[i0 + 6], a[i0 + 7]
            for j in range(j0, j1):
                o = out[j]
                o[i0], o[i0 + 1], o[i0 + 2], o[i0 + 3] = a0[j], a1[j], a2[j], a3[j]
                o[i0 + 4], o[i0 + 5], o[i0 + 6], o[i0 + 7] = a4[j], a5[j], a6[j], a7[j]
        for i in range(i8, i_end):
            ai = a[i]
            for j in range(j0, j1):
                out[j, i] = ai[j]


def transpose(a):
    """A C-contiguous copy of a.T (2-D), split over numrnn's threads by rows of ``a``: a
    weight's transpose for the kernels.  One thread of the 2-core Zen 3 VM, two runs: 512 x 512
    float32 0.18-0.24 ms, float64 0.21-0.37 (``np.ascontiguousarray(a.T)``: 0.68-0.74 and
    0.95-1.17); 2048 x 512 float32 0.8-2.4 ms, float64 3.5 (5.6-5.8 and 8.8-9.0), where the
    rows of ``out``, 8 or 16 KiB apart, contend for the same cache sets.  A scratch array
    (:mod:`numrnn.cpu.scratch`)."""
    out = scratch.empty((a.shape[1], a.shape[0]), a.dtype)
    a = np.ascontiguousarray(a)
    tiles = -(-a.shape[0] // 32)
    n = pieces(tiles, a.size * 64)
    if n == 1:
        _transpose_into(a, out)
    else:
        run_kernel(_transpose_tiles, (a, out), tiles, n)
    return out


@njit(cache=True, nogil=True)
def _transpose_into(a, out):
    """:func:`_transpose_tiles` over every tile, without a pool run (one block)."""
    _transpose_tiles(a, out, 0, -(-a.shape[0] // 32))


def _link_numpy_gemm():
    """Register NumPy's cblas gemms under symbols the kernels below link by name (resolved at
    load time in every process, so those kernels cache safely); False where NumPy's BLAS is not
    the one expected."""
    found = blas.numpy_gemm_addresses()
    if found is None:
        return False
    import llvmlite.binding as ll

    for ch, address in found.items():
        ll.add_symbol(f"numrnn_numpy_{ch}gemm", address)
    return True


_NUMPY_GEMM = _link_numpy_gemm()
# cblas_?gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc), 64-bit ints
_I, _P = nb_types.int64, nb_types.voidptr
_sgemm = nb_types.ExternalFunction("numrnn_numpy_sgemm", nb_types.void(
    nb_types.intc, nb_types.intc, nb_types.intc, _I, _I, _I, nb_types.float32, _P, _I, _P, _I,
    nb_types.float32, _P, _I))
_dgemm = nb_types.ExternalFunction("numrnn_numpy_dgemm", nb_types.void(
    nb_types.intc, nb_types.intc, nb_types.intc, _I, _I, _I, nb_types.float64, _P, _I, _P, _I,
    nb_types.float64, _P, _I))


@njit(cache=True, nogil=True)
def _tn_numpy(a, b, parts, edges, p0, p1):
    """parts[p] = a[k0:k1].T @ b[k0:k1] for the K-blocks p0 <= p < p1 (edges), through NumPy's
    own BLAS (the call numpy.matmul makes: row-major, a transposed)."""
    M, P = a.shape[1], b.shape[1]
    for p in range(p0, p1):
        k0, k1 = edges[p], edges[p + 1]
        if k1 == k0:
            parts[p, :, :] = 0
            continue
        pa = sync.address_of(a.ravel(), k0 * M)
        pb = sync.address_of(b.ravel(), k0 * P)
        pc = sync.address_of(parts[p].ravel(), 0)
        if a.itemsize == 4:
            _sgemm(101, 112, 111, M, P, k1 - k0, np.float32(1), pa, M, pb, P, np.float32(0),
                   pc, P)
        else:
            _dgemm(101, 112, 111, M, P, k1 - k0, 1.0, pa, M, pb, P, 0.0, pc, P)


@njit(cache=True, nogil=True)
def _tn_numba(a, b, parts, edges, p0, p1):
    """As :func:`_tn_numpy`, through Numba's np.dot (SciPy's BLAS)."""
    for p in range(p0, p1):
        k0, k1 = edges[p], edges[p + 1]
        if k1 == k0:
            parts[p, :, :] = 0
        else:
            np.dot(a[k0:k1].T, b[k0:k1], parts[p])


@njit(cache=True, nogil=True)
def _tn_dot(a, b, parts, edges, p0, p1):
    """As :func:`_tn_numpy`, as compiled dot products (:func:`products.gemm_tn`)."""
    for p in range(p0, p1):
        k0, k1 = edges[p], edges[p + 1]
        products.gemm_tn(a[k0:k1], b[k0:k1], parts[p], 0, a.shape[1], False)


#: How :func:`matmul_tn`'s blocks multiply: Numba's np.dot (SciPy's BLAS), NumPy's own BLAS,
#: compiled dot products.
_TN_NUMBA, _TN_NUMPY, _TN_DOT = 0, 1, 2


@njit(cache=True, nogil=True, inline="always")
def _tn_blocks(a, b, parts, how, p0, p1):
    """Run K-blocks p0 <= p < p1 of :func:`matmul_tn` (``parts`` holds the block edges' products;
    the edges are recomputed here from K and the block count); ``how``: ``_TN_*``."""
    K = a.shape[0]
    n = parts.shape[0]
    edges = np.empty(n + 1, np.int64)
    for p in range(n + 1):
        edges[p] = K * p // n
    if how == _TN_DOT:
        _tn_dot(a, b, parts, edges, p0, p1)
    elif how == _TN_NUMPY:
        _tn_numpy(a, b, parts, edges, p0, p1)
    else:
        _tn_numba(a, b, parts, edges, p0, p1)


#: Least rows of the output per block for which :func:`matmul_tn` splits over them (each block
#: a product over the whole K, written in place) rather than over K.
TN_MIN_BLOCK_ROWS = 16


@njit(cache=True, nogil=True, inline="always")
def _tn_rows(a, b, out, m0, m1):
    """out[m0:m1] = a[:, m0:m1].T @ b over the whole K, in place, through NumPy's own BLAS
    (one gemm whose A is a column block of the row-major a, lda = M)."""
    M, P, K = a.shape[1], b.shape[1], a.shape[0]
    if m1 <= m0:
        return
    pa = sync.address_of(a.ravel(), m0)
    pb = sync.address_of(b.ravel(), 0)
    pc = sync.address_of(out.ravel(), m0 * P)
    if a.itemsize == 4:
        _sgemm(101, 112, 111, m1 - m0, P, K, np.float32(1), pa, M, pb, P, np.float32(0), pc, P)
    else:
        _dgemm(101, 112, 111, m1 - m0, P, K, 1.0, pa, M, pb, P, 0.0, pc, P)


@njit(cache=True, nogil=True)
def _tn_into(a, b, out):
    """:func:`_tn_rows` over every row, without a pool run (one block)."""
    _tn_rows(a, b, out, 0, a.shape[1])


@njit(cache=True, nogil=True)
def _tn_dot_rows(a, b, out, m0, m1):
    """out[m0:m1] = a[:, m0:m1].T @ b over the whole K, in place, as compiled dot products."""
    products.gemm_tn(a, b, out, m0, m1, False)


@njit(cache=True, nogil=True)
def _tn_dot_into(a, b, out, accumulate):
    """:func:`_tn_dot_rows` over every row, without a pool run (one block); ``accumulate``:
    out += a.T @ b (K up to one block: the bits of adding the product made on its own).  One
    kernel for both, always called with the flag (an omitted one is a type of its own, and
    each specialisation links ``gemm_tn``'s loops again: seconds)."""
    products.gemm_tn(a, b, out, 0, a.shape[1], accumulate)


def _tn_compiled(a, b, out):
    """Whether :func:`matmul_tn` multiplies a.T @ b as compiled dot products."""
    return (a.dtype == b.dtype == out.dtype and a.dtype.kind == "f" and products.use_dot_products(
        products.gemm_tn_pays(a.dtype, a.shape[0], a.shape[1], b.shape[1])))


@njit(cache=True, nogil=True)
def _tn_add_into(a, b, out):
    """out += a.T @ b in one gemm with beta = 1, through NumPy's own BLAS: the gemm adds its
    product to out as it stores it (alpha = 1), which rounds as adding a separate product."""
    M, P, K = a.shape[1], b.shape[1], a.shape[0]
    pa = sync.address_of(a.ravel(), 0)
    pb = sync.address_of(b.ravel(), 0)
    pc = sync.address_of(out.ravel(), 0)
    if a.itemsize == 4:
        _sgemm(101, 112, 111, M, P, K, np.float32(1), pa, M, pb, P, np.float32(1), pc, P)
    else:
        _dgemm(101, 112, 111, M, P, K, 1.0, pa, M, pb, P, 1.0, pc, P)


def matmul_tn_add(a, b, out):
    """out += a.T @ b for a small K (the step at which the initial state enters a weight
    gradient): one call, on the calling thread, without a product to allocate and add."""
    if a.shape[0] == 0 or out.size == 0:
        return out
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    dot = _tn_compiled(a, b, out)
    if out.flags.c_contiguous and dot and a.shape[0] <= products.TN_BLOCKS[0]:
        _tn_dot_into(a, b, out, True)
    elif out.flags.c_contiguous and not dot and _NUMPY_GEMM and blas.numpy_blas_controlled():
        with blas.single_threaded():
            _tn_add_into(a, b, out)
    else:
        out += matmul_tn(a, b, out=scratch.empty(out.shape, out.dtype))
    return out


def matmul_tn(a, b, out=None):
    """a.T @ b for a (K, M), b (K, P), on numrnn's threads.

    Split over the rows of the output where the output is large against K (M (n + 1) > K
    (n - 1) for n blocks of at least ``TN_MIN_BLOCK_ROWS`` rows; one block always): each block
    a product over the whole K written in place, no partial products to allocate and add.  The
    weight gradient of an LSTM at B = 1, N = 512 in float32 (K = 200, M = 2048, P = 512) went
    from 5.3-5.7 to 3.3-3.5 ms on the 2-core Zen 3 VM.  Else split over K, the partial products
    summed in a fixed order.  Row blocks go through NumPy's own BLAS from compiled code
    (:func:`numrnn.cpu.blas.numpy_gemm_addresses`; 10-20% faster than SciPy's for this
    transposed form in float32 here), so where it is not found the split is over K, through
    Numba's ``np.dot``.  Where the products run as compiled dot products
    (:func:`products.use_dot_products`: AVX-512), every block is :func:`products.gemm_tn`
    instead, at the sizes where it pays (:func:`products.gemm_tn_pays`; K-blocks packed
    transposed; one thread of a Zen 5 core, float64 K = 3200, M = 2048, P = 512: 76-87 GFLOP/s
    against 49-56 for OpenBLAS's AVX2 gemm, float32 136-150 against 101-115).  Either way as
    one compiled job per thread; an entry is rounded differently in different blocks, so the
    bits depend on the sizes and the block count, never on the threads.

    ``out``: a C-contiguous (M, P) array to write into.
    """
    K = a.shape[0]
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    if out is None:
        out = np.empty((a.shape[1], b.shape[1]), a.dtype)
    if K == 0 or out.size == 0:
        out[...] = 0
        return out
    M = a.shape[1]
    work = K * M * b.shape[1]
    if _tn_compiled(a, b, out):
        how, into, rows = _TN_DOT, _tn_dot_into, _tn_dot_rows
        held = contextlib.nullcontext()
    else:
        numpy_gemm = _NUMPY_GEMM and blas.numpy_blas_controlled()
        how, into, rows = (_TN_NUMPY, _tn_into, _tn_rows) if numpy_gemm else (_TN_NUMBA, None,
                                                                                None)
        held = blas.single_threaded()
    n = pieces(M, work)
    # split by rows where that moves fewer numbers: each row block reads all of b ((n - 1) K P
    # more than once), a K split writes and adds n partial products (about (n + 1) M P)
    if into is not None and out.flags.c_contiguous and (n == 1 or (
            M >= n * TN_MIN_BLOCK_ROWS and M * (n + 1) > K * (n - 1))):
        with held:
            if n == 1 and how == _TN_DOT:
                into(a, b, out, False)
            elif n == 1:
                into(a, b, out)
            else:
                run_kernel(rows, (a, b, out), M, n)
        return out
    n = pieces(K, work)
    parts = scratch.empty((n,) + out.shape, a.dtype)
    with held:
        run_kernel(_tn_blocks, (a, b, parts, how), n, n)
    out[...] = parts[0]
    for p in range(1, n):
        out += parts[p]
    return out
