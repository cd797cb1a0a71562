r"""Additive Gaussian noise in the dynamics: the noise realisation of a call, drawn on demand.

With ``noise_std = sigma > 0``, every step of every layer and direction adds independent
N(0, sigma^2 / dt) numbers to each row of its input projection (the pre-activation of every
gate, G*N numbers per step and sequence), where dt is the cell's time step
(:attr:`numrnn.RNN.time_step`, 1 for a cell without one).  For a cell that is the Euler step of
a continuous-time system, such as the rate network
:math:`h_t = h_{t-1} + a(-h_{t-1} + W\phi(h_{t-1}) + u_t)` with a = dt/tau, the state's
increment then carries a * sigma / sqrt(a) = sqrt(a) sigma: the Euler-Maruyama step of
:math:`\tau\,dh = (-h + W\phi(h) + u)\,dt + \sigma\sqrt{\tau}\,dW`, whose statistics do not
depend on the step size as a -> 0.  For a cell without a time step the noise is sigma exactly.

The realisation is a function of the seed alone: the numbers of (layer l, direction d,
sequence b) and of the block of ``BLOCK`` steps holding step t come from their own stream, keyed
by (l, d, b, t // BLOCK), drawn in time order.  So the noise of a step does not depend on the
batch size, the number of layers or T (the first t steps are the same in a longer run), any
range of steps can be drawn alone (checkpointed BPTT redraws each segment), and ``forward``,
``vjp`` and every analysis given the same ``noise_std`` and ``seed`` see the same realisation: a
gradient or a Lyapunov spectrum of a noisy trajectory is conditional on that realisation.
"""
import math
import numbers

import numpy as np

from . import _validation as _v

__all__ = ["Noise", "make"]

#: Appended to an integer seed to key the noise streams apart from the other draws of a call.
_NOISE_KEY = 0x6E6F6973
#: Steps per noise stream (see the module docstring).
BLOCK = 256


def _seed_sequence(seed):
    """The SeedSequence the noise streams are children of (see :func:`make`)."""
    if isinstance(seed, np.random.Generator):
        # a child of the generator's seed sequence: successive calls get fresh noise, and the
        # generator's own stream (frames, initial states) is not advanced
        return seed.spawn(1)[0].bit_generator.seed_seq
    if isinstance(seed, np.random.SeedSequence):
        return np.random.SeedSequence(seed.entropy, spawn_key=tuple(seed.spawn_key)
                                      + (_NOISE_KEY,))
    _v.check_seed(seed)  # the errors of a bad seed, named
    if seed is None:
        return np.random.SeedSequence()
    if isinstance(seed, numbers.Integral):
        return np.random.SeedSequence([int(seed), _NOISE_KEY])
    return np.random.SeedSequence([int(e) for e in np.asarray(seed, dtype=object).ravel()]
                                  + [_NOISE_KEY])


class Noise:
    """The noise of one call: ``std`` and the seed's streams; :meth:`layer` draws one (layer,
    direction)'s numbers when the layer loop needs them.

    ``steps_of_one=True`` lays a (T, B) realisation out as T*B sequences of one step (how the
    analysis re-runs the steps of a float32 trajectory in float64).
    """

    def __init__(self, net, std, seed_sequence, description):
        self.std = float(std)
        self.scale = self.std / math.sqrt(net.time_step or 1.0)
        self.gates = net.gate_count * net.hidden_size
        self.directions = net.num_directions
        self.dtype = net.dtype
        self.seq = seed_sequence
        self.description = description
        self.steps_of_one = None

    def layer(self, k, T, B, dtype, t0=0):
        """The numbers added to the input projection of layer-direction ``k`` at the T steps
        t0 .. t0+T-1: (T*B, G*N) in ``dtype``, rounded to the network's dtype first (a float32
        trajectory's noise, upcast)."""
        shape = self.steps_of_one
        if shape is not None:
            T, B = shape
        layer, d = divmod(k, self.directions)
        out = np.empty((T, B, self.gates))
        key = tuple(self.seq.spawn_key) + (layer, d)
        t1 = t0 + T
        for blk in range(t0 // BLOCK, -(-t1 // BLOCK)):
            start, stop = blk * BLOCK, (blk + 1) * BLOCK
            lo, hi = max(start, t0), min(stop, t1)
            for b in range(B):
                child = np.random.SeedSequence(self.seq.entropy, spawn_key=key + (b, blk))
                draw = np.random.default_rng(child).standard_normal((hi - start, self.gates))
                out[lo - t0:hi - t0, b] = draw[lo - start:]
        out *= self.scale
        out = out.astype(self.dtype, copy=False).astype(dtype, copy=False)
        return out.reshape(T * B, self.gates)

    def as_steps_of_one(self, T, B):
        """The same realisation for a (1, T*B) re-run of a (T, B) trajectory."""
        twin = Noise.__new__(Noise)
        twin.__dict__.update(self.__dict__)
        twin.steps_of_one = (T, B)
        return twin

    def __repr__(self):
        return self.description


def make(net, noise_std, seed, *, seed_required=False):
    """The :class:`Noise` of a call, or None for ``noise_std == 0``.

    Parameters
    ----------
    net : numrnn.RNN
    noise_std : float >= 0
        sigma (see the module docstring).
    seed : int, sequence of int, SeedSequence, Generator or None
        The realisation.  A Generator gives fresh noise at each call (a child of its seed
        sequence) without advancing it.
    seed_required : bool
        Refuse ``seed=None`` (for ``forward`` and ``vjp``, whose noise must be reproducible so
        that the gradient belongs to the trajectory it was asked for).
    """
    if type(noise_std) in (float, int) and noise_std == 0:  # the common call, checked fast
        return None
    noise_std = _v.check_real("noise_std", noise_std, 0.0)
    if noise_std == 0.0:
        return None
    if seed is None and seed_required:
        raise ValueError(f"seed: noise_std={noise_std!r} needs a seed, which fixes the noise "
                         "realisation (the same seed gives the same noise in forward, vjp and "
                         "the analysis); got None")
    seq = _seed_sequence(seed)
    what = "fresh entropy" if seed is None else (
        "a Generator" if isinstance(seed, np.random.Generator) else f"seed={seed!r}")
    return Noise(net, noise_std, seq, f"sigma={noise_std:g} ({what})")
