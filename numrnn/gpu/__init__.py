"""GPU backend: ``@cuda.jit`` kernels mirroring :mod:`numrnn.cpu`, plus launch configuration.

Importing this package imports ``numba.cuda``; the rest of numrnn imports it only when a network
is placed on ``device="cuda"``.  :func:`info` says which device and which recurrence path ran.
"""
from . import _cuda
from ._cuda import SIMULATOR, CUDAUnavailableError, DeviceMemoryError, require

if _cuda.cuda is None:  # pragma: no cover - numba-cuda missing
    require()  # raises, saying how to install it

from . import launch  # noqa: E402
from .recurrence import backward, forward, last_paths, recurrent_inputs  # noqa: E402

__all__ = ["forward", "backward", "recurrent_inputs", "info", "require", "last_paths", "launch",
           "SIMULATOR", "CUDAUnavailableError", "DeviceMemoryError"]


def info():
    """The device and the paths of the last recurrence launches, as a dict.

    ``"forward"``/``"backward"`` hold :class:`numrnn.gpu.launch.Plan` tuples: ``path`` is
    "block", "persistent" or "stepwise", ``weights_on_chip`` whether the recurrent matrix sat in
    shared memory.
    """
    from ._cuda import device_properties

    name, n_sm, smem, coop = device_properties()
    return {"device": name, "multiprocessors": n_sm, "shared_memory_per_block": smem,
            "cooperative_launch": coop, "warp_shuffle": bool(launch.WARP_SHUFFLE) and not SIMULATOR,
            **{k: v._asdict() for k, v in last_paths.items()}}
