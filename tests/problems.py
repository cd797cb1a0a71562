"""Small random problems shared by the engine tests."""
import numpy as np

import numrnn

CELLS = ("tanh", "relu", "linear", "rate", "lstm", "gru")


def make_problem(rng, cell, *, num_layers=1, bidirectional=False, bias=True, alpha=1.0,
                 nonlinearity=None, T=5, B=2, I=3, N=4, dtype=np.float64, batch_first=False):
    """A network with U(-0.6, 0.6) parameters and random x, h0 (c0), d_output, d_h_n (d_c_n)."""
    net = numrnn.RNN(I, N, cell=cell, num_layers=num_layers, bias=bias,
                     bidirectional=bidirectional, alpha=alpha, nonlinearity=nonlinearity,
                     dtype=dtype, batch_first=batch_first, seed=rng.integers(2**31))
    net.load_state_dict({k: rng.uniform(-0.6, 0.6, v.shape).astype(dtype)
                         for k, v in net.state_dict().items()})
    D = net.num_directions
    LD = num_layers * D
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    d_out = rng.standard_normal((B, T, D * N) if batch_first else (T, B, D * N)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((LD, B, N))).astype(dtype)
    d_h = rng.standard_normal((LD, B, N)).astype(dtype)
    if cell == "lstm":
        c0 = (0.5 * rng.standard_normal((LD, B, N))).astype(dtype)
        d_c = rng.standard_normal((LD, B, N)).astype(dtype)
        return net, x, (h0, c0), d_out, (d_h, d_c)
    return net, x, h0, d_out, d_h


def loss(net, x, h0, d_out, d_h_n):
    """L = sum(output * d_output) + sum(h_n * d_h_n) (both parts of an LSTM state)."""
    out, h_n = net.forward(x, h0)
    value = np.sum(out * d_out)
    if isinstance(h_n, tuple):
        return value + np.sum(h_n[0] * d_h_n[0]) + np.sum(h_n[1] * d_h_n[1])
    return value + np.sum(h_n * d_h_n)
