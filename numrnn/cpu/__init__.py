"""CPU backend: ``@njit`` kernels for the recurrence (forward and BPTT), and numrnn's own threads."""
from .blas import single_threaded
from .recurrence import backward, forward, recurrent_inputs, recurrent_weight_grad
from .threads import matmul, matmul_tn

__all__ = ["forward", "backward", "recurrent_inputs", "recurrent_weight_grad", "matmul",
           "matmul_tn", "single_threaded"]
