"""The cells numrnn started with, as definitions of the cell protocol.

=========  =====  ============================================================================
cell       gates  step (a = alpha, the leak)
=========  =====  ============================================================================
tanh/relu  1      h = (1-a) h_prev + a phi(z),  z = W_ih x + b_ih + W_hh h_prev + b_hh
linear     1      same with phi = identity
rate       1      h = (1-a) h_prev + a (W_hh phi(h_prev) + b_hh + W_ih x + b_ih)
lstm       4      i, f, g, o = sig, sig, tanh, sig of z;  c = f c_prev + i g;  h = o tanh(c)
gru        3      r, z = sig(x_r + h_r), sig(x_z + h_z); n = tanh(x_n + r h_n); h = (1-z) n + z h_prev
=========  =====  ============================================================================

Every function is a scalar function of one unit (see :mod:`numrnn.cells.protocol` for the
arguments); the engine does the matrix products.
"""
import math

from .functions import NONLINEARITIES, sigmoid, sigmoid_grad
from .protocol import Cell
from .registry import register


def _check_alpha(options):
    a = options["alpha"]
    if not 0.0 < a <= 1.0:
        raise ValueError(f"alpha: expected a leak in (0, 1], got {a!r}")


# --- Elman: h = (1 - a) h_prev + a phi(z) ------------------------------------------------------


def _elman(name, nonlinearity):
    phi, phi_grad = NONLINEARITIES[nonlinearity]

    def step(z, h, alpha, one):
        y = phi(z, one)
        return (one - alpha) * h + alpha * y, y

    def vjp(dh, h, h_new, y, alpha, one):
        return dh * alpha * phi_grad(y, one), (one - alpha) * dh

    def jvp(dz, dh, h, h_new, y, alpha, one):
        return alpha * phi_grad(y, one) * dz + (one - alpha) * dh

    return Cell(name, gates=("z",), aux=("y",), step=step, vjp=vjp, jvp=jvp,
                options={"alpha": 1.0}, check_options=_check_alpha, time_step="alpha",
                torch="RNN_" + name.upper() if name in ("tanh", "relu") else None,
                doc=f"Elman cell, h = (1-a) h_prev + a {nonlinearity}(z)")


# --- rate network: h = (1 - a) h_prev + a (W_hh phi(h_prev) + ...) ---------------------------


def _rate(nonlinearity):
    phi, phi_grad = NONLINEARITIES[nonlinearity]

    def read(s, alpha, one):
        return phi(s, one)

    def read_grad(s, alpha, one):
        return phi_grad(phi(s, one), one)

    def step(z, h, alpha, one):
        return (one - alpha) * h + alpha * z

    def vjp(dh, h, h_new, alpha, one):
        return alpha * dh, (one - alpha) * dh

    def jvp(dz, dh, h, h_new, alpha, one):
        return alpha * dz + (one - alpha) * dh

    return Cell("rate", gates=("u",), step=step, vjp=vjp, jvp=jvp, read_map=(read, read_grad),
                options={"alpha": 1.0}, check_options=_check_alpha, nonlinearity=nonlinearity,
                time_step="alpha",
                doc="continuous-time rate network (Sompolinsky, Crisanti and Sommers 1988), "
                    "Euler step a = dt/tau")


# --- LSTM --------------------------------------------------------------------------------------


def _lstm_step(zi, zf, zg, zo, h, c, one):
    i = sigmoid(zi, one)
    f = sigmoid(zf, one)
    g = math.tanh(zg)
    o = sigmoid(zo, one)
    c_new = f * c + i * g
    return o * math.tanh(c_new), c_new, i, f, g, o


def _lstm_partials(c, c_new, i, f, g, o, one):
    """(dc/dzi, dc/dzf, dc/dzg, dh/dc, dh/dzo); dc/dc_prev = f, and dh/dh_prev = 0."""
    tc = math.tanh(c_new)
    return (g * sigmoid_grad(i, one), c * sigmoid_grad(f, one), i * (one - g * g),
            o * (one - tc * tc), tc * sigmoid_grad(o, one))


def _lstm_vjp(dh, dc, h, c, h_new, c_new, i, f, g, o, one):
    ci, cf, cg, hc, ho = _lstm_partials(c, c_new, i, f, g, o, one)
    dct = dc + dh * hc
    return dct * ci, dct * cf, dct * cg, dh * ho, one - one, dct * f


def _lstm_jvp(dzi, dzf, dzg, dzo, dh, dc, h, c, h_new, c_new, i, f, g, o, one):
    ci, cf, cg, hc, ho = _lstm_partials(c, c_new, i, f, g, o, one)
    dc_new = ci * dzi + cf * dzf + cg * dzg + f * dc
    return hc * dc_new + ho * dzo, dc_new


LSTM = Cell("lstm", gates=("i", "f", "g", "o"), states=("h", "c"), aux=("i", "f", "g", "o"),
            step=_lstm_step, vjp=_lstm_vjp, jvp=_lstm_jvp, torch="LSTM",
            doc="long short-term memory (Hochreiter and Schmidhuber 1997), torch.nn.LSTM")


# --- GRU ---------------------------------------------------------------------------------------


def _gru_step(xr, xz, xn, hr, hz, hn, h, one):
    r = sigmoid(xr + hr, one)
    z = sigmoid(xz + hz, one)
    n = math.tanh(xn + r * hn)
    return (one - z) * n + z * h, r, z, n, hn


def _gru_partials(h, r, z, n, hn, one):
    """(dh/dr_pre, dh/dz_pre, dh/dn_pre); n_pre = x_n + r h_n, dh/dh_prev|direct = z."""
    dn = (one - z) * (one - n * n)
    return dn * hn * sigmoid_grad(r, one), (h - n) * sigmoid_grad(z, one), dn


def _gru_vjp(dh, h, h_new, r, z, n, hn, one):
    d_r, d_z, d_n = _gru_partials(h, r, z, n, hn, one)
    dr, dz, dxn = dh * d_r, dh * d_z, dh * d_n
    return dr, dz, dxn, dr, dz, dxn * r, dh * z


def _gru_jvp(dxr, dxz, dxn, dhr, dhz, dhn, dh, h, h_new, r, z, n, hn, one):
    d_r, d_z, d_n = _gru_partials(h, r, z, n, hn, one)
    return d_r * (dxr + dhr) + d_z * (dxz + dhz) + d_n * (dxn + r * dhn) + z * dh


GRU = Cell("gru", gates=("r", "z", "n"), aux=("r", "z", "n", "hn"), projections="separate",
           step=_gru_step, vjp=_gru_vjp, jvp=_gru_jvp, torch="GRU",
           doc="gated recurrent unit (Cho et al. 2014), torch.nn.GRU")


register("tanh", lambda nonlinearity: _elman("tanh", "tanh"), fixed="tanh")
register("relu", lambda nonlinearity: _elman("relu", "relu"), fixed="relu")
register("linear", lambda nonlinearity: _elman("linear", "linear"), fixed="linear")
register("rate", _rate, nonlinearities=("tanh", "relu"))
register("lstm", lambda nonlinearity: LSTM)
register("gru", lambda nonlinearity: GRU)
