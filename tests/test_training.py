"""Training: loss gradients, the composed training gradient, clipping, optimisers, saving."""
import json
import zipfile

import numpy as np
import pytest

import numrnn
from numrnn.experiments import (SGD, Adam, AddingProblem, CharLM, CopyMemory, FlipFlop,
                                LinearReadout, TrainingDiverged, clip_grad_norm,
                                cross_entropy_loss, cross_entropy_loss_grad, load_model, mse_loss,
                                mse_loss_grad, sample_text, save_model, to_json, train)
from numrnn.experiments.training import _loss_and_grads
from tests.problems import save_gru_model
from tests.tolerance import assert_close


def _strict_loads(text):
    def refuse(token):
        raise ValueError(f"invalid JSON token {token}")
    return json.loads(text, parse_constant=refuse)

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


def test_load_model_rejects_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a numrnn parameter file"):
        load_model(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="path: expected a .npz file.*not a zip archive"):
        load_model(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match=r"path: .*'.*missing\.npz' \(no such file\)"):
        load_model(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="path: .*, a directory"):
        load_model(tmp_path)


@pytest.fixture
def model_file(tmp_path):
    return save_gru_model(tmp_path / "m.npz", 2, 3, 1, {"task": "adding", "T": 5})


def _same_model(a, b):
    return (repr(a.net) == repr(b.net) and a.meta == b.meta
            and all(np.array_equal(a.net.state_dict()[k], v) for k, v in b.net.state_dict().items())
            and np.array_equal(a.readout.weight, b.readout.weight)
            and np.array_equal(a.readout.bias, b.readout.bias))


def test_load_model_finds_every_flipped_bit_and_truncation(tmp_path, model_file):
    """One bit flipped in each byte of a saved model (a different bit from byte to byte), and
    the file cut at every fifth length: loading either refuses it with a ValueError naming the
    path, or (the flip fell in a field nothing reads, such as a timestamp) gives back exactly the
    saved model.  Never another exception, never a silently different network: every array is
    read in full, so its CRC is checked at load time."""
    good = load_model(model_file)
    data = model_file.read_bytes()
    damaged = tmp_path / "damaged.npz"
    variants = [data[:i] + bytes([data[i] ^ (1 << (i % 8))]) + data[i + 1:]
                for i in range(len(data))] + [data[:n] for n in range(0, len(data), 5)]
    refused = 0
    for blob in variants:
        damaged.write_bytes(blob)
        try:
            loaded = load_model(damaged)
        except ValueError as exc:
            assert str(exc).startswith("path: ") and str(damaged) in str(exc), exc
            refused += 1
        else:
            assert _same_model(loaded, good)
    assert refused > len(variants) // 2


def _rewrite(path, replace):
    """The model file at ``path`` with some of its arrays replaced (None removes one)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    for k, v in replace.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    np.savez(path, **arrays)


def _record(path):
    with np.load(path) as data:
        return json.loads(str(data["__numrnn__"]))


@pytest.mark.parametrize("change, words", [
    (lambda r: "{not json", ["damaged numrnn record", "expected a JSON object"]),
    (lambda r: json.dumps([1, 2]), ["damaged numrnn record"]),
    (lambda r: json.dumps({"net": {"cell": "gru"}, "meta": {}}), ["damaged numrnn record"]),
    (lambda r: json.dumps(dict(r, meta=[])), ["damaged numrnn record"]),
    (lambda r: json.dumps(dict(r, net=dict(r["net"], hidden_size="3"))),
     ["does not describe a network", "hidden_size"]),
    (lambda r: json.dumps(dict(r, net=dict(r["net"], cell="transformer"))),
     ["does not describe a network", "cell"]),
    (lambda r: json.dumps(dict(r, net=dict(r["net"], dtype=5))),
     ["does not describe a network", "dtype"]),
    (lambda r: json.dumps(dict(r, net=dict(r["net"], hidden_size=4))),
     ["does not describe a network", "state_dict"]),
])
def test_load_model_rejects_a_damaged_record(model_file, change, words):
    _rewrite(model_file, {"__numrnn__": np.array(change(_record(model_file)))})
    with pytest.raises(ValueError) as info:
        load_model(model_file)
    assert str(info.value).startswith("path: ")
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("replace, words", [
    ({"readout/weight": np.ones((1, 4))}, ["readout/weight", "expected shape (*, 3)"]),
    ({"readout/bias": None}, ["readout/bias", "NoneType"]),
    ({"readout/bias": np.ones(1, np.float32)}, ["readout/bias", "float64"]),
    ({"readout/weight": np.full((1, 3), np.nan)}, ["readout/weight", "finite"]),
    ({"net/weight_hh_l0": None}, ["state_dict", "missing ['weight_hh_l0']"]),
    ({"extra": np.ones(2)}, ["['extra']"]),
])
def test_load_model_rejects_arrays_that_do_not_fit(model_file, replace, words):
    _rewrite(model_file, replace)
    with pytest.raises(ValueError) as info:
        load_model(model_file)
    assert str(info.value).startswith(f"path: {str(model_file)!r} holds a numrnn record that")
    for w in words:
        assert w in str(info.value), (w, str(info.value))


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
    after step 0 (not the engine's complaint about its `d_output` argument)."""
    net = numrnn.RNN(2, 4, cell="relu", seed=0)
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


# --- JSON ---------------------------------------------------------------------------------


def test_to_json_writes_non_finite_numbers_as_null():
    payload = {"a": float("nan"), "b": np.float32("inf"), "c": np.array([1.0, -np.inf]),
               "d": [np.int64(3), True, None, "x"]}
    text = to_json(payload, indent=None)
    assert text == '{"a": null, "b": null, "c": [1.0, null], "d": [3, true, null, "x"]}'
    assert _strict_loads(text)["c"] == [1.0, None]
    with pytest.raises(TypeError):
        to_json({"a": object()})


def test_save_model_writes_a_strict_json_record(tmp_path):
    save_model(tmp_path / "m.npz", numrnn.RNN(2, 3, seed=0), meta={"eval_loss": float("nan")})
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        assert "__numrnn__.npy" in z.namelist()
    with np.load(tmp_path / "m.npz") as data:
        record = _strict_loads(str(data["__numrnn__"]))
    assert record["meta"] == {"eval_loss": None}
    assert load_model(tmp_path / "m.npz").meta == {"eval_loss": None}

