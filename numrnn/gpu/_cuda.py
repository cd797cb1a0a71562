"""Access to numba.cuda for the GPU backend: import, device checks, errors that say what to do.

Nothing outside :mod:`numrnn.gpu` imports numba.cuda: the CPU package and its tests never touch it.
Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported) everything here
works, with the simulator's limits: one block per cooperative grid, no warp shuffles.
"""
import numpy as np

try:
    from numba import cuda
    from numba.core import config as _numba_config
    _IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - numba-cuda missing
    cuda = None
    _numba_config = None
    _IMPORT_ERROR = exc

#: True when the kernels run in numba's CUDA simulator.
SIMULATOR = bool(_numba_config is not None and getattr(_numba_config, "ENABLE_CUDASIM", 0))


class CUDAUnavailableError(RuntimeError):
    """No usable CUDA device (or numba-cuda missing)."""


class DeviceMemoryError(MemoryError):
    """The GPU ran out of memory."""


def require():
    """Raise :class:`CUDAUnavailableError` with instructions unless a CUDA device can be used."""
    if cuda is None:
        raise CUDAUnavailableError(
            "device='cuda' needs numba-cuda: install it with `pip install numrnn[cuda]` (or "
            f"`pip install numba-cuda`); importing numba.cuda failed: {_IMPORT_ERROR}")
    if SIMULATOR:
        return
    try:
        ok = cuda.is_available()
    except Exception as exc:  # pragma: no cover - depends on the driver
        raise CUDAUnavailableError(f"device='cuda': the CUDA driver failed to start ({exc}); use "
                                   "device='cpu', or check the driver with `nvidia-smi`") from exc
    if not ok:
        raise CUDAUnavailableError(
            "device='cuda': no CUDA GPU is visible (numba.cuda.is_available() is False); use "
            "device='cpu', or check `nvidia-smi` and CUDA_VISIBLE_DEVICES; to test without a GPU "
            "set NUMBA_ENABLE_CUDASIM=1 before importing numba")


def is_device_array(a):
    """True for arrays that live on the GPU (anything with ``__cuda_array_interface__``)."""
    if isinstance(a, np.ndarray):
        return False
    # the simulator's arrays have no __cuda_array_interface__
    return hasattr(a, "__cuda_array_interface__") or (SIMULATOR and hasattr(a, "copy_to_host"))


def as_device(a):
    """A numba device array viewing ``a`` (no copy), for any object with the CUDA array interface."""
    if SIMULATOR and hasattr(a, "copy_to_host"):
        return a
    if hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray):
        return cuda.as_cuda_array(a)
    raise TypeError(f"expected a device array, got {type(a).__name__}")


def _oom(exc, nbytes):
    return DeviceMemoryError(
        f"the GPU is out of memory allocating {nbytes / 2**20:.1f} MiB ({exc}); use a smaller "
        "batch or sequence (split the sequence and pass h0 between chunks), free other GPU "
        "memory, or use device='cpu'")


def empty(shape, dtype):
    """Uninitialised device array; an out-of-memory error says what to do."""
    try:
        return cuda.device_array(shape, dtype)
    except Exception as exc:
        if _is_oom(exc):
            raise _oom(exc, int(np.prod(shape)) * np.dtype(dtype).itemsize) from exc
        raise


def to_device(a):
    """Copy a host array to the device (out-of-memory translated)."""
    try:
        return cuda.to_device(np.ascontiguousarray(a))
    except Exception as exc:
        if _is_oom(exc):
            raise _oom(exc, a.nbytes) from exc
        raise


def _is_oom(exc):
    text = f"{type(exc).__name__} {exc}".upper()
    return "OUT_OF_MEMORY" in text or "OUT OF MEMORY" in text


def synchronize():
    if not SIMULATOR:
        cuda.synchronize()


def device_properties():
    """(name, multiprocessors, opt-in shared memory per block in bytes, cooperative launch)."""
    if SIMULATOR:
        return "CUDA simulator", 1, 48 * 1024, True
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    try:
        smem = int(dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    except Exception:  # pragma: no cover - older drivers
        smem = int(dev.MAX_SHARED_MEMORY_PER_BLOCK)
    try:
        coop = bool(dev.COOPERATIVE_LAUNCH)
    except Exception:  # pragma: no cover
        coop = True
    return name, int(dev.MULTIPROCESSOR_COUNT), smem, coop
