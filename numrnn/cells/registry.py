"""Cells by name: what ``RNN(cell="...")``, ``RNN.from_config`` and the command line look up."""
from .protocol import Cell

__all__ = ["register", "unregister", "resolve", "names", "choices", "registered",
           "with_torch_twin"]

#: name -> (factory(nonlinearity) -> Cell, allowed nonlinearities, default, fixed)
_REGISTRY = {}
#: (name, nonlinearity) -> the Cell made for it (one definition each: kernels are kept per Cell)
_MADE = {}


def register(name, factory, *, nonlinearities=(), default=None, fixed=None):
    """Make a cell selectable as ``RNN(..., cell=name)``.

    Parameters
    ----------
    name : str
    factory : Cell or function
        The definition, or ``nonlinearity -> Cell`` for a cell whose nonlinearity is chosen
        with ``RNN(..., nonlinearity=...)``.
    nonlinearities : tuple of str
        The choices ``nonlinearity`` accepts (empty: none); the first is the default unless
        ``default`` says otherwise.
    fixed : str, optional
        A nonlinearity the cell's name already fixes ("tanh" for the tanh cell): passing it
        again is accepted, any other is an error.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name: expected an identifier, got {name!r}")
    if isinstance(factory, Cell):
        cell = factory
        factory = lambda nonlinearity: cell  # noqa: E731
    elif not callable(factory):
        raise TypeError(f"factory: expected a Cell or a function nonlinearity -> Cell, got "
                        f"{type(factory).__name__}")
    nonlinearities = tuple(nonlinearities)
    if default is None and nonlinearities:
        default = nonlinearities[0]
    _REGISTRY[name] = (factory, nonlinearities, default, fixed)
    for key in [k for k in _MADE if k[0] == name]:
        del _MADE[key]


def _make(name, nonlinearity):
    key = (name, nonlinearity)
    if key not in _MADE:
        made = _REGISTRY[name][0](nonlinearity)
        if not isinstance(made, Cell):
            raise TypeError(f"cell {name!r}: its factory returned {type(made).__name__}, not a "
                            "numrnn.Cell")
        _MADE[key] = made
    return _MADE[key]


def registered(name, nonlinearity=None):
    """The Cell registered as ``name`` (for ``nonlinearity``: default None, the cell's default),
    or None if there is none."""
    if name not in _REGISTRY:
        return None
    factory, choices, default, fixed = _REGISTRY[name]
    chosen = (default if nonlinearity is None else nonlinearity) if choices else None
    if choices and chosen not in choices:
        return None
    return _make(name, chosen)


def with_torch_twin(mode):
    """The name of the registered cell whose math is ``torch.nn``'s ``mode`` ("LSTM", "GRU",
    "RNN_TANH", "RNN_RELU"), or None."""
    for name in _REGISTRY:
        cell = registered(name)
        if cell is not None and cell.torch == mode:
            return name
    return None


def choices(name):
    """(nonlinearities, default) of the registered cell ``name``: the values
    ``RNN(..., nonlinearity=...)`` accepts for it (an empty tuple: none) and the default."""
    if name not in _REGISTRY:
        raise ValueError(f"name: expected one of {names()}, got {name!r}")
    _, options, default, _ = _REGISTRY[name]
    return options, default


def unregister(name):
    """Remove a cell registered with :func:`register` (networks built with it keep working)."""
    if name not in _REGISTRY:
        raise ValueError(f"name: expected one of {names()}, got {name!r}")
    del _REGISTRY[name]
    for key in [k for k in _MADE if k[0] == name]:
        del _MADE[key]


def names():
    """The registered cell names, in registration order."""
    return tuple(_REGISTRY)


def resolve(cell, nonlinearity=None):
    """(Cell, nonlinearity) for ``RNN(cell=..., nonlinearity=...)``.

    ``cell`` is a registered name or a :class:`Cell`; the nonlinearity returned is what the
    network reports (None where the cell has no choice).
    """
    if isinstance(cell, Cell):
        if nonlinearity is not None and nonlinearity != cell.nonlinearity:
            raise ValueError(f"nonlinearity: the cell {cell.name!r} was defined with "
                             f"{cell.nonlinearity!r}; expected None, got {nonlinearity!r} "
                             "(define the cell with the nonlinearity you want)")
        return cell, cell.nonlinearity
    if not isinstance(cell, str) or cell not in _REGISTRY:
        raise ValueError(f"cell: expected one of {names()} or a numrnn.Cell, got {cell!r}")
    factory, choices, default, fixed = _REGISTRY[cell]
    if choices:
        chosen = default if nonlinearity is None else nonlinearity
        if chosen not in choices:
            raise ValueError(f"nonlinearity: the {cell} cell's phi must be "
                             f"{' or '.join(repr(c) for c in choices)}, got {nonlinearity!r}")
        return _make(cell, chosen), chosen
    if nonlinearity is not None and nonlinearity != fixed:
        also = f" or {fixed!r}" if fixed else ""
        raise ValueError(f"nonlinearity: the {cell!r} cell fixes its own nonlinearity; expected "
                         f"None{also}, got {nonlinearity!r} (choose it with cell=...)")
    return _make(cell, None), None
