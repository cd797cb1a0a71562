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


def overflowing_net():
    """Two linear layers with weights 1e200: the states stay 0 (zero input and h0), but the
    step Jacobian's block W_ih_l1 W_hh_l0 = 1e400 overflows float64."""
    net = numrnn.RNN(1, 2, cell="linear", num_layers=2, bias=False, seed=0)
    net.parameters["weight_hh_l0"][:] = 1e200 * np.eye(2)
    net.parameters["weight_ih_l1"][:] = 1e200 * np.eye(2)
    return net


def save_gru_model(path, input_size, hidden_size, output_size, meta):
    """A params.npz as `numrnn train` writes it (GRU and readout, seeded), without training."""
    from numrnn.experiments import LinearReadout, save_model

    net = numrnn.RNN(input_size, hidden_size, cell="gru", seed=0)
    save_model(path, net, LinearReadout(hidden_size, output_size, seed=1), meta)
    return path
