"""Parity with PyTorch's nn.RNN/LSTM/GRU in float64 (skipped only when torch is missing)."""
import numpy as np
import pytest

import numrnn
from tests.problems import TORCH_CELLS, make_problem
from tests.tolerance import assert_close

torch = pytest.importorskip("torch")

RTOL = 1e-10  # the bar; float64 agreement is ~1e-15 in practice


def _torch_grads(module, x, h0, d_out, d_h, lstm):
    xt = torch.tensor(x, requires_grad=True)
    states = [torch.tensor(s, requires_grad=True) for s in (h0 if lstm else (h0,))]
    out, h_n = module(xt, tuple(states) if lstm else states[0])
    loss = (out * torch.tensor(d_out)).sum()
    for a, b in zip(h_n if lstm else (h_n,), d_h if lstm else (d_h,)):
        loss = loss + (a * torch.tensor(b)).sum()
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in module.named_parameters()}
    grads["input"] = xt.grad.numpy()
    grads["h0"] = states[0].grad.numpy()
    if lstm:
        grads["c0"] = states[1].grad.numpy()
    h_n = tuple(a.detach().numpy() for a in h_n) if lstm else h_n.detach().numpy()
    return out.detach().numpy(), h_n, grads


@pytest.mark.parametrize("cell", TORCH_CELLS)
@pytest.mark.parametrize("layers, bidir, batch_first, bias", [
    (1, False, False, True),
    (2, True, False, True),
    (2, False, True, False),
    (2, True, True, True),
])
@pytest.mark.parametrize("direction", ["to_torch", "from_torch"])
def test_outputs_and_gradients_equal_pytorch(rng, cell, layers, bidir, batch_first, bias,
                                             direction):
    lstm = cell == "lstm"
    net, x, h0, d_out, d_h = make_problem(rng, cell, num_layers=layers, bidirectional=bidir,
                                          bias=bias, batch_first=batch_first, T=6, B=3)
    if direction == "to_torch":
        module = net.to_torch()
    else:
        module = net.to_torch()  # a module with other weights, copied back into a fresh net
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.tensor(rng.uniform(-0.5, 0.5, tuple(p.shape))))
        net = numrnn.RNN.from_torch(module)
        assert net.cell == cell and net.batch_first == batch_first and net.bias == bias
    out_t, h_t, g_t = _torch_grads(module, x, h0, d_out, d_h, lstm)
    out, h_n, g = net.forward_vjp(x, d_out, h0, d_h)
    assert_close(out, out_t, rtol=RTOL, what="output")
    for a, b in zip(h_n if lstm else (h_n,), h_t if lstm else (h_t,)):
        assert_close(a, b, rtol=RTOL, what="h_n")
    for k, v in g_t.items():
        assert_close(g[k], v, rtol=RTOL, what=k)


def test_the_torch_twins_are_the_cells_pytorch_has():
    assert set(TORCH_CELLS) == {"tanh", "relu", "lstm", "gru"}


def test_from_torch_keeps_float32_and_rejects_unsupported():
    m = torch.nn.GRU(3, 4, num_layers=2, dropout=0.0)
    net = numrnn.RNN.from_torch(m)
    assert net.dtype == np.float32 and net.num_layers == 2
    with pytest.raises(ValueError, match="dropout"):
        numrnn.RNN.from_torch(torch.nn.GRU(3, 4, num_layers=2, dropout=0.5))
    with pytest.raises(ValueError, match="proj_size"):
        numrnn.RNN.from_torch(torch.nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(TypeError, match="module"):
        numrnn.RNN.from_torch(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="rate"):
        numrnn.RNN(3, 4, cell="rate").to_torch()
    with pytest.raises(ValueError, match="alpha"):
        numrnn.RNN(3, 4, alpha=0.5).to_torch()


def test_state_dict_accepts_torch_tensors():
    m = torch.nn.LSTM(3, 4, dtype=torch.float64)
    net = numrnn.RNN(3, 4, cell="lstm")
    net.load_state_dict(m.state_dict())
    assert_close(net.state_dict()["weight_hh_l0"], m.weight_hh_l0.detach().numpy())
