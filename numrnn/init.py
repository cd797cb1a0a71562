"""Parameter initialisers.

Every parameter is drawn from a stream of its own (no global state), so the same seed gives the
same bits, and a parameter's bits depend only on the seed, its own name and the arguments that
shape it: ``weight_hh_l0`` is the same matrix whatever ``input_size``, ``num_layers``,
``bidirectional`` or ``bias`` (an autonomous and a driven network of one seed share W_hh), and
``weight_ih_l0`` does not depend on ``num_layers`` either.

The seed gives a root :class:`numpy.random.SeedSequence` (:func:`root_seed_sequence`):

- None: fresh entropy from the operating system (a different network each time);
- a non-negative integer or a sequence of them: ``SeedSequence(seed)``;
- a ``SeedSequence``: used as is (nothing is spawned from it, so it is not changed and gives the
  same network again);
- a ``Generator``: 128 bits drawn from it seed the root, so it advances by a fixed amount and
  successive networks drawn with one generator differ, deterministically given its state.

The parameter of layer l and direction d (0 forward, 1 reverse) is then drawn from the child
``SeedSequence(root.entropy, spawn_key=root.spawn_key + (kind, l, d))``, with kind 0 for
``weight_hh``, 1 for ``weight_ih``, 2 for ``bias_ih`` and 3 for ``bias_hh``
(:func:`parameter_rng`).  Recurrent matrices of gated cells (G blocks of N x N stacked,
PyTorch's layout) are drawn block by block, row of blocks after row of blocks.
"""
import re

import numpy as np

from . import _validation as _v

INITS = ("default", "gaussian", "orthogonal", "identity", "spectral_radius")
#: the initialisers of the biases: PyTorch's U(-1/sqrt(N), 1/sqrt(N)), or zeros
BIAS_INITS = ("uniform", "zeros")
#: the inits whose random N x N blocks may have their diagonal set to zero
ZERO_DIAGONAL_INITS = ("gaussian", "spectral_radius")
#: the stream kind of each parameter name's stem (the ``kind`` of :func:`parameter_rng`)
STREAM_KINDS = {"weight_hh": 0, "weight_ih": 1, "bias_ih": 2, "bias_hh": 3}

_NAME = re.compile(r"^(weight_hh|weight_ih|bias_ih|bias_hh)_l(\d+)(_reverse)?$")


def root_seed_sequence(seed, name="seed"):
    """The root :class:`numpy.random.SeedSequence` of ``seed`` (see the module's docstring):
    None, a non-negative integer, a sequence of them, a ``SeedSequence`` (returned as is) or a
    ``Generator`` (128 bits are drawn from it)."""
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence(seed.integers(0, 2**32, size=4, dtype=np.uint32))
    if isinstance(seed, np.random.SeedSequence):
        return seed
    # check_seed validates and builds a generator on SeedSequence(seed) (fresh one for None)
    return _v.check_seed(seed, name).bit_generator.seed_seq


def parameter_rng(root, name):
    """The generator of the parameter ``name`` (PyTorch's: "weight_hh_l1_reverse"), a child of
    the root ``SeedSequence`` keyed by (kind, layer, direction); see the module's docstring."""
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"name: expected a parameter name such as 'weight_hh_l0' or "
                         f"'bias_ih_l1_reverse', got {name!r}")
    key = (STREAM_KINDS[match.group(1)], int(match.group(2)), 1 if match.group(3) else 0)
    child = np.random.SeedSequence(root.entropy, spawn_key=tuple(root.spawn_key) + key,
                                   pool_size=root.pool_size)
    return np.random.default_rng(child)


def haar_orthogonal(rng, n):
    """An n x n orthogonal matrix drawn from the Haar measure (QR of a Gaussian, signs fixed).

    References
    ----------
    Mezzadri, F. (2007). How to generate random matrices from the classical compact groups.
    Notices of the AMS 54(5), 592-604.
    """
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def recurrent_block(rng, init, n, gain, zero_diagonal=False):
    """One N x N block of W_hh for ``init`` other than "default" (float64); ``zero_diagonal``
    ("gaussian", "spectral_radius") sets its diagonal to 0: after drawing for "gaussian" (the
    other entries keep their variance gain^2/N), before the rescaling for "spectral_radius" (the
    radius stays ``gain``)."""
    if zero_diagonal and init not in ZERO_DIAGONAL_INITS:
        raise ValueError(f"zero_diagonal: only init in {ZERO_DIAGONAL_INITS} has a random "
                         f"diagonal to set to zero, got init={init!r}")
    if init == "gaussian":
        w = rng.standard_normal((n, n)) * (gain / np.sqrt(n))
        if zero_diagonal:
            np.fill_diagonal(w, 0.0)
        return w
    if init == "orthogonal":
        return gain * haar_orthogonal(rng, n)
    if init == "identity":
        return gain * np.eye(n)
    if init == "spectral_radius":
        w = rng.standard_normal((n, n)) / np.sqrt(n)
        if zero_diagonal:
            np.fill_diagonal(w, 0.0)
        radius = np.max(np.abs(np.linalg.eigvals(w)))
        return w * (gain / radius)
    raise ValueError(f"init: expected one of {INITS}, got {init!r}")


def recurrent_weight(rng, init, shape, n, gain, zero_diagonal=False):
    """A recurrent weight of ``shape`` for ``init`` other than "default" (float64): every N x N
    block of a matrix (G*N rows, R*N columns: gates stacked, recurrent inputs side by side) as
    :func:`recurrent_block` draws it (``zero_diagonal`` zeros each block's diagonal); a vector
    (IndRNN's u, one weight per unit) is the diagonal of such a block: ``gain`` for
    "identity"."""
    if len(shape) == 1:
        if init != "identity":
            raise ValueError(f"init: the recurrent weight is a vector of shape {shape} (one "
                             f"weight per unit), which init={init!r} does not describe; use "
                             "'identity' (every weight = gain) or 'default'")
        if zero_diagonal:
            raise ValueError(f"zero_diagonal: the recurrent weight is a vector of shape {shape} "
                             "(one self-coupling per unit, the diagonal itself); zeroing it "
                             "would remove the recurrence")
        return np.full(shape, float(gain))
    if len(shape) != 2 or shape[0] % n or shape[1] % n:
        raise ValueError(f"init: init={init!r} fills N x N blocks; the recurrent weight's shape "
                         f"{shape} is not made of {n} x {n} blocks (use init='default')")
    rows = [np.concatenate([recurrent_block(rng, init, n, gain, zero_diagonal)
                            for _ in range(shape[1] // n)], axis=1)
            for _ in range(shape[0] // n)]
    return np.concatenate(rows, axis=0)


def init_parameters(seed, shapes, hidden_size, init, gain, dtype, zero_diagonal=False,
                    bias_init=None):
    """Initial values for an ordered dict of parameter shapes (PyTorch's names), each drawn
    from its own stream of ``seed`` (:func:`parameter_rng`).

    "default" is PyTorch's U(-1/sqrt(N), 1/sqrt(N)) for every weight.  The other schemes set
    each W_hh block as described in :class:`numrnn.RNN` and keep the default for W_ih.  The
    biases follow ``bias_init``: "uniform" (PyTorch's default), "zeros", or None for the init's
    own choice: zeros for "identity" (Le, Jaitly and Hinton 2015), uniform for the others.
    """
    if bias_init is None:
        bias_init = "zeros" if init == "identity" else "uniform"
    if bias_init not in BIAS_INITS:
        raise ValueError(f"bias_init: expected None or one of {BIAS_INITS}, got {bias_init!r}")
    if zero_diagonal and init not in ZERO_DIAGONAL_INITS:
        raise ValueError(f"zero_diagonal: only init in {ZERO_DIAGONAL_INITS} has a random "
                         f"diagonal to set to zero, got init={init!r}")
    root = root_seed_sequence(seed)
    bound = 1.0 / np.sqrt(hidden_size)
    params = {}
    for name, shape in shapes.items():
        rng = parameter_rng(root, name)
        if init != "default" and name.startswith("weight_hh"):
            value = recurrent_weight(rng, init, shape, hidden_size, gain, zero_diagonal)
        elif bias_init == "zeros" and name.startswith("bias"):
            value = np.zeros(shape)
        else:
            value = rng.uniform(-bound, bound, size=shape)
        params[name] = np.ascontiguousarray(value, dtype=dtype)
    return params
