"""Slow, explicit pure-NumPy reference for the recurrent networks of numrnn.

This module is the independent check for the fast kernels: it must never import
``numrnn``.  Everything is float64 and written with plain Python loops over
layers, directions, time steps and batch elements, with one dense
matrix-vector product per term, so each line can be read against the equations.
It keeps its own list of cells, parameter shapes, nonlinearities and options
(``CELLS``, ``param_shapes``, ``NONLINEARITIES``, ``OPTIONS``):
tests/test_reference.py checks that it covers every cell numrnn registers.

Conventions (PyTorch's):

* parameters: ``weight_ih_l{k}{s}`` (G*N, I_k), ``weight_hh_l{k}{s}`` (G*N, N),
  ``bias_ih_l{k}{s}`` and ``bias_hh_l{k}{s}`` (G*N,), with ``s`` = "" for the
  forward direction and "_reverse" for the backward one; biases may be absent
  (bias=False) and then count as zero.  I_0 = input size, I_k = D*N for k > 0.
  Exceptions to the shape of ``weight_hh``: "indrnn" (N,) (the vector u),
  "cornn" (N, 2N) (the blocks [W | W_z]).
* G = 1 for "tanh", "relu", "linear", "rate", "indrnn", "antisymmetric",
  "cornn"; 4 for "lstm" (rows i, f, g, o); 3 for "gru" (rows r, z, n);
  2 for "mgu" (rows f, n) and "ugrnn" (rows c, g).
* x (T, B, I) time major; h0/c0 and h_n/c_n (L*D, B, N) ordered layer0-fwd,
  layer0-rev, layer1-fwd, ...; output (T, B, D*N) = [fwd, rev] of the last layer.
  The cells of ``PAIRED`` ("lstm", "cornn") have a second state c: LSTM's cell
  state, coRNN's velocity z (its h is the position y); c0, c_n, d_c_n and the
  gradient "c0" exist for them only.
* The reverse direction processes t = T-1 down to 0; its output at time t sits
  at index t and its final state is the one after processing t = 0.

Cells (a = alpha; x_k, h_k are the k-th N-row blocks of W_ih x + b_ih and
W_hh h + b_hh; sig the logistic function):

* Elman ("tanh", "relu", "linear"):
  h' = (1-a) h + a phi(W_ih x + b_ih + W_hh h + b_hh)
* "rate":  h' = (1-a) h + a (W_hh phi(h) + b_hh + W_ih x + b_ih),
  phi = tanh or relu (``nonlinearity``)
* "lstm", "gru": exactly torch.nn.LSTM / torch.nn.GRU.
* "mgu": f = sig(x_f + h_f); n = tanh(x_n + f h_n); h' = (1-f) h + f n.
* "ugrnn": c = tanh(x_c + h_c); g = sig(x_g + h_g); h' = g h + (1-g) c.
* "indrnn": h' = phi(W_ih x + b_ih + u * h + b_hh), u = weight_hh (N,),
  phi = relu (default) or tanh.
* "antisymmetric": h' = h + eps phi((W - W^T - gamma I) h + W_ih x + b_ih + b_hh),
  W = weight_hh, phi = tanh (default), relu or linear; options epsilon (0.01,
  > 0) and gamma (0.01, >= 0).
* "cornn": z' = z + dt (tanh(W y + W_z z + W_ih x + b_ih + b_hh) - gamma y - eps z),
  y' = y + dt z'; state (y, z), output y; options dt (0.042, > 0), gamma (2.7)
  and epsilon (4.7).

alpha (default 1) is the leak of the cells of ``LEAKY`` and must be 1 for the
others; ``nonlinearity`` (default None: the cell's default) is phi of the cells
of ``NONLINEARITIES`` and must be None for the others (an Elman cell also
accepts its own name); ``cell_options`` (default None: ``OPTIONS``) sets the
options of "antisymmetric" and "cornn".

Truncated BPTT (``truncate=k``): the time axis is cut into chunks [0,k),
[k,2k), ...; the recurrent state crossing a chunk boundary is a constant for
the gradient (forward direction: the state entering step t with t % k == 0,
t > 0; reverse direction: the state entering step t from step t+1 with
(t+1) % k == 0, t+1 < T); for the cells of ``PAIRED`` both states are.
Gradient between layers is never truncated and the initial states are not
constants.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "CELLS",
    "GATES",
    "LEAKY",
    "PAIRED",
    "NONLINEARITIES",
    "OPTIONS",
    "ref_forward",
    "ref_vjp",
    "ref_loss",
    "param_names",
    "param_shapes",
    "init_params",
]

ELMAN_CELLS = ("tanh", "relu", "linear")
CELLS = ("tanh", "relu", "linear", "rate", "lstm", "gru", "mgu", "ugrnn", "indrnn",
         "antisymmetric", "cornn")
GATES = {"tanh": 1, "relu": 1, "linear": 1, "rate": 1, "lstm": 4, "gru": 3, "mgu": 2,
         "ugrnn": 2, "indrnn": 1, "antisymmetric": 1, "cornn": 1}
#: cells with a leak alpha
LEAKY = ("tanh", "relu", "linear", "rate")
#: cells whose state is a pair (h, c): LSTM's (h, c), coRNN's (y, z)
PAIRED = ("lstm", "cornn")
#: cell -> the nonlinearities it accepts, its default first
NONLINEARITIES = {"rate": ("tanh", "relu"), "indrnn": ("relu", "tanh"),
                  "antisymmetric": ("tanh", "relu", "linear")}
#: cell -> its options and their defaults
OPTIONS = {"antisymmetric": {"epsilon": 0.01, "gamma": 0.01},
           "cornn": {"dt": 0.042, "gamma": 2.7, "epsilon": 4.7}}
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
    """dict name -> shape, PyTorch's conventions (weight_hh: (N,) for "indrnn",
    (N, 2N) for "cornn")."""
    _check_cell(cell)
    G, N, D = GATES[cell], hidden_size, 2 if bidirectional else 1
    shapes = {}
    for k in range(num_layers):
        I_k = input_size if k == 0 else D * N
        for s in SUFFIXES[:D]:
            shapes[f"weight_ih_l{k}{s}"] = (G * N, I_k)
            shapes[f"weight_hh_l{k}{s}"] = _weight_hh_shape(cell, G, N)
            if bias:
                shapes[f"bias_ih_l{k}{s}"] = (G * N,)
                shapes[f"bias_hh_l{k}{s}"] = (G * N,)
    return shapes


def _weight_hh_shape(cell, G, N):
    if cell == "indrnn":
        return (N,)
    if cell == "cornn":
        return (N, 2 * N)
    return (G * N, N)


def init_params(rng, cell, input_size, hidden_size, num_layers=1, bidirectional=False,
                bias=True, scale=0.5):
    """random parameters ~ U(-scale, scale), float64, with PyTorch names."""
    shapes = param_shapes(cell, input_size, hidden_size, num_layers, bidirectional, bias)
    return {name: rng.uniform(-scale, scale, size=shape) for name, shape in shapes.items()}


def _check_cell(cell):
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")


def _resolve(cell, alpha, nonlinearity, cell_options):
    """(phi, options dict) of a call, checked against the reference's own rules."""
    _check_cell(cell)
    if not (0.0 < alpha <= 1.0):
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if cell not in LEAKY and alpha != 1.0:
        raise ValueError(f"alpha must be 1 for cell {cell!r}, got {alpha}")
    if cell in NONLINEARITIES:
        choices = NONLINEARITIES[cell]
        phi = choices[0] if nonlinearity is None else nonlinearity
        if phi not in choices:
            raise ValueError(f"nonlinearity of {cell!r} must be one of {choices}, got "
                             f"{nonlinearity!r}")
    elif nonlinearity is None or (cell in ELMAN_CELLS and nonlinearity == cell):
        phi = cell if cell in ELMAN_CELLS else None
    else:
        raise ValueError(f"cell {cell!r} takes no nonlinearity, got {nonlinearity!r}")
    defaults = OPTIONS.get(cell, {})
    given = {} if cell_options is None else dict(cell_options)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"cell {cell!r} has no option(s) {unknown}")
    opts = dict(defaults)
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating,
                                                             np.integer)):
            raise TypeError(f"option {key!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"option {key!r} must be finite, got {value!r}")
        opts[key] = float(value)
    if cell == "antisymmetric" and not (opts["epsilon"] > 0.0 and opts["gamma"] >= 0.0):
        raise ValueError(f"antisymmetric needs epsilon > 0 and gamma >= 0, got {opts}")
    if cell == "cornn" and not opts["dt"] > 0.0:
        raise ValueError(f"cornn needs dt > 0, got {opts['dt']}")
    return phi, opts


def _check_args(cell, params, x, hidden_size, num_layers, bidirectional, alpha, nonlinearity,
                cell_options):
    """checked x (float64), phi and the options dict."""
    phi, opts = _resolve(cell, alpha, nonlinearity, cell_options)
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
    return x, phi, opts


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

def _antisymmetric_matrix(W_hh, gamma):
    """M = W - W^T - gamma I, the recurrent matrix of the antisymmetric cell."""
    return W_hh - W_hh.T - gamma * np.eye(W_hh.shape[0])


def _step(cell, W, x, h, c, alpha, phi, opts):
    """one step for one batch element (vectors).  Returns (h_new, c_new, cache);
    c is the second state of the PAIRED cells (None for the others)."""
    W_ih, W_hh, b_ih, b_hh = W
    N = h.shape[0]
    if cell in ELMAN_CELLS:
        z = W_ih @ x + b_ih + W_hh @ h + b_hh
        h_new = (1.0 - alpha) * h + alpha * _phi(cell, z)
        return h_new, None, dict(x=x, h=h, z=z)
    if cell == "rate":
        p = _phi(phi, h)
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
    if cell == "mgu":
        gi = W_ih @ x + b_ih  # input side, rows f, n
        gh = W_hh @ h + b_hh  # hidden side, rows f, n
        f = _sigmoid(gi[0:N] + gh[0:N])
        hn = gh[N:2 * N]
        n = np.tanh(gi[N:2 * N] + f * hn)
        h_new = (1.0 - f) * h + f * n
        return h_new, None, dict(x=x, h=h, f=f, n=n, hn=hn)
    if cell == "ugrnn":
        a = W_ih @ x + b_ih + W_hh @ h + b_hh  # rows c, g
        cc = np.tanh(a[0:N])
        g = _sigmoid(a[N:2 * N])
        h_new = g * h + (1.0 - g) * cc
        return h_new, None, dict(x=x, h=h, c=cc, g=g)
    if cell == "indrnn":
        z = W_ih @ x + b_ih + W_hh * h + b_hh  # W_hh is the vector u
        return _phi(phi, z), None, dict(x=x, h=h, z=z)
    if cell == "antisymmetric":
        M = _antisymmetric_matrix(W_hh, opts["gamma"])
        z = M @ h + W_ih @ x + b_ih + b_hh
        h_new = h + opts["epsilon"] * _phi(phi, z)
        return h_new, None, dict(x=x, h=h, z=z, M=M)
    if cell == "cornn":
        dt, gamma, eps = opts["dt"], opts["gamma"], opts["epsilon"]
        y, zv = h, c  # position and velocity
        u = W_hh[:, :N] @ y + W_hh[:, N:] @ zv + W_ih @ x + b_ih + b_hh
        s = np.tanh(u)
        z_new = zv + dt * (s - gamma * y - eps * zv)
        y_new = y + dt * z_new
        return y_new, z_new, dict(x=x, h=y, c=zv, s=s)
    raise ValueError(cell)


def _step_back(cell, W, cache, dh_new, dc_new, alpha, phi, opts, g):
    """backward of _step for one batch element.

    dh_new, dc_new: total gradient w.r.t. the new state (dc_new None unless PAIRED).
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
        dh = (1.0 - alpha) * dh_new + _dphi(phi, h) * (W_hh.T @ du)
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
    if cell == "mgu":
        f, n, hn = cache["f"], cache["n"], cache["hn"]
        dn = dh_new * f
        df = dh_new * (n - h)
        dh = dh_new * (1.0 - f)
        dan = dn * (1.0 - n * n)          # gradient of the n pre-activation x_n + f h_n
        df = df + dan * hn                 # f enters n's pre-activation too
        dhn = dan * f                      # gradient of W_hn h + b_hn
        daf = df * f * (1.0 - f)
        dgi = np.concatenate([daf, dan])
        dgh = np.concatenate([daf, dhn])
        g["W_ih"] += np.outer(dgi, x)
        g["W_hh"] += np.outer(dgh, h)
        g["b_ih"] += dgi
        g["b_hh"] += dgh
        dx = W_ih.T @ dgi
        dh = dh + W_hh.T @ dgh
        return dx, dh, None
    if cell == "ugrnn":
        cc, gg = cache["c"], cache["g"]
        dcc = dh_new * (1.0 - gg)
        dgg = dh_new * (h - cc)
        dh = dh_new * gg
        da = np.concatenate([dcc * (1.0 - cc * cc), dgg * gg * (1.0 - gg)])
        g["W_ih"] += np.outer(da, x)
        g["W_hh"] += np.outer(da, h)
        g["b_ih"] += da
        g["b_hh"] += da
        dx = W_ih.T @ da
        dh = dh + W_hh.T @ da
        return dx, dh, None
    if cell == "indrnn":
        dz = _dphi(phi, cache["z"]) * dh_new
        g["W_ih"] += np.outer(dz, x)
        g["W_hh"] += dz * h                # u is a vector: elementwise
        g["b_ih"] += dz
        g["b_hh"] += dz
        dx = W_ih.T @ dz
        dh = W_hh * dz
        return dx, dh, None
    if cell == "antisymmetric":
        dz = opts["epsilon"] * _dphi(phi, cache["z"]) * dh_new
        dM = np.outer(dz, h)
        g["W_ih"] += np.outer(dz, x)
        g["W_hh"] += dM - dM.T             # M = W - W^T - gamma I
        g["b_ih"] += dz
        g["b_hh"] += dz
        dx = W_ih.T @ dz
        dh = dh_new + cache["M"].T @ dz
        return dx, dh, None
    if cell == "cornn":
        dt, gamma, eps = opts["dt"], opts["gamma"], opts["epsilon"]
        N = h.shape[0]
        y, zv, s = h, cache["c"], cache["s"]
        dz_tot = dc_new + dt * dh_new      # z' enters y' = y + dt z'
        du = dz_tot * dt * (1.0 - s * s)
        g["W_ih"] += np.outer(du, x)
        g["W_hh"] += np.outer(du, np.concatenate([y, zv]))
        g["b_ih"] += du
        g["b_hh"] += du
        dx = W_ih.T @ du
        dy = dh_new - dz_tot * dt * gamma + W_hh[:, :N].T @ du
        dzv = dz_tot * (1.0 - dt * eps) + W_hh[:, N:].T @ du
        return dx, dy, dzv
    raise ValueError(cell)


# ----------------------------------------------------------------------------
# forward over layers, directions, time, batch
# ----------------------------------------------------------------------------

def _forward(cell, params, x, h0, c0, hidden_size, num_layers, bidirectional, alpha,
             nonlinearity, cell_options, state_in=None, state_out=None):
    x, phi, opts = _check_args(cell, params, x, hidden_size, num_layers, bidirectional, alpha,
                               nonlinearity, cell_options)
    T, B, _ = x.shape
    N, L, D = hidden_size, num_layers, 2 if bidirectional else 1
    paired = cell in PAIRED
    h0 = _state(h0, (L * D, B, N), "h0")
    c0 = _state(c0, (L * D, B, N), "c0") if paired else None

    h_n = np.zeros((L * D, B, N))
    c_n = np.zeros((L * D, B, N)) if paired else None
    tape = {}  # (k, d) -> {t: [cache per batch element]}
    layer_in = x
    for k in range(L):
        layer_out = np.zeros((T, B, D * N))
        for d in range(D):
            W = _weights(params, k, d)
            h = h0[k * D + d].copy()
            c = c0[k * D + d].copy() if paired else None
            caches = {}
            for t in _processing_order(T, d):
                if state_in is not None:
                    h, c = state_in(k, d, t, h, c)
                h_new = np.zeros((B, N))
                c_new = np.zeros((B, N)) if paired else None
                caches[t] = []
                for b in range(B):
                    hb, cb, cache = _step(cell, W, layer_in[t, b], h[b],
                                          c[b] if paired else None, alpha, phi, opts)
                    h_new[b] = hb
                    if paired:
                        c_new[b] = cb
                    caches[t].append(cache)
                if state_out is not None:
                    h_new, c_new = state_out(k, d, t, h_new, c_new)
                layer_out[t, :, d * N:(d + 1) * N] = h_new
                h, c = h_new, c_new
            h_n[k * D + d] = h
            if paired:
                c_n[k * D + d] = c
            tape[(k, d)] = caches
        layer_in = layer_out
    return layer_in, h_n, c_n, tape, (phi, opts)


def ref_forward(cell, params, x, h0=None, c0=None, *, hidden_size, num_layers=1,
                bidirectional=False, alpha=1.0, nonlinearity=None, cell_options=None,
                state_in=None, state_out=None):
    """Run the network.  Returns (output, h_n, c_n); c_n is None unless cell is PAIRED.

    h0/c0 None means zeros.  ``state_in`` / ``state_out`` are test hooks,
    ``f(layer, direction, t, h, c) -> (h, c)`` with h, c of shape (B, N)
    (c None unless PAIRED): ``state_in`` may replace the state entering step t,
    ``state_out`` may replace the state produced by step t (before it is
    written to the output and carried on).
    """
    out, h_n, c_n, _, _ = _forward(cell, params, x, h0, c0, hidden_size, num_layers,
                                   bidirectional, alpha, nonlinearity, cell_options, state_in,
                                   state_out)
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
            hidden_size, num_layers=1, bidirectional=False, alpha=1.0, nonlinearity=None,
            cell_options=None, truncate=None):
    """Gradient of L = sum(output*d_output) + sum(h_n*d_h_n) + sum(c_n*d_c_n).

    Returns a dict: each parameter name -> gradient (same shape), "input" ->
    (T, B, I), "h0" -> (L*D, B, N), "c0" (PAIRED cells only) -> (L*D, B, N),
    "state_grad_norm" -> (T, B): norm of dL/dh_t of the last layer (both
    directions together; h only for the PAIRED cells, coRNN's y), as
    (truncated) BPTT computes it.
    """
    if truncate is not None and (int(truncate) != truncate or truncate < 1):
        raise ValueError(f"truncate must be None or a positive integer, got {truncate!r}")
    out, _, _, tape, (phi, opts) = _forward(cell, params, x, h0, c0, hidden_size, num_layers,
                                            bidirectional, alpha, nonlinearity, cell_options)
    x = np.asarray(x, dtype=np.float64)
    T, B, I = x.shape
    N, L, D = hidden_size, num_layers, 2 if bidirectional else 1
    paired = cell in PAIRED
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
                                              dc_total[b] if paired else None,
                                              alpha, phi, opts, g)
                    d_layer_in[t, b] += dx
                    dh_prev[b] = dhp
                    if paired:
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
    if paired:
        grads["c0"] = d_c0
    grads["state_grad_norm"] = np.sqrt(sq_norm)
    return grads
