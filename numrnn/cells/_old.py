"""Each cell's math, written once.

Every function here is a :func:`numba.extending.register_jitable` scalar function: the CPU kernels
(``@njit``), the GPU kernels (``@cuda.jit``) and the Jacobian code all call these and nothing else for
the pointwise part of a step, its local derivatives and its vector-Jacobian product.

Constants are passed in as ``one`` and ``zero`` of the kernel's dtype so that float32 kernels never
promote to float64 (a Python literal in Numba is a float64).

Conventions (PyTorch's): ``z`` are pre-activations, ``W_ih x + b_ih`` is the *input projection* and
``W_hh r + b_hh`` the *recurrent projection*, where the recurrent input ``r`` is ``h_{t-1}`` for every
cell except the rate network, where it is ``phi(h_{t-1})``.

=========  =====  ============================================================================
cell       gates  step
=========  =====  ============================================================================
tanh/relu  1      h = (1-a) h_prev + a phi(z),  z = W_ih x + b_ih + W_hh h_prev + b_hh
linear     1      same with phi = identity
rate       1      h = (1-a) h_prev + a (W_hh phi(h_prev) + b_hh + W_ih x + b_ih)
lstm       4      i, f, g, o = sig, sig, tanh, sig of z;  c = f c_prev + i g;  h = o tanh(c)
gru        3      r, z = sig(x_r + h_r), sig(x_z + h_z); n = tanh(x_n + r h_n); h = (1-z) n + z h_prev
=========  =====  ============================================================================
"""
import math

from numba.extending import register_jitable

# Cell families (the kernels branch on these at run time, so one compiled kernel serves all cells).
KIND_ELMAN = 0
KIND_RATE = 1
KIND_LSTM = 2
KIND_GRU = 3

# Pointwise nonlinearities.
ACT_TANH = 0
ACT_RELU = 1
ACT_LINEAR = 2

ACTIVATIONS = {"tanh": ACT_TANH, "relu": ACT_RELU, "linear": ACT_LINEAR}

#: cell name -> (kind, default nonlinearity code, number of gates G)
CELLS = {
    "tanh": (KIND_ELMAN, ACT_TANH, 1),
    "relu": (KIND_ELMAN, ACT_RELU, 1),
    "linear": (KIND_ELMAN, ACT_LINEAR, 1),
    "rate": (KIND_RATE, ACT_TANH, 1),
    "lstm": (KIND_LSTM, ACT_TANH, 4),
    "gru": (KIND_GRU, ACT_TANH, 3),
}

#: Width of the per-step auxiliary record the forward pass keeps for BPTT, in units of N.
#: Elman: phi(z); rate: nothing; LSTM: i, f, g, o; GRU: r, z, n and the recurrent n-projection.
AUX_WIDTH = {KIND_ELMAN: 1, KIND_RATE: 0, KIND_LSTM: 4, KIND_GRU: 4}


@register_jitable
def activation(code, z, zero):
    """phi(z) for ``code`` in (ACT_TANH, ACT_RELU, ACT_LINEAR)."""
    if code == ACT_TANH:
        return math.tanh(z)
    if code == ACT_RELU:
        return z if z > zero else zero
    return z


@register_jitable
def activation_grad(code, y, one, zero):
    """phi'(z) written through its output y = phi(z) (ReLU's derivative at 0 is 0, as in PyTorch)."""
    if code == ACT_TANH:
        return one - y * y
    if code == ACT_RELU:
        return one if y > zero else zero
    return one


@register_jitable
def sigmoid(z, one):
    return one / (one + math.exp(-z))


@register_jitable
def sigmoid_grad(s, one):
    """sigma'(z) through s = sigma(z)."""
    return s * (one - s)


# --- Elman and rate cells --------------------------------------------------------------------


@register_jitable
def leaky_update(h_prev, u, a, oma):
    """h = (1 - a) h_prev + a u, with ``oma`` = 1 - a (precomputed in the kernel's dtype)."""
    return oma * h_prev + a * u


# Local derivatives: for Elman, dh/dz = a phi'(z) and dh/dh_prev|direct = 1 - a.  For the rate
# network, dh/du = a, dh/dh_prev|direct = 1 - a, and the recurrent input r = phi(h_prev) has
# dr/dh_prev = phi'(h_prev).


@register_jitable
def elman_dz(code, y, a, one, zero):
    """dh/dz of the Elman step, from y = phi(z)."""
    return a * activation_grad(code, y, one, zero)


# --- LSTM ------------------------------------------------------------------------------------


@register_jitable
def lstm_gates(zi, zf, zg, zo, one):
    """Gate values (i, f, g, o) from their pre-activations."""
    return sigmoid(zi, one), sigmoid(zf, one), math.tanh(zg), sigmoid(zo, one)


@register_jitable
def lstm_state(i, f, g, o, c_prev):
    """New (c, h) from the gate values."""
    c = f * c_prev + i * g
    return c, o * math.tanh(c)


@register_jitable
def lstm_step(zi, zf, zg, zo, c_prev, one):
    """Returns (i, f, g, o, c, h)."""
    i, f, g, o = lstm_gates(zi, zf, zg, zo, one)
    c, h = lstm_state(i, f, g, o, c_prev)
    return i, f, g, o, c, h


@register_jitable
def lstm_partials(i, f, g, o, c, c_prev, one):
    """Local derivatives of one LSTM unit.

    Returns (dc_dzi, dc_dzf, dc_dzg, dc_dcprev, dh_dc, dh_dzo); every other partial is zero, and
    dh/dz_{i,f,g} = dh_dc * dc_dz_{i,f,g}.
    """
    tc = math.tanh(c)
    return (g * sigmoid_grad(i, one), c_prev * sigmoid_grad(f, one), i * (one - g * g), f,
            o * (one - tc * tc), tc * sigmoid_grad(o, one))


@register_jitable
def lstm_vjp(dh, dc, i, f, g, o, c, c_prev, one):
    """Cotangents (dh, dc) of (h, c) -> (dzi, dzf, dzg, dzo, dc_prev)."""
    dc_dzi, dc_dzf, dc_dzg, dc_dcp, dh_dc, dh_dzo = lstm_partials(i, f, g, o, c, c_prev, one)
    dct = dc + dh * dh_dc
    return dct * dc_dzi, dct * dc_dzf, dct * dc_dzg, dh * dh_dzo, dct * dc_dcp


@register_jitable
def lstm_jvp(dzi, dzf, dzg, dzo, dc_prev, i, f, g, o, c, c_prev, one):
    """Tangents of (zi, zf, zg, zo, c_prev) -> tangents (dh, dc)."""
    dc_dzi, dc_dzf, dc_dzg, dc_dcp, dh_dc, dh_dzo = lstm_partials(i, f, g, o, c, c_prev, one)
    dc = dc_dzi * dzi + dc_dzf * dzf + dc_dzg * dzg + dc_dcp * dc_prev
    return dh_dc * dc + dh_dzo * dzo, dc


# --- GRU -------------------------------------------------------------------------------------


@register_jitable
def gru_step(xr, xz, xn, hr, hz, hn, h_prev, one):
    """x* are input projections, h* recurrent projections (biases included). Returns (r, z, n, h)."""
    r = sigmoid(xr + hr, one)
    z = sigmoid(xz + hz, one)
    n = math.tanh(xn + r * hn)
    h = (one - z) * n + z * h_prev
    return r, z, n, h


@register_jitable
def gru_partials(r, z, n, hn, h_prev, one):
    """Local derivatives of one GRU unit.

    Returns (dh_dr_pre, dh_dz_pre, dh_dn_pre, dh_dhprev_direct) where the pre-activations are
    r_pre = x_r + h_r, z_pre = x_z + h_z and n_pre = x_n + r h_n (so dn_pre/dh_n = r).
    """
    dh_dn_pre = (one - z) * (one - n * n)
    return dh_dn_pre * hn * sigmoid_grad(r, one), (h_prev - n) * sigmoid_grad(z, one), dh_dn_pre, z


@register_jitable
def gru_vjp(dh, r, z, n, hn, h_prev, one):
    """Cotangent dh -> (dr_pre, dz_pre, dx_n, dh_n, dh_prev_direct)."""
    dh_dr, dh_dz, dh_dn, dh_dhp = gru_partials(r, z, n, hn, h_prev, one)
    dxn = dh * dh_dn
    return dh * dh_dr, dh * dh_dz, dxn, dxn * r, dh * dh_dhp


@register_jitable
def gru_jvp(dr_pre, dz_pre, dxn, dhn, dh_prev, r, z, n, hn, h_prev, one):
    """Tangents of (r_pre, z_pre, x_n, h_n, h_prev|direct) -> tangent dh."""
    dh_dr, dh_dz, dh_dn, dh_dhp = gru_partials(r, z, n, hn, h_prev, one)
    return dh_dr * dr_pre + dh_dz * dz_pre + dh_dn * (dxn + r * dhn) + dh_dhp * dh_prev


# --- One unit of one step, for every cell: what the kernels of both backends call ----------------
#
# ``xp`` and ``hp`` are the rows (length G*N) of one sequence's input projection and recurrent
# projection (biases included) at one step, ``j`` the unit and ``n`` = N.  ``aux`` is that
# sequence's auxiliary record for the step (length AUX_WIDTH * N).


@register_jitable
def recurrent_input(kind, act, h, zero):
    """r = phi(h) for the rate network, h for every other cell."""
    if kind == KIND_RATE:
        return activation(act, h, zero)
    return h


@register_jitable
def recurrent_input_grad(kind, act, h, one, zero):
    """dr/dh for :func:`recurrent_input`."""
    if kind == KIND_RATE:
        return activation_grad(act, activation(act, h, zero), one, zero)
    return one


@register_jitable
def unit_forward(kind, act, a, oma, one, zero, xp, hp, j, n, h_prev, c_prev, aux):
    """Advance unit j one step. Returns (h, c) (c is ``zero`` except for LSTM) and fills aux."""
    if kind == KIND_ELMAN:
        y = activation(act, xp[j] + hp[j], zero)
        aux[j] = y
        return leaky_update(h_prev, y, a, oma), zero
    if kind == KIND_RATE:
        return leaky_update(h_prev, xp[j] + hp[j], a, oma), zero
    if kind == KIND_LSTM:
        i, f, g, o, c, h = lstm_step(xp[j] + hp[j], xp[n + j] + hp[n + j],
                                     xp[2 * n + j] + hp[2 * n + j], xp[3 * n + j] + hp[3 * n + j],
                                     c_prev, one)
        aux[j] = i
        aux[n + j] = f
        aux[2 * n + j] = g
        aux[3 * n + j] = o
        return h, c
    r, z, nn, h = gru_step(xp[j], xp[n + j], xp[2 * n + j], hp[j], hp[n + j], hp[2 * n + j],
                           h_prev, one)
    aux[j] = r
    aux[n + j] = z
    aux[2 * n + j] = nn
    aux[3 * n + j] = hp[2 * n + j]
    return h, zero


@register_jitable
def unit_backward(kind, act, a, oma, one, zero, dh, dc, j, n, h_prev, c_prev, c, aux, dxp, dhp):
    """Vector-Jacobian product of one unit's step.

    ``dh`` (and ``dc`` for LSTM) are the total cotangents of the unit's new state.  Writes the
    cotangents of the recurrent projection into ``dhp`` (and, for GRU, of the input projection into
    ``dxp``; for the other cells the two are equal and ``dxp`` is not written).  Returns the direct
    part of (dh_prev, dc_prev): what does not pass through W_hh.
    """
    if kind == KIND_ELMAN:
        dhp[j] = dh * elman_dz(act, aux[j], a, one, zero)
        return oma * dh, zero
    if kind == KIND_RATE:
        dhp[j] = a * dh
        return oma * dh, zero
    if kind == KIND_LSTM:
        dzi, dzf, dzg, dzo, dcp = lstm_vjp(dh, dc, aux[j], aux[n + j], aux[2 * n + j],
                                           aux[3 * n + j], c, c_prev, one)
        dhp[j] = dzi
        dhp[n + j] = dzf
        dhp[2 * n + j] = dzg
        dhp[3 * n + j] = dzo
        return zero, dcp
    dr, dz, dxn, dhn, dhd = gru_vjp(dh, aux[j], aux[n + j], aux[2 * n + j], aux[3 * n + j],
                                    h_prev, one)
    dxp[j] = dr
    dxp[n + j] = dz
    dxp[2 * n + j] = dxn
    dhp[j] = dr
    dhp[n + j] = dz
    dhp[2 * n + j] = dhn
    return dhd, zero


# --- Tangent maps (analysis) -------------------------------------------------------------------
#
# The step Jacobian of a layer is assembled from each unit's local partial derivatives with respect
# to (a) the rows j, N+j, ... of the recurrent and input projections and (b) its own previous
# (h_j, c_j).  These are read off :func:`unit_backward` with unit cotangents, so BPTT, the dense
# Jacobian, the JVP and the VJP of the analysis code all run through the same expressions.


@register_jitable
def unit_tangent_coefficients(kind, act, a, oma, one, zero, j, n, h_prev, c_prev, c, aux,
                              h_rec, h_in, c_rec, c_in):
    """Local derivatives of unit j's new state (h_j, c_j) for the step Jacobian.

    Writes, for g < G: ``h_rec[g*n + j]`` = dh_j / d(recurrent projection row g*n + j) and
    ``h_in[g*n + j]`` = dh_j / d(input projection row g*n + j); for LSTM also ``c_rec``/``c_in``,
    the same for c_j.  Pass the same array as ``h_rec`` and ``h_in`` (and as ``c_rec`` and
    ``c_in``) except for GRU, where the two differ in the n gate.

    Returns (dh_dhprev_direct, dh_dcprev, dc_dcprev, dr_dhprev): the parts that do not pass
    through W_hh (zero where a cell has no such term) and the derivative of the recurrent input
    r_j = phi(h_prev_j) (rate network) or h_prev_j (every other cell).
    """
    dh_direct, dh_dcp = unit_backward(kind, act, a, oma, one, zero, one, zero, j, n, h_prev,
                                      c_prev, c, aux, h_in, h_rec)
    dc_dcp = zero
    if kind == KIND_LSTM:
        unused, dc_dcp = unit_backward(kind, act, a, oma, one, zero, zero, one, j, n, h_prev,
                                       c_prev, c, aux, c_in, c_rec)
    return dh_direct, dh_dcp, dc_dcp, recurrent_input_grad(kind, act, h_prev, one, zero)
