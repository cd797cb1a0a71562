"""Training on top of the engine's vector-Jacobian product: readout, losses, optimisers, clipping.

There is no second autodiff system: the loss gradient with respect to the readout output is written
by hand (``*_grad``), the readout's own vjp is one matrix product, and everything upstream is
:meth:`numrnn.RNN.vjp` (exact BPTT).
"""
import json
import math
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from .. import _validation as _v
from ..errors import NonFiniteError
from ..network import RNN
from .progress import ProgressBar

__all__ = ["LinearReadout", "mse_loss", "mse_loss_grad", "cross_entropy_loss",
           "cross_entropy_loss_grad", "SGD", "Adam", "clip_grad_norm", "train", "evaluate",
           "TrainResult", "TrainingDiverged", "save_model", "load_model", "SavedModel",
           "sample_text", "to_json"]


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


def _mask_weights(mask, shape):
    if mask is None:
        return np.ones(shape, bool)
    mask = np.asarray(mask, bool)
    if mask.shape != shape:
        raise ValueError(f"mask: expected shape {shape}, got {mask.shape}")
    if not mask.any():
        raise ValueError("mask: expected at least one True entry, got none")
    return mask


def mse_loss(pred, target, mask=None):
    r"""Mean squared error over the masked steps and every output.

    :math:`L = \frac{1}{|M| O}\sum_{(t,b) \in M}\sum_o (p_{tbo} - y_{tbo})^2`.

    Parameters
    ----------
    pred, target : ndarray, shape (T, B, O)
    mask : ndarray of bool, shape (T, B), optional
        Steps that count (all by default).

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.experiments import mse_loss
    >>> mse_loss(np.zeros((2, 1, 1)), np.ones((2, 1, 1)))
    1.0
    """
    mask = _mask_weights(mask, pred.shape[:2])
    diff = (pred - target)[mask]
    return float(np.mean(diff * diff))


def mse_loss_grad(pred, target, mask=None):
    """Gradient of :func:`mse_loss` with respect to ``pred``, shape (T, B, O)."""
    mask = _mask_weights(mask, pred.shape[:2])
    scale = 2.0 / (np.count_nonzero(mask) * pred.shape[2])
    return ((pred - target) * (mask[..., None] * scale)).astype(pred.dtype)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _check_labels(logits, labels):
    labels = np.asarray(labels)
    if labels.shape != logits.shape[:-1] or labels.dtype.kind not in "iu":
        raise ValueError(f"labels: expected integer class indices of shape {logits.shape[:-1]}, "
                         f"got {labels.dtype} array of shape {labels.shape}")
    return labels


def cross_entropy_loss(logits, labels, mask=None):
    r"""Mean cross-entropy (nats) of softmax(logits) against class labels over the masked steps.

    Parameters
    ----------
    logits : ndarray, shape (T, B, C)
    labels : ndarray of int, shape (T, B)
    mask : ndarray of bool, shape (T, B), optional

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.experiments import cross_entropy_loss
    >>> round(cross_entropy_loss(np.zeros((1, 1, 4)), np.array([[2]])), 6)  # ln 4
    1.386294
    """
    labels = _check_labels(logits, labels)
    mask = _mask_weights(mask, logits.shape[:2])
    logp = np.take_along_axis(_log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    return float(-np.mean(logp[mask]))


def cross_entropy_loss_grad(logits, labels, mask=None):
    """Gradient of :func:`cross_entropy_loss` with respect to ``logits``, shape (T, B, C)."""
    labels = _check_labels(logits, labels)
    mask = _mask_weights(mask, logits.shape[:2])
    grad = np.exp(_log_softmax(logits))
    np.put_along_axis(grad, labels[..., None],
                      np.take_along_axis(grad, labels[..., None], axis=-1) - 1.0, axis=-1)
    return (grad * (mask[..., None] / np.count_nonzero(mask))).astype(logits.dtype)


_LOSSES = {"mse": (mse_loss, mse_loss_grad), "xent": (cross_entropy_loss, cross_entropy_loss_grad)}


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


def _make_optimizer(optimizer, lr):
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


class _Diverged(Exception):
    """A NaN or inf met inside one training step; the message says what became non-finite."""


def _first_nonfinite(named):
    """The name of the first (name, array or number) pair holding a NaN or inf, else None."""
    for name, value in named:
        if not np.all(np.isfinite(value)):
            return name
    return None


def _loss_and_grads(net, readout, task, batch, truncate):
    """Loss of one batch and the gradients of every parameter (names prefixed net./readout.).

    Raises ``_Diverged`` when the output, the loss or the cotangent entering the network is
    NaN or inf (found here, before the engine's pullback would reject it as a bad argument), and
    :class:`numrnn.NonFiniteError` when the engine meets one inside the network.
    """
    f, f_grad = _LOSSES[task.loss]
    out, _, pullback = net.forward_pullback(batch.x)
    pred = readout.forward(out)
    loss = f(pred, batch.y, batch.mask)
    d_pred = f_grad(pred, batch.y, batch.mask)
    ro_grads, d_out = readout.vjp(out, d_pred)
    bad = _first_nonfinite([("the readout's prediction", pred), ("the loss", loss),
                            ("the loss gradient", d_pred),
                            *(("the gradient of readout." + k, g) for k, g in ro_grads.items()),
                            ("the gradient entering the network from the readout", d_out)])
    if bad is not None:
        raise _Diverged(f"{bad} became NaN or inf")
    net_grads = pullback(d_out.astype(net.dtype), truncate=truncate)
    grads = {"net." + k: net_grads[k] for k in net.parameters}
    grads.update({"readout." + k: v for k, v in ro_grads.items()})
    return loss, grads


def _train_step(net, readout, task, batch, truncate, clip, opt, params):
    """One optimiser step on ``batch``; returns (loss, gradient norm before clipping).

    Raises ``_Diverged`` with the parameters as they were before the step when a NaN or inf
    appears anywhere: in the forward pass, the loss, the gradients or the updated parameters.
    """
    try:
        loss, grads = _loss_and_grads(net, readout, task, batch, truncate)
    except NonFiniteError as exc:
        raise _Diverged(str(exc)) from None
    norm = clip_grad_norm(grads, clip)
    if not np.isfinite(norm):
        bad = _first_nonfinite(grads.items())
        raise _Diverged(f"the gradient of {bad} became NaN or inf" if bad else
                        f"the gradient norm overflowed to {norm}")
    before = {k: v.copy() for k, v in params.items()}
    opt.step(params, grads)
    bad = _first_nonfinite(params.items())
    if bad is not None:
        for k, v in before.items():
            params[k][...] = v
        raise _Diverged(f"the update made parameter {bad} NaN or inf")
    return loss, norm


def _all_params(net, readout):
    params = {"net." + k: v for k, v in net.parameters.items()}
    params.update({"readout." + k: v for k, v in readout.parameters.items()})
    return params


def evaluate(net, readout, task, batch_size=256, rng=None):
    """The task's loss of (net, readout) on a fresh batch drawn from ``rng``.

    Returns
    -------
    float
    """
    batch = task.sample(batch_size, rng)
    out, _ = net.forward(batch.x)
    return _LOSSES[task.loss][0](readout.forward(out), batch.y, batch.mask)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes
    ----------
    status : str
        One line: final evaluation loss against the chance baseline, or where training diverged.
    net : numrnn.RNN
        The trained network (the object passed in, updated in place).
    readout : LinearReadout
    losses : ndarray, shape (steps_run,)
        Training loss of every completed step's batch.
    grad_norms : ndarray, shape (steps_run,)
        Gradient norm before clipping.
    eval_loss : float
        Loss on a fresh evaluation batch after training (NaN when training diverged).
    chance : float
        The task's chance baseline (same loss).
    seconds : float
        Wall time of the training loop.
    config : dict
        Every training setting.
    diverged_at : int or None
        The step (0-based, as in ``losses``) at which a NaN or inf appeared, or None.
    """

    status: str
    net: RNN
    readout: LinearReadout
    losses: np.ndarray
    grad_norms: np.ndarray
    eval_loss: float
    chance: float
    seconds: float
    config: dict = field(default_factory=dict)
    diverged_at: int = None

    def __repr__(self):
        return (f"TrainResult({self.status}; {len(self.losses)} steps in {self.seconds:.1f} s, "
                f"net={self.net!r})")


class TrainingDiverged(FloatingPointError):
    """Training met a NaN or inf: in the forward pass, the loss, a gradient or an update.

    The message is the partial result's status: the step and what diverged.

    Attributes
    ----------
    result : TrainResult
        What was done before: ``losses`` and ``grad_norms`` of the steps completed, the network
        and readout holding their last finite parameters (those after the last completed step),
        ``eval_loss`` NaN, ``diverged_at`` the step that failed.
    step : int
        ``result.diverged_at``.
    """

    def __init__(self, result):
        super().__init__(result.status)
        self.result = result
        self.step = result.diverged_at


def train(net, task, *, steps=500, batch_size=32, optimizer="adam", lr=None, clip=1.0,
          truncate=None, readout=None, seed=None, eval_batch_size=256, progress=False,
          callback=None, stop_below=None, stream=None):
    """Train ``net`` and a linear readout on ``task`` by BPTT (the engine's vjp).

    Parameters
    ----------
    net : numrnn.RNN
        Updated in place. Its input_size must equal the task's.
    task : a task of :mod:`numrnn.experiments.tasks`
    steps : int
        Optimiser steps, one fresh batch each.
    batch_size : int
    optimizer : {"adam", "sgd"} or an object with ``step(params, grads)``
        "sgd" is momentum 0.9.
    lr : float, optional
        Learning rate (1e-2 by default).
    clip : float or None
        Gradient-norm clipping threshold (Pascanu et al. 2013); None disables.
    truncate : int, optional
        Truncated BPTT chunk length (see :meth:`numrnn.RNN.vjp`).
    readout : LinearReadout, optional
        Created (seeded from ``seed``) when not given.
    seed : int, sequence of int, numpy.random.SeedSequence or numpy.random.Generator, optional
        Seeds the batches and the readout.
    eval_batch_size : int
    progress : bool
        Show a progress bar with the running loss against chance.
    callback : callable, optional
        ``callback(step, loss)`` after every step.
    stop_below : float, optional
        Stop early once the mean training loss of the last 20 steps is below this value.
    stream : file-like, optional
        Where the progress bar goes (stderr by default).

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingDiverged
        When a NaN or inf appears (the network's state or gradient overflows, the loss or an
        update becomes non-finite, or the evaluation batch diverges).  Its ``result`` is the
        partial :class:`TrainResult`; ``net`` and the readout keep their last finite
        parameters.

    References
    ----------
    Werbos, P. J. (1990). Backpropagation through time. Proceedings of the IEEE 78(10).
    Pascanu, R., Mikolov, T. and Bengio, Y. (2013). On the difficulty of training recurrent
    neural networks. ICML.

    Examples
    --------
    >>> import numrnn
    >>> from numrnn.experiments import AddingProblem, train
    >>> net = numrnn.RNN(2, 8, cell="gru", seed=0)
    >>> result = train(net, AddingProblem(10), steps=20, seed=0)
    >>> result.losses.shape
    (20,)
    """
    if not isinstance(net, RNN):
        raise TypeError(f"net: expected a numrnn.RNN, got {type(net).__name__}")
    if not hasattr(task, "sample") or not hasattr(task, "loss"):
        raise TypeError(f"task: expected a numrnn task (AddingProblem, ...), got "
                        f"{type(task).__name__}")
    if net.input_size != task.input_size:
        raise ValueError(f"net: input_size must equal the task's input size {task.input_size}, "
                         f"got {net.input_size}")
    if net.batch_first:
        raise ValueError("net: expected a time-major network (batch_first=False), got "
                         "batch_first=True")
    if np.dtype(task.dtype) != net.dtype:
        raise TypeError(f"task: expected dtype {net.dtype} (the network's), got {task.dtype}")
    steps = _v.check_int("steps", steps, 1)
    batch_size = _v.check_int("batch_size", batch_size, 1)
    if clip is not None:
        clip = _v.check_real("clip", clip, 0.0, low_open=True)
    if stop_below is not None:
        stop_below = _v.check_real("stop_below", stop_below, 0.0, low_open=True)
    rng = _v.check_seed(seed)
    H = net.hidden_size * net.num_directions
    if readout is None:
        readout = LinearReadout(H, task.output_size, dtype=net.dtype, seed=rng)
    elif readout.hidden_size != H or readout.output_size != task.output_size:
        raise ValueError(f"readout: expected LinearReadout({H}, {task.output_size}), got "
                         f"{readout!r}")
    opt = _make_optimizer(optimizer, lr)
    params = _all_params(net, readout)
    losses = np.empty(steps)
    norms = np.empty(steps)
    done, failure = 0, None
    start = time.perf_counter()
    bar = ProgressBar(steps, f"train {task.name}", enabled=progress, stream=stream)
    # every NaN or inf is looked for explicitly, so NumPy's overflow warnings would only repeat it
    with bar, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i in range(steps):
            try:
                loss, norms[i] = _train_step(net, readout, task, task.sample(batch_size, rng),
                                             truncate, clip, opt, params)
            except _Diverged as exc:
                failure = str(exc)
                break
            losses[i], done = loss, i + 1
            if callback is not None:
                callback(i, loss)
            window = losses[max(0, i - 19):done].mean()
            bar.update(postfix=f"loss {window:.4g} (chance {task.chance:.4g})")
            if stop_below is not None and i >= 19 and window < stop_below:
                break
        if failure is None:
            try:
                eval_loss = evaluate(net, readout, task, eval_batch_size, rng)
            except NonFiniteError as exc:
                failure = f"evaluating the trained network: {exc}"
            else:
                if not np.isfinite(eval_loss):
                    failure = f"the evaluation loss became {eval_loss}"
    seconds = time.perf_counter() - start
    losses, norms = losses[:done], norms[:done]
    config = dict(task=task.name, T=task.T, steps=steps, batch_size=batch_size,
                  optimizer=optimizer if isinstance(optimizer, str) else type(optimizer).__name__,
                  lr=getattr(opt, "lr", lr), clip=clip, truncate=truncate, stop_below=stop_below,
                  steps_run=done)
    if failure is not None:
        kept = f"after step {done - 1}" if done else "the initial ones"
        status = (f"diverged at step {done} of {steps}: {failure}; the network and readout keep "
                  f"their last finite parameters ({kept})")
        raise TrainingDiverged(TrainResult(status, net, readout, losses, norms, float("nan"),
                                           float(task.chance), seconds, config, diverged_at=done))
    status = (f"eval loss {eval_loss:.4g} vs chance {task.chance:.4g} "
              f"({eval_loss / task.chance:.3g} of chance)")
    if done < steps:
        status += f"; stopped at step {done} (running loss below {stop_below:g})"
    return TrainResult(status, net, readout, losses, norms, float(eval_loss), float(task.chance),
                       seconds, config)


# --- saving -----------------------------------------------------------------------------------

_NET_KEYS = ("input_size", "hidden_size", "cell", "num_layers", "bias", "bidirectional",
             "batch_first", "alpha", "nonlinearity", "dtype")


def _net_config(net):
    """The RNN arguments that rebuild ``net`` (its parameters are stored beside them)."""
    cfg = {k: getattr(net, k) for k in _NET_KEYS if k not in ("nonlinearity", "dtype")}
    return dict(cfg, nonlinearity=net.nonlinearity if net.cell == "rate" else None,
                dtype=str(net.dtype))


@dataclass(frozen=True)
class SavedModel:
    """A network, its readout and the metadata stored with them by :func:`save_model`."""

    net: RNN
    readout: LinearReadout
    meta: dict


def _jsonable(value):
    """``value`` with NumPy scalars and arrays as Python ones and every NaN or inf as None."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(payload, indent=2):
    """Strict JSON text of ``payload``: a NaN or inf is written as ``null``.

    JSON has no NaN or Infinity; Python's ``json`` would write them as bare tokens that strict
    parsers reject.  numrnn writes ``null`` for every non-finite number (a measurement that
    does not exist, such as the Kaplan-Yorke dimension beyond the exponents computed) and
    refuses any other non-JSON value.

    Parameters
    ----------
    payload : dict, list, str, number, bool, None, NumPy scalar or array, nested
    indent : int or None

    Returns
    -------
    str

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.experiments import to_json
    >>> to_json({"loss": np.float64(0.5), "dimension": float("nan")}, indent=None)
    '{"loss": 0.5, "dimension": null}'
    """
    return json.dumps(_jsonable(payload), indent=indent, allow_nan=False)


def save_model(path, net, readout=None, meta=None):
    """Save a network (and readout) to a ``.npz`` file: parameters plus JSON metadata, no pickle.

    Parameters
    ----------
    path : str or path-like
    net : numrnn.RNN
    readout : LinearReadout, optional
    meta : dict, optional
        JSON-serialisable extras (task, training settings, ...); a NaN or inf is stored as null.
    """
    arrays = {"net/" + k: v for k, v in net.state_dict().items()}
    if readout is not None:
        arrays.update({"readout/" + k: v for k, v in readout.parameters.items()})
    info = {"net": _net_config(net), "meta": meta or {}}
    arrays["__numrnn__"] = np.array(to_json(info, indent=None))
    np.savez(path, **arrays)


_SAVED = "a .npz file written by numrnn (save_model or `numrnn train`)"

# what a damaged file raises while it is read: the zip layer (truncation and flipped bits give
# bad headers and CRC mismatches, a flipped flag "encryption" or an unknown compression method),
# zlib, NumPy's .npy header parser and reader
_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError,
                SyntaxError, MemoryError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                zlib.error, struct.error)


def _read_arrays(path):
    """Every array of the .npz file at ``path``, read in full (so a damaged member is found now)."""
    name = str(path)
    try:
        with open(path, "rb") as fh:  # ours to close, also when NumPy fails half-way
            magic = fh.read(4)
            if magic == b"PK\x03\x04":  # a zip archive, as every .npz file is
                fh.seek(0)
                with np.load(fh, allow_pickle=False) as data:
                    return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise ValueError(f"path: expected {_SAVED}, got {name!r} (no such file)") from None
    except IsADirectoryError:
        raise ValueError(f"path: expected {_SAVED}, got {name!r}, a directory") from None
    except _READ_ERRORS as exc:
        raise ValueError(f"path: expected {_SAVED}, could not read {name!r} (truncated or "
                         f"damaged): {type(exc).__name__}: {exc}") from None
    what = "an empty file" if not magic else f"a file beginning {magic!r}, not a zip archive"
    raise ValueError(f"path: expected {_SAVED}, got {name!r}, {what}")


def _read_record(arrays, name):
    """The parsed ``__numrnn__`` record: {"net": the network's configuration, "meta": dict}."""
    raw = arrays.get("__numrnn__")
    if raw is None:
        raise ValueError(f"path: {name!r} is not a numrnn parameter file (no '__numrnn__' "
                         f"record); expected {_SAVED}")
    try:
        info = json.loads(str(raw)) if raw.dtype.kind == "U" and raw.ndim == 0 else None
    except ValueError:
        info = None
    if (not isinstance(info, dict) or not isinstance(info.get("net"), dict)
            or set(info["net"]) != set(_NET_KEYS) or not isinstance(info.get("meta", {}), dict)):
        raise ValueError(f"path: {name!r} holds a damaged numrnn record: expected a JSON object "
                         f"{{'net': {{{', '.join(_NET_KEYS)}}}, 'meta': {{...}}}}, got "
                         f"{str(raw)[:200]!r}")
    return info


def _rebuild(arrays, info):
    """(net, readout or None) from the arrays and the record; TypeError/ValueError if they
    do not describe one."""
    cfg = dict(info["net"])
    if not isinstance(cfg["dtype"], str):
        raise TypeError(f"dtype: expected 'float32' or 'float64', got {cfg['dtype']!r}")
    cfg["dtype"] = _v.check_dtype_arg(cfg["dtype"])
    net = RNN(cfg.pop("input_size"), cfg.pop("hidden_size"), **cfg)
    net.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("net/")})
    extra = sorted(set(arrays) - {"__numrnn__", "readout/weight", "readout/bias"}
                   - {"net/" + k for k in net.parameters})
    if extra:
        raise ValueError(f"arrays: expected the network's parameters and a readout, got also "
                         f"{extra}")
    if "readout/weight" not in arrays and "readout/bias" not in arrays:
        return net, None
    H = net.hidden_size * net.num_directions
    w = _v.check_float_array("readout/weight", arrays.get("readout/weight"), net.dtype,
                             [(None, H)])
    b = _v.check_float_array("readout/bias", arrays.get("readout/bias"), net.dtype,
                             [(w.shape[0],)])
    readout = LinearReadout(H, w.shape[0], dtype=net.dtype, seed=0)
    readout.parameters.update(weight=w.copy(), bias=b.copy())
    return net, readout


def load_model(path):
    """Load what :func:`save_model` wrote.

    Every array is read in full and checked against the stored configuration (names, shapes,
    dtype, finiteness), so a damaged file is refused here, not later.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    SavedModel
        ``net``, ``readout`` (None if none was saved) and ``meta``.

    Raises
    ------
    ValueError
        Naming the path and what is wrong: missing, a directory, not a zip archive, truncated,
        damaged (a CRC mismatch, a bad header), an .npz file without numrnn's record, or a record
        or arrays that do not describe a network.
    """
    arrays = _read_arrays(path)
    info = _read_record(arrays, str(path))
    try:
        net, readout = _rebuild(arrays, info)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"path: {str(path)!r} holds a numrnn record that does not describe a "
                         f"network numrnn can rebuild: {exc}") from None
    return SavedModel(net, readout, info.get("meta", {}))


def sample_text(net, readout, task, n_chars=200, *, prime=None, temperature=1.0, seed=None):
    """Draw text from a character-level model (min-char-rnn's sampling loop).

    Parameters
    ----------
    net, readout
        A network trained on ``task``.
    task : CharLM
    n_chars : int
        Characters generated after the prime.
    prime : str, optional
        Text fed first (the task's first character by default).
    temperature : float
        Softmax temperature (> 0); lower is greedier.
    seed : int, sequence of int, numpy.random.SeedSequence or numpy.random.Generator, optional

    Returns
    -------
    str
        The prime followed by the generated characters.
    """
    n_chars = _v.check_int("n_chars", n_chars, 1)
    temperature = _v.check_real("temperature", temperature, 0.0, low_open=True)
    rng = _v.check_seed(seed)
    prime = task.text[0] if not prime else prime
    idx = task.encode(prime)
    out, h = net.forward(task.one_hot(idx))  # unbatched (T, V)
    logits = readout.forward(out[-1])
    chars = list(idx)
    for _ in range(n_chars):
        z = logits / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        k = int(rng.choice(len(p), p=p))
        chars.append(k)
        out, h = net.forward(task.one_hot(np.array([k])), h)
        logits = readout.forward(out[-1])
    return task.decode(chars)
