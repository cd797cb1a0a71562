"""The network's forward pass and vector-Jacobian product on the GPU.

The GPU twin of ``RNN._forward_pass``/``RNN._backward_pass`` and of the public ``forward`` and
``forward_vjp`` around them: the same validation, layouts and results, with every array on the
device.  numpy inputs give numpy results; device inputs (anything with
``__cuda_array_interface__``: numba, CuPy, PyTorch CUDA tensors) are used without a copy and give
numba device arrays.  The parameters stay numpy arrays on the network (the one source of truth)
and are uploaded at each call, so in-place edits of ``net.parameters`` always take effect.
"""
import math

import numpy as np

from .. import _validation as _v
from .. import cells, errors
from . import _cuda, matmul as mm, recurrence as rec
from ._cuda import cuda


@cuda.jit
def _copy2_kernel(src, dst):
    i = cuda.grid(1)
    b, n = dst.shape
    if i < b * n:
        r = i // n
        dst[r, i - r * n] = src[r, i - r * n]


def _copy2(src, dst):
    n = dst.shape[0] * dst.shape[1]
    _copy2_kernel[max(1, -(-n // 128)), 128](src, dst)


@cuda.jit
def _hypot_kernel(a, b):
    """a = hypot(a, b) elementwise (2-D): the norm of two directions' gradients together."""
    i = cuda.grid(1)
    t, n = a.shape
    if i < t * n:
        r = i // n
        a[r, i - r * n] = math.hypot(a[r, i - r * n], b[r, i - r * n])


def _zeros(shape, dtype):
    return _cuda.to_device(np.zeros(shape, dtype))


class _Arrays:
    """Moves a call's arrays to the device and its results back to where the input lived."""

    def __init__(self, net, x):
        self.net = net
        self.on_device = _cuda.is_device_array(x)

    def take(self, name, a, shapes):
        """Validate one argument (shape and dtype; host arrays also finiteness); device view."""
        net = self.net
        if _cuda.is_device_array(a):
            d = _cuda.as_device(a)
            if np.dtype(d.dtype) != net.dtype:
                raise TypeError(f"{name}: expected dtype {net.dtype} (the network's dtype), got "
                                f"{np.dtype(d.dtype)}; convert it explicitly")
            if not any(len(s) == d.ndim and all(e is None or e == g for e, g in zip(s, d.shape))
                       for s in shapes):
                want = " or ".join("(" + ", ".join("*" if e is None else str(e) for e in s) + ")"
                                   for s in shapes)
                raise ValueError(f"{name}: expected shape {want}, got {tuple(d.shape)}")
            if not d.is_c_contiguous():
                d = _cuda.to_device(d.copy_to_host())
            return d
        return _cuda.to_device(_v.check_float_array(name, a, net.dtype, shapes))

    def give(self, a):
        return a if self.on_device else a.copy_to_host()


def _params(net):
    """Every (layer, direction)'s parameters on the device, checked first (shape, dtype,
    finiteness: in-place edits of ``net.parameters`` included)."""
    checked = net._validated_parameters()
    out = []
    for layer in range(net.num_layers):
        for d in range(net.num_directions):
            w_ih, w_hh, b_ih, b_hh = net._layer_params(layer, d, checked)
            out.append((_cuda.to_device(w_ih), _cuda.to_device(w_hh),
                        None if b_ih is None else _cuda.to_device(b_ih), _cuda.to_device(b_hh)))
    return out


def _input(net, arrs, x):
    I = net.input_size
    x = arrs.take("x", x, [(None, I), (None, None, I)])
    unbatched = x.ndim == 2
    if unbatched:
        x = x.reshape(x.shape[0], 1, I)
    elif net.batch_first:
        x = mm.swap01(x)
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x: expected at least one time step and one sequence, got shape "
                         f"{tuple(x.shape)}")
    return x, unbatched


def _state(net, arrs, name, s, batch, unbatched):
    LD, N = net.num_layers * net.num_directions, net.hidden_size
    if s is None:
        return _zeros((LD, batch, N), net.dtype)
    s = arrs.take(name, s, [(LD, N) if unbatched else (LD, batch, N)])
    return s.reshape(LD, 1, N) if unbatched else s


def _split_state(net, arrs, h0, batch, unbatched):
    if net.kind == cells.KIND_LSTM:
        if h0 is None:
            h0 = (None, None)
        if not isinstance(h0, (tuple, list)) or len(h0) != 2:
            raise TypeError(f"h0: the lstm cell's state is a pair (h0, c0), got "
                            f"{type(h0).__name__}")
        return (_state(net, arrs, "h0", h0[0], batch, unbatched),
                _state(net, arrs, "c0", h0[1], batch, unbatched))
    if isinstance(h0, (tuple, list)):
        raise TypeError(f"h0: the {net.cell} cell's state is one array, got a "
                        f"{type(h0).__name__}")
    h = _state(net, arrs, "h0", h0, batch, unbatched)
    return h, _zeros(h.shape, net.dtype)


def _user_layout(net, out, unbatched):
    if unbatched:
        return out.reshape(out.shape[0], out.shape[2])
    if net.batch_first:
        return mm.swap01(out)
    return out


def _forward_pass(net, params, x, h0, c0):
    """x (T, B, I), h0/c0 (L*D, B, N) on the device. Returns output, h_n, c_n, tape."""
    T, B, _ = x.shape
    N, D, G = net.hidden_size, net.num_directions, net.gate_count
    h_n = _cuda.empty((net.num_layers * D, B, N), net.dtype)
    c_n = _zeros((net.num_layers * D, B, N), net.dtype)
    layer_in = x
    tape = []
    reported = False
    for layer in range(net.num_layers):
        out = _cuda.empty((T, B, D * N), net.dtype)
        flat_in = layer_in.reshape(T * B, layer_in.shape[2])
        records = []
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, b_ih, b_hh = params[k]
            xp = mm.matmul(flat_in, w_ih, tb=True, bias=b_ih).reshape(T, B, G * N)
            view = out if D == 1 else out[:, :, d * N:(d + 1) * N]
            out_h, out_c, aux = rec.forward(net.kind, net.act, net.alpha, xp, w_hh, b_hh, h0[k],
                                            c0[k], d == 1, out_h=view)
            if not reported:
                reported = errors.check_state(rec.first_nonfinite(out_h, d == 1), layer, d == 1)
            last = 0 if d == 1 else T - 1
            _copy2(out_h[last], h_n[k])
            if net.kind == cells.KIND_LSTM:
                _copy2(out_c[last], c_n[k])
            records.append((out_h, out_c, aux))
        tape.append((layer_in, records))
        layer_in = out
    return layer_in, h_n, c_n, tape


def _backward_pass(net, params, tape, h0, c0, d_out, d_h_n, d_c_n, truncate):
    """BPTT through every layer on the device; (grads, d_x (T, B, I), d_h0, d_c0, norm (T, B)
    float64: the last layer's ||dL/dh_t||, both directions together)."""
    N, D, G = net.hidden_size, net.num_directions, net.gate_count
    T, B = d_out.shape[:2]
    grads = {}
    d_h0 = _cuda.empty(h0.shape, net.dtype)
    d_c0 = _cuda.empty(c0.shape, net.dtype)
    norms = None
    reported = False
    for layer in reversed(range(net.num_layers)):
        layer_in, records = tape[layer]
        flat_in = layer_in.reshape(T * B, layer_in.shape[2])
        d_in = _cuda.empty((T * B, layer_in.shape[2]), net.dtype)
        for d in range(D):
            k = layer * D + d
            sfx = net._suffix(layer, d)
            w_ih, w_hh, b_ih, _ = params[k]
            out_h, out_c, aux = records[d]
            d_dir = d_out if D == 1 else d_out[:, :, d * N:(d + 1) * N]
            dxp, dhp, dh0, dc0, norm = rec.backward(
                net.kind, net.act, net.alpha, w_hh, h0[k], c0[k], out_h, out_c, aux, d_dir,
                d_h_n[k], d_c_n[k], d == 1, truncate)
            _copy2(dh0, d_h0[k])
            _copy2(dc0, d_c0[k])
            if not reported:  # the sweep of a forward direction runs backwards in time
                bad = rec.first_hits(~np.isfinite(norm.copy_to_host()), d == 0)
                reported = errors.check_gradient(bad, layer, d == 1, T, net.dtype)
            if layer == net.num_layers - 1:
                if norms is None:
                    norms = norm
                else:
                    _hypot_kernel[max(1, -(-T * B // 128)), 128](norms, norm)
            dxp2 = dxp.reshape(T * B, G * N)
            dhp2 = dhp.reshape(T * B, G * N)
            if out_h.is_c_contiguous():
                oh = out_h
            else:
                oh = mm.contiguous3(out_h)
            r = rec.recurrent_inputs(net.kind, net.act, h0[k], oh, d == 1)
            grads["weight_ih" + sfx] = mm.matmul(dxp2, flat_in, ta=True)
            grads["weight_hh" + sfx] = mm.matmul(dhp2, r.reshape(T * B, N), ta=True)
            if net.bias:
                grads["bias_ih" + sfx] = mm.colsum(dxp2)
                grads["bias_hh" + sfx] = mm.colsum(dhp2)
            mm.matmul(dxp2, w_ih, out=d_in, accumulate=d > 0)
        d_out = d_in.reshape(T, B, layer_in.shape[2])
    ordered = {name: grads[name] for name in net._shapes()}
    if not reported:  # dL/dh stayed finite: a sum over T*B terms may still overflow
        errors.check_sums([(name, g.copy_to_host()) for name, g in ordered.items()]
                          + [("input", d_out.copy_to_host()), ("h0", d_h0.copy_to_host()),
                             ("c0", d_c0.copy_to_host())], T * B, net.dtype)
    return ordered, d_out, d_h0, d_c0, norms


def _pack(net, arrs, out, h_n, c_n, unbatched):
    out = arrs.give(_user_layout(net, out, unbatched))
    if unbatched:
        LD, _, N = h_n.shape
        h_n, c_n = h_n.reshape(LD, N), c_n.reshape(LD, N)
    h_n = arrs.give(h_n)
    if net.kind == cells.KIND_LSTM:
        return out, (h_n, arrs.give(c_n))
    return out, h_n


def forward(net, x, h0=None):
    """``RNN.forward`` on the GPU (see there)."""
    _cuda.require()
    arrs = _Arrays(net, x)
    x, unbatched = _input(net, arrs, x)
    h0, c0 = _split_state(net, arrs, h0, x.shape[1], unbatched)
    out, h_n, c_n, _ = _forward_pass(net, _params(net), x, h0, c0)
    return _pack(net, arrs, out, h_n, c_n, unbatched)


def forward_vjp(net, x, d_output, h0=None, d_h_n=None, truncate=None):
    """``RNN.forward_vjp`` on the GPU (see there)."""
    _cuda.require()
    arrs = _Arrays(net, x)
    x, unbatched = _input(net, arrs, x)
    T, B = x.shape[:2]
    h0, c0 = _split_state(net, arrs, h0, B, unbatched)
    D, N, LD = net.num_directions, net.hidden_size, net.num_layers * net.num_directions
    out_shape = (T, D * N) if unbatched else ((B, T, D * N) if net.batch_first else (T, B, D * N))
    d_out = arrs.take("d_output", d_output, [out_shape])
    if unbatched:
        d_out = d_out.reshape(T, 1, D * N)
    elif net.batch_first:
        d_out = mm.swap01(d_out)
    d_h, d_c = _state_cotangent(net, arrs, d_h_n, B, unbatched)
    if truncate is not None:
        truncate = _v.check_int("truncate", truncate, 1)
    params = _params(net)
    out, h_n, c_n, tape = _forward_pass(net, params, x, h0, c0)
    grads, d_x, d_h0, d_c0, norms = _backward_pass(net, params, tape, h0, c0, d_out, d_h, d_c,
                                                   truncate)
    result = {k: arrs.give(v) for k, v in grads.items()}
    result["input"] = arrs.give(_user_layout(net, d_x, unbatched))
    result["h0"] = arrs.give(d_h0.reshape(LD, N) if unbatched else d_h0)
    if net.kind == cells.KIND_LSTM:
        result["c0"] = arrs.give(d_c0.reshape(LD, N) if unbatched else d_c0)
    result["state_grad_norm"] = arrs.give(norms.reshape(T) if unbatched else norms)
    out, h_n = _pack(net, arrs, out, h_n, c_n, unbatched)
    return out, h_n, result


def _state_cotangent(net, arrs, d_h_n, batch, unbatched):
    LD, N = net.num_layers * net.num_directions, net.hidden_size
    if d_h_n is None:
        z = _zeros((LD, batch, N), net.dtype)
        return z, z
    if net.kind == cells.KIND_LSTM:
        if not isinstance(d_h_n, (tuple, list)) or len(d_h_n) != 2:
            raise TypeError(f"d_h_n: the lstm cell's final state is a pair (h_n, c_n); expected "
                            f"a pair of cotangents, got {type(d_h_n).__name__}")
        dh, dc = d_h_n
    else:
        dh, dc = d_h_n, None
    dh = _state(net, arrs, "d_h_n", dh, batch, unbatched)
    dc = _state(net, arrs, "d_c_n", dc, batch, unbatched)
    return dh, dc
