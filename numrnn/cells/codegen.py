"""Source text of the per-unit code that calls a cell's functions, for the backends' kernels.

The backends differ in how they lay out a unit's values (a row of a (T, B, G*N) array on the CPU,
a lane of shared scratch on the GPU), not in what they compute: both build their loops from the
calls written here, which follow the calling convention of :mod:`numrnn.cells.protocol`.  The
generated functions are compiled with the cell's twins (:mod:`numrnn.cells.twins`) as globals
``step``, ``vjp``, ``jvp``, ``read_map`` and ``read_map_grad``.
"""

__all__ = ["Source", "step_lines", "vjp_lines", "jvp_lines", "options_lines", "read_expr",
           "read_grad_expr", "compile_functions"]


class Source:
    """Lines of Python source with indentation."""

    def __init__(self):
        self.lines = []
        self.depth = 0

    def __call__(self, line):
        self.lines.append("    " * self.depth + line)
        return self

    def indent(self):
        self.depth += 1
        return self

    def dedent(self):
        self.depth -= 1
        return self

    def text(self):
        return "\n".join(self.lines) + "\n"


def _targets(names, is_tuple):
    if len(names) == 1 and not is_tuple:
        return names[0]
    return ", ".join(names) + ("," if len(names) == 1 else "")


def options_lines(src, cell, opts="opts"):
    """``o0 = opts[0]`` ... : the options as scalars (before the loop)."""
    for i in range(len(cell.options)):
        src(f"o{i} = {opts}[{i}]")


def _opt_args(cell):
    return [f"o{i}" for i in range(len(cell.options))] + ["one"]


def step_lines(src, cell, pre, prev, new, aux):
    """``new..., aux... = step(pre..., prev..., options, one)``; pre: G (summed) or 2G exprs."""
    args = ", ".join(list(pre) + list(prev) + _opt_args(cell))
    src(f"{_targets(list(new) + list(aux), cell.returns_tuple['step'])} = step({args})")


def vjp_lines(src, cell, d_new, prev, new, aux, d_pre, d_prev):
    """``d_pre..., d_prev... = vjp(d_new..., prev..., new..., aux..., options, one)``."""
    args = ", ".join(list(d_new) + list(prev) + list(new) + list(aux) + _opt_args(cell))
    src(f"{_targets(list(d_pre) + list(d_prev), cell.returns_tuple['vjp'])} = vjp({args})")


def jvp_lines(src, cell, d_pre, d_prev, prev, new, aux, d_new):
    """``d_new... = jvp(d_pre..., d_prev..., prev..., new..., aux..., options, one)``."""
    args = ", ".join(list(d_pre) + list(d_prev) + list(prev) + list(new) + list(aux)
                     + _opt_args(cell))
    src(f"{_targets(list(d_new), cell.returns_tuple['jvp'])} = jvp({args})")


def read_expr(cell, state_expr):
    """The recurrent input read from one state value: f(s) or s itself."""
    if cell.read_map is None:
        return state_expr
    return f"read_map({state_expr}, {', '.join(_opt_args(cell))})"


def read_grad_expr(cell, state_expr):
    """df/ds at one state value (None when f is the identity)."""
    if cell.read_map is None:
        return None
    return f"read_map_grad({state_expr}, {', '.join(_opt_args(cell))})"


def compile_functions(src, cell, twins, filename):
    """exec ``src`` (a :class:`Source`) with the cell's functions, as ``twins``
    (:class:`numrnn.cells.twins.Twins`) makes them for a backend, bound to the names the
    generated code calls (``step``, ``vjp``, ``jvp``, ``read_map``, ``read_map_grad``); returns
    the namespace holding the generated functions."""
    namespace = {"step": twins(cell.step), "vjp": twins(cell.vjp), "jvp": twins(cell.jvp)}
    if cell.read_map is not None:
        namespace["read_map"] = twins(cell.read_map)
        namespace["read_map_grad"] = twins(cell.read_map_grad)
    exec(compile(src.text(), filename, "exec"), namespace)
    return namespace
