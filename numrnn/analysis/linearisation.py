"""What every analysis shares: the linearisation of a trajectory and the QR frames run on it.

:class:`Linearisation` runs a network forward once and keeps the per-step coefficients of its
tangent map (float64 whatever the network's dtype); the Jacobians, Lyapunov spectra, gradient
propagation and fixed points all read it.  The frames and schedules of Benettin's QR loop and
the checks of its status live here too, for :mod:`numrnn.analysis.lyapunov` and
:mod:`numrnn.analysis.gradients`.  The state vector's layout (:func:`state_size`,
:func:`pack_state`, :func:`unpack_state`) is described in :mod:`numrnn.analysis.jacobians`.
"""
import math

import numpy as np

from .. import _memory
from .. import _validation as _v
from .. import cpu, driver, errors
from .. import noise as _noise
from ..cpu import backend as cpu_backend
from ..cpu import blas, scratch
from ..cpu import jacobians as _k
from ..network import RNN

__all__ = ["Linearisation", "Trajectory", "trajectory", "linearise", "check_net", "state_size", "pack_state", "unpack_state",
           "float64_twin", "check_memory", "report_nonfinite", "report_first_nonfinite",
           "fmt_list", "generator",
           "schedule", "frames", "check_jacobians", "check_schedule", "local_sums", "check_status"]


def check_net(net, what="the step Jacobian"):
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


def float64_twin(net):
    """A float64 network of ``net``'s architecture, whose forward pass the float32 analysis runs
    (with the float32 network's parameters, upcast, passed in explicitly)."""
    return RNN(net.input_size, net.hidden_size, cell=net.definition, num_layers=net.num_layers,
               bias=net.bias, bidirectional=net.bidirectional, cell_options=net.cell_options,
               dtype=np.float64, seed=0)


def float64_twin_bytes(net, batch):
    """Peak bytes of a float64 forward pass of ``batch`` sequences of one step, tape kept."""
    N, D, L = net.hidden_size, net.num_directions, net.num_layers
    record = N * (net.state_count + net.definition.aux_count)
    return batch * (L * D * record + net.gate_count * N + D * N) * 8


def check_memory(caller, net, T, B, nbytes, label, fits=None):
    """MemoryError naming T, B, S and the bytes, before a linearisation allocates (see
    :mod:`numrnn._memory`)."""
    detail = (f"T={T} steps, B={B} sequences, S={state_size(net)} state dimensions, "
              f"{driver.describe(net)}")
    if fits is None:
        fits = _memory.steps_that_fit(T, nbytes, "analyse a shorter trajectory, or fewer "
                                                 "sequences at a time")
    _memory.check(f"{caller}: {label}", nbytes, detail, fits)


class Linearisation:
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
                 extra_bytes=0, extra_label="", fits=None, noise=None):
        check_net(net)
        self.net = net
        self.noise = noise
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
        params = net.checked_parameters()
        if coefficients:
            need, what = self._bytes_needed(x_tm.shape[2], extra_bytes, extra_label)
            check_memory(caller, net, self.T, self.B, need, what, fits)
        # analysis runs few sequences: per-step BLAS calls are small, and a threaded BLAS only
        # synchronises (see numrnn.cpu.jacobians)
        with blas.single_threaded():
            self.output, self.h_n, self.c_n, tape = driver.forward_pass(
                net, cpu_backend, x_tm, h0, c0, params, noise)
            self.tape = tape.records
        self.w_hh_t = self.w_up_t = None
        if coefficients:
            self._coefficients(x_tm, params)

    def _bytes_needed(self, n_in, extra_bytes, extra_label):
        """Peak bytes of the forward tape, the coefficient arrays (and, for a float32 network,
        the float64 re-run of every step), plus ``extra_bytes``; and what they are."""
        net, T, B, N, LD = self.net, self.T, self.B, self.N, self.LD
        GN, P, R = self.G * N, self.P, self.cell.read_count
        per_step = P * GN * (2 if self.cell.separate else 1) + P * P * N + R * N
        need = (driver.bytes_needed(net, T, B, backward=True, noise=self.noise is not None)
                + LD * T * B * per_step * 8 + extra_bytes)
        what = "the float64 tangent-map coefficients"
        if net.dtype != np.float64:
            # the re-run: T*B sequences of one step, their previous states and the input
            need += float64_twin_bytes(net, T * B) + (2 * LD * N + n_in) * T * B * 8
            what += " (and the float64 re-run of every float32 step)"
        what = f"{extra_label} and {what}" if extra_label else what
        return need, what

    def _coefficients(self, x_tm, params):
        net, T, B, N, LD, D = self.net, self.T, self.B, self.N, self.LD, self.D
        dt, GN, P, cell = self.dtype, self.G * N, self.P, self.cell
        R = cell.read_count
        # scratch arrays (numrnn.cpu.scratch): an analysis call drops them when it returns
        self.rec = scratch.empty((LD, T, B, P, GN), dt)
        self.inp = scratch.empty((LD, T, B, P, GN), dt) if cell.separate else self.rec
        self.direct = scratch.empty((LD, T, B, P, P, N), dt)
        self.rgrad = scratch.empty((LD, T, B, R, N), dt)
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
                    self.w_up[layer - 1] = w_ih  # D == 1 here (see check_net)
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
        h_prev = scratch.empty((LD, T, B, N), np.float64)
        c_prev = scratch.empty((LD, T, B, N), np.float64)
        c_prev.fill(0)
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
        twin = float64_twin(net)
        p64 = {name: a.astype(np.float64) for name, a in params.items()}
        x64 = x_tm.astype(np.float64).reshape(1, T * B, -1)
        self._h_prev = h_prev.reshape(LD, T * B, N)
        self._c_prev = c_prev.reshape(LD, T * B, N)
        # one step from each stored state: a NaN/inf there was reported by the forward pass above
        noise = None if self.noise is None else self.noise.as_steps_of_one(T, B)
        with blas.single_threaded(), errors.nonfinite("ignore"):
            self._tape64 = driver.forward_pass(twin, cpu_backend, x64, self._h_prev,
                                                 self._c_prev, p64, noise)[3].records
        return twin, p64

    def kernel_args(self):
        if self.w_hh_t is None:
            self.w_hh_t = np.ascontiguousarray(self.w_hh.transpose(0, 2, 1))  # (L*D, R*N, G*N)
            self.w_up_t = np.ascontiguousarray(self.w_up.transpose(0, 2, 1))
        return (self.D, self.reads, self.w_hh, self.w_up, self.w_hh_t, self.w_up_t, self.rec,
                self.inp, self.direct, self.rgrad)

    def blocks(self, v):
        """(..., S, k) -> (..., k, L*D, P, N) C-contiguous float64: the k vectors each
        contiguous (frame-major, the kernels' layout)."""
        lead = v.shape[:-2]
        return np.ascontiguousarray(np.swapaxes(v, -1, -2), dtype=self.dtype).reshape(
            lead + (v.shape[-1], self.LD, self.P, self.N))

    def apply(self, v, transpose):
        """J_t v_t (or J_t^T v_t) for v of shape (T or 1, B or 1, S, k) -> (T, B, S, k), float64
        (a view of a frame-major array)."""
        vb = self.blocks(v)
        k = v.shape[-1]
        out = np.empty((self.T, self.B, k, self.LD, self.P, self.N), self.dtype)
        _k.tangent(self.kernel_args(), vb, out, transpose)
        return np.swapaxes(out.reshape(self.T, self.B, k, self.S), -1, -2)

    def jacobians(self, out=None):
        """The dense step Jacobians J_t, (T, B, S, S) float64, written straight from the
        coefficients (:func:`numrnn.cpu.jacobians.jacobians`: no product with the identity).
        ``out``: a C-contiguous float64 array of that shape to write them into; by default a
        pooled one (:mod:`numrnn.cpu.scratch`: safe to keep, and the pages of a dropped one are
        written again without faults).  Returns (J, first): ``first`` the (t, b) of the first
        J_t holding an inf or NaN, or None."""
        if out is None:
            out = scratch.empty((self.T, self.B, self.S, self.S), self.dtype)
        args = (self.D, self.reads, self.w_hh, self.w_up, self.rec, self.inp, self.direct,
                self.rgrad)
        return out, _k.jacobians(args, out)

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


def report_nonfinite(caller, out, what):
    """Report (numrnn.errors) the first step and sequence where ``out`` (T, B, ...) is not
    finite."""
    report_first_nonfinite(caller, _k.first_nonfinite(out), what)


def report_first_nonfinite(caller, first, what):
    """Report (numrnn.errors) that ``what`` is not finite at ``first`` = (t, b), the first step
    and sequence where it is; nothing when ``first`` is None."""
    if first is not None:
        t, b = first
        errors.report(f"{caller}: {what} holds NaN or inf at step t={t} of sequence b={b} (the "
                      "first), from a finite trajectory: a product of the step's derivatives "
                      "with the weights overflowed float64")


class Trajectory:
    """The checked inputs of a trajectory analysis: ``x`` (T, B, I) time-major, ``unbatched``,
    ``h``/``c`` (L*D, B, N), ``start`` (how the initial state was chosen, for the result's repr)
    and ``noise`` (a :class:`numrnn.noise.Noise` or None)."""

    def __init__(self, x, unbatched, h, c, start, noise):
        self.x, self.unbatched, self.h, self.c, self.start = x, unbatched, h, c, start
        self.noise = noise

    @property
    def noise_description(self):
        return "none" if self.noise is None else repr(self.noise)


def trajectory(net, x, h0, *, n_steps=None, rng=None, noise_std=0.0, seed=None,
               what="the step Jacobian"):
    r"""Validate the trajectory of an analysis call; the one rule for its initial state.

    Every trajectory analysis (:func:`numrnn.jacobians`, :func:`numrnn.gradient_propagation`,
    :func:`numrnn.lyapunov_spectrum`, :func:`numrnn.covariant_lyapunov_vectors`) starts the same
    way: ``x`` given, h0 = zeros by default (the state :meth:`numrnn.RNN.forward` starts from);
    ``x`` None, the autonomous network (zero input for ``n_steps``) from h0 ~ N(0, 1) drawn from
    ``rng`` by default, since the origin of a bias-free network is a fixed point.  A given h0 is
    used as is.  The result's repr says which.

    ``noise_std`` and ``seed``: noise in the dynamics (:mod:`numrnn.noise`); the realisation
    is a function of ``seed`` alone (the same as :meth:`numrnn.RNN.forward` with that seed).
    """
    check_net(net, what)
    if x is None:
        if n_steps is None:
            raise ValueError("n_steps: expected the number of steps of the autonomous run (x is "
                             "None), got None")
        n_steps = _v.check_int("n_steps", n_steps, 1)
        x, h0, start = _autonomous_input(net, n_steps, h0, rng)
    else:
        if n_steps is not None:
            raise ValueError(f"n_steps: x fixes the number of steps; expected None, got "
                             f"{n_steps!r}")
        start = "given" if h0 is not None else "zeros (x given)"
    x_tm, unbatched = driver.check_input(net, x)
    h, c = driver.split_state(net, h0, x_tm.shape[1], unbatched)
    noise = _noise.make(net, noise_std, seed)
    return Trajectory(x_tm, unbatched, h, c, start, noise)


def _autonomous_input(net, n_steps, h0, rng):
    """Zero input of n_steps, h0 (N(0, 1) from rng when None) and how h0 was chosen."""
    LD, N, I = net.num_layers * net.num_directions, net.hidden_size, net.input_size
    pair = net.state_count == 2
    if h0 is None:
        h = rng.standard_normal((LD, N)).astype(net.dtype)
        h0 = (h, rng.standard_normal((LD, N)).astype(net.dtype)) if pair else h
        return np.zeros((n_steps, I), net.dtype), h0, "N(0, 1) drawn from seed (autonomous)"
    first = h0[0] if pair and isinstance(h0, (tuple, list)) else h0
    if first is not None and np.ndim(first) == 3:
        B = np.shape(first)[1]
        shape = (B, n_steps, I) if net.batch_first else (n_steps, B, I)
        return np.zeros(shape, net.dtype), h0, "given"
    return np.zeros((n_steps, I), net.dtype), h0, "given"


def linearise(net, x, h0, what="the step Jacobian", caller="jacobians", extra=None,
               vectors=None, n_steps=None, seed=None, noise_std=0.0):
    """Validate (net, x, h0) and build the linearisation; returns (lin, unbatched).

    ``extra(T, B, S) -> (bytes, label)``: what the caller allocates on top (memory check).
    ``vectors``: (name, array) of per-step vectors (T, [B,] S) to validate before anything is
    allocated; the checked (T, B, S) array is then ``lin.vectors``.  ``n_steps``, ``seed``,
    ``noise_std``: as in :func:`trajectory` (``seed`` draws the autonomous h0 and the noise)."""
    traj = trajectory(net, x, h0, n_steps=n_steps, rng=generator(seed), noise_std=noise_std,
                      seed=seed, what=what)
    x_tm, unbatched, h, c = traj.x, traj.unbatched, traj.h, traj.c
    T, B = x_tm.shape[:2]
    S = state_size(net)
    vec = None
    if vectors is not None:
        name, arr = vectors
        vec = _v.check_float_array(name, arr, net.dtype, [(T, S) if unbatched else (T, B, S)])
        if unbatched:
            vec = vec[:, None]
    nbytes, label = extra(T, B, S) if extra is not None else (0, "")
    lin = Linearisation(net, x_tm, h, c, caller=caller, extra_bytes=nbytes, extra_label=label,
                        noise=traj.noise)
    lin.vectors = vec
    lin.trajectory = traj
    return lin, unbatched


def fmt_list(values, head=5, tail=2):
    vals = [f"{v:.6g}" for v in values]
    if len(vals) > head + tail + 1:
        vals = vals[:head] + ["..."] + vals[-tail:]
    return "[" + ", ".join(vals) + "]"


def generator(seed):
    """A numpy Generator from ``seed`` (see :func:`numrnn._validation.check_seed`)."""
    return _v.check_seed(seed)


def schedule(T, transient, m):
    """When to orthonormalise (qr_at), which block each QR records into (-1: transient), and
    the block lengths."""
    qr_at = np.zeros(T, np.bool_)
    record_at = np.full(T, -1, np.int64)
    lengths = []
    count = 0
    for t in range(T):
        count += 1
        if count == m or t == T - 1 or t == transient - 1:
            qr_at[t] = True
            if t >= transient:
                record_at[t] = len(lengths)
                lengths.append(count)
            count = 0
    return qr_at, record_at, np.array(lengths, np.int64)


def frames(rng, B, S, k, dtype):
    """B random orthonormal (S, k) frames (QR of Gaussian matrices), with NumPy's BLAS held to
    one thread: a threaded one leaves its threads spinning for their next job after the QR,
    taking a core from the loop that follows on numrnn's threads (a full spectrum at S = 200 on
    2 cores spent 3% of its samples in them), and the frame's bits then do not depend on the
    BLAS's thread count."""
    q = np.empty((B, S, k))
    with blas.single_threaded():
        for b in range(B):
            q[b] = np.linalg.qr(rng.standard_normal((S, k)))[0]
    return q.astype(dtype)


def check_jacobians(J):
    """Validate given matrices J (T, S, S) or (T, B, S, S); returns them (T, B, S, S)
    C-contiguous."""
    if not isinstance(J, np.ndarray):
        raise TypeError(f"J: expected a numpy array of shape (T, S, S) or (T, B, S, S), got "
                        f"{type(J).__name__}")
    if J.dtype not in _v.FLOAT_DTYPES:
        raise TypeError(f"J: expected dtype float32 or float64, got {J.dtype}")
    if J.ndim not in (3, 4) or J.shape[-1] != J.shape[-2] or J.shape[0] < 1 or J.shape[-1] < 1:
        raise ValueError(f"J: expected shape (T, S, S) or (T, B, S, S) with T, S >= 1, got "
                         f"{J.shape}")
    if not np.all(np.isfinite(J)):
        raise ValueError("J: expected finite values, got NaN or inf entries")
    return np.ascontiguousarray(J[:, None] if J.ndim == 3 else J)


def check_schedule(T, k, S, transient, ons_interval, n_segments):
    if k is None:
        k = S
    k = _v.check_int("k", k, 1)
    if k > S:
        raise ValueError(f"k: expected at most S = {S} exponents (the state size), got {k}")
    if transient is None:
        transient = T // 10
    transient = _v.check_int("transient", transient, 0)
    if transient >= T:
        raise ValueError(f"transient: expected fewer steps than the trajectory's T = {T}, got "
                         f"{transient}")
    m = _v.check_int("ons_interval", ons_interval, 1)
    if n_segments is not None:
        n_segments = _v.check_int("n_segments", n_segments, 1)
    return k, transient, m, n_segments


def local_sums(lin, k, transient, m, rng, caller="lyapunov_spectrum"):
    """Benettin's loop on a linearised trajectory; returns (sums (n_blocks, B, k), lengths).

    Raises ValueError when ``m`` (ons_interval) is too long, and reports a frame lost to inf or
    NaN (numrnn.errors), naming ``caller``."""
    qr_at, record_at, lengths = schedule(lin.T, transient, m)
    q = frames(rng, lin.B, lin.S, k, lin.dtype)
    sums = np.zeros((lengths.size, lin.B, k))
    status = _k.lyapunov(lin.kernel_args(), q, qr_at, record_at, sums, m > 1)
    check_status(status, m, caller, lin.dtype)
    return sums, lengths


def suggest_interval(n, gap, top, bottom, dtype):
    """An ons_interval (>= 1, below the refused block's length n) from the growth rates per step
    measured on the refused block: the largest gap lambda_1 - lambda_i, lambda_1 and lambda_k.

    Each limit keeps a margin of a factor 2 in the logarithm: the columns stay apart by an angle
    of about eps^(1/4) (the check is sqrt(eps)), and the frame within the square root of the
    largest and of the smallest number the check allows."""
    info = np.finfo(dtype)
    _, log_tiny = _k.qr_limits(dtype)
    limits = [n - 1.0]
    if not (np.isfinite(gap) and np.isfinite(top) and np.isfinite(bottom)):
        return 1
    if gap > 0.0:
        limits.append(-0.25 * math.log(float(info.eps)) / gap)
    if top > 0.0:
        limits.append(0.5 * math.log(float(info.max)) / top)
    if bottom < 0.0:
        limits.append(0.5 * log_tiny / bottom)
    return max(1, int(math.floor(min(limits))))


def ons_message(row, b, m, dtype):
    """ValueError text for an ons_interval that the QR loop caught as too long; ``row`` is the
    kernel's status of sequence b (kind, t, n, measure, column, gap, lambda_1, lambda_k)."""
    kind, t, n, measure, col = int(row[0]), int(row[1]), int(row[2]), float(row[3]), int(row[4])
    gap, top, bottom = (float(v) for v in row[5:8])
    sugg = suggest_interval(n, gap, top, bottom, dtype)
    ortho_tol, _ = _k.qr_limits(dtype)
    head = (f"ons_interval: {m} steps between orthonormalisations is too long here: at step "
            f"t={t} of sequence b={b}, {n} steps after the last orthonormalisation, ")
    if kind == _k.FAIL_OVERFLOW:
        what = "the propagated frame J_t ... J_1 Q overflowed to inf or NaN"
    elif kind == _k.FAIL_UNDERFLOW:
        frame = "the propagated frame" if col < 0 else f"column {col + 1} of the propagated frame"
        if np.isfinite(measure):
            what = (f"{frame} shrank to {math.exp(measure):.3g}, where its smallest parts would "
                    "lose digits to subnormal numbers")
        else:
            what = (f"{frame} became exactly 0 (underflow, or an exactly singular step that "
                    "killed part of the frame)")
    else:
        what = (f"column {col + 1} of the propagated frame J_t ... J_1 Q lay within an angle of "
                f"sin = {measure:.3g} of the span of the columns before it, below sqrt(eps) = "
                f"{ortho_tol:.2g}: the QR would return exponent {col + 1}'s ln|R_ii| mostly as "
                "rounding error")
    if np.isfinite(gap) and np.isfinite(top):
        apart = f" and its directions separated by up to {gap:.3g} per step" if gap > 0 else ""
        rates = (f" (replayed with a QR after every step, that block grew by lambda_1 = "
                 f"{top:.3g} per step{apart})")
    else:
        rates = (" (replayed with a QR after every step, that block has an exactly singular "
                 "step: only ons_interval=1 measures it, and the exponents it kills are -inf)")
    advice = "Use ons_interval=1." if sugg == 1 else f"Use ons_interval={sugg} or less."
    return f"{head}{what}{rates}. {advice}"


def check_status(status, m, caller, dtype):
    """Raise ValueError for an ons_interval the QR loop found too long; report (numrnn.errors)
    a frame lost to inf or NaN."""
    failed = np.flatnonzero(status[:, 0] != _k.FAIL_NONE)
    for b in failed:
        if int(status[b, 0]) != _k.FAIL_NONFINITE:  # the kernel stopped there
            raise ValueError(ons_message(status[b], int(b), m, dtype))
    if failed.size:
        b = int(failed[0])
        t = int(status[b, 1])
        errors.report(
            f"{caller}: the tangent frame became NaN or inf at step t={t} of sequence b={b}, "
            f"one step after an orthonormalisation, from a finite trajectory: the step "
            f"Jacobian's product with the frame overflowed {np.dtype(dtype)} (the exponents of "
            "that sequence are NaN)")
