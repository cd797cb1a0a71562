"""Training: loss gradients, the composed training gradient, clipping, optimisers, the loop.

Saving and loading are tested in test_persistence.py."""
import numpy as np
import pytest

import numrnn
from numrnn.experiments import (SGD, Adam, AddingProblem, CharLM, CopyMemory, FlipFlop,
                                LinearReadout, TrainingDiverged, clip_grad_norm,
                                cross_entropy_loss, cross_entropy_loss_grad, mse_loss,
                                mse_loss_grad, sample_text, train)
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


@pytest.mark.parametrize("seed", [-1, 2.5, "abc", [1, -2]])
def test_bad_seeds_name_the_seed(seed):
    """Every generator goes through one check: the message names `seed`, never NumPy's bare
    SeedSequence complaint."""
    task = AddingProblem(5)
    net = numrnn.RNN(2, 3, seed=0)
    for call in (lambda: LinearReadout(3, 1, seed=seed),
                 lambda: train(net, task, steps=1, seed=seed),
                 lambda: sample_text(net, LinearReadout(3, 5, seed=0), CharLM(5), 3, seed=seed)):
        with pytest.raises((TypeError, ValueError), match=r"^seed: expected None, a non-negative"):
            call()


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


# --- training runs ---------------------------------------------------------------------------


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


# --- divergence ---------------------------------------------------------------------------


def test_a_diverging_forward_pass_stops_training_with_the_initial_parameters():
    """A relu network with W_hh = 3 I overflows float64 after about 650 steps: the engine's
    NonFiniteError becomes TrainingDiverged at step 0, the parameters untouched."""
    net = numrnn.RNN(2, 4, cell="relu", init="identity", gain=3.0, seed=0)
    before = net.state_dict()
    with pytest.raises(TrainingDiverged) as info:
        train(net, AddingProblem(1000), steps=3, seed=0)
    exc = info.value
    assert isinstance(exc, FloatingPointError) and exc.step == 0
    assert str(exc).startswith("diverged at step 0 of 3: forward: the hidden state of layer 0")
    result = exc.result
    assert result.diverged_at == 0 and len(result.losses) == 0 and np.isnan(result.eval_loss)
    assert result.net is net and result.config["steps_run"] == 0
    assert all(np.array_equal(v, before[k]) for k, v in net.state_dict().items())


def test_a_diverging_update_keeps_the_last_finite_parameters():
    """SGD at lr = 1e10 without clipping: the first update is finite but huge, the second
    step's gradient overflows.  The partial result holds step 0's loss and the parameters
    after step 0 (not the engine's complaint about its `d_output` argument).  Seed 2: with
    some networks the huge first update leaves the gradient finite for a few more steps."""
    net = numrnn.RNN(2, 4, cell="relu", seed=2)
    after = {}

    def snapshot(step, loss):
        after[step] = {k: v.copy() for k, v in net.state_dict().items()}
    with pytest.raises(TrainingDiverged) as info:
        train(net, AddingProblem(10), steps=20, batch_size=4, optimizer="sgd", lr=1e10,
              clip=None, seed=0, callback=snapshot)
    result = info.value.result
    assert result.diverged_at == 1 and len(result.losses) == 1 and list(after) == [0]
    assert "the gradient" in result.status and "d_output" not in result.status
    assert all(np.array_equal(v, after[0][k]) for k, v in net.state_dict().items())


class _Poison:
    """An optimiser that writes an inf into the readout's weight at its third step."""

    def __init__(self):
        self.inner, self.t = SGD(lr=0.01), 0

    def step(self, params, grads):
        self.inner.step(params, grads)
        self.t += 1
        if self.t == 3:
            params["readout.weight"][0, 0] = np.inf


def test_a_non_finite_update_is_undone():
    net = numrnn.RNN(3, 4, seed=0)
    readout = LinearReadout(4, 3, seed=0)
    after = {}

    def snapshot(step, loss):
        after[step] = dict(net.state_dict(), readout=readout.weight.copy())
    with pytest.raises(TrainingDiverged) as info:
        train(net, FlipFlop(8), steps=10, optimizer=_Poison(), readout=readout, seed=0,
              callback=snapshot)
    result = info.value.result
    assert result.diverged_at == 2 and len(result.losses) == 2 and result.readout is readout
    assert "the update made parameter readout.weight NaN or inf" in result.status
    assert np.array_equal(readout.weight, after[1]["readout"])
    assert all(np.array_equal(v, after[1][k]) for k, v in net.state_dict().items())
