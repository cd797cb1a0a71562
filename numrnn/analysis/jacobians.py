r"""Step Jacobians of a recurrent network: dense, Jacobian-vector and vector-Jacobian products.

The state and its stacking order
--------------------------------
The state s of a network with L layers, D directions and N units is the vector of every
(layer, direction) block in the order of ``h_n`` (layer 0 forward, layer 0 reverse, layer 1
forward, ...); inside a block come the cell's state vectors, N entries each: h, and for a
two-state cell its second state after it (LSTM's c, coRNN's z)::

    s = [h_{0,fwd}, (c_{0,fwd}), h_{0,rev}, (c_{0,rev}), h_{1,fwd}, (c_{1,fwd}), ...]

so S = L * D * P * N with P the cell's number of states.  :func:`pack_state` and
:func:`unpack_state` convert between this vector and the network's (h, c) arrays.

The step Jacobian is J_t = d s_t / d s_{t-1} (rows: new state, columns: old state).  For stacked
layers it includes the path through the new state of the layers below (layer l at step t reads
h_{l-1, t}), so J_t is block lower triangular across layers.

Bidirectional networks
----------------------
A single-layer bidirectional network is two independent causal systems; processing step t
advances the forward direction with x_t and the reverse direction with x_{T-1-t}, and J_t is
block diagonal.  With more than one layer, layer 1 at time t reads the reverse direction's state at
time t, which depends on x_t, ..., x_{T-1}: no causal step map s_{t-1} -> s_t exists, and the
functions here raise ``ValueError``.

Precision
---------
Every analysis result (:func:`jacobians`, :func:`step_jvp`, :func:`step_vjp`, and the Lyapunov
spectra, gradient propagation and fixed-point linearisations built on them) is float64, for a
float32 network too.  The trajectory is the network's own (its float32 states), but each step's
derivatives are evaluated in float64 at those states: the step is run again in float64 from the
stored float32 state before it, and the weights are upcast.  So float32 rounding never turns a
derivative into an exact 0 (tanh'(z) = 1 - tanh(z)^2 is 0 in float32 once |z| > 9), which would
make a finite Lyapunov exponent -inf.  A float64 network's derivatives come from its own forward
pass, at no extra cost.
"""
from .linearisation import (linearise, pack_state, report_first_nonfinite, report_nonfinite,
                            state_size, unpack_state)

__all__ = ["jacobians", "step_jvp", "step_vjp", "state_size", "pack_state", "unpack_state"]


def jacobians(net, x=None, h0=None, *, n_steps=None, seed=None, noise_std=0.0):
    r"""Step Jacobians J_t = d s_t / d s_{t-1} along the trajectory driven by x.

    Parameters
    ----------
    net : numrnn.RNN or numrnn.Ensemble
        Any cell; bidirectional only with ``num_layers=1`` (see the module docstring).  An
        ensemble gives the members' Jacobians stacked, (M, ...).
    x : ndarray, shape (T, B, I), (B, T, I) if ``net.batch_first``, or (T, I), optional
        Input, of the network's dtype.  None: the autonomous network (zero input) for
        ``n_steps``.
    h0 : ndarray or pair, optional
        Initial state as in :meth:`numrnn.RNN.forward`.  Default, as in every trajectory
        analysis: zeros when x is given, a N(0, 1) state drawn from ``seed`` when x is None.
    n_steps : int, optional
        Length of the autonomous run; required when x is None, not allowed otherwise.
    seed : int, sequence of int, numpy.random.SeedSequence or numpy.random.Generator, optional
        Draws the autonomous h0 and the noise realisation.
    noise_std : float >= 0, default 0
        Noise in the dynamics, as in :meth:`numrnn.RNN.forward` (the same realisation for the
        same seed); the Jacobians are those of that noisy trajectory.

    Returns
    -------
    J : ndarray of float64, shape (T, B, S, S), or (T, S, S) for unbatched x
        ``J[t, b]`` is the Jacobian of step t of sequence b (time-major whatever ``batch_first``);
        rows index s_t and columns s_{t-1}, stacked as in :func:`pack_state`.  Built from the
        same cell functions as backpropagation through time: the chain of their transposes is
        BPTT's gradient of the initial state.  float64 for a float32 network too: the
        derivatives are evaluated in float64 at the network's own (float32) states (see the
        module docstring).

    Raises
    ------
    MemoryError
        Before allocating, when the T * B * S * S output (with the trajectory) does not fit in
        the memory available.
    numrnn.NonFiniteError
        When an entry of J overflows to inf or NaN from a finite trajectory (the error names
        the first step and sequence); ``with numrnn.nonfinite("warn")`` returns it as is.

    References
    ----------
    Pascanu, R., Mikolov, T. and Bengio, Y. (2013). On the difficulty of training recurrent neural
    networks. ICML.

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> net = numrnn.RNN(2, 4, cell="gru", seed=0)
    >>> J = numrnn.jacobians(net, np.zeros((5, 2)))
    >>> J.shape
    (5, 4, 4)
    """
    if getattr(net, "is_ensemble", False):  # numrnn.Ensemble: (M, ...) in one call
        return net.jacobians(x, h0, n_steps=n_steps, seed=seed, noise_std=noise_std)
    lin, unbatched = linearise(net, x, h0, caller="jacobians", extra=lambda T, B, S: (
        T * B * S * S * 8, f"the (T, B, S, S) = ({T}, {B}, {S}, {S}) step Jacobians"),
        n_steps=n_steps, seed=seed, noise_std=noise_std)
    J, first = lin.jacobians()
    report_first_nonfinite("jacobians", first, "the step Jacobian J_t")
    return J[:, 0] if unbatched else J


def _tangent_products(net, x, vectors, h0, name, transpose, seed, noise_std):
    caller = "step_vjp" if transpose else "step_jvp"
    if x is None:
        raise ValueError(f"x: {caller} needs the input of the trajectory (its T steps match "
                         f"those of {name}); got None")
    lin, unbatched = linearise(net, x, h0, caller=caller, vectors=(name, vectors),
                               extra=lambda T, B, S: (
                                   3 * T * B * S * 8, f"the (T, B, S) = ({T}, {B}, {S}) products"),
                               seed=seed, noise_std=noise_std)
    out = lin.apply(lin.vectors[..., None], transpose)[..., 0]
    report_nonfinite(caller, out, "u_t^T J_t" if transpose else "J_t v_t")
    return out[:, 0] if unbatched else out


def step_jvp(net, x, v, h0=None, *, seed=None, noise_std=0.0):
    r"""Jacobian-vector products J_t v_t of every step, without forming J_t.

    Parameters
    ----------
    net, x, h0, seed, noise_std
        As in :func:`jacobians` (x is required).
    v : ndarray, shape (T, B, S) or (T, S) for unbatched x
        One tangent vector of s_{t-1} per step and sequence, of the network's dtype.

    Returns
    -------
    ndarray of float64, shape of ``v``
        ``J_t v_t``: the first-order change of s_t when s_{t-1} moves along v_t.  Costs one
        product with each W_hh (and W_ih between layers) per step.  float64 for a float32
        network too, as :func:`jacobians`.

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> net = numrnn.RNN(2, 3, seed=0)
    >>> x, v = np.zeros((4, 2)), np.ones((4, 3))
    >>> np.allclose(numrnn.analysis.step_jvp(net, x, v),
    ...             (numrnn.jacobians(net, x) @ v[..., None])[..., 0])
    True
    """
    return _tangent_products(net, x, v, h0, "v", False, seed, noise_std)


def step_vjp(net, x, u, h0=None, *, seed=None, noise_std=0.0):
    r"""Vector-Jacobian products u_t^T J_t of every step (the backward pass of BPTT).

    Parameters
    ----------
    net, x, h0, seed, noise_std
        As in :func:`jacobians` (x is required).
    u : ndarray, shape (T, B, S) or (T, S) for unbatched x
        One cotangent of s_t per step and sequence, of the network's dtype.

    Returns
    -------
    ndarray of float64, shape of ``u``
        ``u_t^T J_t`` (as a vector): the cotangent of s_{t-1}.  float64 for a float32 network
        too, as :func:`jacobians`.

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> net = numrnn.RNN(2, 3, cell="lstm", seed=0)
    >>> x, u = np.zeros((4, 2)), np.ones((4, 6))
    >>> J = numrnn.jacobians(net, x)
    >>> np.allclose(numrnn.analysis.step_vjp(net, x, u), np.einsum("ts,tsr->tr", u, J))
    True
    """
    return _tangent_products(net, x, u, h0, "u", True, seed, noise_std)
