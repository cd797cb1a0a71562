"""Tunables of numrnn, read once at import. Tests patch these module attributes.

Every value can also be set from the environment before numrnn is imported
(``NUMRNN_FASTMATH=1``, ``NUMRNN_BLAS_MIN_WORK=...``, ...).
"""
import os


def _env_bool(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an integer in the environment variable, got "
                         f"{value!r}") from None


def _env_str(name, default):
    value = os.environ.get(name)
    return default if value is None else value.strip().lower()


#: fastmath for the CPU kernels. Off by default: finite-difference checks need IEEE arithmetic.
FASTMATH = _env_bool("NUMRNN_FASTMATH", False)

#: Below this many multiply-adds per time step (B * N_in * N_out) the recurrent product is
#: written as compiled loops; at or above it, BLAS gemm is called once per step.
BLAS_MIN_WORK = _env_int("NUMRNN_BLAS_MIN_WORK", 64 * 64 * 64)

#: In float32, run the recurrent product of a step as W_hh r^T instead of r W_hh^T (then
#: transpose the small result): OpenBLAS is 1.8x faster on that form when a thread's share of
#: the batch is a few rows (measured on a 2-core EPYC; see numrnn.cpu.recurrence._recurrent_projection).
TRANSPOSED_GEMM_FLOAT32 = _env_bool("NUMRNN_TRANSPOSED_GEMM_FLOAT32", True)

#: Run the recurrent product of each step where it has two sequences or more (a block of the
#: batch split, or a unit block of a small batch), and the products over all steps (the input
#: projection, the input's gradient), as compiled dot products (numrnn.cpu.products) rather
#: than BLAS gemm: "auto" where Numba compiles for AVX-512 (its 32 vector registers hold the
#: loops' sixteen running sums: there a step's product took 0.4-0.5 of the time of OpenBLAS's
#: AVX2 gemm, one Zen 5 core, 16 rows, N = 128-512) at the sizes where they pay
#: (numrnn.cpu.products.times_transpose_pays, gemm_nt_pays, gemm_tn_pays: sums deep enough; the
#: weight gradients too), "on" wherever, "off" never.  See numrnn.cpu.recurrence.product_mode.
DOT_PRODUCTS = _env_str("NUMRNN_DOT_PRODUCTS", "auto")

#: Threads numrnn's CPU kernels use (0: all usable cores). The work is cut into blocks first
#: (PARALLEL_BLOCKS) and the threads share out whole blocks, so the bits of every result do not
#: depend on this number.
NUM_THREADS = _env_int("NUMRNN_NUM_THREADS", 0)

#: Blocks that parallel work is cut into: ranges of whole sequences for the recurrence, row blocks
#: and K-blocks (partial sums added in a fixed order) for matrix products.  0: the number of
#: usable cores of the machine.  Results are bitwise reproducible for a fixed block count, whatever
#: NUM_THREADS is.
PARALLEL_BLOCKS = _env_int("NUMRNN_PARALLEL_BLOCKS", 0)

#: Least work, in multiply-adds, of a kernel call or matrix product worth splitting over threads
#: (about 2e6: a millisecond of work, against tens of microseconds to hand it out).
PARALLEL_MIN_WORK = _env_int("NUMRNN_PARALLEL_MIN_WORK", 2_000_000)

#: Least float32 multiply-adds per time step (B * N_in * N_out; a float64 multiply-add counts
#: SPLIT_FLOAT64_WEIGHT times) for which one step of a batch smaller than the machine's block
#: count is split over threads by units (a barrier per step); below it the batch is split by
#: sequences (larger batches: SPLIT_MAX_ROWS and SPLIT_MIN_SEQUENCE_WORK).  See
#: numrnn.cpu.recurrence.unit_blocks.  Measured on the 2-core EPYC, forward + vjp at B = 1,
#: T = 200 (split / by sequences): float32 0.9-1.1x at 16k-37k multiply-adds a step (tanh
#: N = 128-192, LSTM N = 64), 1.05-1.5x from 49k on (GRU N = 128, LSTM N = 128-256, tanh
#: N = 256-512); float64, whose step reads twice the bytes of M, 1.15-1.33x in 8 of 10 runs
#: at 25k-40k (tanh and relu N = 160-200, GRU N = 96-112, LSTM N = 80-96; tanh N = 200 once
#: 0.88x and once 0.99x; the forward pass of T = 2000 1.0-1.3x), 1.0x at 16k-19k (tanh N = 128,
#: GRU N = 80, LSTM N = 64; measured again after the packed products, 1.03-1.10x: they split
#: now, see SPLIT_FLOAT64_WEIGHT).  The tangent products of the Lyapunov loop (always
#: float64) count plain multiply-adds (numrnn.cpu.jacobians.vector_blocks).
SPLIT_MIN_STEP_WORK = _env_int("NUMRNN_SPLIT_MIN_STEP_WORK", 3 * 128 * 128)

#: How many times a float64 multiply-add counts against SPLIT_MIN_STEP_WORK (it was 2, the
#: ratio of the bytes of M a step reads).  Measured on the 2-core Zen 4 VM after the packed
#: products (benchmarks/bench_split.py, 15 rounds, vjp T = 200 batch split / unit split,
#: results/split_b1_float64_2core_zen4_issue16.md): float64 at 16k-19k multiply-adds a step
#: 1.10 (tanh N = 128), 1.09 (GRU N = 80), 1.03 (LSTM N = 64), at 25k-28k 1.07-1.25; float32
#: in the same run (results/split_b1_float32_2core_zen4_issue16.md) 0.82-0.90 for tanh N = 128
#: and 192 and LSTM N = 64, 1.05-1.17 for GRU N = 96-112 and LSTM N = 96: float32's rule stays.
SPLIT_FLOAT64_WEIGHT = _env_int("NUMRNN_SPLIT_FLOAT64_WEIGHT", 3)

#: The most sequences per block of the batch split (B / the machine's block count, rounded up)
#: for which a batch of at least two a block is split by units instead, when one sequence's
#: step carries SPLIT_MIN_SEQUENCE_WORK (see numrnn.cpu.recurrence.unit_blocks).  Measured on a
#: 2-core AMD EPYC (Zen 5) with benchmarks/bench_split.py (results/split_batch_2core_zen5.md),
#: batch split / unit split of forward + vjp at T = 200, from 131k multiply-adds a sequence's
#: step on, at 2 and 4 sequences a block (B = 4 and 8): 1.11-1.70 in a first run, where the
#: batch split took 1.2-1.8x its time of the later runs and the unit split the same (each
#: thread of the batch split reads all of M at every step, which a busy machine's shared cache
#: and memory slow down); 0.94-1.04 in three later runs.  At 8 a block (B = 16) 1.01-1.13; at
#: one a block (B = 2, LSTM N = 512: the batch split's product is a gemv there, the unit
#: split's a gemm of two columns) 0.63-0.75, so the batch split stays.
SPLIT_MAX_ROWS = _env_int("NUMRNN_SPLIT_MAX_ROWS", 4)

#: Least float32 multiply-adds of one sequence's step (R*N * G*N; a float64 one counts twice)
#: for which a batch of SPLIT_MAX_ROWS sequences a block or fewer is split by units.  Measured
#: as above at B = 8, batch split / unit split: 0.70-0.94 at 16k and 0.89 at 33k (tanh float32
#: and float64 N = 128), 0.95-1.07 at 66k (LSTM float32 N = 128), 0.94-1.38 from 131k on.
SPLIT_MIN_SEQUENCE_WORK = _env_int("NUMRNN_SPLIT_MIN_SEQUENCE_WORK", 2 * 256 * 256)

#: Steps per block of the products over time on the CPU (the input projection, the weight
#: gradients, the input's gradient; a checkpoint interval is a multiple of it): the smallest
#: power of two from STEP_BLOCK_MIN up to STEP_BLOCK_MAX whose block holds STEP_BLOCK_ROWS rows
#: (steps * B) and STEP_BLOCK_WORK numbers (steps * B * G*N), so that a block's fixed costs
#: (tens of microseconds of Python; one pass over each weight gradient to add it up) stay small
#: against its products: measured on the 2-core EPYC, 64-step blocks cost GRU B=1 N=512 T=200
#: 35% and tanh B=1 N=32 T=2000 75% over one block, 512-step blocks nothing measurable.  The
#: bits of a call depend on it (not on the thread count).
STEP_BLOCK_MIN = _env_int("NUMRNN_STEP_BLOCK_MIN", 64)
STEP_BLOCK_MAX = _env_int("NUMRNN_STEP_BLOCK_MAX", 512)
STEP_BLOCK_ROWS = _env_int("NUMRNN_STEP_BLOCK_ROWS", 512)
STEP_BLOCK_WORK = _env_int("NUMRNN_STEP_BLOCK_WORK", 2**16)

#: Threads per block of the GPU kernels.
GPU_THREADS_PER_BLOCK = _env_int("NUMRNN_GPU_THREADS_PER_BLOCK", 256)

#: What a NaN or inf born inside a computation does: "raise" (numrnn.NonFiniteError), "warn"
#: (numrnn.NonFiniteWarning, results returned) or "ignore".  See numrnn.nonfinite for a block.
NONFINITE = _env_str("NUMRNN_NONFINITE", "raise")

#: Compare the memory a call will allocate (the BPTT tape, Jacobian arrays) with the memory
#: available, and raise MemoryError with the sizes before allocating when it does not fit.
MEMORY_CHECK = _env_bool("NUMRNN_MEMORY_CHECK", True)

#: Bytes of scratch buffers each calling thread keeps between CPU calls for the arrays a call
#: allocates and drops (the input projection, the tape, the projections' cotangents): reusing
#: them spares the page faults of taking fresh memory every call (numrnn.cpu.scratch).  A
#: buffer is reused only when no array refers to it.  0: no pool (every array a plain one).
SCRATCH_BYTES = _env_int("NUMRNN_SCRATCH_BYTES", 256 * 2**20)

#: Arrays smaller than this many bytes are never taken from the scratch pool (the allocator
#: reuses small blocks without page faults).
SCRATCH_MIN_BYTES = _env_int("NUMRNN_SCRATCH_MIN_BYTES", 64 * 2**10)
