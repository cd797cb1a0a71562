"""Parameter initialisers.

All draw from a :class:`numpy.random.Generator` passed in (no global state): the same seed gives
the same bits.  Recurrent matrices of gated cells (G blocks of N x N stacked, PyTorch's layout) are
initialised block by block.
"""
import numpy as np

INITS = ("default", "gaussian", "orthogonal", "identity", "spectral_radius")


def haar_orthogonal(rng, n):
    """An n x n orthogonal matrix drawn from the Haar measure (QR of a Gaussian, signs fixed).

    References
    ----------
    Mezzadri, F. (2007). How to generate random matrices from the classical compact groups.
    Notices of the AMS 54(5), 592-604.
    """
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def recurrent_block(rng, init, n, gain):
    """One N x N block of W_hh for ``init`` other than "default" (float64)."""
    if init == "gaussian":
        return rng.standard_normal((n, n)) * (gain / np.sqrt(n))
    if init == "orthogonal":
        return gain * haar_orthogonal(rng, n)
    if init == "identity":
        return gain * np.eye(n)
    if init == "spectral_radius":
        w = rng.standard_normal((n, n)) / np.sqrt(n)
        radius = np.max(np.abs(np.linalg.eigvals(w)))
        return w * (gain / radius)
    raise ValueError(f"init: expected one of {INITS}, got {init!r}")


def recurrent_weight(rng, init, shape, n, gain):
    """A recurrent weight of ``shape`` for ``init`` other than "default" (float64): every N x N
    block of a matrix (G*N rows, R*N columns: gates stacked, recurrent inputs side by side) as
    :func:`recurrent_block` draws it; a vector (IndRNN's u, one weight per unit) is the diagonal
    of such a block: ``gain`` for "identity"."""
    if len(shape) == 1:
        if init != "identity":
            raise ValueError(f"init: the recurrent weight is a vector of shape {shape} (one "
                             f"weight per unit), which init={init!r} does not describe; use "
                             "'identity' (every weight = gain) or 'default'")
        return np.full(shape, float(gain))
    if len(shape) != 2 or shape[0] % n or shape[1] % n:
        raise ValueError(f"init: init={init!r} fills N x N blocks; the recurrent weight's shape "
                         f"{shape} is not made of {n} x {n} blocks (use init='default')")
    rows = [np.concatenate([recurrent_block(rng, init, n, gain) for _ in range(shape[1] // n)],
                           axis=1) for _ in range(shape[0] // n)]
    return np.concatenate(rows, axis=0)


def init_parameters(rng, shapes, hidden_size, init, gain, dtype):
    """Initial values for an ordered dict of parameter shapes (PyTorch's names).

    "default" is PyTorch's U(-1/sqrt(N), 1/sqrt(N)) for every parameter.  The other schemes set
    each W_hh block as described in :class:`numrnn.RNN` and keep the default for the rest, except
    "identity", which also zeros the biases (Le, Jaitly and Hinton 2015).
    """
    bound = 1.0 / np.sqrt(hidden_size)
    params = {}
    for name, shape in shapes.items():
        if init != "default" and name.startswith("weight_hh"):
            value = recurrent_weight(rng, init, shape, hidden_size, gain)
        elif init == "identity" and name.startswith("bias"):
            value = np.zeros(shape)
        else:
            value = rng.uniform(-bound, bound, size=shape)
        params[name] = np.ascontiguousarray(value, dtype=dtype)
    return params
