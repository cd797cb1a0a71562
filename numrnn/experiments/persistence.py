"""Saving and loading a trained model: parameters and a JSON record in one ``.npz`` file, no pickle.

A file holds the network's parameters (``net/<name>``, PyTorch's names), the readout's
(``readout/weight``, ``readout/bias``, if one was saved) and ``__numrnn__``, a JSON record::

    {"format": 2, "net": RNN.config(), "meta": {...}}

The network's architecture is what :meth:`numrnn.RNN.config` says and is rebuilt by
:meth:`numrnn.RNN.from_config`, so every registered cell comes back with its options and its
nonlinearity.  A user's cell is saved by its registered name: register it
(:func:`numrnn.cells.register`) before saving, and again before loading.  Files of format 1 (no
"format" key; the network's arguments with "alpha" and no "cell_options"), written before the cell
protocol, are still read.
"""
import json
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from .. import _validation as _v
from .. import cells
from ..network import RNN
from .readout import LinearReadout

__all__ = ["save_model", "load_model", "SavedModel", "to_json"]

#: The version of the record :func:`save_model` writes.
FORMAT = 2

#: The keys of a format-1 record's "net": RNN's arguments as they were before the cell protocol
#: (alpha was an argument of its own; cells had no other options).
_FORMAT1_KEYS = ("input_size", "hidden_size", "cell", "num_layers", "bias", "bidirectional",
                 "batch_first", "alpha", "nonlinearity", "dtype")


@dataclass(frozen=True)
class SavedModel:
    """A network, its readout and the metadata stored with them by :func:`save_model`."""

    net: RNN
    readout: LinearReadout
    meta: dict


def _jsonable(value):
    """``value`` with NumPy scalars and arrays as Python ones and every NaN or inf as None."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(payload, indent=2):
    """Strict JSON text of ``payload``: a NaN or inf is written as ``null``.

    JSON has no NaN or Infinity; Python's ``json`` would write them as bare tokens that strict
    parsers reject.  numrnn writes ``null`` for every non-finite number (a measurement that
    does not exist, such as the Kaplan-Yorke dimension beyond the exponents computed) and
    refuses any other non-JSON value.

    Parameters
    ----------
    payload : dict, list, str, number, bool, None, NumPy scalar or array, nested
    indent : int or None

    Returns
    -------
    str

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.experiments import to_json
    >>> to_json({"loss": np.float64(0.5), "dimension": float("nan")}, indent=None)
    '{"loss": 0.5, "dimension": null}'
    """
    return json.dumps(_jsonable(payload), indent=indent, allow_nan=False)


def save_model(path, net, readout=None, meta=None):
    """Save a network (and readout) to a ``.npz`` file: parameters plus JSON metadata, no pickle.

    The architecture is stored as :meth:`numrnn.RNN.config` (cell, its options and
    nonlinearity, layers, directions, dtype) and rebuilt from it by :func:`load_model`.

    Parameters
    ----------
    path : str or path-like
    net : numrnn.RNN
        Its cell must be registered (:func:`numrnn.cells.register`): the file names it.
    readout : LinearReadout, optional
    meta : dict, optional
        JSON-serialisable extras (task, training settings, ...); a NaN or inf is stored as null.

    Raises
    ------
    ValueError
        When the network's cell is a :class:`numrnn.Cell` that is not registered under its name
        (nothing is written).

    Examples
    --------
    >>> import os, tempfile, numrnn
    >>> from numrnn.experiments import load_model, save_model
    >>> net = numrnn.RNN(2, 3, cell="cornn", cell_options={"dt": 0.1}, seed=0)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save_model(os.path.join(folder, "m.npz"), net)
    ...     load_model(os.path.join(folder, "m.npz")).net
    RNN(2, 3, cell='cornn', cell_options={'dt': 0.1}, dtype=numpy.float64)
    """
    if not isinstance(net, RNN):
        raise TypeError(f"net: expected a numrnn.RNN, got {type(net).__name__}")
    config = net.config()
    if not isinstance(config["cell"], str):
        raise ValueError(f"net: its cell {net.cell!r} is a numrnn.Cell that is not registered "
                         f"under that name, so a saved file could not name it; register it first "
                         f"with numrnn.cells.register({net.cell!r}, cell) (and register it again "
                         f"before load_model)")
    arrays = {"net/" + k: v for k, v in net.state_dict().items()}
    if readout is not None:
        arrays.update({"readout/" + k: v for k, v in readout.parameters.items()})
    info = {"format": FORMAT, "net": config, "meta": meta or {}}
    arrays["__numrnn__"] = np.array(to_json(info, indent=None))
    np.savez(path, **arrays)


_SAVED = "a .npz file written by numrnn (save_model or `numrnn train`)"

# what a damaged file raises while it is read: the zip layer (truncation and flipped bits give
# bad headers and CRC mismatches, a flipped flag "encryption" or an unknown compression method),
# zlib, NumPy's .npy header parser and reader
_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError,
                SyntaxError, MemoryError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                zlib.error, struct.error)


def _read_arrays(path):
    """Every array of the .npz file at ``path``, read in full (so a damaged member is found now)."""
    name = str(path)
    try:
        with open(path, "rb") as fh:  # ours to close, also when NumPy fails half-way
            magic = fh.read(4)
            if magic == b"PK\x03\x04":  # a zip archive, as every .npz file is
                fh.seek(0)
                with np.load(fh, allow_pickle=False) as data:
                    return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise ValueError(f"path: expected {_SAVED}, got {name!r} (no such file)") from None
    except IsADirectoryError:
        raise ValueError(f"path: expected {_SAVED}, got {name!r}, a directory") from None
    except _READ_ERRORS as exc:
        raise ValueError(f"path: expected {_SAVED}, could not read {name!r} (truncated or "
                         f"damaged): {type(exc).__name__}: {exc}") from None
    what = "an empty file" if not magic else f"a file beginning {magic!r}, not a zip archive"
    raise ValueError(f"path: expected {_SAVED}, got {name!r}, {what}")


def _damaged(name, raw):
    return ValueError(f"path: {name!r} holds a damaged numrnn record: expected a JSON object "
                      f"{{'format': {FORMAT}, 'net': {{RNN.config()}}, 'meta': {{...}}}} (or a "
                      f"format-1 record {{'net': {{{', '.join(_FORMAT1_KEYS)}}}, 'meta': "
                      f"{{...}}}}), got {str(raw)[:200]!r}")


def _read_record(arrays, name):
    """(the network's RNN.config(), meta) from the ``__numrnn__`` record, of either format."""
    raw = arrays.get("__numrnn__")
    if raw is None:
        raise ValueError(f"path: {name!r} is not a numrnn parameter file (no '__numrnn__' "
                         f"record); expected {_SAVED}")
    try:
        info = json.loads(str(raw)) if raw.dtype.kind == "U" and raw.ndim == 0 else None
    except ValueError:
        info = None
    if (not isinstance(info, dict) or not isinstance(info.get("net"), dict)
            or not isinstance(info.get("meta", {}), dict)):
        raise _damaged(name, raw)
    fmt = info.get("format", 1)
    if type(fmt) is not int or fmt < 1:
        raise _damaged(name, raw)
    if fmt > FORMAT:
        raise ValueError(f"path: {name!r} was written by a newer numrnn (record format {fmt}); "
                         f"this version reads formats 1 to {FORMAT}: upgrade numrnn")
    net = info["net"]
    if fmt == 1:
        if set(net) != set(_FORMAT1_KEYS):
            raise _damaged(name, raw)
        # alpha was an argument of RNN; it is now the option "alpha" of the cells that leak
        config = {k: v for k, v in net.items() if k != "alpha"}
        config["cell_options"] = {} if net["alpha"] == 1.0 else {"alpha": net["alpha"]}
    else:
        config = dict(net)
    return config, info.get("meta", {})


def _rebuild(arrays, config):
    """(net, readout or None) from the arrays and the network's configuration; TypeError or
    ValueError if they do not describe one."""
    config = dict(config)
    if "dtype" in config:
        if not isinstance(config["dtype"], str):
            raise TypeError(f"dtype: expected 'float32' or 'float64', got {config['dtype']!r}")
        config["dtype"] = str(_v.check_dtype_arg(config["dtype"]))
    cell = config.get("cell")
    if isinstance(cell, str) and cell not in cells.names():
        raise ValueError(f"cell: {cell!r} is not a registered cell (registered: "
                         f"{', '.join(cells.names())}); a network with a user's cell loads once "
                         f"that cell is registered again with numrnn.cells.register({cell!r}, "
                         f"...)")
    if not isinstance(cell, str):
        raise TypeError(f"cell: expected a registered cell's name, got {cell!r}")
    net = RNN.from_config(config, seed=0)  # seeded only to draw no entropy: replaced next
    net.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("net/")})
    extra = sorted(set(arrays) - {"__numrnn__", "readout/weight", "readout/bias"}
                   - {"net/" + k for k in net.parameters})
    if extra:
        raise ValueError(f"arrays: expected the network's parameters and a readout, got also "
                         f"{extra}")
    if "readout/weight" not in arrays and "readout/bias" not in arrays:
        return net, None
    H = net.hidden_size * net.num_directions
    w = _v.check_float_array("readout/weight", arrays.get("readout/weight"), net.dtype,
                             [(None, H)])
    b = _v.check_float_array("readout/bias", arrays.get("readout/bias"), net.dtype,
                             [(w.shape[0],)])
    readout = LinearReadout(H, w.shape[0], dtype=net.dtype, seed=0)
    readout.parameters.update(weight=w.copy(), bias=b.copy())
    return net, readout


def load_model(path):
    """Load what :func:`save_model` wrote.

    Every array is read in full and checked against the stored configuration (names, shapes,
    dtype, finiteness), so a damaged file is refused here, not later.  The network is rebuilt
    with :meth:`numrnn.RNN.from_config`; a user's cell must be registered under the name it was
    saved with.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    SavedModel
        ``net``, ``readout`` (None if none was saved) and ``meta``.

    Raises
    ------
    ValueError
        Naming the path and what is wrong: missing, a directory, not a zip archive, truncated,
        damaged (a CRC mismatch, a bad header), an .npz file without numrnn's record, a record
        of a newer format, or a record or arrays that do not describe a network (a cell that is
        not registered, say).
    """
    arrays = _read_arrays(path)
    config, meta = _read_record(arrays, str(path))
    try:
        net, readout = _rebuild(arrays, config)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"path: {str(path)!r} holds a numrnn record that does not describe a "
                         f"network numrnn can rebuild: {exc}") from None
    return SavedModel(net, readout, meta)
