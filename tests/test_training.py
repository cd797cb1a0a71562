"""Training: loss gradients, the composed training gradient, clipping, optimisers, saving."""
import numpy as np
import pytest

import numrnn
from numrnn.experiments import (SGD, Adam, AddingProblem, CharLM, CopyMemory, FlipFlop,
                                LinearReadout, clip_grad_norm, cross_entropy_loss,
                                cross_entropy_loss_grad, load_model, mse_loss, mse_loss_grad,
                                sample_text, save_model, train)
from numrnn.experiments.training import _loss_and_grads
from tests.tolerance import assert_close

# --- invalid input first ------------------------------------------------------------------


def test_train_rejects_mismatched_network():
    net = numrnn.RNN(3, 4, seed=0)
    with pytest.raises(ValueError, match="input_size must equal the task's input size 2, got 3"):
        train(net, AddingProblem(5), steps=1)
    with pytest.raises(TypeError, match="net: expected a numrnn.RNN"):
        train("net", AddingProblem(5), steps=1)
    with pytest.raises(TypeError, match="task: expected dtype float64"):
        train(numrnn.RNN(2, 4), AddingProblem(5, dtype=np.float32), steps=1)


@pytest.mark.parametrize("kw, exc, words", [
    (dict(steps=0), ValueError, ["steps", ">= 1"]),
    (dict(batch_size=-1), ValueError, ["batch_size"]),
    (dict(clip=-1.0), ValueError, ["clip"]),
    (dict(optimizer="rmsprop"), ValueError, ["optimizer", "'adam' or 'sgd'", "rmsprop"]),
    (dict(lr=0.0), ValueError, ["lr"]),
    (dict(readout=LinearReadout(5, 1)), ValueError, ["readout", "LinearReadout(4, 1)"]),
])
def test_train_bad_arguments(kw, exc, words):
    with pytest.raises(exc) as info:
        train(numrnn.RNN(2, 4, seed=0), AddingProblem(5), **kw)
    for w in words:
        assert w in str(info.value)


def test_loss_bad_arguments():
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 1\)"):
        mse_loss(np.zeros((2, 1, 1)), np.zeros((2, 1, 1)), np.ones((3, 1), bool))
    with pytest.raises(ValueError, match="mask: expected at least one True"):
        mse_loss(np.zeros((2, 1, 1)), np.zeros((2, 1, 1)), np.zeros((2, 1), bool))
    with pytest.raises(ValueError, match="labels: expected integer class indices"):
        cross_entropy_loss(np.zeros((2, 1, 3)), np.zeros((2, 1)))
    with pytest.raises(TypeError, match="betas"):
        Adam(betas=0.9)
    with pytest.raises(ValueError, match="momentum"):
        SGD(momentum=1.0)


def test_load_model_rejects_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a numrnn parameter file"):
        load_model(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="path: expected a .npz file"):
        load_model(tmp_path / "junk.npz")


# --- gradients ----------------------------------------------------------------------------


def test_loss_gradients_match_finite_differences(rng):
    pred = rng.standard_normal((4, 3, 2))
    target = rng.standard_normal((4, 3, 2))
    mask = rng.uniform(size=(4, 3)) < 0.6
    mask[0, 0] = True
    numrnn.gradcheck(lambda p: (mse_loss(p, target, mask), [mse_loss_grad(p, target, mask)]),
                     [pred])
    logits = rng.standard_normal((4, 3, 5))
    labels = rng.integers(0, 5, (4, 3))
    numrnn.gradcheck(lambda z: (cross_entropy_loss(z, labels, mask),
                                [cross_entropy_loss_grad(z, labels, mask)]), [logits])


@pytest.mark.parametrize("cell, task", [("lstm", AddingProblem(6)), ("tanh", CopyMemory(3)),
                                        ("gru", FlipFlop(7))])
def test_training_gradient_matches_finite_differences(cell, task):
    """The gradient train() follows (loss -> readout -> engine vjp) equals finite differences of
    the loss in float64, for every parameter of network and readout (max rel. error <= 1e-6)."""
    net = numrnn.RNN(task.input_size, 3, cell=cell, seed=1)
    readout = LinearReadout(3, task.output_size, seed=2)
    batch = task.sample(2, rng=3)
    names = list(net.parameters) + ["weight", "bias"]

    def f(params):
        net.load_state_dict({k: params[k] for k in net.parameters})
        readout.parameters["weight"][...] = params["weight"]
        readout.parameters["bias"][...] = params["bias"]
        loss, grads = _loss_and_grads(net, readout, task, batch, None)
        return loss, {k: grads["readout." + k] if k in ("weight", "bias") else grads["net." + k]
                      for k in names}

    start = dict(net.state_dict(), weight=readout.weight.copy(), bias=readout.bias.copy() + 0.1)
    result = numrnn.gradcheck(f, start)
    assert result.passed


def test_clip_grad_norm_rescales_jointly(rng):
    grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    before = {k: v.copy() for k, v in grads.items()}
    norm = clip_grad_norm(grads, 0.5)
    assert_close(norm, np.sqrt(sum(np.sum(v ** 2) for v in before.values())))
    after = np.sqrt(sum(np.sum(v ** 2) for v in grads.values()))
    assert_close(after, 0.5)
    assert_close(grads["a"] / before["a"], np.full((3, 4), 0.5 / norm))
    assert clip_grad_norm(grads, 10.0) == pytest.approx(0.5) and clip_grad_norm(grads, None) > 0


# --- optimisers against PyTorch ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["adam", "sgd", "sgd_nesterov"])
def test_optimizers_match_pytorch(kind, rng):
    """Five steps of our optimiser equal torch.optim's on the same gradients (float64)."""
    torch = pytest.importorskip("torch")
    p0 = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) for _ in range(5)]
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    if kind == "adam":
        ours, theirs = Adam(lr=0.05), torch.optim.Adam([tp], lr=0.05)
    else:
        nest = kind == "sgd_nesterov"
        ours = SGD(lr=0.05, momentum=0.8, nesterov=nest)
        theirs = torch.optim.SGD([tp], lr=0.05, momentum=0.8, nesterov=nest)
    params = {"w": p0.copy()}
    for g in grads:
        ours.step(params, {"w": g.copy()})
        tp.grad = torch.from_numpy(g.copy())
        theirs.step()
    assert_close(params["w"], tp.detach().numpy(), rtol=1e-13)


# --- training runs and persistence --------------------------------------------------------


def test_train_is_seeded_and_reduces_loss():
    task = FlipFlop(20, p=0.2)
    runs = [train(numrnn.RNN(3, 8, seed=0), task, steps=60, batch_size=16, lr=0.02, seed=5)
            for _ in range(2)]
    assert np.array_equal(runs[0].losses, runs[1].losses)
    assert runs[0].losses[-10:].mean() < 0.7 * runs[0].losses[:10].mean()
    assert runs[0].status.startswith("eval loss") and np.isfinite(runs[0].grad_norms).all()
    assert "chance" in repr(runs[0])


def test_float32_training():
    task = AddingProblem(8, dtype=np.float32)
    net = numrnn.RNN(2, 4, cell="gru", dtype=np.float32, seed=0)
    result = train(net, task, steps=5, optimizer="sgd", seed=0)
    assert net.parameters["weight_hh_l0"].dtype == np.float32
    assert result.readout.weight.dtype == np.float32 and np.isfinite(result.losses).all()


def test_save_load_round_trip(tmp_path):
    net = numrnn.RNN(3, 5, cell="lstm", num_layers=2, seed=0)
    readout = LinearReadout(5, 2, seed=1)
    save_model(tmp_path / "m.npz", net, readout, {"task": "flipflop", "T": 10})
    saved = load_model(tmp_path / "m.npz")
    assert repr(saved.net) == repr(net) and saved.meta == {"task": "flipflop", "T": 10}
    for k, v in net.state_dict().items():
        assert np.array_equal(saved.net.state_dict()[k], v)
    assert np.array_equal(saved.readout.weight, readout.weight)
    x = np.random.default_rng(0).standard_normal((4, 1, 3))
    assert np.array_equal(saved.net.forward(x)[0], net.forward(x)[0])


def test_char_lm_training_and_sampling():
    task = CharLM(16)
    net = numrnn.RNN(task.input_size, 16, cell="gru", seed=0)
    result = train(net, task, steps=40, batch_size=16, lr=0.02, seed=0)
    assert result.losses[-10:].mean() < result.losses[:5].mean()
    text = sample_text(net, result.readout, task, 50, prime="Shall", seed=1)
    assert text.startswith("Shall") and len(text) == 55 and set(text) <= set(task.vocab)
    assert text == sample_text(net, result.readout, task, 50, prime="Shall", seed=1)


def test_stop_below_ends_training_early():
    task = FlipFlop(20, p=0.2)
    result = train(numrnn.RNN(3, 8, seed=0), task, steps=400, batch_size=16, lr=0.02, seed=5,
                   stop_below=0.5)
    n = len(result.losses)
    assert 20 <= n < 400 and result.losses[-20:].mean() < 0.5
    assert result.config["steps_run"] == n and f"stopped at step {n}" in result.status
    with pytest.raises(ValueError, match="stop_below"):
        train(numrnn.RNN(3, 8, seed=0), task, steps=1, stop_below=-1.0)
