"""The cells the engine tests run (one list, read from numrnn's registry) and small random
problems shared by the engine tests."""
import numpy as np

import numrnn


def _cell_cases():
    """(cell, nonlinearity) for every registered cell and every nonlinearity it offers (its
    default first); nonlinearity None for the cells that offer no choice."""
    cases = []
    for name in numrnn.cells.names():
        offered, default = numrnn.cells.choices(name)
        if not offered:
            cases.append((name, None))
            continue
        cases += [(name, default)] + [(name, phi) for phi in offered if phi != default]
    return tuple(cases)


#: Every registered cell, in registration order.
CELLS = numrnn.cells.names()
#: Every registered cell with every nonlinearity it offers: what the engine tests run.
CELL_CASES = _cell_cases()
#: pytest ids of CELL_CASES ("rate-relu", "gru", ...).
CELL_IDS = tuple(cell if phi is None else f"{cell}-{phi}" for cell, phi in CELL_CASES)
#: Cells whose math is a torch.nn module's ("RNN_TANH", "LSTM", ...).
TORCH_CELLS = tuple(name for name in CELLS if numrnn.cells.registered(name).torch is not None)
#: Options the engine tests give the cells that have some: larger steps than the defaults, so
#: that the cell's update is not dominated by the identity (h' = h + 0.01 phi(...) with the
#: antisymmetric cell's defaults) and a wrong derivative shows up at a tolerance of 1e-12.
TEST_OPTIONS = {"antisymmetric": {"epsilon": 0.3, "gamma": 0.2},
                "cornn": {"dt": 0.3, "gamma": 1.5, "epsilon": 0.8}}


def definition(cell, nonlinearity=None):
    """The numrnn.Cell registered as ``cell`` (with ``nonlinearity``)."""
    return numrnn.cells.resolve(cell, nonlinearity)[0]


def has_leak(cell):
    """Whether the cell has a leak alpha (RNN(..., alpha=...))."""
    return "alpha" in definition(cell).options


def paired(cell):
    """Whether the cell's state is a pair (LSTM's (h, c), coRNN's (y, z))."""
    return definition(cell).state_count == 2


def as_pair(state):
    """(first, second) of a state or state cotangent; second None for one-state cells."""
    return (state[0], state[1]) if isinstance(state, tuple) else (state, None)


def reference_kwargs(net):
    """The keyword arguments of tests/reference.py's ref_forward/ref_vjp for ``net``."""
    options = {k: v for k, v in net.cell_options.items() if k != "alpha"}
    return dict(hidden_size=net.hidden_size, num_layers=net.num_layers,
                bidirectional=net.bidirectional, alpha=net.alpha,
                nonlinearity=net.nonlinearity, cell_options=options or None)


def make_problem(rng, cell, *, num_layers=1, bidirectional=False, bias=True, alpha=1.0,
                 nonlinearity=None, cell_options=None, T=5, B=2, I=3, N=4, dtype=np.float64,
                 batch_first=False):
    """A network with U(-0.6, 0.6) parameters and random x, h0 (c0), d_output, d_h_n (d_c_n).

    ``cell_options`` None gives the cell TEST_OPTIONS (its defaults if it has none there).
    """
    if cell_options is None:
        cell_options = TEST_OPTIONS.get(cell if isinstance(cell, str) else None)
    net = numrnn.RNN(I, N, cell=cell, num_layers=num_layers, bias=bias,
                     bidirectional=bidirectional, alpha=alpha, nonlinearity=nonlinearity,
                     cell_options=cell_options, dtype=dtype, batch_first=batch_first,
                     seed=rng.integers(2**31))
    net.load_state_dict({k: rng.uniform(-0.6, 0.6, v.shape).astype(dtype)
                         for k, v in net.state_dict().items()})
    D = net.num_directions
    LD = num_layers * D
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    d_out = rng.standard_normal((B, T, D * N) if batch_first else (T, B, D * N)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((LD, B, N))).astype(dtype)
    d_h = rng.standard_normal((LD, B, N)).astype(dtype)
    if net.state_count == 2:
        c0 = (0.5 * rng.standard_normal((LD, B, N))).astype(dtype)
        d_c = rng.standard_normal((LD, B, N)).astype(dtype)
        return net, x, (h0, c0), d_out, (d_h, d_c)
    return net, x, h0, d_out, d_h


def loss(net, x, h0, d_out, d_h_n):
    """L = sum(output * d_output) + sum(h_n * d_h_n) (both parts of a paired state)."""
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


def rejects_construction(kwargs, exc, words):
    """numrnn.RNN(3, 4, **kwargs) (input_size, hidden_size overridable in kwargs) raises ``exc``
    whose message holds every one of ``words``."""
    import pytest

    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(exc) as info:
        numrnn.RNN(args.pop("input_size"), args.pop("hidden_size"), **args)
    for word in words:
        assert word in str(info.value)
