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
    return default if value is None else int(value)


#: fastmath for the CPU kernels. Off by default: finite-difference checks need IEEE arithmetic.
FASTMATH = _env_bool("NUMRNN_FASTMATH", False)

#: Below this many multiply-adds per time step (B * N_in * N_out) the recurrent product is
#: written as compiled loops; at or above it, BLAS gemm is called once per step.
BLAS_MIN_WORK = _env_int("NUMRNN_BLAS_MIN_WORK", 64 * 64 * 64)

#: In float32, run the recurrent product of a step as W_hh r^T instead of r W_hh^T (then
#: transpose the small result): OpenBLAS is 1.8x faster on that form when a thread's share of
#: the batch is a few rows (measured on a 2-core EPYC; see numrnn.cpu.recurrence._recurrent_projection).
TRANSPOSED_GEMM_FLOAT32 = _env_bool("NUMRNN_TRANSPOSED_GEMM_FLOAT32", True)

#: Threads numrnn's CPU kernels use (0: all usable cores). Batches are split into ranges of whole
#: sequences (no per-step synchronisation) and matrix products into blocks.
NUM_THREADS = _env_int("NUMRNN_NUM_THREADS", 0)

#: Least work, in multiply-adds, of a kernel call or matrix product worth splitting over threads
#: (about 2e6: a millisecond of work, against tens of microseconds to hand it out).
PARALLEL_MIN_WORK = _env_int("NUMRNN_PARALLEL_MIN_WORK", 2_000_000)

#: Threads per block of the GPU kernels.
GPU_THREADS_PER_BLOCK = _env_int("NUMRNN_GPU_THREADS_PER_BLOCK", 256)
