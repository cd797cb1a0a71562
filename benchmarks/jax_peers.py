"""JAX twins of numrnn's built-in cells, the peer of issue 16 in the CPU benchmarks.

The cells tanh, relu, lstm and gru written in ``jax.numpy`` as a competent JAX user would write
them, with PyTorch's conventions (those of ``numrnn.RNN.state_dict()``):

- parameters ``weight_ih_l0`` (G*N, I), ``weight_hh_l0`` (G*N, N), ``bias_ih_l0`` and
  ``bias_hh_l0`` (G*N,); one layer, one direction, h0 = 0 (and c0 = 0), input (T, B, I)
  time-major;
- tanh/relu: h' = (1 - a) h + a phi(W_ih x + b_ih + W_hh h + b_hh), a = the cell's ``alpha``
  option (1 by default, PyTorch's cell);
- LSTM, gates i, f, g, o: c' = sigma(f) c + sigma(i) tanh(g), h' = sigma(o) tanh(c');
- GRU, gates r, z, n: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) n + z h.

The input projection of every step is one matrix product before the ``lax.scan`` over time.
What is built here (each function jitted, compiled on its first call):

- :func:`make_forward`: ``(params, x) -> (output (T, B, N), final state)``;
- :func:`make_forward_vjp`: ``(params, x, d_out) -> (output, d_params, d_x)``, the cotangents
  of every weight and of the input for L = sum(output * d_out) (``jax.vjp``);
- :func:`make_jacobians`: the step Jacobians J_t = d s_t / d s_{t-1} of one sequence (B = 1)
  along its trajectory, rows new state, columns old state, s = h, or [h, c] for LSTM: the layout
  of ``numrnn.jacobians``.  ``jax.vmap`` of ``jax.jacfwd`` of the one-step map over the T steps,
  after the forward ``lax.scan`` that gives the states;
- :func:`make_lyapunov`: Benettin's QR loop for the autonomous (zero input) tanh network: one
  ``lax.scan`` over the steps carrying h and the frame Q (S, k): h_t = tanh(W_hh h_{t-1} + b),
  Q <- qr(diag(1 - h_t^2) W_hh Q) (with a leak a: (1 - a) Q + a diag(1 - y_t^2) W_hh Q),
  ln|diag R| averaged over the steps after the transient: what ``numrnn.lyapunov_spectrum``
  computes with ``ons_interval=1``.  :func:`make_lyapunov_along` runs the same QR steps along a
  given trajectory (the check of the QR loop against numrnn's on the same states),
  :func:`make_autonomous_states` its trajectory alone, and :func:`lyapunov_start` draws
  numrnn's initial state and frame for a seed.

Importing this module turns on ``jax_enable_x64`` (it must be set before any JAX array is made):
float64 networks run in float64, and float32 arrays stay float32 (every array is made from a
NumPy array of the network's dtype; Python scalars are weakly typed).
"""
import functools

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402  (after the x64 switch)
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

__all__ = ["CELLS", "GATES", "parameters", "cell_options", "make_forward", "make_forward_vjp",
           "make_jacobians", "make_lyapunov", "make_lyapunov_along", "make_autonomous_states",
           "lyapunov_start",
           "state_size"]

CELLS = ("tanh", "relu", "lstm", "gru")
GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}
NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
version = jax.__version__


def cell_options(net):
    """(cell name, alpha) of a one-layer unidirectional ``numrnn.RNN`` with a cell JAX has here.

    Raises ValueError for anything else: the twins cover exactly these networks."""
    if net.cell not in CELLS:
        raise ValueError(f"net: the JAX peers cover the cells {CELLS}, got {net.cell!r}")
    if net.num_layers != 1 or net.bidirectional:
        raise ValueError("net: the JAX peers cover one layer in one direction, got "
                         f"num_layers={net.num_layers}, bidirectional={net.bidirectional}")
    alpha = float(net.cell_options.get("alpha", 1.0)) if net.cell in ("tanh", "relu") else 1.0
    return net.cell, alpha


def parameters(net):
    """``net.state_dict()`` as JAX arrays of the network's dtype, PyTorch's names; zero biases
    for a network built with ``bias=False``."""
    sd = net.state_dict()
    GN = sd["weight_hh_l0"].shape[0]
    out = {}
    for name in NAMES:
        value = sd.get(name, np.zeros(GN, net.dtype))
        out[name] = jnp.asarray(np.ascontiguousarray(value, dtype=net.dtype))
    return out


def state_size(cell, N):
    return 2 * N if cell == "lstm" else N


def _step(cell, alpha):
    """One step ``(params, state, xp_t) -> new state``, for any leading (batch) shape.

    ``xp_t`` is the hoisted input projection W_ih x_t + b_ih; the state is h, or (h, c)."""
    def recurrent(p, h):
        return h @ p["weight_hh_l0"].T + p["bias_hh_l0"]

    if cell in ("tanh", "relu"):
        phi = jnp.tanh if cell == "tanh" else jax.nn.relu

        def step(p, h, xp):
            y = phi(xp + recurrent(p, h))
            return y if alpha == 1.0 else (1.0 - alpha) * h + alpha * y
    elif cell == "lstm":
        def step(p, state, xp):
            h, c = state
            i, f, g, o = jnp.split(xp + recurrent(p, h), 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            return jax.nn.sigmoid(o) * jnp.tanh(c), c
    elif cell == "gru":
        def step(p, h, xp):
            x_r, x_z, x_n = jnp.split(xp, 3, axis=-1)
            h_r, h_z, h_n = jnp.split(recurrent(p, h), 3, axis=-1)
            r = jax.nn.sigmoid(x_r + h_r)
            z = jax.nn.sigmoid(x_z + h_z)
            n = jnp.tanh(x_n + r * h_n)
            return (1.0 - z) * n + z * h
    else:
        raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
    return step


def _hidden(cell, state):
    return state[0] if cell == "lstm" else state


def _zero_state(cell, p, lead):
    h = jnp.zeros(lead + (p["weight_hh_l0"].shape[1],), p["weight_hh_l0"].dtype)
    return (h, h) if cell == "lstm" else h


def _project(p, x):
    """W_ih x_t + b_ih for every step at once: (T, ..., I) -> (T, ..., G*N), one product."""
    return x @ p["weight_ih_l0"].T + p["bias_ih_l0"]


def _forward(cell, alpha, p, x):
    step = _step(cell, alpha)

    def body(state, xp):
        state = step(p, state, xp)
        return state, _hidden(cell, state)

    final, out = lax.scan(body, _zero_state(cell, p, x.shape[1:-1]), _project(p, x))
    return out, final


@functools.lru_cache(maxsize=None)
def make_forward(cell, alpha=1.0):
    """Jitted ``(params, x (T, B, I)) -> (output (T, B, N), final state)`` (h_n, or (h_n, c_n))."""
    return jax.jit(functools.partial(_forward, cell, alpha))


@functools.lru_cache(maxsize=None)
def make_forward_vjp(cell, alpha=1.0):
    """Jitted ``(params, x, d_out) -> (output, d_params (PyTorch names), d_x)``: the forward pass
    and the cotangents of every weight and of the input for L = sum(output * d_out)."""
    def forward_vjp(p, x, d_out):
        out, pullback = jax.vjp(lambda p, x: _forward(cell, alpha, p, x)[0], p, x)
        d_p, d_x = pullback(d_out)
        return out, d_p, d_x

    return jax.jit(forward_vjp)


@functools.lru_cache(maxsize=None)
def make_jacobians(cell, alpha=1.0):
    """Jitted ``(params, x (T, I)) -> J (T, S, S)``, the step Jacobians of one sequence from
    s = 0: ``J[t] = d s_t / d s_{t-1}``, rows new state, columns old state, s = h or [h, c]
    (``numrnn.jacobians``'s layout).  The forward scan gives s_{t-1} for every t; then
    ``vmap(jacfwd(one step))`` over the T steps (the forward-mode tangents of S unit vectors)."""
    step = _step(cell, alpha)

    def one_step(p, s, xp):  # the packed state vector s -> the new packed state vector
        if cell == "lstm":
            N = s.shape[-1] // 2
            return jnp.concatenate(step(p, (s[:N], s[N:]), xp))
        return step(p, s, xp)

    def jacobians(p, x):
        xp = _project(p, x)
        s0 = jnp.zeros(state_size(cell, p["weight_hh_l0"].shape[1]), x.dtype)

        def body(s, xp_t):
            return one_step(p, s, xp_t), s

        _, s_prev = lax.scan(body, s0, xp)  # s_prev[t] = s_{t-1}
        return jax.vmap(jax.jacfwd(one_step, argnums=1), in_axes=(None, 0, 0))(p, s_prev, xp)

    return jax.jit(jacobians)


def _qr_step(w_hh, alpha):
    """Advance a frame along one tanh step ending in y_t = tanh(z_t) (the new state when
    alpha = 1): Y = (1 - a) Q + a diag(1 - y_t^2) W_hh Q = Q' R; returns (Q', ln|diag R|)."""
    def advance(q, y):
        v = (1.0 - y * y)[:, None] * (w_hh @ q)
        if alpha != 1.0:
            v = (1.0 - alpha) * q + alpha * v
        q, r = jnp.linalg.qr(v)
        return q, jnp.log(jnp.abs(jnp.diagonal(r)))

    return advance


@functools.lru_cache(maxsize=None)
def make_lyapunov(n_steps, transient, alpha=1.0):
    """Jitted ``(params, h0 (N,), q0 (N, k)) -> exponents (k,)`` per step: Benettin's loop for
    the autonomous tanh network (zero input), a QR after every step, its forward pass in the same
    ``lax.scan`` (so the time counts the trajectory and the tangent-map coefficients, as
    ``numrnn.lyapunov_spectrum``'s does).  The first ``transient`` steps are run and not
    recorded, as numrnn's."""
    def lyapunov(p, h0, q0):
        w = p["weight_hh_l0"]
        b = p["bias_ih_l0"] + p["bias_hh_l0"]  # W_ih x_t = 0
        advance = _qr_step(w, alpha)

        def body(carry, _):
            h, q = carry
            y = jnp.tanh(w @ h + b)
            h = y if alpha == 1.0 else (1.0 - alpha) * h + alpha * y
            q, logs = advance(q, y)
            return (h, q), logs

        _, logs = lax.scan(body, (h0, q0), None, length=n_steps)
        return jnp.mean(logs[transient:], axis=0)

    return jax.jit(lyapunov)


@functools.lru_cache(maxsize=None)
def make_lyapunov_along(transient, alpha=1.0):
    """Jitted ``(w_hh (N, N), y (T, N), q0 (N, k)) -> exponents (k,)``: the QR steps of
    :func:`make_lyapunov` along a given trajectory (y_t = tanh(z_t), the states themselves when
    alpha = 1), to check the loop against numrnn's on the very same states."""
    def lyapunov(w, y, q0):
        advance = _qr_step(w, alpha)
        _, logs = lax.scan(advance, q0, y)
        return jnp.mean(logs[transient:], axis=0)

    return jax.jit(lyapunov)


@functools.lru_cache(maxsize=None)
def make_autonomous_states(n_steps, alpha=1.0):
    """Jitted ``(params, h0 (N,)) -> h (n_steps, N)``: the trajectory :func:`make_lyapunov` runs
    (zero input), to check its start against numrnn's."""
    def states(p, h0):
        w, b = p["weight_hh_l0"], p["bias_ih_l0"] + p["bias_hh_l0"]

        def body(h, _):
            y = jnp.tanh(w @ h + b)
            h = y if alpha == 1.0 else (1.0 - alpha) * h + alpha * y
            return h, h

        return lax.scan(body, h0, None, length=n_steps)[1]

    return jax.jit(states)


def lyapunov_start(net, k, seed):
    """numrnn's initial state and frame of an autonomous ``lyapunov_spectrum(net, k=k,
    seed=seed)``, drawn the same way (numrnn.analysis.linearisation): from
    ``np.random.default_rng(seed)``, h0 ~ N(0, 1) of shape (1, N) first, then the frame, the Q
    of the QR of an (N, k) standard normal matrix.  Returns NumPy (h0 (N,), q0 (N, k)) in the
    network's dtype (the frame in float64, as numrnn's analysis)."""
    rng = np.random.default_rng(seed)
    N = net.hidden_size
    h0 = rng.standard_normal((1, N)).astype(net.dtype)[0]
    q0 = np.linalg.qr(rng.standard_normal((N, k)))[0]
    return h0, q0
