"""Losses of a readout's prediction and their gradients, written by hand (``f`` and ``f_grad``).

The gradient with respect to the prediction is all the training loop needs from a loss: the
readout's vjp and the network's (:meth:`numrnn.RNN.vjp`) take it from there.
"""
import numpy as np

__all__ = ["mse_loss", "mse_loss_grad", "cross_entropy_loss", "cross_entropy_loss_grad",
           "LOSSES"]


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


#: loss name (a task's ``loss``) -> (f, f_grad): the loss and its gradient with respect to the
#: prediction
LOSSES = {"mse": (mse_loss, mse_loss_grad), "xent": (cross_entropy_loss, cross_entropy_loss_grad)}
