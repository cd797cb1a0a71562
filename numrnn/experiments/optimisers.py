"""Optimisers (SGD with momentum, Adam) and gradient-norm clipping, over dicts of NumPy arrays.

An optimiser updates every array of a dict of parameters in place from the same-named gradients
(``step(params, grads)``); the training loop names the network's and the readout's parameters
apart ("net.weight_hh_l0", "readout.weight") and hands both over in one dict.
"""
import numpy as np

from .. import _validation as _v

__all__ = ["SGD", "Adam", "clip_grad_norm", "make_optimizer"]


def clip_grad_norm(grads, max_norm):
    """Rescale a dict of gradients in place so that their joint Euclidean norm is <= ``max_norm``.

    Parameters
    ----------
    grads : dict of ndarray
    max_norm : float or None
        None (or inf) only measures.

    Returns
    -------
    float
        The norm before clipping.  A NaN or inf norm leaves the gradients as they are (no
        rescaling can make them finite).

    References
    ----------
    Pascanu, R., Mikolov, T. and Bengio, Y. (2013). On the difficulty of training recurrent
    neural networks. ICML.

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.experiments import clip_grad_norm
    >>> g = {"w": np.array([3.0, 4.0])}
    >>> clip_grad_norm(g, 1.0), np.round(g["w"], 12).tolist()
    (5.0, [0.6, 0.8])
    """
    norm = float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64)))
                             for g in grads.values())))
    if max_norm is not None and np.isfinite(max_norm):
        max_norm = _v.check_real("max_norm", max_norm, 0.0, low_open=True)
        if np.isfinite(norm) and norm > max_norm:
            scale = max_norm / norm
            for g in grads.values():
                g *= scale
    return norm


class SGD:
    """Stochastic gradient descent with (heavy-ball or Nesterov) momentum, PyTorch's convention.

    v <- momentum * v + g;  p <- p - lr * v  (Nesterov: p <- p - lr * (g + momentum * v)).

    Parameters
    ----------
    lr : float
    momentum : float in [0, 1)
    nesterov : bool

    References
    ----------
    Sutskever, I., Martens, J., Dahl, G. and Hinton, G. (2013). On the importance of
    initialization and momentum in deep learning. ICML.

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.experiments import SGD
    >>> p = {"w": np.array([1.0])}
    >>> SGD(lr=0.1, momentum=0.0).step(p, {"w": np.array([2.0])}); p["w"].tolist()
    [0.8]
    """

    def __init__(self, lr=0.01, momentum=0.9, nesterov=False):
        self.lr = _v.check_real("lr", lr, 0.0, low_open=True)
        self.momentum = _v.check_real("momentum", momentum, 0.0, 1.0, high_open=True)
        self.nesterov = bool(nesterov)
        self._velocity = {}

    def step(self, params, grads):
        """Update every array of ``params`` in place from the same-named ``grads``."""
        for name, p in params.items():
            g = grads[name]
            if self.momentum:
                v = self._velocity.get(name)
                v = g.copy() if v is None else self.momentum * v + g
                self._velocity[name] = v
                g = g + self.momentum * v if self.nesterov else v
            p -= (self.lr * g).astype(p.dtype)


class Adam:
    """Adam (Kingma and Ba 2015) with bias correction.

    Parameters
    ----------
    lr : float
    betas : (float, float)
    eps : float

    References
    ----------
    Kingma, D. P. and Ba, J. (2015). Adam: a method for stochastic optimization. ICLR.

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.experiments import Adam
    >>> p = {"w": np.array([1.0])}
    >>> Adam(lr=0.1).step(p, {"w": np.array([5.0])}); round(float(p["w"][0]), 6)
    0.9
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.lr = _v.check_real("lr", lr, 0.0, low_open=True)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas: expected a pair of floats, got {betas!r}")
        self.beta1 = _v.check_real("betas[0]", betas[0], 0.0, 1.0, high_open=True)
        self.beta2 = _v.check_real("betas[1]", betas[1], 0.0, 1.0, high_open=True)
        self.eps = _v.check_real("eps", eps, 0.0, low_open=True)
        self._m, self._v, self.t = {}, {}, 0

    def step(self, params, grads):
        """Update every array of ``params`` in place from the same-named ``grads``."""
        self.t += 1
        c1 = 1.0 - self.beta1 ** self.t
        c2 = 1.0 - self.beta2 ** self.t
        for name, p in params.items():
            g = grads[name]
            m = self._m.get(name, 0.0) * self.beta1 + (1.0 - self.beta1) * g
            v = self._v.get(name, 0.0) * self.beta2 + (1.0 - self.beta2) * g * g
            self._m[name], self._v[name] = m, v
            p -= (self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)).astype(p.dtype)


def make_optimizer(optimizer, lr):
    """The optimiser :func:`numrnn.experiments.train` runs: "adam" or "sgd" (momentum 0.9) with
    learning rate ``lr`` (1e-2 if None), or the caller's object with a ``step(params, grads)``."""
    if not isinstance(optimizer, str):
        if not hasattr(optimizer, "step"):
            raise TypeError(f"optimizer: expected 'adam', 'sgd' or an object with a step(params, "
                            f"grads) method, got {optimizer!r}")
        return optimizer
    if optimizer == "adam":
        return Adam(lr=1e-2 if lr is None else lr)
    if optimizer == "sgd":
        return SGD(lr=1e-2 if lr is None else lr, momentum=0.9)
    raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {optimizer!r}")
