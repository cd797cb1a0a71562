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

#: Least batch size that is split over threads (each thread runs whole sequences, no per-step
#: synchronisation) ...
PARALLEL_MIN_BATCH = _env_int("NUMRNN_PARALLEL_MIN_BATCH", 2)

#: ... and the least work of one kernel call, in multiply-adds of the recurrent product
#: (T * B * N * G*N), worth the threads' start-up (about 2e6: a millisecond of work).
PARALLEL_MIN_WORK = _env_int("NUMRNN_PARALLEL_MIN_WORK", 2_000_000)

#: Threads per block of the GPU kernels.
GPU_THREADS_PER_BLOCK = _env_int("NUMRNN_GPU_THREADS_PER_BLOCK", 256)
