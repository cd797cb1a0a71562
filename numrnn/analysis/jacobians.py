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
import numpy as np

from .. import _memory
from .. import _validation as _v
from .. import cpu, errors
from ..cpu import blas
from ..cpu import jacobians as _k
from ..network import RNN

__all__ = ["jacobians", "step_jvp", "step_vjp", "state_size", "pack_state", "unpack_state"]


def _check_net(net, what="the step Jacobian"):
    if not isinstance(net, RNN):
        raise TypeError(f"net: expected a numrnn.RNN, got {type(net).__name__}")
    if net.num_directions == 2 and net.num_layers > 1:
        raise ValueError(
            f"net: {what} is not defined for a bidirectional network with num_layers="
            f"{net.num_layers}: layer 1 at time t reads the reverse direction's state at time t, "
            "which depends on the future inputs x_t..x_{T-1}, so no causal step map "
            "s_{t-1} -> s_t exists.  Analyse a single-layer bidirectional network, or one "
            "direction at a time.")
    return net


def state_size(net):
    """Length S of the stacked state vector of ``net`` (see the module docstring).

    Parameters
    ----------
    net : numrnn.RNN

    Returns
    -------
    int
        L * D * P * N, with P the cell's number of state vectors (2 for LSTM's h and c).

    Examples
    --------
    >>> import numrnn
    >>> from numrnn.analysis import state_size
    >>> state_size(numrnn.RNN(2, 8, cell="lstm", num_layers=3))
    48
    """
    if not isinstance(net, RNN):
        raise TypeError(f"net: expected a numrnn.RNN, got {type(net).__name__}")
    return net.num_layers * net.num_directions * _parts(net) * net.hidden_size


def _parts(net):
    return net.state_count


def pack_state(net, h, c=None):
    """Stack a network state into the state vector s.

    Parameters
    ----------
    net : numrnn.RNN
    h : ndarray, shape (L*D, B, N) or (L*D, N)
        Hidden state in the layout of ``h_n``.
    c : ndarray, shape of ``h``
        Cell state; required for LSTM, must be None otherwise.

    Returns
    -------
    s : ndarray, shape (B, S) or (S,)

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> from numrnn.analysis import pack_state, unpack_state
    >>> net = numrnn.RNN(2, 3, cell="lstm", seed=0)
    >>> h, c = np.ones((1, 3)), np.zeros((1, 3))
    >>> pack_state(net, h, c)
    array([1., 1., 1., 0., 0., 0.])
    """
    if not isinstance(net, RNN):
        raise TypeError(f"net: expected a numrnn.RNN, got {type(net).__name__}")
    LD, N = net.num_layers * net.num_directions, net.hidden_size
    h = _v.check_float_array("h", h, net.dtype, [(LD, N), (LD, None, N)], finite=False)
    lstm = net.state_count == 2
    if lstm and c is None:
        raise ValueError(f"c: the {net.cell} cell's state has a second part "
                         f"({net.definition.states[1]}); expected an array shaped like h "
                         f"{h.shape}, got None")
    if not lstm and c is not None:
        raise ValueError(f"c: the {net.cell} cell has no cell state; expected None")
    unbatched = h.ndim == 2
    if unbatched:
        h = h[:, None]
    parts = [h]
    if lstm:
        c = _v.check_float_array("c", c, net.dtype, [h.shape[:1] + h.shape[2:]] if unbatched
                                 else [h.shape], finite=False)
        parts.append(c[:, None] if unbatched else c)
    s = np.stack(parts, axis=1)  # (LD, P, B, N)
    s = np.ascontiguousarray(s.transpose(2, 0, 1, 3)).reshape(h.shape[1], -1)
    return s[0] if unbatched else s


def unpack_state(net, s):
    """Split a state vector into the network's (h, c) layout; inverse of :func:`pack_state`.

    Parameters
    ----------
    net : numrnn.RNN
    s : ndarray, shape (..., S)

    Returns
    -------
    h : ndarray, shape (L*D, ..., N)
        Hidden state; for LSTM a pair (h, c).

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> from numrnn.analysis import unpack_state
    >>> net = numrnn.RNN(2, 2, num_layers=2)
    >>> unpack_state(net, np.arange(4.0))
    array([[0., 1.],
           [2., 3.]])
    """
    S = state_size(net)
    s = np.asarray(s)
    if s.ndim < 1 or s.shape[-1] != S:
        raise ValueError(f"s: expected an array with last axis of length S = {S} (the state "
                         f"size of {net!r}), got shape {s.shape}")
    LD, P, N = net.num_layers * net.num_directions, _parts(net), net.hidden_size
    lead = s.shape[:-1]
    blocks = s.reshape(lead + (LD, P, N))
    blocks = np.moveaxis(blocks, -3, 0)  # (LD, ..., P, N)
    h = np.ascontiguousarray(blocks[..., 0, :])
    if P == 2:
        return h, np.ascontiguousarray(blocks[..., 1, :])
    return h


def _float64_twin(net):
    """A float64 network of ``net``'s architecture, whose forward pass the float32 analysis runs
    (with the float32 network's parameters, upcast, passed in explicitly)."""
    return RNN(net.input_size, net.hidden_size, cell=net.definition, num_layers=net.num_layers,
               bias=net.bias, bidirectional=net.bidirectional, cell_options=net.cell_options,
               dtype=np.float64, seed=0)


def _check_memory(caller, net, T, B, nbytes, label, fits=None):
    """MemoryError naming T, B, S and the bytes, before a linearisation allocates (see
    :mod:`numrnn._memory`)."""
    detail = (f"T={T} steps, B={B} sequences, S={state_size(net)} state dimensions, "
              f"{net._describe()}")
    if fits is None:
        fits = _memory.steps_that_fit(T, nbytes, "analyse a shorter trajectory, or fewer "
                                                 "sequences at a time")
    _memory.check(f"{caller}: {label}", nbytes, detail, fits)


class _Linearisation:
    """A trajectory of ``net`` and the per-step coefficients of its tangent map.

    Built once and shared by every analysis: ``jvp``, ``vjp`` and the QR loops read the same
    arrays.  Shapes: coefficient arrays (L*D, T, B, .) indexed by time (a reverse direction's
    processing step t is time T-1-t).

    The trajectory is the network's own, in its dtype.  The tangent maps are float64 whatever
    that dtype (``self.dtype``): for a float32 network every step is run again in float64 from
    the stored float32 state before it (all T*B steps at once, as T*B sequences of one step
    through the same forward kernels), and the coefficients and weights are float64.  A
    derivative that float32 rounds to 0 (tanh'(z) = 1 - tanh(z)^2 once tanh(z) rounds to 1, for
    |z| > 9) is then the float64 one, as for a float64 network.

    ``coefficients=False`` runs the forward pass only (``states`` and ``initial_state``).
    ``caller``, ``extra_bytes`` and ``extra_label`` name the analysis and what it allocates on
    top, for the memory check made before anything is allocated (``fits(available_bytes)``:
    what would fit, see :func:`numrnn._memory.check`).
    """

    def __init__(self, net, x_tm, h0, c0, *, coefficients=True, caller="jacobians",
                 extra_bytes=0, extra_label="", fits=None):
        _check_net(net)
        self.net = net
        self.T, self.B = x_tm.shape[:2]
        self.L, self.D, self.N, self.G = (net.num_layers, net.num_directions, net.hidden_size,
                                          net.gate_count)
        self.P = _parts(net)
        self.LD = self.L * self.D
        self.S = self.LD * self.P * self.N
        self.lstm = net.state_count == 2
        self.cell = net.definition
        self.dtype = np.dtype(np.float64)
        self.h0, self.c0 = h0, c0
        params = net._validated_parameters()
        if coefficients:
            need, what = self._bytes_needed(x_tm.shape[2], extra_bytes, extra_label)
            _check_memory(caller, net, self.T, self.B, need, what, fits)
        # analysis runs few sequences: per-step BLAS calls are small, and a threaded BLAS only
        # synchronises (see numrnn.cpu.jacobians)
        with blas.single_threaded():
            self.output, self.h_n, self.c_n, self.tape = net._forward_pass(x_tm, h0, c0, params)
        self.w_hh_t = self.w_up_t = None
        if coefficients:
            self._coefficients(x_tm, params)

    def _bytes_needed(self, n_in, extra_bytes, extra_label):
        """Peak bytes of the forward tape, the coefficient arrays (and, for a float32 network,
        the float64 re-run of every step), plus ``extra_bytes``; and what they are."""
        net, T, B, N, LD = self.net, self.T, self.B, self.N, self.LD
        GN, P, R = self.G * N, self.P, self.cell.read_count
        per_step = P * GN * (2 if self.cell.separate else 1) + P * P * N + R * N
        need = net._bytes_needed(T, B, backward=True) + LD * T * B * per_step * 8 + extra_bytes
        what = "the float64 tangent-map coefficients"
        if net.dtype != np.float64:
            # the re-run: T*B sequences of one step, their previous states and the input
            need += _float64_twin_bytes(net, T * B) + (2 * LD * N + n_in) * T * B * 8
            what += " (and the float64 re-run of every float32 step)"
        what = f"{extra_label} and {what}" if extra_label else what
        return need, what

    def _coefficients(self, x_tm, params):
        net, T, B, N, LD, D = self.net, self.T, self.B, self.N, self.LD, self.D
        dt, GN, P, cell = self.dtype, self.G * N, self.P, self.cell
        R = cell.read_count
        self.rec = np.empty((LD, T, B, P, GN), dt)
        self.inp = np.empty((LD, T, B, P, GN), dt) if cell.separate else self.rec
        self.direct = np.empty((LD, T, B, P, P, N), dt)
        self.rgrad = np.empty((LD, T, B, R, N), dt)
        self.reads = np.array(cell.read_index, np.int64)
        rerun = net.dtype != np.float64
        if rerun:
            source, p = self._rerun_in_float64(x_tm, params)
            h_prev, c_prev = self._h_prev, self._c_prev
            records = [self._tape64[layer][1] for layer in range(self.L)]
        else:
            source, p = net, params
            h_prev, c_prev = self.h0, self.c0
            records = [self.tape[layer][1] for layer in range(self.L)]
        self.w_hh = np.empty((LD, GN, R * N), dt)
        self.w_up = np.zeros((max(self.L - 1, 1), GN, N), dt)
        for layer in range(self.L):
            for d in range(D):
                w_ih, w_hh, _, _ = source.layer_params(layer, d, p)
                self.w_hh[layer * D + d] = w_hh
                if layer > 0:
                    self.w_up[layer - 1] = w_ih  # D == 1 here (see _check_net)
        for layer in range(self.L):
            for d in range(D):
                k = layer * D + d
                out_h, out_c, aux = records[layer][d]
                into = [self.rec[k], self.inp[k], self.direct[k], self.rgrad[k]]
                if rerun:  # one step of T*B sequences: (T, B, ...) -> (1, T*B, ...)
                    into = [a.reshape((1, T * B) + a.shape[2:]) for a in into]
                cpu.coefficients(cell, net.options_array(np.float64), h_prev[k], c_prev[k],
                                 out_h, out_c, aux, d == 1 and not rerun, *into)
        self._tape64 = self._h_prev = self._c_prev = None

    def _rerun_in_float64(self, x_tm, params):
        """Run every step of the float32 trajectory again in float64, from the stored state
        before it ("teacher forced"): one forward pass of T*B sequences of one step.  Sets the
        float64 tape and previous states; returns the float64 network and parameters."""
        net, T, B, N, LD = self.net, self.T, self.B, self.N, self.LD
        h_prev = np.empty((LD, T, B, N), np.float64)
        c_prev = np.zeros((LD, T, B, N), np.float64)
        for layer in range(self.L):
            for d in range(self.D):
                k = layer * self.D + d
                out_h, out_c, _ = self.tape[layer][1][d]
                for prev, out, start in ((h_prev, out_h, self.h0), (c_prev, out_c, self.c0)):
                    if prev is c_prev and not self.lstm:
                        continue
                    if d == 0:  # time t starts from the state at t - 1
                        prev[k, 0] = start[k]
                        prev[k, 1:] = out[:-1]
                    else:  # the reverse direction's step at time t starts from time t + 1
                        prev[k, T - 1] = start[k]
                        prev[k, :-1] = out[1:]
        twin = _float64_twin(net)
        p64 = {name: a.astype(np.float64) for name, a in params.items()}
        x64 = x_tm.astype(np.float64).reshape(1, T * B, -1)
        self._h_prev = h_prev.reshape(LD, T * B, N)
        self._c_prev = c_prev.reshape(LD, T * B, N)
        # one step from each stored state: a NaN/inf there was reported by the forward pass above
        with blas.single_threaded(), errors.nonfinite("ignore"):
            self._tape64 = twin._forward_pass(x64, self._h_prev, self._c_prev, p64)[3]
        return twin, p64

    def kernel_args(self):
        if self.w_hh_t is None:
            self.w_hh_t = np.ascontiguousarray(self.w_hh.transpose(0, 2, 1))  # (L*D, R*N, G*N)
            self.w_up_t = np.ascontiguousarray(self.w_up.transpose(0, 2, 1))
        return (self.D, self.reads, self.w_hh, self.w_up, self.w_hh_t, self.w_up_t, self.rec,
                self.inp, self.direct, self.rgrad)

    def blocks(self, v):
        """(..., S, k) -> (..., L*D, P, N, k) C-contiguous float64."""
        lead = v.shape[:-2]
        return np.ascontiguousarray(v, dtype=self.dtype).reshape(
            lead + (self.LD, self.P, self.N, v.shape[-1]))

    def apply(self, v, transpose):
        """J_t v_t (or J_t^T v_t) for v of shape (T or 1, B or 1, S, k) -> (T, B, S, k), float64."""
        vb = self.blocks(v)
        k = v.shape[-1]
        out = np.empty((self.T, self.B, self.LD, self.P, self.N, k), self.dtype)
        _k.tangent(self.kernel_args(), vb, out, transpose)
        return out.reshape(self.T, self.B, self.S, k)

    def states(self):
        """s_t after every processing step, shape (T, B, S), in the network's dtype."""
        T, B = self.T, self.B
        s = np.empty((T, B, self.LD, self.P, self.N), self.net.dtype)
        for layer in range(self.L):
            for d in range(self.D):
                k = layer * self.D + d
                out_h, out_c, _ = self.tape[layer][1][d]
                order = slice(None, None, -1) if d == 1 else slice(None)
                s[:, :, k, 0] = out_h[order]
                if self.lstm:
                    s[:, :, k, 1] = out_c[order]
        return s.reshape(T, B, self.S)

    def initial_state(self):
        """s_{-1}, shape (B, S)."""
        parts = [self.h0] + ([self.c0] if self.lstm else [])
        s = np.stack(parts, axis=1)  # (LD, P, B, N)
        return np.ascontiguousarray(s.transpose(2, 0, 1, 3)).reshape(self.B, self.S)


def _float64_twin_bytes(net, batch):
    """Peak bytes of a float64 forward pass of ``batch`` sequences of one step, tape kept."""
    N, D, L = net.hidden_size, net.num_directions, net.num_layers
    record = N * (net.state_count + net.definition.aux_count)
    return batch * (L * D * record + net.gate_count * N + D * N) * 8


def _report_nonfinite(caller, out, what):
    """Report (numrnn.errors) the first step and sequence where ``out`` (T, B, ...) is not
    finite."""
    first = _k.first_nonfinite(out)
    if first is not None:
        t, b = first
        errors.report(f"{caller}: {what} holds NaN or inf at step t={t} of sequence b={b} (the "
                      "first), from a finite trajectory: a product of the step's derivatives "
                      "with the weights overflowed float64")


def _linearise(net, x, h0, what="the step Jacobian", caller="jacobians", extra=None,
               vectors=None):
    """Validate (net, x, h0) and build the linearisation; returns (lin, unbatched).

    ``extra(T, B, S) -> (bytes, label)``: what the caller allocates on top (memory check).
    ``vectors``: (name, array) of per-step vectors (T, [B,] S) to validate before anything is
    allocated; the checked (T, B, S) array is then ``lin.vectors``."""
    _check_net(net, what)
    x_tm, unbatched = net._check_input(x)
    h, c = net._split_state(h0, x_tm.shape[1], unbatched)
    T, B = x_tm.shape[:2]
    S = state_size(net)
    vec = None
    if vectors is not None:
        name, arr = vectors
        vec = _v.check_float_array(name, arr, net.dtype, [(T, S) if unbatched else (T, B, S)])
        if unbatched:
            vec = vec[:, None]
    nbytes, label = extra(T, B, S) if extra is not None else (0, "")
    lin = _Linearisation(net, x_tm, h, c, caller=caller, extra_bytes=nbytes, extra_label=label)
    lin.vectors = vec
    return lin, unbatched


def jacobians(net, x, h0=None):
    r"""Step Jacobians J_t = d s_t / d s_{t-1} along the trajectory driven by x.

    Parameters
    ----------
    net : numrnn.RNN
        Any cell; bidirectional only with ``num_layers=1`` (see the module docstring).
    x : ndarray, shape (T, B, I), (B, T, I) if ``net.batch_first``, or (T, I)
        Input, of the network's dtype.
    h0 : ndarray or pair, optional
        Initial state as in :meth:`numrnn.RNN.forward` (zeros by default).

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
    lin, unbatched = _linearise(net, x, h0, caller="jacobians", extra=lambda T, B, S: (
        T * B * S * S * 8, f"the (T, B, S, S) = ({T}, {B}, {S}, {S}) step Jacobians"))
    eye = np.eye(lin.S)[None, None]
    J = lin.apply(eye, transpose=False)
    _report_nonfinite("jacobians", J, "the step Jacobian J_t")
    return J[:, 0] if unbatched else J


def _tangent_products(net, x, vectors, h0, name, transpose):
    caller = "step_vjp" if transpose else "step_jvp"
    lin, unbatched = _linearise(net, x, h0, caller=caller, vectors=(name, vectors),
                                extra=lambda T, B, S: (
                                    3 * T * B * S * 8, f"the (T, B, S) = ({T}, {B}, {S}) products"))
    out = lin.apply(lin.vectors[..., None], transpose)[..., 0]
    _report_nonfinite(caller, out, "u_t^T J_t" if transpose else "J_t v_t")
    return out[:, 0] if unbatched else out


def step_jvp(net, x, v, h0=None):
    r"""Jacobian-vector products J_t v_t of every step, without forming J_t.

    Parameters
    ----------
    net, x, h0
        As in :func:`jacobians`.
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
    return _tangent_products(net, x, v, h0, "v", transpose=False)


def step_vjp(net, x, u, h0=None):
    r"""Vector-Jacobian products u_t^T J_t of every step (the backward pass of BPTT).

    Parameters
    ----------
    net, x, h0
        As in :func:`jacobians`.
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
    return _tangent_products(net, x, u, h0, "u", transpose=True)
