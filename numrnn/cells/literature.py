"""Five cells from the literature on vanishing and exploding gradients.

Each is written with the public cell protocol only (:class:`numrnn.Cell`, the scalar helpers of
:mod:`numrnn.cells.functions` and :func:`numrnn.cells.register`), as a user would write one.
Notation: x_k and h_k are the k-th N-row blocks of W_ih x + b_ih and W_hh h_{t-1} + b_hh.

==============  =======================================================================================
cell            step
==============  =======================================================================================
mgu             f = sig(x_f + h_f); n = tanh(x_n + f h_n); h = (1 - f) h_prev + f n
ugrnn           c = tanh(x_c + h_c); g = sig(x_g + h_g); h = g h_prev + (1 - g) c
indrnn          h = phi(W_ih x + b_ih + u * h_prev + b_hh), weight_hh = u of shape (N,)
antisymmetric   h = h_prev + eps phi((W - W^T - gamma I) h_prev + W_ih x + b_ih + b_hh)
cornn           z = z_prev + dt (tanh(W y_prev + Wz z_prev + W_ih x + b) - gamma y_prev - eps z_prev);
                y = y_prev + dt z; output y, weight_hh = [W | Wz] of shape (N, 2N)
==============  =======================================================================================

References
----------
Zhou, G.-B., Wu, J., Zhang, C.-L. and Zhou, Z.-H. (2016). Minimal gated unit for recurrent neural
networks. International Journal of Automation and Computing 13(3).
Collins, J., Sohl-Dickstein, J. and Sussillo, D. (2017). Capacity and trainability in recurrent
neural networks. ICLR.
Li, S., Li, W., Cook, C., Zhu, C. and Gao, Y. (2018). Independently recurrent neural network
(IndRNN): building a longer and deeper RNN. CVPR.
Chang, B., Chen, M., Haber, E. and Chi, E. H. (2019). AntisymmetricRNN: a dynamical system view on
recurrent neural networks. ICLR.
Rusch, T. K. and Mishra, S. (2021). Coupled oscillatory recurrent neural network (coRNN): an
accurate and (gradient) stable architecture for learning long time dependencies. ICLR.
"""
import math

import numpy as np

from .functions import NONLINEARITIES, sigmoid, sigmoid_grad
from .protocol import Cell
from .registry import register

# --- mgu: minimal gated unit (gate applied after the recurrent product, as PyTorch's GRU) -----


def _mgu_step(xf, xn, hf, hn, h, one):
    f = sigmoid(xf + hf, one)
    n = math.tanh(xn + f * hn)
    return (one - f) * h + f * n, f, n, hn


def _mgu_partials(h, f, n, hn, one):
    """(dh/df_pre, dh/dn_pre) with n_pre = x_n + f h_n; dh/dh_prev|direct = 1 - f."""
    dn = f * (one - n * n)
    return (n - h + dn * hn) * sigmoid_grad(f, one), dn


def _mgu_vjp(dh, h, h_new, f, n, hn, one):
    d_f, d_n = _mgu_partials(h, f, n, hn, one)
    df, dxn = dh * d_f, dh * d_n
    return df, dxn, df, dxn * f, (one - f) * dh


def _mgu_jvp(dxf, dxn, dhf, dhn, dh, h, h_new, f, n, hn, one):
    d_f, d_n = _mgu_partials(h, f, n, hn, one)
    return d_f * (dxf + dhf) + d_n * (dxn + f * dhn) + (one - f) * dh


MGU = Cell("mgu", gates=("f", "n"), aux=("f", "n", "hn"), projections="separate",
           step=_mgu_step, vjp=_mgu_vjp, jvp=_mgu_jvp,
           doc="minimal gated unit (Zhou et al. 2016)")

# --- ugrnn: update-gate RNN -------------------------------------------------------------------


def _ugrnn_step(zc, zg, h, one):
    c = math.tanh(zc)
    g = sigmoid(zg, one)
    return g * h + (one - g) * c, c, g


def _ugrnn_vjp(dh, h, h_new, c, g, one):
    return dh * (one - g) * (one - c * c), dh * (h - c) * sigmoid_grad(g, one), dh * g


def _ugrnn_jvp(dzc, dzg, dh, h, h_new, c, g, one):
    return (one - g) * (one - c * c) * dzc + (h - c) * sigmoid_grad(g, one) * dzg + g * dh


UGRNN = Cell("ugrnn", gates=("c", "g"), aux=("c", "g"), step=_ugrnn_step, vjp=_ugrnn_vjp,
             jvp=_ugrnn_jvp, doc="update-gate RNN (Collins, Sohl-Dickstein and Sussillo 2017)")

# --- indrnn: independently recurrent network --------------------------------------------------


def _diagonal(u, n, options):
    return np.diag(u)


def _diagonal_grad(d_matrix, n, options):
    return np.diagonal(d_matrix).copy()


def _indrnn(nonlinearity):
    phi, phi_grad = NONLINEARITIES[nonlinearity]

    def step(z, h, one):
        y = phi(z, one)
        return y, y

    def vjp(dh, h, h_new, y, one):
        return dh * phi_grad(y, one), one - one

    def jvp(dz, dh, h, h_new, y, one):
        return phi_grad(y, one) * dz

    return Cell("indrnn", gates=("z",), aux=("y",), step=step, vjp=vjp, jvp=jvp,
                weight_hh_shape=lambda n: (n,), matrix=(_diagonal, _diagonal_grad),
                nonlinearity=nonlinearity,
                doc="independently recurrent network (Li et al. 2018), weight_hh = u (N,)")


# --- antisymmetric RNN -------------------------------------------------------------------------


def _antisymmetric_matrix(w, n, options):
    return w - w.T - options["gamma"] * np.eye(n, dtype=w.dtype)


def _antisymmetric_grad(d_matrix, n, options):
    return d_matrix - d_matrix.T


def _check_antisymmetric(options):
    if options["epsilon"] <= 0:
        raise ValueError(f"cell_options['epsilon']: expected a step size > 0, got "
                         f"{options['epsilon']!r}")
    if options["gamma"] < 0:
        raise ValueError(f"cell_options['gamma']: expected a diffusion >= 0, got "
                         f"{options['gamma']!r}")


def _antisymmetric(nonlinearity):
    phi, phi_grad = NONLINEARITIES[nonlinearity]

    def step(z, h, epsilon, gamma, one):
        y = phi(z, one)
        return h + epsilon * y, y

    def vjp(dh, h, h_new, y, epsilon, gamma, one):
        return dh * epsilon * phi_grad(y, one), dh

    def jvp(dz, dh, h, h_new, y, epsilon, gamma, one):
        return epsilon * phi_grad(y, one) * dz + dh

    return Cell("antisymmetric", gates=("z",), aux=("y",), step=step, vjp=vjp, jvp=jvp,
                matrix=(_antisymmetric_matrix, _antisymmetric_grad),
                options={"epsilon": 0.01, "gamma": 0.01}, check_options=_check_antisymmetric,
                nonlinearity=nonlinearity, time_step="epsilon",
                doc="antisymmetric RNN (Chang et al. 2019), M = W - W^T - gamma I")


# --- coRNN: coupled oscillatory RNN -------------------------------------------------------------


def _cornn_step(u, y, z, dt, gamma, epsilon, one):
    s = math.tanh(u)
    z_new = z + dt * (s - gamma * y - epsilon * z)
    return y + dt * z_new, z_new, s


def _cornn_vjp(dy, dz, y, z, y_new, z_new, s, dt, gamma, epsilon, one):
    dzt = dz + dt * dy  # the cotangent of z_new, through y_new too
    return (dzt * dt * (one - s * s), dy - dzt * dt * gamma, dzt * (one - dt * epsilon))


def _cornn_jvp(du, dy, dz, y, z, y_new, z_new, s, dt, gamma, epsilon, one):
    dz_new = dz + dt * ((one - s * s) * du - gamma * dy - epsilon * dz)
    return dy + dt * dz_new, dz_new


def _check_cornn(options):
    if options["dt"] <= 0:
        raise ValueError(f"cell_options['dt']: expected a time step > 0, got {options['dt']!r}")


CORNN = Cell("cornn", gates=("u",), states=("y", "z"), aux=("s",), reads=("y", "z"),
             step=_cornn_step, vjp=_cornn_vjp, jvp=_cornn_jvp,
             options={"dt": 0.042, "gamma": 2.7, "epsilon": 4.7}, check_options=_check_cornn,
             time_step="dt",
             doc="coupled oscillatory RNN (Rusch and Mishra 2021), states (y, z), output y")

register("mgu", MGU)
register("ugrnn", UGRNN)
register("indrnn", _indrnn, nonlinearities=("relu", "tanh"))
register("antisymmetric", _antisymmetric, nonlinearities=("tanh", "relu", "linear"))
register("cornn", CORNN)
