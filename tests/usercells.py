"""A cell as a user writes one, and a registry that forgets what a test registered."""
import math

import pytest

from numrnn import cells


def user_cell(name):
    """h = (1 - beta) h_prev + beta tanh(z): a user's cell with one option, beta = 0.5."""
    def step(z, h, beta, one):
        y = math.tanh(z)
        return (one - beta) * h + beta * y, y

    def vjp(dh, h, h_new, y, beta, one):
        return dh * beta * (one - y * y), dh * (one - beta)

    def jvp(dz, dh, h, h_new, y, beta, one):
        return beta * (one - y * y) * dz + (one - beta) * dh

    return cells.Cell(name, gates=("z",), aux=("y",), step=step, vjp=vjp, jvp=jvp,
                      options={"beta": 0.5})


@pytest.fixture
def registry():
    """:mod:`numrnn.cells`, with the cells a test registers removed after it: they do not leak
    into other tests.  (A test that re-registers a built-in name is not supported.)"""
    before = set(cells.names())
    yield cells
    for name in set(cells.names()) - before:
        cells.unregister(name)
