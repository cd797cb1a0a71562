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


@intrinsic
def load_acquire(typingctx, arr, idx):
    """arr[idx] of an int64 array, read with acquire ordering."""
    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [i])
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(arr, idx), codegen


@intrinsic
def store_release(typingctx, arr, idx, val):
    """arr[idx] = val (int64 array), written with release ordering: every store before it is
    visible to a thread that reads ``val`` with :func:`load_acquire`."""
    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [i])
        builder.store_atomic(v, ptr, "release", 8)
        return context.get_dummy_value()
    return types.void(arr, idx, val), codegen


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


@register_jitable
def cycles():
    """The cycle counter, for timing a run of kernels in the counter's own unit."""
    return cycle_counter()


@register_jitable
def release_all(flags, n_threads):
    """Let every waiter through for good (a participant that failed must not hang the rest)."""
    for k in range(n_threads):
        store_release(flags, k * STRIDE, 1 << 62)
