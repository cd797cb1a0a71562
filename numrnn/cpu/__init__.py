"""CPU backend: ``@njit`` kernels for the recurrence (forward and BPTT)."""
from .recurrence import backward, forward, recurrent_inputs

__all__ = ["forward", "backward", "recurrent_inputs"]
