"""Discrete-time mean-field theory of random tanh networks: the predicted largest Lyapunov exponent."""
import numpy as np
from scipy.optimize import brentq

from .. import _validation as _v

__all__ = ["meanfield_q_star", "meanfield_lyapunov", "meanfield_applies"]

def _gauss_mean(f, q):
    """E[f(sqrt(q) z)] for z ~ N(0, 1), to about 1e-15 relative.

    The trapezoidal rule in z on [-9, 9] with step min(0.1, 0.05 / sqrt(q)): for integrands
    analytic in a strip it converges exponentially (Trefethen and Weideman 2014), here to machine
    precision for every q.  Gauss-Hermite quadrature does not: sech^4(sqrt(q) z) is a peak of width
    1/sqrt(q), and 401 nodes still leave 2e-8 at q = 6.
    """
    h = min(0.1, 0.05 / np.sqrt(q)) if q > 0 else 0.1
    n = int(np.ceil(9.0 / h))
    z = np.arange(-n, n + 1) * h
    w = (h / np.sqrt(2.0 * np.pi)) * np.exp(-0.5 * z * z)
    return float(np.dot(w, f(np.sqrt(q) * z)))


def _sech4(a):
    # sech written with exp(-|a|) so that large pre-activations underflow to 0 without overflow
    e = np.exp(-2.0 * np.abs(a))
    return (2.0 * np.sqrt(e) / (1.0 + e)) ** 4


def meanfield_q_star(gain, sigma_b=0.0):
    r"""Fixed point q* of the pre-activation variance map of a random tanh network.

    :math:`q^* = g^2\,E[\tanh^2(\sqrt{q^*} z)] + \sigma_b^2`, z ~ N(0, 1), for
    h_t = tanh(W h_{t-1} + b) with W_ij ~ N(0, g^2/N) and b_i ~ N(0, sigma_b^2).  With sigma_b = 0
    and g <= 1 the only fixed point is q* = 0; otherwise the positive root is found by bracketing
    (the map is concave in q).

    Parameters
    ----------
    gain : float
        g >= 0.
    sigma_b : float
        Bias standard deviation.

    Returns
    -------
    float

    References
    ----------
    Poole, B., Lahiri, S., Raghu, M., Sohl-Dickstein, J. and Ganguli, S. (2016). Exponential
    expressivity in deep neural networks through transient chaos. NeurIPS.

    Examples
    --------
    >>> from numrnn.experiments import meanfield_q_star
    >>> meanfield_q_star(0.8)
    0.0
    """
    g = _v.check_real("gain", gain, 0.0)
    sb = _v.check_real("sigma_b", sigma_b, 0.0)
    if sb == 0.0 and g <= 1.0:
        return 0.0

    def excess(q):
        return g * g * _gauss_mean(lambda a: np.tanh(a) ** 2, q) + sb * sb - q

    upper = g * g + sb * sb
    lower = 1e-12 * max(upper, 1.0)
    if excess(lower) <= 0.0:  # g barely above 1: the root is below the bracket's floor
        return 0.0
    return float(brentq(excess, lower, upper, xtol=1e-14, rtol=1e-13))


def meanfield_lyapunov(gain, sigma_b=0.0):
    r"""Mean-field prediction of the largest Lyapunov exponent (per step) of a random tanh network.

    :math:`\lambda_{max} = \tfrac12 \ln\left(g^2\,E[\operatorname{sech}^4(\sqrt{q^*} z)]\right)`
    with q* from :func:`meanfield_q_star`: a perturbation's squared norm is multiplied on average by
    g^2 E[phi'(a)^2] per step (Molgedey, Schuchhardt and Schuster 1992; Poole et al. 2016, whose
    chi_1 is this factor).  It is ln g below the transition (q* = 0) and crosses zero at g = 1 when
    sigma_b = 0.  Valid for large N, for h_t = tanh(W h_{t-1} + b) without leak and without input.

    Parameters
    ----------
    gain : float or array_like
        g.
    sigma_b : float
        Bias standard deviation.

    Returns
    -------
    float or ndarray (shape of ``gain``)

    References
    ----------
    Molgedey, L., Schuchhardt, J. and Schuster, H. G. (1992). Suppressing chaos in neural networks
    by noise. Physical Review Letters 69, 3717.
    Poole, B., Lahiri, S., Raghu, M., Sohl-Dickstein, J. and Ganguli, S. (2016). Exponential
    expressivity in deep neural networks through transient chaos. NeurIPS.
    Trefethen, L. N. and Weideman, J. A. C. (2014). The exponentially convergent trapezoidal rule.
    SIAM Review 56(3), 385-458 (the quadrature used for the Gaussian expectations).

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.experiments import meanfield_lyapunov
    >>> bool(np.isclose(meanfield_lyapunov(0.5), np.log(0.5)))
    True
    """
    if np.ndim(gain) > 0:
        return np.array([meanfield_lyapunov(float(g), sigma_b) for g in np.ravel(gain)]
                        ).reshape(np.shape(gain))
    g = _v.check_real("gain", gain, 0.0)
    if g == 0.0:
        return -np.inf
    q = meanfield_q_star(g, sigma_b)
    chi = g * g * _gauss_mean(_sech4, q)
    return 0.5 * float(np.log(chi))


def meanfield_applies(cell, cell_options, init):
    """True when the theory of :func:`meanfield_lyapunov` describes a network: its cell steps
    h_t = tanh(W h_{t-1} + U x_t + b) (the math of ``torch.nn.RNN`` with tanh, which the cell's
    definition declares as ``torch="RNN_TANH"``) without a leak, and W_hh has Gaussian entries.

    Parameters
    ----------
    cell : numrnn.Cell
        The network's cell definition (``net.definition``).
    cell_options : dict
        Its options (``net.cell_options``); a leak "alpha" other than 1 puts it outside the theory.
    init : str
        The initialiser of W_hh; only "gaussian" is the theory's ensemble.

    Returns
    -------
    bool

    Examples
    --------
    >>> import numrnn
    >>> from numrnn.experiments.meanfield import meanfield_applies
    >>> net = numrnn.RNN(1, 8, init="gaussian", gain=1.5, seed=0)
    >>> meanfield_applies(net.definition, net.cell_options, net.init)
    True
    """
    return (cell is not None and cell.torch == "RNN_TANH"
            and cell_options.get("alpha", 1.0) == 1.0 and init == "gaussian")
