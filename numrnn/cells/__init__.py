"""Recurrent cells: the protocol every cell follows, the built-in cells, five from the literature.

A cell is one :class:`Cell` definition (:mod:`numrnn.cells.protocol`); the kernels of both
backends, the layer loop and the analysis read everything they need from it.  Built-in cells
(:mod:`numrnn.cells.builtin`) and the literature's (:mod:`numrnn.cells.literature`) are
registered by name; a user's own cell is passed as ``RNN(..., cell=my_cell)`` or registered with
:func:`register`.
"""
from . import functions
from .functions import NONLINEARITIES, sigmoid, sigmoid_grad
from .protocol import Cell, CellCheckError, check_cell, signature
from .registry import (choices, names, register, registered, resolve, unregister,
                       with_torch_twin)
from . import builtin, literature  # noqa: E402,F401 - registers the cells

__all__ = ["builtin", "literature", "Cell", "CellCheckError", "check_cell", "signature",
           "register", "unregister", "resolve", "names", "choices", "registered",
           "with_torch_twin", "functions", "sigmoid", "sigmoid_grad", "NONLINEARITIES"]
