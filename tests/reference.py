"""Slow, explicit pure-NumPy reference for the recurrent networks of numrnn.

This module is the independent check for the fast kernels: it must never import
``numrnn``.  Everything is float64 and written with plain Python loops over
layers, directions, time steps and batch elements, with one dense
matrix-vector product per term, so each line can be read against the equations.

Conventions (PyTorch's):

* parameters: ``weight_ih_l{k}{s}`` (G*N, I_k), ``weight_hh_l{k}{s}`` (G*N, N),
  ``bias_ih_l{k}{s}`` and ``bias_hh_l{k}{s}`` (G*N,), with ``s`` = "" for the
  forward direction and "_reverse" for the backward one; biases may be absent
  (bias=False) and then count as zero.  I_0 = input size, I_k = D*N for k > 0.
* G = 1 for "tanh", "relu", "linear", "rate"; 4 for "lstm" (rows i, f, g, o);
  3 for "gru" (rows r, z, n).
* x (T, B, I) time major; h0/c0 and h_n/c_n (L*D, B, N) ordered layer0-fwd,
  layer0-rev, layer1-fwd, ...; output (T, B, D*N) = [fwd, rev] of the last layer.
* The reverse direction processes t = T-1 down to 0; its output at time t sits
  at index t and its final state is the one after processing t = 0.

Cells (a = alpha):

* Elman ("tanh", "relu", "linear"):
  h' = (1-a) h + a phi(W_ih x + b_ih + W_hh h + b_hh)
* "rate":  h' = (1-a) h + a (W_hh phi(h) + b_hh + W_ih x + b_ih),
  phi = tanh or relu (``nonlinearity``)
* "lstm", "gru": exactly torch.nn.LSTM / torch.nn.GRU (alpha must be 1).

Truncated BPTT (``truncate=k``): the time axis is cut into chunks [0,k),
[k,2k), ...; the recurrent state crossing a chunk boundary is a constant for
the gradient (forward direction: the state entering step t with t % k == 0,
t > 0; reverse direction: the state entering step t from step t+1 with
(t+1) % k == 0, t+1 < T).  Gradient between layers is never truncated and the
initial states are not constants.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CELLS",
    "GATES",
    "ref_forward",
    "ref_vjp",
    "ref_loss",
    "param_names",
    "param_shapes",
    "init_params",
]

ELMAN_CELLS = ("tanh", "relu", "linear")
CELLS = ("tanh", "relu", "linear", "rate", "lstm", "gru")
GATES = {"tanh": 1, "relu": 1, "linear": 1, "rate": 1, "lstm": 4, "gru": 3}
SUFFIXES = ("", "_reverse")


# ----------------------------------------------------------------------------
# scalar nonlinearities (elementwise on vectors)
# ----------------------------------------------------------------------------

def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _phi(name, z):
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.where(z > 0.0, z, 0.0)
    if name == "linear":
        return z.copy()
    raise ValueError(f"unknown nonlinearity {name!r}")


def _dphi(name, z):
    """derivative of _phi(name, .) at z."""
    if name == "tanh":
        t = np.tanh(z)
        return 1.0 - t * t
    if name == "relu":
        return np.where(z > 0.0, 1.0, 0.0)
    if name == "linear":
        return np.ones_like(z)
    raise ValueError(f"unknown nonlinearity {name!r}")


# ----------------------------------------------------------------------------
# parameter bookkeeping
# ----------------------------------------------------------------------------

def param_names(num_layers=1, bidirectional=False, bias=True):
    """PyTorch parameter names in PyTorch's order."""
    names = []
    for k in range(num_layers):
        for s in SUFFIXES[: 2 if bidirectional else 1]:
            names += [f"weight_ih_l{k}{s}", f"weight_hh_l{k}{s}"]
            if bias:
                names += [f"bias_ih_l{k}{s}", f"bias_hh_l{k}{s}"]
    return names


def param_shapes(cell, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True):
    """dict name -> shape, PyTorch's conventions."""
    G, N, D = GATES[cell], hidden_size, 2 if bidirectional else 1
    shapes = {}
    for k in range(num_layers):
        I_k = input_size if k == 0 else D * N
        for s in SUFFIXES[:D]:
            shapes[f"weight_ih_l{k}{s}"] = (G * N, I_k)
            shapes[f"weight_hh_l{k}{s}"] = (G * N, N)
            if bias:
                shapes[f"bias_ih_l{k}{s}"] = (G * N,)
                shapes[f"bias_hh_l{k}{s}"] = (G * N,)
    return shapes


def init_params(rng, cell, input_size, hidden_size, num_layers=1, bidirectional=False,
                bias=True, scale=0.5):
    """random parameters ~ U(-scale, scale), float64, with PyTorch names."""
    shapes = param_shapes(cell, input_size, hidden_size, num_layers, bidirectional, bias)
    return {name: rng.uniform(-scale, scale, size=shape) for name, shape in shapes.items()}


def _check_args(cell, params, x, hidden_size, num_layers, bidirectional, alpha, nonlinearity):
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")
    if cell in ("lstm", "gru") and alpha != 1.0:
        raise ValueError(f"alpha must be 1 for cell {cell!r}, got {alpha}")
    if not (0.0 < alpha <= 1.0):
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if cell == "rate" and nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (T, B, I), got {x.shape}")
    bias = "bias_ih_l0" in params
    expected = param_shapes(cell, x.shape[2], hidden_size, num_layers, bidirectional, bias)
    if set(params) != set(expected):
        raise ValueError(f"parameter names {sorted(params)} != expected {sorted(expected)}")
    for name, shape in expected.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"{name} has shape {np.shape(params[name])}, expected {shape}")
    return x


def _weights(params, k, d):
    """(W_ih, W_hh, b_ih, b_hh) of layer k, direction d, biases zero if absent."""
    s = SUFFIXES[d]
    W_ih = np.asarray(params[f"weight_ih_l{k}{s}"], dtype=np.float64)
    W_hh = np.asarray(params[f"weight_hh_l{k}{s}"], dtype=np.float64)
    rows = W_ih.shape[0]
    if f"bias_ih_l{k}{s}" in params:
        b_ih = np.asarray(params[f"bias_ih_l{k}{s}"], dtype=np.float64)
        b_hh = np.asarray(params[f"bias_hh_l{k}{s}"], dtype=np.float64)
    else:
        b_ih = np.zeros(rows)
        b_hh = np.zeros(rows)
    return W_ih, W_hh, b_ih, b_hh


def _state(s, shape, name):
    if s is None:
        return np.zeros(shape)
    s = np.asarray(s, dtype=np.float64)
    if s.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {s.shape}")
    return s


def _processing_order(T, d):
    """time indices in the order direction d visits them."""
    return list(range(T)) if d == 0 else list(range(T - 1, -1, -1))


def _is_initial_step(t, T, d):
    """does step t of direction d consume the initial state h0?"""
    return t == 0 if d == 0 else t == T - 1


def _is_cut(t, T, d, truncate):
    """is the state entering step t (not the initial one) a constant under truncation?"""
    if truncate is None:
        return False
    if d == 0:
        return t > 0 and t % truncate == 0
    return t + 1 < T and (t + 1) % truncate == 0


# ----------------------------------------------------------------------------
# one time step, one batch element: forward and backward
# ----------------------------------------------------------------------------

def _step(cell, W, x, h, c, alpha, nonlinearity):
    """one step for one batch element (vectors).  Returns (h_new, c_new, cache)."""
    W_ih, W_hh, b_ih, b_hh = W
    N = h.shape[0]
    if cell in ELMAN_CELLS:
        z = W_ih @ x + b_ih + W_hh @ h + b_hh
        h_new = (1.0 - alpha) * h + alpha * _phi(cell, z)
        return h_new, None, dict(x=x, h=h, z=z)
    if cell == "rate":
        p = _phi(nonlinearity, h)
        u = W_hh @ p + b_hh + W_ih @ x + b_ih
        h_new = (1.0 - alpha) * h + alpha * u
        return h_new, None, dict(x=x, h=h, p=p)
    if cell == "lstm":
        a = W_ih @ x + b_ih + W_hh @ h + b_hh
        i = _sigmoid(a[0:N])
        f = _sigmoid(a[N:2 * N])
        g = np.tanh(a[2 * N:3 * N])
        o = _sigmoid(a[3 * N:4 * N])
        c_new = f * c + i * g
        tc = np.tanh(c_new)
        h_new = o * tc
        return h_new, c_new, dict(x=x, h=h, c=c, i=i, f=f, g=g, o=o, tc=tc)
    if cell == "gru":
        gi = W_ih @ x + b_ih  # input side, rows r, z, n
        gh = W_hh @ h + b_hh  # hidden side, rows r, z, n
        r = _sigmoid(gi[0:N] + gh[0:N])
        zg = _sigmoid(gi[N:2 * N] + gh[N:2 * N])
        hn = gh[2 * N:3 * N]
        n = np.tanh(gi[2 * N:3 * N] + r * hn)
        h_new = (1.0 - zg) * n + zg * h
        return h_new, None, dict(x=x, h=h, r=r, z=zg, n=n, hn=hn)
    raise ValueError(cell)


def _step_back(cell, W, cache, dh_new, dc_new, alpha, nonlinearity, g):
    """backward of _step for one batch element.

    dh_new, dc_new: total gradient w.r.t. the new state (dc_new None unless lstm).
    g: dict with keys "W_ih", "W_hh", "b_ih", "b_hh"; gradients are added to it.
    Returns (dx, dh, dc): gradients w.r.t. the step's input and previous state.
    """
    W_ih, W_hh, _, _ = W
    x, h = cache["x"], cache["h"]
    if cell in ELMAN_CELLS:
        dz = alpha * _dphi(cell, cache["z"]) * dh_new
        g["W_ih"] += np.outer(dz, x)
        g["W_hh"] += np.outer(dz, h)
        g["b_ih"] += dz
        g["b_hh"] += dz
        dx = W_ih.T @ dz
        dh = (1.0 - alpha) * dh_new + W_hh.T @ dz
        return dx, dh, None
    if cell == "rate":
        du = alpha * dh_new
        g["W_ih"] += np.outer(du, x)
        g["W_hh"] += np.outer(du, cache["p"])
        g["b_ih"] += du
        g["b_hh"] += du
        dx = W_ih.T @ du
        dh = (1.0 - alpha) * dh_new + _dphi(nonlinearity, h) * (W_hh.T @ du)
        return dx, dh, None
    if cell == "lstm":
        i, f, gg, o, tc, c = cache["i"], cache["f"], cache["g"], cache["o"], cache["tc"], cache["c"]
        do = dh_new * tc
        dc_tot = dc_new + dh_new * o * (1.0 - tc * tc)
        di = dc_tot * gg
        df = dc_tot * c
        dgg = dc_tot * i
        dc = dc_tot * f
        da = np.concatenate([
            di * i * (1.0 - i),
            df * f * (1.0 - f),
            dgg * (1.0 - gg * gg),
            do * o * (1.0 - o),
        ])
        g["W_ih"] += np.outer(da, x)
        g["W_hh"] += np.outer(da, h)
        g["b_ih"] += da
        g["b_hh"] += da
        dx = W_ih.T @ da
        dh = W_hh.T @ da
        return dx, dh, dc
    if cell == "gru":
        r, zg, n, hn = cache["r"], cache["z"], cache["n"], cache["hn"]
        dn = dh_new * (1.0 - zg)
        dz = dh_new * (h - n)
        dh = dh_new * zg
        dan = dn * (1.0 - n * n)          # gradient of the n pre-activation
        dr = dan * hn
        dhn = dan * r                      # gradient of W_hn h + b_hn
        dar = dr * r * (1.0 - r)
        daz = dz * zg * (1.0 - zg)
        dgi = np.concatenate([dar, daz, dan])
        dgh = np.concatenate([dar, daz, dhn])
        g["W_ih"] += np.outer(dgi, x)
        g["W_hh"] += np.outer(dgh, h)
        g["b_ih"] += dgi
        g["b_hh"] += dgh
        dx = W_ih.T @ dgi
        dh = dh + W_hh.T @ dgh
        return dx, dh, None
    raise ValueError(cell)


# ----------------------------------------------------------------------------
# forward over layers, directions, time, batch
# ----------------------------------------------------------------------------

def _forward(cell, params, x, h0, c0, hidden_size, num_layers, bidirectional, alpha,
             nonlinearity, state_in=None, state_out=None):
    x = _check_args(cell, params, x, hidden_size, num_layers, bidirectional, alpha, nonlinearity)
    T, B, _ = x.shape
    N, L, D = hidden_size, num_layers, 2 if bidirectional else 1
    is_lstm = cell == "lstm"
    h0 = _state(h0, (L * D, B, N), "h0")
    c0 = _state(c0, (L * D, B, N), "c0") if is_lstm else None

    h_n = np.zeros((L * D, B, N))
    c_n = np.zeros((L * D, B, N)) if is_lstm else None
    tape = {}  # (k, d) -> {t: [cache per batch element]}
    layer_in = x
    for k in range(L):
        layer_out = np.zeros((T, B, D * N))
        for d in range(D):
            W = _weights(params, k, d)
            h = h0[k * D + d].copy()
            c = c0[k * D + d].copy() if is_lstm else None
            caches = {}
            for t in _processing_order(T, d):
                if state_in is not None:
                    h, c = state_in(k, d, t, h, c)
                h_new = np.zeros((B, N))
                c_new = np.zeros((B, N)) if is_lstm else None
                caches[t] = []
                for b in range(B):
                    hb, cb, cache = _step(cell, W, layer_in[t, b], h[b],
                                          c[b] if is_lstm else None, alpha, nonlinearity)
                    h_new[b] = hb
                    if is_lstm:
                        c_new[b] = cb
                    caches[t].append(cache)
                if state_out is not None:
                    h_new, c_new = state_out(k, d, t, h_new, c_new)
                layer_out[t, :, d * N:(d + 1) * N] = h_new
                h, c = h_new, c_new
            h_n[k * D + d] = h
            if is_lstm:
                c_n[k * D + d] = c
            tape[(k, d)] = caches
        layer_in = layer_out
    return layer_in, h_n, c_n, tape


def ref_forward(cell, params, x, h0=None, c0=None, *, hidden_size, num_layers=1,
                bidirectional=False, alpha=1.0, nonlinearity="tanh",
                state_in=None, state_out=None):
    """Run the network.  Returns (output, h_n, c_n); c_n is None unless cell == 'lstm'.

    h0/c0 None means zeros.  ``state_in`` / ``state_out`` are test hooks,
    ``f(layer, direction, t, h, c) -> (h, c)`` with h, c of shape (B, N)
    (c None unless lstm): ``state_in`` may replace the state entering step t,
    ``state_out`` may replace the state produced by step t (before it is
    written to the output and carried on).
    """
    out, h_n, c_n, _ = _forward(cell, params, x, h0, c0, hidden_size, num_layers,
                                bidirectional, alpha, nonlinearity, state_in, state_out)
    return out, h_n, c_n


def ref_loss(cell, params, x, d_output, h0=None, c0=None, d_h_n=None, d_c_n=None, **kw):
    """L = sum(output*d_output) + sum(h_n*d_h_n) + sum(c_n*d_c_n) (missing terms 0)."""
    out, h_n, c_n = ref_forward(cell, params, x, h0, c0, **kw)
    L = 0.0
    if d_output is not None:
        L += float(np.sum(out * d_output))
    if d_h_n is not None:
        L += float(np.sum(h_n * d_h_n))
    if d_c_n is not None and c_n is not None:
        L += float(np.sum(c_n * d_c_n))
    return L


# ----------------------------------------------------------------------------
# backward (manual chain rule, optionally truncated)
# ----------------------------------------------------------------------------

def ref_vjp(cell, params, x, d_output, h0=None, c0=None, d_h_n=None, d_c_n=None, *,
            hidden_size, num_layers=1, bidirectional=False, alpha=1.0, nonlinearity="tanh",
            truncate=None):
    """Gradient of L = sum(output*d_output) + sum(h_n*d_h_n) + sum(c_n*d_c_n).

    Returns a dict: each parameter name -> gradient (same shape), "input" ->
    (T, B, I), "h0" -> (L*D, B, N), "c0" (lstm only) -> (L*D, B, N),
    "state_grad_norm" -> (T, B): norm of dL/dh_t of the last layer (both
    directions together), as (truncated) BPTT computes it.
    """
    if truncate is not None and (int(truncate) != truncate or truncate < 1):
        raise ValueError(f"truncate must be None or a positive integer, got {truncate!r}")
    out, _, _, tape = _forward(cell, params, x, h0, c0, hidden_size, num_layers,
                               bidirectional, alpha, nonlinearity)
    x = np.asarray(x, dtype=np.float64)
    T, B, I = x.shape
    N, L, D = hidden_size, num_layers, 2 if bidirectional else 1
    is_lstm = cell == "lstm"
    d_output = _state(d_output, out.shape, "d_output")
    d_h_n = _state(d_h_n, (L * D, B, N), "d_h_n")
    d_c_n = _state(d_c_n, (L * D, B, N), "d_c_n")

    grads = {name: np.zeros(np.shape(p)) for name, p in params.items()}
    d_h0 = np.zeros((L * D, B, N))
    d_c0 = np.zeros((L * D, B, N))
    sq_norm = np.zeros((T, B))

    d_layer_out = d_output  # gradient w.r.t. the current layer's output (T, B, D*N)
    for k in range(L - 1, -1, -1):
        I_k = I if k == 0 else D * N
        d_layer_in = np.zeros((T, B, I_k))
        for d in range(D):
            s = SUFFIXES[d]
            W = _weights(params, k, d)
            G = W[0].shape[0]
            g = {"W_ih": np.zeros_like(W[0]), "W_hh": np.zeros_like(W[1]),
                 "b_ih": np.zeros(G), "b_hh": np.zeros(G)}
            dh_carry = d_h_n[k * D + d].copy()  # gradient reaching the state after the current step from later steps
            dc_carry = d_c_n[k * D + d].copy()
            for t in reversed(_processing_order(T, d)):
                dh_total = d_layer_out[t, :, d * N:(d + 1) * N] + dh_carry
                dc_total = dc_carry
                if k == L - 1:
                    for b in range(B):
                        sq_norm[t, b] += float(dh_total[b] @ dh_total[b])
                dh_prev = np.zeros((B, N))
                dc_prev = np.zeros((B, N))
                for b in range(B):
                    dx, dhp, dcp = _step_back(cell, W, tape[(k, d)][t][b], dh_total[b],
                                              dc_total[b] if is_lstm else None,
                                              alpha, nonlinearity, g)
                    d_layer_in[t, b] += dx
                    dh_prev[b] = dhp
                    if is_lstm:
                        dc_prev[b] = dcp
                if _is_initial_step(t, T, d):
                    d_h0[k * D + d] = dh_prev
                    d_c0[k * D + d] = dc_prev
                elif _is_cut(t, T, d, truncate):
                    dh_carry = np.zeros((B, N))
                    dc_carry = np.zeros((B, N))
                else:
                    dh_carry = dh_prev
                    dc_carry = dc_prev
            grads[f"weight_ih_l{k}{s}"] += g["W_ih"]
            grads[f"weight_hh_l{k}{s}"] += g["W_hh"]
            if f"bias_ih_l{k}{s}" in grads:
                grads[f"bias_ih_l{k}{s}"] += g["b_ih"]
                grads[f"bias_hh_l{k}{s}"] += g["b_hh"]
        d_layer_out = d_layer_in

    grads["input"] = d_layer_out
    grads["h0"] = d_h0
    if is_lstm:
        grads["c0"] = d_c0
    grads["state_grad_norm"] = np.sqrt(sq_norm)
    return grads
