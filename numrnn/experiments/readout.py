"""The linear readout trained on top of a network's output, with its own vector-Jacobian product."""
import numpy as np

from .. import _validation as _v

__all__ = ["LinearReadout"]


class LinearReadout:
    r"""A linear readout y = h W^T + b applied at every time step.

    Parameters
    ----------
    hidden_size : int
        Width of the network's output, H (D * N for a bidirectional network).
    output_size : int
        O.
    dtype : numpy.float32 or numpy.float64
    seed : int, sequence of int, numpy.random.SeedSequence or numpy.random.Generator, optional
        W is drawn from U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's ``nn.Linear``), b = 0.

    Attributes
    ----------
    weight : ndarray, shape (O, H)
    bias : ndarray, shape (O,)

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.experiments import LinearReadout
    >>> ro = LinearReadout(8, 3, seed=0)
    >>> ro.forward(np.ones((5, 2, 8))).shape
    (5, 2, 3)
    """

    def __init__(self, hidden_size, output_size, *, dtype=np.float64, seed=None):
        self.hidden_size = _v.check_int("hidden_size", hidden_size, 1)
        self.output_size = _v.check_int("output_size", output_size, 1)
        self.dtype = _v.check_dtype_arg(dtype)
        bound = 1.0 / np.sqrt(self.hidden_size)
        rng = _v.check_seed(seed)
        self.parameters = {
            "weight": rng.uniform(-bound, bound, (self.output_size, self.hidden_size))
            .astype(self.dtype),
            "bias": np.zeros(self.output_size, self.dtype),
        }

    @property
    def weight(self):
        return self.parameters["weight"]

    @property
    def bias(self):
        return self.parameters["bias"]

    def forward(self, h):
        """y = h W^T + b for h of shape (..., H); returns shape (..., O)."""
        return h @ self.weight.T + self.bias

    def vjp(self, h, d_y):
        """Gradients of sum(y * d_y): ``({"weight": (O, H), "bias": (O,)}, d_h (..., H))``."""
        h2 = h.reshape(-1, self.hidden_size)
        d2 = d_y.reshape(-1, self.output_size)
        grads = {"weight": d2.T @ h2, "bias": d2.sum(axis=0)}
        return grads, d_y @ self.weight

    def __repr__(self):
        return f"LinearReadout({self.hidden_size}, {self.output_size})"
