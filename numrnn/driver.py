"""The layer loop of a network, written once for both backends.

Validation of a call's inputs and states, the layout (batch_first, unbatched), the loop over
layers and directions forward and backward, and the packing of results live here; what differs
between the CPU and the GPU (where arrays live, the kernels, the matrix products) is a *backend*,
:mod:`numrnn.cpu.backend` or :mod:`numrnn.gpu.backend`, modules with the same functions and
signatures.  :class:`numrnn.RNN` calls :func:`forward` and :func:`forward_pullback`; the analysis
calls :func:`check_input`, :func:`split_state` and :func:`forward_pass` on the CPU backend.

Data flow of one (layer, direction): the input projection of all T steps is one matrix product
(``backend.project``), the recurrence runs in a compiled kernel (``backend.forward``), and in the
backward pass the sweep (``backend.backward``) is followed by the weight gradients, one matrix
product each.  The forward pass returns a :class:`Tape` that the pullback keeps: BPTT never runs
the forward pass again.
"""
import numpy as np

from . import _memory
from . import _validation as _v
from . import errors
from . import noise as _noise

__all__ = ["backend_of", "check_input", "split_state", "forward_pass", "backward_pass",
           "forward", "forward_pullback", "bytes_needed", "describe", "Tape"]


def backend_of(net):
    """The backend module of ``net.device``."""
    if net.device == "cuda":
        from .gpu import backend
    else:
        from .cpu import backend
    return backend


# --- inputs and states ---------------------------------------------------------------------------


def _cpu():
    from .cpu import backend

    return backend


def check_input(net, x, backend=None, session=None):
    """Validate x; return (x as (T, B, I) time-major on the backend (default: the CPU's),
    unbatched flag)."""
    backend = backend or _cpu()
    session = session or backend.session(net.dtype, x)
    I = net.input_size
    x = session.take("x", x, [(None, I), (None, None, I)])
    unbatched = x.ndim == 2
    if unbatched:
        x = x.reshape(x.shape[0], 1, I)
    elif net.batch_first:
        x = backend.swap01(x)
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x: expected at least one time step and one sequence, got shape "
                         f"{tuple(x.shape) if not unbatched else (x.shape[0], I)}")
    return x, unbatched


def _state(net, backend, session, label, s, batch, unbatched):
    LD, N = net.num_layers * net.num_directions, net.hidden_size
    if s is None:
        return backend.zeros((LD, batch, N), net.dtype)
    s = session.take(label, s, [(LD, N) if unbatched else (LD, batch, N)])
    return s.reshape(LD, 1, N) if unbatched else s


def split_state(net, h0, batch, unbatched, backend=None, session=None):
    """(h0, c0), each (L*D, B, N) on the backend (default: the CPU's): the initial states
    checked (zeros where not given; c0 is zeros for one-state cells and is not read)."""
    backend = backend or _cpu()
    session = session or backend.session(net.dtype, h0)
    if net.state_count == 2:
        if h0 is None:
            h0 = (None, None)
        if not isinstance(h0, (tuple, list)) or len(h0) != 2:
            a, b = net.definition.states
            raise TypeError(f"h0: the {net.cell} cell's state is a pair ({a}0, {b}0), got "
                            f"{type(h0).__name__}")
        return (_state(net, backend, session, "h0", h0[0], batch, unbatched),
                _state(net, backend, session, "c0", h0[1], batch, unbatched))
    if isinstance(h0, (tuple, list)):
        raise TypeError(f"h0: the {net.cell} cell's state is one array, got a "
                        f"{type(h0).__name__}")
    h = _state(net, backend, session, "h0", h0, batch, unbatched)
    return h, backend.zeros(h.shape, net.dtype)


def _state_cotangent(net, backend, session, d_h_n, batch, unbatched):
    LD, N = net.num_layers * net.num_directions, net.hidden_size
    if d_h_n is None:
        zeros = backend.zeros((LD, batch, N), net.dtype)
        return zeros, zeros
    if net.state_count == 2:
        if not isinstance(d_h_n, (tuple, list)) or len(d_h_n) != 2:
            a, b = net.definition.states
            raise TypeError(f"d_h_n: the {net.cell} cell's final state is a pair ({a}_n, "
                            f"{b}_n); expected a pair of cotangents, got "
                            f"{type(d_h_n).__name__}")
        dh, dc = d_h_n
    else:
        dh, dc = d_h_n, None
    return (_state(net, backend, session, "d_h_n", dh, batch, unbatched),
            _state(net, backend, session, "d_c_n", dc, batch, unbatched))


def _user_layout(net, backend, out, unbatched):
    if unbatched:
        return out.reshape(out.shape[0], out.shape[2])
    if net.batch_first:
        return backend.swap01(out)
    return out


# --- memory ------------------------------------------------------------------------------------


def bytes_needed(net, T, B, backward, noise=False):
    """Peak bytes a forward pass (``backward``: keeping the tape, then BPTT) allocates (with
    ``noise``: and one layer's noise, drawn in float64)."""
    N, D, L = net.hidden_size, net.num_directions, net.num_layers
    cell = net.definition
    GN = net.gate_count * N
    record = N * (cell.state_count + cell.aux_count)  # the states and aux of every step
    concat = D * N if D == 2 else 0  # a bidirectional layer's output is a concatenated copy
    widest_in = max(net.input_size, D * N)
    if backward:  # every layer's records stay, then the sweep's cotangents
        kept = L * (D * record + concat)
        extra = (GN * (2 if cell.separate else 1) + cell.read_count * N + N + 2 * widest_in + 1)
    else:  # one layer's records, its input and the projection in flight
        kept = D * record + concat + D * N
        extra = GN
    noise_bytes = T * B * GN * (8 + net.dtype.itemsize) if noise else 0
    return T * B * (kept + extra) * net.dtype.itemsize + noise_bytes


def describe(net):
    """'N=64 units (lstm, 2 layers, float32)': what a memory error names."""
    layers = f"{net.num_layers} layer{'s' if net.num_layers > 1 else ''}"
    return (f"N={net.hidden_size} units ({net.cell}, {layers}"
            f"{', bidirectional' if net.bidirectional else ''}, {net.dtype})")


def _check_memory(net, backend, what, T, B, backward, noise=None):
    need = bytes_needed(net, T, B, backward, noise is not None)
    if need < _memory.CHECK_FROM:
        return
    backend.check_memory(what, need, f"T={T} steps, B={B} sequences, {describe(net)}",
                         _memory.steps_that_fit(T, need, "run the sequence in shorter pieces "
                                                         "(each continues from the previous h_n)"))


# --- the passes --------------------------------------------------------------------------------


def _layers(net, backend, params):
    """Per (layer, direction): (W_ih, M, b_x, b_r) where the kernels read them.  A cell that
    sees only x + h gets b_ih added once per step with b_hh (b_x None, b_r = b_hh + b_ih); one
    that sees the projections apart gets b_ih in its input projection."""
    out = []
    for layer in range(net.num_layers):
        for d in range(net.num_directions):
            w_ih, m, b_ih, b_hh = net.layer_params(layer, d, params)
            if b_ih is not None and not net.definition.separate:
                b_ih, b_hh = None, b_hh + b_ih
            out.append(tuple(None if a is None else backend.upload(a)
                             for a in (w_ih, m, b_ih, b_hh)))
    return out


class Tape:
    """What BPTT needs of a forward pass: every layer's input and records (states, aux), the
    initial states, and the parameters and options the pass ran with (on the backend)."""

    def __init__(self, layers, opts, h0, c0, records):
        self.layers, self.opts, self.h0, self.c0, self.records = layers, opts, h0, c0, records


def forward_pass(net, backend, x, h0, c0, params=None, noise=None):
    """x (T, B, I), h0/c0 (L*D, B, N) on the backend (None: the CPU's); ``params`` checked
    parameters (default ``net.checked_parameters()``); ``noise`` a :class:`numrnn.noise.Noise`
    added to every input projection.  Returns (output (T, B, D*N), h_n, c_n, tape)."""
    backend = backend or _cpu()
    params = net.checked_parameters() if params is None else params
    layers = _layers(net, backend, params)
    opts = backend.upload(net.options_array())
    with backend.running():
        out, h_n, c_n, records = _forward_layers(net, backend, layers, opts, x, h0, c0, noise)
    return out, h_n, c_n, Tape(layers, opts, h0, c0, records)


def _forward_layers(net, backend, layers, opts, x, h0, c0, noise):
    T, B, _ = x.shape
    N, D, cell = net.hidden_size, net.num_directions, net.definition
    h_n = backend.empty((net.num_layers * D, B, N), net.dtype)
    c_n = backend.zeros((net.num_layers * D, B, N), net.dtype)
    layer_in = x
    records = []
    reported = False
    for layer in range(net.num_layers):
        flat_in = layer_in.reshape(T * B, layer_in.shape[2])
        out = backend.empty((T, B, D * N), net.dtype) if D == 2 else None
        kept = []
        for d in range(D):
            k = layer * D + d
            w_ih, m, b_x, b_r = layers[k]
            xp = backend.project(flat_in, w_ih, b_x)
            if noise is not None:  # the pre-activation's noise enters with the input
                backend.add_into(xp, backend.upload(noise.layer(k, T, B, net.dtype)))
            xp = xp.reshape(T, B, -1)
            out_h, out_c, aux, bad = backend.forward(cell, opts, xp, m, b_r, h0[k], c0[k],
                                                     d == 1, out, d)
            reported = reported or errors.check_state(bad, layer, d == 1)
            last = 0 if d == 1 else T - 1
            backend.copy(h_n[k], out_h[last])
            if net.state_count == 2:
                backend.copy(c_n[k], out_c[last])
            kept.append((out_h, out_c, aux))
        records.append((layer_in, kept))
        layer_in = kept[0][0] if D == 1 else out
    return layer_in, h_n, c_n, records


def backward_pass(net, backend, tape, d_out, d_h_n, d_c_n, truncate):
    """BPTT through every layer with what the forward pass kept; returns (grads, time-major
    input gradient, d_h0, d_c0, state_grad_norm (T, B) float64), on the backend."""
    with backend.running():
        return _backward_layers(net, backend, tape, d_out, d_h_n, d_c_n, truncate)


def _backward_layers(net, backend, tape, d_out, d_h_n, d_c_n, truncate):
    N, D, G, cell = net.hidden_size, net.num_directions, net.gate_count, net.definition
    T, B = d_out.shape[:2]
    h0, c0, opts = tape.h0, tape.c0, tape.opts
    # every parameter's gradient, and those of h0 and c0, in one buffer laid out as the
    # parameters: one reduction checks them all for NaN/inf at the end
    n_params = net.parameter_count()
    buffer = backend.empty((n_params + 2 * h0.size,), net.dtype)
    grads = net.parameter_views(buffer[:n_params])
    d_h0 = buffer[n_params:n_params + h0.size].reshape(h0.shape)
    d_c0 = buffer[n_params + h0.size:].reshape(c0.shape)
    norms = None
    reported = False
    for layer in reversed(range(net.num_layers)):
        layer_in, kept = tape.records[layer]
        flat_in = layer_in.reshape(T * B, layer_in.shape[2])
        d_in = None
        for d in range(D):
            k = layer * D + d
            sfx = net.suffix(layer, d)
            w_ih, m, _, _ = tape.layers[k]
            out_h, out_c, aux = kept[d]
            dxp, dhp, dh0, dc0, norm, bad = backend.backward(
                cell, opts, m, h0[k], c0[k], out_h, out_c, aux, backend.part(d_out, d, N, D),
                d_h_n[k], d_c_n[k], d == 1, truncate)
            backend.copy(d_h0[k], dh0)
            backend.copy(d_c0[k], dc0)
            reported = reported or errors.check_gradient(bad, layer, d == 1, T, net.dtype)
            if layer == net.num_layers - 1:  # the last layer's dL/dh_t, both directions
                norms = norm if norms is None else backend.hypot(norms, norm)
            dxp2 = dxp.reshape(T * B, G * N)
            dhp2 = dhp.reshape(T * B, G * N)
            backend.matmul_tn(dxp2, flat_in, grads["weight_ih" + sfx])
            d_w = grads["weight_hh" + sfx]
            if cell.matrix is None:
                backend.recurrent_weight_grad(cell, opts, dhp, h0[k], c0[k], out_h, out_c,
                                              d == 1, out=d_w)
            else:  # weight_hh maps to M on the host: so does its gradient
                d_m = backend.recurrent_weight_grad(cell, opts, dhp, h0[k], c0[k], out_h,
                                                    out_c, d == 1)
                host = np.empty(d_w.shape, net.dtype)
                cell.weight_hh_grad(backend.to_host(d_m), N, net.cell_options, out=host)
                backend.store(d_w, host)
            if net.bias:
                backend.colsum(dxp2, grads["bias_ih" + sfx])
                if dhp is dxp:  # one array for summed projections: sum it once
                    backend.copy(grads["bias_hh" + sfx], grads["bias_ih" + sfx])
                else:
                    backend.colsum(dhp2, grads["bias_hh" + sfx])
            d_in = backend.matmul(dxp2, w_ih, d_in, d > 0)
        d_out = d_in.reshape(T, B, -1)
    if not reported:  # dL/dh stayed finite: a sum over T*B terms may still overflow
        host = backend.to_host(buffer)
        host_grads = net.parameter_views(host[:n_params])
        d_x = backend.to_host(d_out)
        errors.check_sums(list(host_grads.items())
                          + [("input", d_x),
                             ("h0", host[n_params:n_params + h0.size].reshape(h0.shape)),
                             ("c0", host[n_params + h0.size:].reshape(c0.shape))], T * B,
                          net.dtype,
                          together=(host, d_x))
    return grads, d_out, d_h0, d_c0, norms


# --- the public calls ----------------------------------------------------------------------------


def _pack(net, session, backend, out, h_n, c_n, unbatched):
    out = session.give(_user_layout(net, backend, out, unbatched))
    if unbatched:
        LD, _, N = h_n.shape
        h_n, c_n = h_n.reshape(LD, N), c_n.reshape(LD, N)
    h_n = session.give(h_n)
    return out, ((h_n, session.give(c_n)) if net.state_count == 2 else h_n)


def forward(net, x, h0=None, noise_std=0.0, seed=None):
    """``RNN.forward`` (see there) on the network's backend."""
    backend = backend_of(net)
    session = backend.session(net.dtype, x)
    x, unbatched = check_input(net, x, backend, session)
    h0, c0 = split_state(net, h0, x.shape[1], unbatched, backend, session)
    noise = _noise.make(net, noise_std, seed, seed_required=True)
    params = net.checked_parameters()
    _check_memory(net, backend, "forward", x.shape[0], x.shape[1], backward=False, noise=noise)
    out, h_n, c_n, _ = forward_pass(net, backend, x, h0, c0, params, noise)
    return _pack(net, session, backend, out, h_n, c_n, unbatched)


def forward_pullback(net, x, h0=None, noise_std=0.0, seed=None):
    """``RNN.forward_pullback`` (see there): one forward pass keeping its tape on the backend,
    and the pullback that runs BPTT on it."""
    backend = backend_of(net)
    session = backend.session(net.dtype, x)
    x, unbatched = check_input(net, x, backend, session)
    T, B = x.shape[:2]
    h0, c0 = split_state(net, h0, B, unbatched, backend, session)
    noise = _noise.make(net, noise_std, seed, seed_required=True)
    params = net.checked_parameters(snapshot=True)
    _check_memory(net, backend, "forward_vjp: the BPTT tape", T, B, backward=True, noise=noise)
    out, h_n, c_n, tape = forward_pass(net, backend, x, h0, c0, params, noise)
    D, N = net.num_directions, net.hidden_size
    out_shape = (T, D * N) if unbatched else ((B, T, D * N) if net.batch_first
                                              else (T, B, D * N))

    def pullback(d_output, d_h_n=None, truncate=None):
        d_out = session.take("d_output", d_output, [out_shape])
        if unbatched:
            d_out = d_out.reshape(T, 1, D * N)
        elif net.batch_first:
            d_out = backend.swap01(d_out)
        d_h, d_c = _state_cotangent(net, backend, session, d_h_n, B, unbatched)
        if truncate is not None:
            truncate = _v.check_int("truncate", truncate, 1)
        grads, d_x, d_h0, d_c0, norms = backward_pass(net, backend, tape, d_out, d_h, d_c,
                                                      truncate)
        LD = net.num_layers * D
        result = {name: session.give(g) for name, g in grads.items()}
        result["input"] = session.give(_user_layout(net, backend, d_x, unbatched))
        result["h0"] = session.give(d_h0.reshape(LD, N) if unbatched else d_h0)
        if net.state_count == 2:  # the second state's (LSTM's c0, coRNN's z0)
            result["c0"] = session.give(d_c0.reshape(LD, N) if unbatched else d_c0)
        result["state_grad_norm"] = session.give(norms.reshape(T) if unbatched else norms)
        return result

    out, h_n = _pack(net, session, backend, out, h_n, c_n, unbatched)
    return out, h_n, pullback
