"""A per-step barrier for kernels that split one time step over numrnn's threads.

When the batch is smaller than the machine's core count, the recurrence of one sequence is
split by units (rows of W_hh) over threads (:mod:`numrnn.cpu.recurrence`), and every step ends
with a barrier: no thread starts step t+1 before every thread has written its part of h_t.  A
step at B = 1, N = 128 costs a few microseconds, so the barrier must cost well under one: an
OS wait (a futex, a ``threading.Barrier``) costs tens.  Here each thread publishes how many steps
it has finished in its own slot of a shared int64 array (one cache line apart, so no two threads
write the same line), with a release store, and waits with acquire loads until every slot has
reached its count: no atomic read-modify-write, no lock, no OS call while the peers keep up.
Measured on the 2-core EPYC: 0.03-0.12 microseconds per barrier between two threads.

The loads and stores are LLVM atomics (``load atomic acquire``, ``store atomic release``), so
the compiler can neither hoist the load out of the spin loop nor move the step's stores of h
after the release.  A thread that spins long (a peer descheduled on a loaded machine) calls
``sched_yield`` every ~100 microseconds of spinning, so an oversubscribed machine slows down instead of
starving the peer it waits for.
"""
import platform
import sys

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, register_jitable

#: Slots of the flags array are this many int64 apart (64 bytes: one cache line each); a
#: thread's slot holds its count of finished phases, the next int64 its cycles spent waiting.
STRIDE = 8
#: Cycles (of the CPU's cycle counter) a waiting thread spins before each ``sched_yield``:
#: about 100 microseconds at 2-3 GHz, far longer than a step, so that a peer that is merely
#: slower is never waited for through the scheduler (a yield there cost 100 microseconds per
#: step on a loaded 2-core machine, where spinning 4000 polls first did).
SPIN_CYCLES = 250_000

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
#: Linux's futex system call number on this machine (None: no futex; idle pool threads then
#: block in Python, see numrnn.cpu.threads).
FUTEX = ({"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine().lower())
         if sys.platform.startswith("linux") else None)
_FUTEX_WAIT_PRIVATE = 128
_FUTEX_WAKE_PRIVATE = 129


def _item_pointer(context, builder, sig, args):
    """The pointer to arr[idx] of an intrinsic called as f(arr, idx, ...)."""
    aryty = sig.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    i = context.cast(builder, args[1], sig.args[1], types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [i])


@intrinsic
def load_acquire(typingctx, arr, idx):
    """arr[idx] of an int64 array, read with acquire ordering."""
    def codegen(context, builder, sig, args):
        ptr = _item_pointer(context, builder, sig, args)
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(arr, idx), codegen


@intrinsic
def store_release(typingctx, arr, idx, val):
    """arr[idx] = val (int64 array), written with release ordering: every store before it is
    visible to a thread that reads ``val`` with :func:`load_acquire`."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        ptr = _item_pointer(context, builder, sig, args)
        builder.store_atomic(v, ptr, "release", 8)
        return context.get_dummy_value()
    return types.void(arr, idx, val), codegen


@intrinsic
def store_seq_cst(typingctx, arr, idx, val):
    """arr[idx] = val (int64 array), sequentially consistent (a full fence on x86)."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        ptr = _item_pointer(context, builder, sig, args)
        builder.store_atomic(v, ptr, "seq_cst", 8)
        return context.get_dummy_value()
    return types.void(arr, idx, val), codegen


@intrinsic
def load_seq_cst(typingctx, arr, idx):
    """arr[idx] of an int64 array, sequentially consistent."""
    def codegen(context, builder, sig, args):
        ptr = _item_pointer(context, builder, sig, args)
        return builder.load_atomic(ptr, "seq_cst", 8)
    return types.int64(arr, idx), codegen


@intrinsic
def compare_and_swap(typingctx, arr, idx, expected, new):
    """arr[idx] = new if arr[idx] == expected (int64 array), atomically and sequentially
    consistent; whether it was swapped."""
    def codegen(context, builder, sig, args):
        e = context.cast(builder, args[2], sig.args[2], types.int64)
        n = context.cast(builder, args[3], sig.args[3], types.int64)
        ptr = _item_pointer(context, builder, sig, args)
        return builder.extract_value(builder.cmpxchg(ptr, e, n, "seq_cst", "seq_cst"), 1)
    return types.boolean(arr, idx, expected, new), codegen


@intrinsic
def address_of(typingctx, arr, idx):
    """The address of arr[idx], for a system call."""
    def codegen(context, builder, sig, args):
        ptr = _item_pointer(context, builder, sig, args)
        return builder.bitcast(ptr, cgutils.voidptr_t)
    return types.voidptr(arr, idx), codegen


@intrinsic
def spin_pause(typingctx):
    """The x86 ``pause`` hint in a spin loop (nothing elsewhere): it saves power and frees the
    core's sibling hyperthread.  (An LLVM intrinsic: Numba's JIT has no inline-asm parser.)"""
    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def cycle_counter(typingctx):
    """The CPU's cycle counter (LLVM's ``readcyclecounter``: rdtsc on x86; 0 where there is
    none, which makes every poll past the first yield)."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(64), []), "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


#: libc's sched_yield, linked by name (cacheable, unlike a ctypes pointer).
sched_yield = types.ExternalFunction("sched_yield", types.intc())
#: libc's syscall (variadic; its integer and pointer arguments travel in the same registers
#: either way), for the futex.
_syscall = types.ExternalFunction("syscall", types.int64(
    types.int64, types.voidptr, types.int64, types.int64, types.voidptr, types.voidptr,
    types.int64))


@register_jitable
def futex_wait(board, i, expected):
    """Sleep in the OS while the low 32 bits of board[i] equal ``expected``'s (returns at once
    if they do not; may return spuriously)."""
    _syscall(FUTEX, address_of(board, i), _FUTEX_WAIT_PRIVATE, expected & 0xFFFFFFFF,
             cgutils_null(), cgutils_null(), 0)


@register_jitable
def futex_wake(board, i):
    """Wake one thread sleeping in :func:`futex_wait` on board[i]."""
    _syscall(FUTEX, address_of(board, i), _FUTEX_WAKE_PRIVATE, 1, cgutils_null(),
             cgutils_null(), 0)


@intrinsic
def cgutils_null(typingctx):
    """A null pointer."""
    def codegen(context, builder, sig, args):
        return cgutils.voidptr_t(None)
    return types.voidptr(), codegen


@register_jitable
def arrive_and_wait(flags, me, n_threads, count):
    """Thread ``me`` of ``n_threads`` has finished ``count`` phases: publish it, then wait until
    every thread has.  ``flags``: int64 array of n_threads * STRIDE zeros at the start."""
    if n_threads <= 1:
        return
    store_release(flags, me * STRIDE, count)
    entered = cycle_counter()
    start = entered
    for k in range(n_threads):
        while load_acquire(flags, k * STRIDE) < count:
            spin_pause()
            now = cycle_counter()
            if now - start >= SPIN_CYCLES or now < start:
                sched_yield()
                start = cycle_counter()
    # the cycles spent waiting, in this thread's slot next to its count (see waited_share)
    flags[me * STRIDE + 1] += cycle_counter() - entered


# --- the pool's job board (numrnn.cpu.threads) ----------------------------------------------
#
# Each pool thread owns a row of ROW int64 on a shared board: at POSTED the count of jobs posted
# to it, at GO the last job the caller has let it start, at DONE the last one it finished (a
# cache line each).  A Python thread needs the GIL to start its job, and a thread that waits
# for the GIL sleeps in the OS, which costs 30-40 microseconds on a virtual machine (a condition
# variable round trip measured 70 here).  So a pool thread that sees a job waits until GO says
# the caller runs without the GIL (inside its own compiled share), and it publishes DONE from
# compiled code that runs without the GIL: neither side ever waits for the other's GIL.

#: int64 per pool thread on the board; the offsets of its counters, of its flag "asleep in
#: the OS" (futex), and of the last job withdrawn from it (a run_kernel job whose blocks were
#: all taken before the thread came: it skips that job without returning to Python, where it
#: would take the GIL from the caller).
ROW = 5 * STRIDE
POSTED = 0
GO = STRIDE
DONE = 2 * STRIDE
ASLEEP = 3 * STRIDE
WITHDRAWN = 4 * STRIDE


@register_jitable
def await_job(board, me, seen, max_cycles):
    """Pool thread ``me`` has finished job ``seen``: publish it, then wait for job ``seen + 1``
    to be posted and let go (True), or for ``max_cycles`` of the cycle counter (False).  The
    core is yielded every ``SPIN_CYCLES``."""
    row = me * ROW
    store_release(board, row + DONE, seen)
    start = cycle_counter()
    last = start
    while True:
        posted = load_acquire(board, row + POSTED)
        if posted > seen and load_acquire(board, row + GO) >= posted:
            if load_acquire(board, row + WITHDRAWN) < posted:
                return True
            seen = posted  # withdrawn: finished without this thread
            store_release(board, row + DONE, seen)
            continue
        spin_pause()
        now = cycle_counter()
        if now - start >= max_cycles or now < start:
            if FUTEX is None:
                return False
            # sleep in the OS until a job is posted (see post): say so, then look once more
            store_seq_cst(board, row + ASLEEP, 1)
            posted = load_seq_cst(board, row + POSTED)
            if posted <= seen:
                futex_wait(board, row + POSTED, posted)
            store_seq_cst(board, row + ASLEEP, 0)
            start = cycle_counter()
            last = start
        elif now - last >= SPIN_CYCLES:
            sched_yield()
            last = cycle_counter()


@register_jitable
def post(board, me):
    """Count one more job posted to pool thread ``me``, and wake it if it sleeps in the OS
    (the thread says so, then reads POSTED; this writes POSTED, then reads that: both
    sequentially consistent, so one of the two sees the other)."""
    row = me * ROW
    store_seq_cst(board, row + POSTED, board[row + POSTED] + 1)
    if FUTEX is not None and load_seq_cst(board, row + ASLEEP) != 0:
        futex_wake(board, row + POSTED)


@register_jitable
def wake(board, me):
    """Wake pool thread ``me`` if it sleeps in the OS: it spins again for its idle time."""
    if FUTEX is not None and load_seq_cst(board, me * ROW + ASLEEP) != 0:
        futex_wake(board, me * ROW + POSTED)


@register_jitable
def let_go(board, n_threads):
    """Let pool threads 0 .. n_threads-1 start the jobs posted to them."""
    for k in range(n_threads):
        store_release(board, k * ROW + GO, load_acquire(board, k * ROW + POSTED))


@register_jitable
def withdraw(board, n_threads):
    """The jobs posted to pool threads 0 .. n_threads-1 need them no more (see WITHDRAWN)."""
    for k in range(n_threads):
        store_release(board, k * ROW + WITHDRAWN, load_acquire(board, k * ROW + POSTED))


@register_jitable
def join(board, n_threads, max_cycles):
    """Wait until pool threads 0 .. n_threads-1 have finished the jobs posted to them (True), or
    for ``max_cycles`` (False), yielding the core every ``SPIN_CYCLES``."""
    start = cycle_counter()
    last = start
    for k in range(n_threads):
        while load_acquire(board, k * ROW + DONE) < load_acquire(board, k * ROW + POSTED):
            spin_pause()
            now = cycle_counter()
            if now - start >= max_cycles or now < start:
                return False
            if now - last >= SPIN_CYCLES:
                sched_yield()
                last = cycle_counter()
    return True


# --- claims: a run's blocks taken by whoever comes first ------------------------------------
#
# run_kernel's blocks are not handed to threads: each has a claim slot (STRIDE int64 apart), 0
# while free, the tag (> 0) of the participant that took it (compare-and-swap) while it runs,
# then FINISHED, or FAILED where it raised (or was abandoned).  Each participant takes its own
# share's blocks first, then any block still free, so a pool thread that is late (asleep, its
# virtual CPU descheduled) leaves its blocks to the caller instead of making it wait: the caller
# waits only for blocks already running.  Which thread runs a block changes nothing in its bits.

#: A claim slot's value once its block is done, or once it raised or was abandoned.
FINISHED = -1
FAILED = -2


@register_jitable
def run_claims(claims, first, tag):
    """Blocks 0 .. len(claims) / STRIDE - 1, from ``first`` on (wrapping): the next one still free,
    now claimed for ``tag``, or -1 when none is left (from ``first`` on)."""
    n = len(claims) // STRIDE
    for k in range(n):
        p = first + k
        if p >= n:
            p -= n
        if load_acquire(claims, p * STRIDE) == 0 and compare_and_swap(claims, p * STRIDE, 0, tag):
            return p
    return -1


@register_jitable
def wait_claims(claims, max_cycles):
    """Wait until no block is running: 1 if every block is FINISHED, -1 if one FAILED, 0 after
    ``max_cycles`` with some still running (a block still free counts as running).  The core is
    yielded every ``SPIN_CYCLES``."""
    n = len(claims) // STRIDE
    start = cycle_counter()
    last = start
    status = 1
    for p in range(n):
        while True:
            v = load_acquire(claims, p * STRIDE)
            if v < 0:
                if v == FAILED:
                    status = -1
                break
            spin_pause()
            now = cycle_counter()
            if now - start >= max_cycles or now < start:
                return 0
            if now - last >= SPIN_CYCLES:
                sched_yield()
                last = cycle_counter()
    return status


@register_jitable
def abandon_claims(claims, tag):
    """The blocks ``tag`` holds, and those still free, become FAILED (a participant that
    raised: no one else may start them after the call has returned)."""
    n = len(claims) // STRIDE
    for p in range(n):
        if load_acquire(claims, p * STRIDE) == tag:
            store_release(claims, p * STRIDE, FAILED)
        else:
            compare_and_swap(claims, p * STRIDE, 0, FAILED)


@register_jitable
def cycles():
    """The cycle counter, for timing a run of kernels in the counter's own unit."""
    return cycle_counter()


@register_jitable
def release_all(flags, n_threads):
    """Let every waiter through for good (a participant that failed must not hang the rest)."""
    for k in range(n_threads):
        store_release(flags, k * STRIDE, 1 << 62)
