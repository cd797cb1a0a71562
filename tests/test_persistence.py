"""Saving and loading models: every registered cell round-trips, old files load, damage is found."""
import json
import zipfile

import numpy as np
import pytest

import numrnn
from numrnn import cells
from numrnn.experiments import LinearReadout, load_model, save_model, to_json
from tests.problems import save_gru_model
from tests.usercells import registry, user_cell  # noqa: F401 - a fixture


def _strict_loads(text):
    def refuse(token):
        raise ValueError(f"invalid JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def _other_options(cell):
    """Every option of ``cell`` changed from its default: halved (0 becomes 0.5), which keeps
    each registered cell's options valid (leaks in (0, 1], step sizes > 0, dampings >= 0)."""
    return {k: v / 2 if v else 0.5 for k, v in cell.options.items()}


def _save_format1(path, net, readout=None, meta=None):
    """A file as numrnn wrote it before the cell protocol (record format 1): the old save_model,
    line for line.  No "format" key; "alpha" is an argument of its own and there are no
    "cell_options"; the nonlinearity is stored for the rate cell only."""
    keys = ("input_size", "hidden_size", "cell", "num_layers", "bias", "bidirectional",
            "batch_first", "alpha")
    config = dict({k: getattr(net, k) for k in keys},
                  nonlinearity=net.nonlinearity if net.cell == "rate" else None,
                  dtype=str(net.dtype))
    arrays = {"net/" + k: v for k, v in net.state_dict().items()}
    if readout is not None:
        arrays.update({"readout/" + k: v for k, v in readout.parameters.items()})
    arrays["__numrnn__"] = np.array(to_json({"net": config, "meta": meta or {}}, indent=None))
    np.savez(path, **arrays)


def _same_model(a, b):
    return (repr(a.net) == repr(b.net) and a.net.config() == b.net.config() and a.meta == b.meta
            and all(np.array_equal(a.net.state_dict()[k], v) for k, v in b.net.state_dict().items())
            and np.array_equal(a.readout.weight, b.readout.weight)
            and np.array_equal(a.readout.bias, b.readout.bias))


# --- invalid input first ------------------------------------------------------------------


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


def test_save_model_refuses_an_unregistered_cell_and_writes_nothing(tmp_path):
    net = numrnn.RNN(2, 3, cell=user_cell("leaky_unregistered"), seed=0)
    with pytest.raises(ValueError) as info:
        save_model(tmp_path / "m.npz", net)
    assert str(info.value).startswith("net: its cell 'leaky_unregistered' is a numrnn.Cell that "
                                      "is not registered")
    assert "numrnn.cells.register('leaky_unregistered', cell)" in str(info.value)
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises(TypeError, match="net: expected a numrnn.RNN, got str"):
        save_model(tmp_path / "m.npz", "net")


def test_save_model_refuses_a_cell_registered_under_its_name_but_not_the_same(tmp_path,
                                                                              registry):
    """A network made with one definition, after another was registered under its name: the
    name would load the other cell, so the file is refused."""
    net = numrnn.RNN(2, 3, cell=user_cell("leaky_twice"), seed=0)
    registry.register("leaky_twice", user_cell("leaky_twice"))
    with pytest.raises(ValueError, match="not registered under that name"):
        save_model(tmp_path / "m.npz", net)


@pytest.fixture(params=["format 2", "format 1"])
def model_file(request, tmp_path):
    """A GRU and readout saved as `numrnn train` writes them now, and as it wrote them before
    the cell protocol."""
    if request.param == "format 2":
        return save_gru_model(tmp_path / "m.npz", 2, 3, 1, {"task": "adding", "T": 5})
    _save_format1(tmp_path / "m.npz", numrnn.RNN(2, 3, cell="gru", seed=0),
                  LinearReadout(3, 1, seed=1), {"task": "adding", "T": 5})
    return tmp_path / "m.npz"


def test_load_model_finds_every_flipped_bit_and_truncation(tmp_path):
    """One bit flipped in each byte of a saved model (a different bit from byte to byte), and
    the file cut at every fifth length: loading either refuses it with a ValueError naming the
    path, or (the flip fell in a field nothing reads, such as a timestamp) gives back exactly the
    saved model.  Never another exception, never a silently different network: every array is
    read in full, so its CRC is checked at load time (before the record is parsed, so the
    format-1 files take the same path)."""
    model_file = save_gru_model(tmp_path / "m.npz", 2, 3, 1, {"task": "adding", "T": 5})
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
    (lambda r: json.dumps(dict(r, net=[])), ["damaged numrnn record"]),
    (lambda r: json.dumps(dict(r, format="2")), ["damaged numrnn record"]),
    (lambda r: json.dumps(dict(r, format=True)), ["damaged numrnn record"]),
    (lambda r: json.dumps(dict(r, format=3)), ["written by a newer numrnn (record format 3)",
                                               "formats 1 to 2"]),
    (lambda r: json.dumps(dict(r, net=dict(r["net"], hidden_size="3"))),
     ["does not describe a network", "hidden_size"]),
    (lambda r: json.dumps(dict(r, net=dict(r["net"], cell="transformer"))),
     ["does not describe a network", "cell: 'transformer' is not a registered cell",
      "numrnn.cells.register('transformer', ...)"]),
    (lambda r: json.dumps(dict(r, net=dict(r["net"], cell=["gru"]))),
     ["does not describe a network", "cell: expected a registered cell's name"]),
    (lambda r: json.dumps(dict(r, net=dict(r["net"], dtype=5))),
     ["does not describe a network", "dtype"]),
    (lambda r: json.dumps(dict(r, net=dict(r["net"], dtype="int8"))),
     ["does not describe a network", "dtype: expected numpy.float32 or numpy.float64"]),
    (lambda r: json.dumps(dict(r, net=dict(r["net"], hidden_size=4))),
     ["does not describe a network", "state_dict"]),
    (lambda r: json.dumps(dict(r, net=dict(r["net"], cell_options={"dt": 0.1}))),
     ["does not describe a network", "cell_options", "'gru' cell has no option(s) ['dt']"]),
    (lambda r: json.dumps(dict(r, net=dict(r["net"], bogus=1))),
     ["does not describe a network", "unknown ['bogus']"]),
])
def test_load_model_rejects_a_damaged_record(tmp_path, change, words):
    model_file = save_gru_model(tmp_path / "m.npz", 2, 3, 1, {"task": "adding", "T": 5})
    _rewrite(model_file, {"__numrnn__": np.array(change(_record(model_file)))})
    with pytest.raises(ValueError) as info:
        load_model(model_file)
    assert str(info.value).startswith("path: ")
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("change, words", [
    (lambda r: dict(r, net={k: v for k, v in r["net"].items() if k != "alpha"}),
     ["damaged numrnn record", "format-1 record"]),
    (lambda r: dict(r, net=dict(r["net"], alpha=0.5)),
     ["does not describe a network", "'gru' cell has no option(s) ['alpha']"]),
    (lambda r: dict(r, net=dict(r["net"], cell_options={})), ["damaged numrnn record"]),
])
def test_load_model_rejects_a_damaged_format1_record(tmp_path, change, words):
    _save_format1(tmp_path / "m.npz", numrnn.RNN(2, 3, cell="gru", seed=0))
    _rewrite(tmp_path / "m.npz",
             {"__numrnn__": np.array(json.dumps(change(_record(tmp_path / "m.npz"))))})
    with pytest.raises(ValueError) as info:
        load_model(tmp_path / "m.npz")
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


# --- round trips --------------------------------------------------------------------------


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


@pytest.mark.parametrize("name", cells.names())
def test_every_registered_cell_round_trips_with_its_options(tmp_path, name):
    """The architecture is RNN.config(): the cell, every option changed from its default, the
    nonlinearity, layers, directions and dtype come back exactly, with the parameters."""
    options = _other_options(cells.registered(name))
    net = numrnn.RNN(2, 3, cell=name, num_layers=2, bidirectional=True, cell_options=options,
                     dtype=np.float32, seed=0)
    readout = LinearReadout(6, 2, dtype=np.float32, seed=1)
    save_model(tmp_path / "m.npz", net, readout, {"cell": name})
    saved = load_model(tmp_path / "m.npz")
    assert saved.net.config() == net.config() and repr(saved.net) == repr(net)
    assert saved.net.cell_options == dict(cells.registered(name).options, **options)
    assert saved.net.definition is net.definition
    assert all(np.array_equal(saved.net.state_dict()[k], v) for k, v in net.state_dict().items())
    assert np.array_equal(saved.readout.weight, readout.weight) and saved.meta == {"cell": name}


@pytest.mark.parametrize("name, nonlinearity", [("rate", "relu"), ("indrnn", "tanh"),
                                                ("antisymmetric", "relu"),
                                                ("antisymmetric", "linear")])
def test_the_chosen_nonlinearity_round_trips(tmp_path, name, nonlinearity):
    net = numrnn.RNN(2, 3, cell=name, nonlinearity=nonlinearity, seed=0)
    save_model(tmp_path / "m.npz", net)
    saved = load_model(tmp_path / "m.npz")
    assert saved.net.nonlinearity == nonlinearity and saved.net.definition is net.definition
    assert saved.readout is None


def test_cell_options_change_what_the_loaded_network_computes(tmp_path):
    """coRNN with dt = 0.1 instead of 0.042: the loaded network computes what the saved one
    did, and not what the default dt computes from the same parameters."""
    net = numrnn.RNN(2, 4, cell="cornn", cell_options={"dt": 0.1, "gamma": 1.0}, seed=0)
    save_model(tmp_path / "m.npz", net)
    loaded = load_model(tmp_path / "m.npz").net
    default = numrnn.RNN(2, 4, cell="cornn", seed=0)
    default.load_state_dict(net.state_dict())
    x = np.random.default_rng(0).standard_normal((6, 2, 2))
    out = net.forward(x)[0]
    assert np.array_equal(loaded.forward(x)[0], out)
    assert not np.allclose(default.forward(x)[0], out)


def test_a_registered_user_cell_round_trips_once_registered_again(tmp_path, registry):
    """The file names the cell; a later session registers it again (a fresh, equal
    definition) before loading.  Until then the error says what to do."""
    registry.register("leaky_user", user_cell("leaky_user"))
    net = numrnn.RNN(2, 3, cell="leaky_user", cell_options={"beta": 0.25}, seed=0)
    save_model(tmp_path / "m.npz", net, LinearReadout(3, 1, seed=1))
    record = _record(tmp_path / "m.npz")
    assert record["format"] == 2 and record["net"] == net.config()
    assert record["net"]["cell"] == "leaky_user"

    registry.register("leaky_user", user_cell("leaky_user"))  # as a new session would
    saved = load_model(tmp_path / "m.npz")
    assert saved.net.cell == "leaky_user" and saved.net.cell_options == {"beta": 0.25}
    assert all(np.array_equal(saved.net.state_dict()[k], v) for k, v in net.state_dict().items())

    _rewrite(tmp_path / "m.npz", {"__numrnn__": np.array(json.dumps(
        dict(record, net=dict(record["net"], cell="leaky_elsewhere"))))})
    with pytest.raises(ValueError) as info:
        load_model(tmp_path / "m.npz")
    assert ("cell: 'leaky_elsewhere' is not a registered cell" in str(info.value)
            and "numrnn.cells.register('leaky_elsewhere', ...)" in str(info.value))


# --- files written before the cell protocol -----------------------------------------------


@pytest.mark.parametrize("kw", [
    dict(cell="gru"),
    dict(cell="lstm", num_layers=2, bidirectional=True),
    dict(cell="rate", nonlinearity="relu", alpha=0.5),
    dict(cell="tanh", alpha=0.3, bias=False, batch_first=True, dtype=np.float32),
    dict(cell="relu"),
    dict(cell="linear", alpha=0.9),
], ids=lambda kw: kw["cell"])
def test_format1_files_still_load(tmp_path, kw):
    """Files of the old format: "alpha" becomes the cell's option, the rest are RNN.config()."""
    net = numrnn.RNN(2, 3, seed=0, **kw)
    readout = LinearReadout(3 * net.num_directions, 1, dtype=net.dtype, seed=1)
    _save_format1(tmp_path / "m.npz", net, readout, {"task": "adding", "T": 5})
    assert "format" not in _record(tmp_path / "m.npz")
    saved = load_model(tmp_path / "m.npz")
    assert saved.net.config() == net.config() and repr(saved.net) == repr(net)
    assert saved.net.alpha == kw.get("alpha", 1.0)
    assert _same_model(saved, type(saved)(net, readout, {"task": "adding", "T": 5}))


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
    net = numrnn.RNN(2, 3, seed=0)
    save_model(tmp_path / "m.npz", net, meta={"eval_loss": float("nan")})
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        assert "__numrnn__.npy" in z.namelist()
    with np.load(tmp_path / "m.npz") as data:
        record = _strict_loads(str(data["__numrnn__"]))
    assert record == {"format": 2, "net": net.config(), "meta": {"eval_loss": None}}
    assert load_model(tmp_path / "m.npz").meta == {"eval_loss": None}
