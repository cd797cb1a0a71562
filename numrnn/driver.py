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

from . import _memory, config
from . import _validation as _v
from . import errors
from . import noise as _noise

__all__ = ["backend_of", "check_input", "split_state", "forward_pass", "backward_pass",
           "forward", "forward_pullback", "vjp", "bytes_needed", "describe", "Tape"]


_BACKENDS = {}


def backend_of(net):
    """The backend module of ``net.device``."""
    backend = _BACKENDS.get(net.device)
    if backend is None:
        if net.device == "cuda":
            from .gpu import backend
        else:
            from .cpu import backend
        _BACKENDS[net.device] = backend
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


def _detail(net, T, B):
    """'T=200 steps, B=32 sequences, N=64 units (...)': the sizes a memory error names (made
    only when needed: formatting the dtype alone costs several microseconds a call)."""
    return f"T={T} steps, B={B} sequences, {describe(net)}"


def _check_memory(net, backend, what, T, B, backward, noise=None):
    need = bytes_needed(net, T, B, backward, noise is not None)
    if need < _memory.CHECK_FROM:
        return
    backend.check_memory(what, need, _detail(net, T, B),
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
    initial states, and the parameters and options the pass ran with (on the backend).

    With checkpoints (``segment`` = k steps), ``records[layer]`` is (layer input, per direction
    the states entering each segment) instead: the pullback runs each segment forward again.
    ``noise``: the realisation the pass ran with (the pullback's re-runs draw it again)."""

    def __init__(self, layers, opts, h0, c0, records, segment=None, noise=None):
        self.layers, self.opts, self.h0, self.c0, self.records = layers, opts, h0, c0, records
        self.segment, self.noise = segment, noise


def step_block(net, backend, B):
    """Steps per block of the products over time for B sequences (None: the whole sequence,
    on a backend that does not block them): see ``numrnn.config.STEP_BLOCK_*``."""
    if not backend.STEP_BLOCK:
        return None
    n, width = config.STEP_BLOCK_MIN, net.gate_count * net.hidden_size
    while n < config.STEP_BLOCK_MAX and (n * B < config.STEP_BLOCK_ROWS
                                         or n * B * width < config.STEP_BLOCK_WORK):
        n *= 2
    return n


def step_blocks(n, t0, t1):
    """The blocks of steps covering [t0, t1) on which the products over time run: aligned to
    multiples of ``n`` (:func:`step_block`) in absolute time, so that a range aligned to them (a
    checkpoint segment) is computed with exactly the products, and bits, of the whole."""
    if n is None or t1 - t0 <= n and t0 % n == 0:
        return [(t0, t1)]
    edges = [t0] + list(range((t0 // n + 1) * n, t1, n)) + [t1]
    return list(zip(edges[:-1], edges[1:]))


def _block_rows(blocks, t0, t1, B):
    """The row edges, in a (t1 - t0) * B row product, of the step blocks ``blocks`` of [t0, t1)."""
    return [(a - t0) * B for a, _ in blocks] + [(t1 - t0) * B]


def segments(T, k, reverse):
    """The segments [t0, t1) of k steps covering [0, T) (aligned to multiples of k from t = 0),
    in the order a direction's forward pass runs them (``reverse``: last first)."""
    edges = list(range(0, T, k)) + [T]
    spans = list(zip(edges[:-1], edges[1:]))
    return spans[::-1] if reverse else spans


def _project(net, backend, layer_in, k, t0, t1, w_ih, b_x, noise):
    """The input projection (and noise) of steps [t0, t1) of layer-direction k, (t1-t0, B, GN):
    one product, run on the step blocks (each as a product of its own would be)."""
    B = layer_in.shape[1]
    blocks = step_blocks(step_block(net, backend, B), t0, t1)
    xp = backend.project(layer_in[t0:t1].reshape((t1 - t0) * B, layer_in.shape[2]), w_ih, b_x,
                         _block_rows(blocks, t0, t1, B))
    if noise is not None:  # the pre-activation's noise enters with the input
        for a, b in blocks:
            backend.add_into(xp[(a - t0) * B:(b - t0) * B],
                             backend.upload(noise.layer(k, b - a, B, net.dtype, t0=a)))
    return xp.reshape(t1 - t0, B, -1)


def forward_pass(net, backend, x, h0, c0, params=None, noise=None, segment=None,
                 keep_output=True):
    """x (T, B, I), h0/c0 (L*D, B, N) on the backend (None: the CPU's); ``params`` checked
    parameters (default ``net.checked_parameters()``); ``noise`` a :class:`numrnn.noise.Noise`
    added to every input projection.  ``segment``: keep only the states entering every
    ``segment`` steps (checkpoints) instead of every step's records; ``keep_output=False``
    (with ``segment``) does not keep the last layer's output either (returned as None).
    Returns (output (T, B, D*N), h_n, c_n, tape)."""
    backend = backend or _cpu()
    params = net.checked_parameters() if params is None else params
    layers = _layers(net, backend, params)
    opts = backend.upload(net.options_array())
    with backend.running():
        out, h_n, c_n, records = _forward_layers(net, backend, layers, opts, x, h0, c0, noise,
                                                 segment, keep_output)
    return out, h_n, c_n, Tape(layers, opts, h0, c0, records, segment, noise)


def _run_segment(net, backend, layers, opts, k, layer_in, t0, t1, h, c, noise, steps, into=None):
    """Layer-direction k forward over [t0, t1) from the state (h, c) entering it."""
    w_ih, m, b_x, b_r = layers[k]
    d = k % net.num_directions
    xp = _project(net, backend, layer_in, k, t0, t1, w_ih, b_x, noise)
    return backend.forward(net.definition, opts, xp, m, b_r, h, c, d == 1, into, d, steps=steps)


def _forward_layers(net, backend, layers, opts, x, h0, c0, noise, segment=None,
                    keep_output=True):
    T, B, _ = x.shape
    N, D = net.hidden_size, net.num_directions
    h_n = backend.empty((net.num_layers * D, B, N), net.dtype)
    c_n = backend.zeros((net.num_layers * D, B, N), net.dtype)
    layer_in = x
    records = []
    reported = False
    for layer in range(net.num_layers):
        last_layer = layer == net.num_layers - 1
        keep = segment is None or keep_output or not last_layer
        out = backend.empty((T, B, D * N), net.dtype) if (D == 2 or segment) and keep else None
        kept = []
        for d in range(D):
            k = layer * D + d
            if segment is None:  # the whole sequence, every step's records kept
                out_h, out_c, aux, bad = _run_segment(net, backend, layers, opts, k, layer_in,
                                                      0, T, h0[k], c0[k], noise, T, out)
                reported = reported or errors.check_state(bad, layer, d == 1)
                last = 0 if d == 1 else T - 1
                backend.copy(h_n[k], out_h[last])
                if net.state_count == 2:
                    backend.copy(c_n[k], out_c[last])
                kept.append((out_h, out_c, aux))
                continue
            h, c = h0[k], c0[k]
            starts = []
            first_bad = None
            for t0, t1 in segments(T, segment, d == 1):
                starts.append((t0, h, c))
                into = None if out is None else out[t0:t1]
                out_h, _, _, bad = seg = _run_segment(net, backend, layers, opts, k, layer_in,
                                                      t0, t1, h, c, noise, T, into)
                first_bad = _merge_bad(backend, first_bad, bad, t0)
                last = 0 if d == 1 else t1 - t0 - 1
                h = backend.copy_new(out_h[last])
                c = backend.copy_new(seg[1][last]) if net.state_count == 2 else c0[k]
            reported = reported or errors.check_state(first_bad, layer, d == 1)
            backend.copy(h_n[k], h)
            if net.state_count == 2:
                backend.copy(c_n[k], c)
            kept.append(starts)
        records.append((layer_in, kept))
        if segment is None:
            layer_in = kept[0][0] if D == 1 else out
        else:
            layer_in = out
    return layer_in, h_n, c_n, records


def _merge_bad(backend, first, bad, t0):
    """Per sequence, the first non-finite step over segments in running order (absolute t)."""
    bad = backend.to_host(bad) if not isinstance(bad, np.ndarray) else bad
    if bad is None:
        return first
    if first is None and t0 == 0:  # one segment, from t = 0: the kernel's own array (-1: none)
        return bad
    shifted = np.where(bad >= 0, bad + t0, -1)
    if first is None:
        return shifted
    return np.where(first >= 0, first, shifted)


def backward_pass(net, backend, tape, d_out, d_h_n, d_c_n, truncate, grad_steps=None):
    """BPTT through every layer with what the forward pass kept; returns (grads, time-major
    input gradient, d_h0, d_c0, state_grad_norm (T, B) float64, the last layer's dL/dh at
    ``grad_steps`` (n, B, D*N) or None), on the backend.  ``d_out`` None: zero cotangent of
    the outputs (a loss on the final state)."""
    with backend.running():
        return _backward_layers(net, backend, tape, d_out, d_h_n, d_c_n, truncate, grad_steps)


class _Grads:
    """The weight gradients of one layer-direction, accumulated block by block in the sweep's
    order (so that a checkpointed sweep, which meets the blocks segment by segment, adds them
    in the same order as the full one)."""

    def __init__(self, net, backend, grads, sfx, k, layers):
        cell = net.definition
        self.net, self.backend, self.cell = net, backend, cell
        self.w_ih = grads["weight_ih" + sfx]
        self.d_w = grads["weight_hh" + sfx]
        self.m = self.d_w if cell.matrix is None else backend.empty(layers[k][1].shape,
                                                                     net.dtype)
        self.b_ih = grads.get("bias_ih" + sfx)
        self.b_hh = grads.get("bias_hh" + sfx)
        self.started = False

    def _acc(self, fn, dst):
        if not self.started:
            fn(dst)
        else:
            tmp = self.backend.temporary(dst.shape, self.net.dtype)
            fn(tmp)
            self.backend.add_into(dst.reshape(dst.shape[0], -1), tmp.reshape(dst.shape[0], -1))

    def block(self, opts, dxp, dhp, layer_in, h, c, out_h, out_c, reverse):
        """Add one block's terms: dxp, dhp (n, B, GN) of the block's steps, layer_in (n, B, I)
        their input, out_h/out_c their states and (h, c) the state entering the block."""
        be, cell = self.backend, self.cell
        n, B = dxp.shape[:2]
        dxp2 = dxp.reshape(n * B, -1)
        dhp2 = dhp.reshape(n * B, -1)
        self._acc(lambda o: be.matmul_tn(dxp2, layer_in.reshape(n * B, -1), o), self.w_ih)
        self._acc(lambda o: be.recurrent_weight_grad(cell, opts, dhp, h, c, out_h, out_c,
                                                     reverse, out=o), self.m)
        if self.b_ih is not None:
            self._acc(lambda o: be.colsum(dxp2, o), self.b_ih)
            if cell.separate:
                self._acc(lambda o: be.colsum(dhp2, o), self.b_hh)
        self.started = True

    def finish(self):
        """Map the gradient of M to that of weight_hh (cells with a structured weight); b_hh's
        is b_ih's where the cell sees the projections summed (one array, summed once)."""
        if self.b_ih is not None and not self.cell.separate:
            self.backend.copy(self.b_hh, self.b_ih)
        if self.cell.matrix is not None:
            host = np.empty(self.d_w.shape, self.net.dtype)
            self.cell.weight_hh_grad(self.backend.to_host(self.m), self.net.hidden_size,
                                     self.net.cell_options, out=host)
            self.backend.store(self.d_w, host)


def _entering(out_h, out_c, la, lb, h_in, c_in, reverse, two_states):
    """The state (h, c) entering the steps [la, lb) of a segment whose records are out_h/out_c
    and whose entering state is (h_in, c_in): the one after step la - 1 (forward) or lb
    (reverse), or the segment's own where that lies outside it."""
    n = out_h.shape[0]
    t = lb if reverse else la - 1
    if not 0 <= t < n:
        return h_in, c_in
    return out_h[t], (out_c[t] if two_states else c_in)


def _sub_ranges(t0, t1, truncate, splits, reverse):
    """[a, b) pieces of the segment [t0, t1), in the sweep's order, cut at truncation chunk
    boundaries (multiples of ``truncate``: no gradient crosses them) and where the gradient is
    asked for (``splits``: cut, not zeroed)."""
    cuts = set()
    if truncate:
        cuts.update(range((t0 // truncate + 1) * truncate, t1, truncate))
    cuts.update(s for s in splits if t0 < s < t1)
    edges = [t0] + sorted(cuts) + [t1]
    spans = list(zip(edges[:-1], edges[1:]))
    return spans if reverse else spans[::-1]


def _backward_layers(net, backend, tape, d_out, d_h_n, d_c_n, truncate, grad_steps):
    N, D, cell = net.hidden_size, net.num_directions, net.definition
    T, B = tape.records[0][0].shape[:2]
    h0, c0, opts = tape.h0, tape.c0, tape.opts
    segment = tape.segment
    P2 = net.state_count == 2
    # every parameter's gradient, and those of h0 and c0, in one buffer laid out as the
    # parameters: one reduction checks them all for NaN/inf at the end
    n_params = net.parameter_count()
    buffer = backend.empty((n_params + 2 * h0.size,), net.dtype)
    grads = net.parameter_views(buffer[:n_params])
    d_h0 = buffer[n_params:n_params + h0.size].reshape(h0.shape)
    d_c0 = buffer[n_params + h0.size:].reshape(c0.shape)
    norms = backend.empty((T, B), np.float64)
    steps = [] if grad_steps is None else list(grad_steps)
    at = backend.zeros((len(steps), B, D * N), net.dtype) if steps else None
    reported = False
    zeros = backend.zeros((B, N), net.dtype)
    block = step_block(net, backend, B)
    for layer in reversed(range(net.num_layers)):
        layer_in, kept = tape.records[layer]
        top = layer == net.num_layers - 1
        # the input's gradient: the call's result for the first layer, else the cotangent of
        # the layer below's outputs, dropped after its sweep
        d_in = (backend.empty if layer == 0 else backend.temporary)(layer_in.shape, net.dtype)
        for d in range(D):
            k = layer * D + d
            rev = d == 1
            sfx = net.suffix(layer, d)
            w_ih, m, _, _ = tape.layers[k]
            acc = _Grads(net, backend, grads, sfx, k, tape.layers)
            # the splits where the last layer's dL/dh_t is asked for: forward direction, the
            # piece starting at t + 1 ends the sweep's carry at h_t; reverse, the one ending at t
            splits = ([t + 1 for t in steps] if not rev else steps) if top else []
            carry_h, carry_c = d_h_n[k], d_c_n[k]
            first_bad = None
            if segment is None:
                spans = [(0, T)]
            else:
                spans = segments(T, segment, rev)[::-1]  # the sweep runs them backwards
                starts = {t0: (h, c) for t0, h, c in kept[d]}
            if top and steps:  # dL/dh at the step where the sweep starts: d_h_n + d_out there
                _grad_at(backend, at, steps, T - 1 if not rev else 0, carry_h,
                         None if d_out is None else backend.part(d_out, d, N, D), d, N)
            for t0, t1 in spans:
                if segment is None:
                    out_h, out_c, aux = kept[d]
                    h_in, c_in = h0[k], c0[k]
                    pieces = _sub_ranges(0, T, truncate, splits, rev) if splits else None
                else:
                    h_in, c_in = starts[t0]
                    out_h, out_c, aux, _ = _run_segment(net, backend, tape.layers, opts, k,
                                                        layer_in, t0, t1, h_in, c_in,
                                                        tape.noise, T)
                    pieces = _sub_ranges(t0, t1, truncate, splits, rev)
                part = None if d_out is None else backend.part(d_out, d, N, D)
                if pieces is None:  # the whole sequence in one kernel, truncation inside it
                    dxp, dhp, dh, dc, norm, bad = backend.backward(
                        cell, opts, m, h_in, c_in, out_h, out_c, aux,
                        _cotangent(backend, part, t0, t1, B, N, net.dtype), carry_h, carry_c,
                        rev, truncate, steps=T)
                    first_bad = _merge_bad(backend, first_bad, bad, t0)
                    if top:
                        _put_norm(backend, norms, t0, norm, d > 0)
                else:
                    dxp, dhp, dh, dc, first_bad = _pieces_backward(
                        net, backend, cell, opts, m, h_in, c_in, out_h, out_c, aux, part, t0,
                        pieces, carry_h, carry_c, rev, truncate, T, first_bad, norms if top
                        else None, at, steps, d, zeros)
                carry_h, carry_c = dh, dc
                # the weight gradients, block by block in the sweep's order
                blocks = step_blocks(block, t0, t1)
                for a, b in (blocks if rev else blocks[::-1]):
                    la, lb = a - t0, b - t0
                    hb, cb = _entering(out_h, out_c, la, lb, h_in, c_in, rev, P2)
                    acc.block(opts, dxp[la:lb], dhp[la:lb], layer_in[a:b], hb, cb, out_h[la:lb],
                              out_c[la:lb] if P2 else out_c, rev)
                # the input's: one product, on the same blocks
                backend.matmul(dxp.reshape((t1 - t0) * B, -1), w_ih,
                               d_in[t0:t1].reshape((t1 - t0) * B, -1), d > 0,
                               blocks=_block_rows(blocks, t0, t1, B))
            acc.finish()
            backend.copy(d_h0[k], carry_h)
            backend.copy(d_c0[k], carry_c)
            reported = reported or errors.check_gradient(first_bad, layer, rev, T, net.dtype)
        d_out = d_in
    if not reported:  # dL/dh stayed finite: a sum over T*B terms may still overflow
        host = backend.to_host(buffer)
        d_x = backend.to_host(d_out)
        errors.check_sums((host, d_x),
                          lambda: list(net.parameter_views(host[:n_params]).items())
                          + [("input", d_x),
                             ("h0", host[n_params:n_params + h0.size].reshape(h0.shape)),
                             ("c0", host[n_params + h0.size:].reshape(c0.shape))], T * B,
                          net.dtype)
    return grads, d_out, d_h0, d_c0, norms, at


def _put_norm(backend, norms, t0, norm, combine):
    """norms[t0:t0+n] = norm, or its hypot with what is there (the second direction)."""
    view = norms[t0:t0 + norm.shape[0]]
    if combine:
        backend.hypot(view, norm)
    else:
        backend.copy(view, norm)


def _grad_at(backend, at, steps, t, carry, part, d, N):
    """Store dL/dh_t = carry + part[t] (``part``: direction d's output cotangent, or None) in
    direction d's columns, where t is asked for."""
    if t not in steps:
        return
    g = backend.copy_new(carry)
    if part is not None:
        backend.add_into(g, part[t])
    backend.copy(at[steps.index(t)][:, d * N:(d + 1) * N], g)


def _cotangent(backend, part, t0, t1, B, N, dtype):
    """The outputs' cotangent over [t0, t1) (zeros when there is none)."""
    if part is None:
        return backend.zeros((t1 - t0, B, N), dtype)
    return part[t0:t1]


def _pieces_backward(net, backend, cell, opts, m, h_in, c_in, out_h, out_c, aux, part, t0,
                     pieces, carry_h, carry_c, rev, truncate, T, first_bad, norms, at, steps, d,
                     zeros):
    """The backward sweep of one segment run piece by piece (:func:`_sub_ranges`): the carry is
    zeroed where a truncation chunk starts, and read out where dL/dh_t is asked for.  Returns the
    segment's (dxp, dhp, carry out) as one kernel over the segment would."""
    n = out_h.shape[0]
    B, N = h_in.shape
    GN = m.shape[0]
    P2 = net.state_count == 2
    dhp_all = backend.empty((n, B, GN), net.dtype)
    dxp_all = backend.empty((n, B, GN), net.dtype) if cell.separate else dhp_all
    for a, b in pieces:
        la, lb = a - t0, b - t0
        hb, cb = _entering(out_h, out_c, la, lb, h_in, c_in, rev, P2)
        dxp, dhp, dh, dc, norm, bad = backend.backward(
            cell, opts, m, hb, cb, out_h[la:lb], out_c[la:lb] if P2 else out_c, aux[la:lb],
            _cotangent(backend, part, a, b, B, N, net.dtype), carry_h, carry_c, rev, None,
            steps=T)
        first_bad = _merge_bad(backend, first_bad, bad, a)
        backend.copy(dhp_all[la:lb].reshape((b - a) * B, -1), dhp.reshape((b - a) * B, -1))
        if cell.separate:
            backend.copy(dxp_all[la:lb].reshape((b - a) * B, -1), dxp.reshape((b - a) * B, -1))
        if norms is not None:
            _put_norm(backend, norms, a, norm, d > 0)
        if at is not None:  # the state entering this piece: h_{a-1} (forward) or h_b (reverse)
            _grad_at(backend, at, steps, b if rev else a - 1, dh, part, d, N)
        boundary = b if rev else a
        if truncate and boundary % truncate == 0 and 0 < boundary < T:
            carry_h, carry_c = zeros, zeros
        else:
            carry_h, carry_c = dh, dc
    return dxp_all, dhp_all, carry_h, carry_c, first_bad


# --- the public calls ----------------------------------------------------------------------------


def _pack(net, session, backend, out, h_n, c_n, unbatched):
    out = session.give(_user_layout(net, backend, out, unbatched))
    return out, _pack_state(net, session, h_n, c_n, unbatched)


def _pack_state(net, session, h_n, c_n, unbatched):
    if unbatched:
        LD, _, N = h_n.shape
        h_n, c_n = h_n.reshape(LD, N), c_n.reshape(LD, N)
    h_n = session.give(h_n)
    return (h_n, session.give(c_n)) if net.state_count == 2 else h_n


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


def checkpointed_bytes(net, T, B, k, keep_output=True, noise=False):
    """Peak bytes of a checkpointed forward pass and its BPTT, with segments of k steps: the
    states entering every segment, one segment's records and cotangents (run again in the
    sweep), the layers' outputs between layers (and the last layer's if kept), the inputs'
    cotangents, and the gradient norms."""
    N, D, L = net.hidden_size, net.num_directions, net.num_layers
    item = net.dtype.itemsize
    between = (L - 1 + (1 if keep_output else 0)) * T * B * D * N * item
    # the input's cotangent, and between layers the one being made and the one above it
    cotangents = T * B * (net.input_size + min(L - 1, 2) * D * N) * item + T * B * 8
    return (-(-T // k)) * _checkpoint_bytes(net, B) + _segment_bytes(net, B, k, noise) \
        + between + cotangents


def _checkpoint_bytes(net, B):
    """The states entering one segment, every layer and direction."""
    return (net.num_layers * net.num_directions * B * net.state_count * net.hidden_size
            * net.dtype.itemsize)


def _segment_bytes(net, B, k, noise):
    """One segment in flight: its projection, states and aux, their cotangents (and a copy
    where the sweep runs in pieces), the outputs' cotangent and the blocks' products."""
    N, cell, item = net.hidden_size, net.definition, net.dtype.itemsize
    GN = net.gate_count * N
    per_step = B * (GN * 6 + N * (cell.state_count + cell.aux_count + cell.read_count + 2))
    return k * (per_step * item + (B * GN * (8 + item) if noise else 0))


def plan_checkpoints(net, backend, T, B, checkpoint, memory_budget, noise=False,
                     keep_output=True, caller="vjp"):
    """The segment length of a pass (None: the full tape), checked against the memory.

    ``checkpoint``: None (the full tape when it fits the memory available, else as "auto"),
    an int k (a multiple of :func:`step_block`), or "auto" (the full tape when it fits
    ``memory_budget``, else the k that needs the least memory, about sqrt(T) steps).  Raises
    MemoryError with the sizes when nothing fits, before anything is allocated."""
    block = step_block(net, backend, B) or 1
    if memory_budget is not None:
        if checkpoint is not None and checkpoint != "auto":
            raise ValueError(f"memory_budget: chooses the checkpoint interval, so it goes with "
                             f"checkpoint='auto' (or None); checkpoint={checkpoint!r} fixes it "
                             "and the budget would be ignored")
        memory_budget = _v.check_int("memory_budget", memory_budget, 1)
    if checkpoint is not None and checkpoint != "auto":
        if isinstance(checkpoint, str) or not isinstance(checkpoint, (int, np.integer)) \
                or isinstance(checkpoint, (bool, np.bool_)):
            raise TypeError(f"checkpoint: expected None, 'auto' or a number of steps, got "
                            f"{checkpoint!r}")
    if checkpoint is not None and not backend.CHECKPOINTS:
        raise ValueError(f"checkpoint: checkpointed BPTT runs on the CPU backend only, not on "
                         f"device={net.device!r}; expected None, got {checkpoint!r}")
    full = bytes_needed(net, T, B, backward=True, noise=noise)
    if isinstance(checkpoint, (int, np.integer)):
        k = _v.check_int("checkpoint", checkpoint, 1)
        if k % block:
            raise ValueError(f"checkpoint: expected a multiple of {block} steps (the blocks of "
                             f"the products over time for B={B} sequences of G*N="
                             f"{net.gate_count * net.hidden_size}, which a segment must not "
                             f"split), got "
                             f"{k}; {max(block, k // block * block)} or "
                             f"{-(-k // block) * block} would do")
        need = checkpointed_bytes(net, T, B, k, keep_output, noise)
        backend.check_memory(f"{caller}: the checkpoints and one segment of {k} steps", need,
                             _detail(net, T, B), None)
        return k
    budget = memory_budget
    if budget is None and full >= _memory.CHECK_FROM:  # below, reading /proc costs more
        budget = _memory.available_bytes() if config.MEMORY_CHECK else None
    if budget is None or full <= budget or not backend.CHECKPOINTS:
        # the full tape: it fits (or checkpoints cannot run here, and the usual check says so)
        _check_memory(net, backend, f"{caller}: the BPTT tape", T, B, backward=True,
                      noise=noise or None)
        return None
    k = auto_interval(net, backend, T, B, noise)
    need = checkpointed_bytes(net, T, B, k, keep_output, noise)
    if need > budget:
        raise MemoryError(
            f"{caller}: even checkpointed BPTT (the state every {k} steps, one segment of {k} "
            f"steps run again at a time) for {_detail(net, T, B)} needs "
            f"{_memory.format_bytes(need)}, "
            f"above the budget of {_memory.format_bytes(budget)} (the full tape would need "
            f"{_memory.format_bytes(full)}); use fewer sequences at a time or a shorter run")
    return k


def auto_interval(net, backend, T, B, noise=False):
    """The checkpoint interval that needs the least memory: T/k states against one segment of
    k steps, k = sqrt(T * state / step) rounded to the backend's step blocks."""
    block = step_block(net, backend, B) or 1
    per_step = _segment_bytes(net, B, 1, noise)
    k = int(round((T * _checkpoint_bytes(net, B) / per_step) ** 0.5 / block)) * block
    return min(max(block, k), -(-T // block) * block)


def forward_pullback(net, x, h0=None, noise_std=0.0, seed=None, checkpoint=None,
                     memory_budget=None, keep_output=True, snapshot=True):
    """``RNN.forward_pullback`` (see there): one forward pass keeping its tape (or its
    checkpoints) on the backend, and the pullback that runs BPTT on it.

    ``snapshot=False``: the tape reads the network's own parameters, not a copy, for a caller
    that runs the pullback before anything can change them (``vjp`` and ``forward_vjp``: no
    code of the user's runs in between).  The copy is a pass over every parameter: 0.19 ms for
    a float64 tanh network of N = 512 (4 MiB) and 2.4 ms for an LSTM (16 MiB) in a loop of
    copies on the 2-core Zen 3 VM, more in a call whose caches hold its other arrays."""
    backend = backend_of(net)
    session = backend.session(net.dtype, x)
    x, unbatched = check_input(net, x, backend, session)
    T, B = x.shape[:2]
    h0, c0 = split_state(net, h0, B, unbatched, backend, session)
    noise = _noise.make(net, noise_std, seed, seed_required=True)
    params = net.checked_parameters(snapshot=snapshot)
    segment = plan_checkpoints(net, backend, T, B, checkpoint, memory_budget,
                               noise is not None, keep_output,
                               caller="forward_vjp" if keep_output else "vjp")
    out, h_n, c_n, tape = forward_pass(net, backend, x, h0, c0, params, noise, segment,
                                       keep_output or segment is None)
    D, N = net.num_directions, net.hidden_size
    out_shape = (T, D * N) if unbatched else ((B, T, D * N) if net.batch_first
                                              else (T, B, D * N))

    def pullback(d_output, d_h_n=None, truncate=None, grad_steps=None):
        if d_output is None:
            d_out = None
        else:
            d_out = session.take("d_output", d_output, [out_shape])
            if unbatched:
                d_out = d_out.reshape(T, 1, D * N)
            elif net.batch_first:
                d_out = backend.swap01(d_out)
        d_h, d_c = _state_cotangent(net, backend, session, d_h_n, B, unbatched)
        if truncate is not None:
            truncate = _v.check_int("truncate", truncate, 1)
        steps = _check_grad_steps(grad_steps, T)
        grads, d_x, d_h0, d_c0, norms, at = backward_pass(net, backend, tape, d_out, d_h, d_c,
                                                          truncate, steps)
        LD = net.num_layers * D
        result = {name: session.give(g) for name, g in grads.items()}
        result["input"] = session.give(_user_layout(net, backend, d_x, unbatched))
        result["h0"] = session.give(d_h0.reshape(LD, N) if unbatched else d_h0)
        if net.state_count == 2:  # the second state's (LSTM's c0, coRNN's z0)
            result["c0"] = session.give(d_c0.reshape(LD, N) if unbatched else d_c0)
        result["state_grad_norm"] = session.give(norms.reshape(T) if unbatched else norms)
        if steps is not None:
            result["state_grad"] = session.give(at.reshape(len(steps), D * N) if unbatched
                                                else at)
        return result

    if out is None:  # not kept (vjp without the outputs)
        return None, _pack_state(net, session, h_n, c_n, unbatched), pullback
    out, h_n = _pack(net, session, backend, out, h_n, c_n, unbatched)
    return out, h_n, pullback


def vjp(net, x, d_output, h0, d_h_n, truncate, noise_std, seed, checkpoint, memory_budget,
        grad_steps, keep_output):
    """``RNN.vjp`` (``keep_output=False``) and ``RNN.forward_vjp``: :func:`forward_pullback`
    without a snapshot of the parameters (no code of the user's runs between the passes) and
    its pullback, in one ``running()`` block.  Returns (output or None, h_n, grads)."""
    with backend_of(net).running():
        out, h_n, pullback = forward_pullback(net, x, h0, noise_std, seed, checkpoint,
                                              memory_budget, keep_output, snapshot=False)
        return out, h_n, pullback(d_output, d_h_n, truncate, grad_steps)


def _check_grad_steps(grad_steps, T):
    """The time steps where dL/dh is asked for, as a list of distinct ints in [0, T)."""
    if grad_steps is None:
        return None
    steps = np.asarray(grad_steps)
    if steps.ndim != 1 or steps.size == 0 or not np.issubdtype(steps.dtype, np.integer):
        raise ValueError(f"grad_steps: expected a non-empty 1-D sequence of time steps, got "
                         f"{grad_steps!r}")
    if steps.min() < 0 or steps.max() >= T:
        raise ValueError(f"grad_steps: expected steps in [0, T) = [0, {T}), got "
                         f"{steps.min()}..{steps.max()}")
    if np.unique(steps).size != steps.size:
        raise ValueError("grad_steps: expected distinct steps, got repeats")
    return [int(t) for t in steps]
