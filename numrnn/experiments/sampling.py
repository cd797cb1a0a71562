"""Text drawn from a trained character-level model (:class:`numrnn.experiments.CharLM`)."""
import numpy as np

from .. import _validation as _v

__all__ = ["sample_text"]


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
