"""The training loop: BPTT through the engine's vector-Jacobian product, a linear readout on top.

There is no second autodiff system: the loss gradient with respect to the readout output is written
by hand (:mod:`.losses`), the readout's own vjp is one matrix product (:mod:`.readout`), and
everything upstream is :meth:`numrnn.RNN.vjp` (exact BPTT).  The optimisers and clipping are in
:mod:`.optimisers`, saving and loading in :mod:`.persistence`.
"""
import time
from dataclasses import dataclass, field

import numpy as np

from .. import _validation as _v
from ..errors import NonFiniteError
from ..network import RNN
from .losses import LOSSES
from .optimisers import clip_grad_norm, make_optimizer
from .progress import ProgressBar
from .readout import LinearReadout

__all__ = ["train", "evaluate", "TrainResult", "TrainingDiverged"]


class _Diverged(Exception):
    """A NaN or inf met inside one training step; the message says what became non-finite."""


def _first_nonfinite(named):
    """The name of the first (name, array or number) pair holding a NaN or inf, else None."""
    for name, value in named:
        if not np.all(np.isfinite(value)):
            return name
    return None


def _loss_and_grads(net, readout, task, batch, truncate, checkpoint=None):
    """Loss of one batch and the gradients of every parameter (names prefixed net./readout.).

    Raises ``_Diverged`` when the output, the loss or the cotangent entering the network is
    NaN or inf (found here, before the engine's pullback would reject it as a bad argument), and
    :class:`numrnn.NonFiniteError` when the engine meets one inside the network.
    """
    f, f_grad = LOSSES[task.loss]
    out, _, pullback = net.forward_pullback(batch.x, checkpoint=checkpoint)
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


def _train_step(net, readout, task, batch, truncate, clip, opt, params, checkpoint=None):
    """One optimiser step on ``batch``; returns (loss, gradient norm before clipping).

    Raises ``_Diverged`` with the parameters as they were before the step when a NaN or inf
    appears anywhere: in the forward pass, the loss, the gradients or the updated parameters.
    """
    try:
        loss, grads = _loss_and_grads(net, readout, task, batch, truncate, checkpoint)
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
    return LOSSES[task.loss][0](readout.forward(out), batch.y, batch.mask)


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
          callback=None, stop_below=None, stream=None, checkpoint=None):
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
    checkpoint : None, int or "auto"
        Checkpointed BPTT for long sequences (see :meth:`numrnn.RNN.vjp`): the same gradients,
        bit for bit, in memory about sqrt(T) steps' worth of the tape.
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
    opt = make_optimizer(optimizer, lr)
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
                                             truncate, clip, opt, params, checkpoint)
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
                  lr=getattr(opt, "lr", lr), clip=clip, truncate=truncate, checkpoint=checkpoint,
                  stop_below=stop_below,
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
