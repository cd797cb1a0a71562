"""Copies of a cell's scalar functions for one backend, compiled into its kernels.

A twin has the same code object as the function it copies (the math is written once); only the
names it looks up may differ: the CPU backend replaces ``math`` (and ``math.exp``/``tanh``
imported by name) with versions that LLVM vectorises, and every Python function the cell's
functions call, through a global name or a closure, is twinned in turn.  Twins are registered
with :func:`numba.extending.register_jitable`, so ``@njit`` and ``@cuda.jit`` code can call them
whether or not the user decorated the originals.
"""
import math
import types

from numba.extending import register_jitable

__all__ = ["Twins"]


class Twins:
    """Twins of functions for one backend.

    Parameters
    ----------
    math_module : module or None
        What ``math`` means inside the twins (None: the real one).
    inline : str
        Numba's ``inline`` option for every twin ("always" inlines at IR level; "never" leaves
        it to LLVM).
    jit_options : dict, optional
        Compiler options for every twin, e.g. ``forceinline=True``: LLVM then always inlines it
        (the CPU row loops need their calls inlined to vectorise), without Numba typing its
        body again at every call site as IR inlining does.
    """

    def __init__(self, math_module=None, inline="never", jit_options=None):
        self.math_module = math_module
        self.inline = inline
        self.jit_options = dict(jit_options or {})
        self._memo = {}
        self._replace = {}
        if math_module is not None:
            for name in ("exp", "expm1", "tanh"):
                if hasattr(math_module, name):
                    self._replace[id(getattr(math, name))] = getattr(math_module, name)

    def __call__(self, fn):
        """The twin of ``fn`` (made once, then kept)."""
        key = id(fn)
        if key in self._memo:
            return self._memo[key][1]
        namespace = dict(fn.__globals__)  # a copy: the original's module is not touched
        twin = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__,
                                  self._closure(fn))
        twin.__qualname__ = fn.__qualname__
        twin.__module__ = fn.__module__
        twin = register_jitable(inline=self.inline, **self.jit_options)(twin)
        self._memo[key] = (fn, twin)  # keep fn alive: its id stays unique
        for name in _names(fn.__code__):
            if name not in namespace:
                continue
            value = namespace[name]
            if value is math and self.math_module is not None:
                namespace[name] = self.math_module
            elif id(value) in self._replace:
                namespace[name] = self._replace[id(value)]
            elif isinstance(value, types.FunctionType):
                namespace[name] = self(value)
        return twin

    def _closure(self, fn):
        if not fn.__closure__:
            return fn.__closure__
        cells = []
        for cell in fn.__closure__:
            value = cell.cell_contents
            if isinstance(value, types.FunctionType):
                value = self(value)
            elif value is math and self.math_module is not None:
                value = self.math_module
            cells.append(types.CellType(value))
        return tuple(cells)


def _names(code):
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _names(c)
    return names
