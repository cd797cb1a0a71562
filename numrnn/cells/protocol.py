"""The cell protocol: one definition per recurrent cell, read by every part of numrnn.

A :class:`Cell` says what a cell *is*: its gates, its state vectors, what the recurrent matrix
product reads, the shape of its recurrent weight, its hyperparameters, and its pointwise math as
three scalar functions (step, vector-Jacobian product, Jacobian-vector product).  The CPU and GPU
kernels, the layer loop, the analysis, ``gradcheck``, ``state_dict`` shapes and the command line
all read from it; none of them tests a cell's name.

The step of one layer, for unit j (the engine does the matrix products, the cell the rest)::

    x_g = (W_ih u_t + b_ih)[g*N + j]                  input projection, gate g < G
    r_q = f(s_{reads[q]})                             recurrent input: read states, map f
    h_g = (M r + b_hh)[g*N + j]                       recurrent projection, M = matrix(weight_hh)
    (s'_0 .. s'_{P-1}, a_0 .. a_{A-1}) = step(pre, s_0 .. s_{P-1}, options, one)

where ``pre`` is ``x_g + h_g`` for g < G (``projections="summed"``) or ``x_0 .. x_{G-1}, h_0 ..
h_{G-1}`` (``"separate"``, when the cell treats the two apart, as GRU's reset gate does), ``s``
are the previous states (``s_0`` is the output h), ``a`` the auxiliary values the backward pass
needs (gate values, say), ``options`` the cell's hyperparameters in declaration order and ``one``
the number 1 in the kernel's dtype (use it in place of ``1.0`` so that float32 stays float32).

The derivative functions see the same values::

    vjp(ds'_0 .. ds'_{P-1}, s_0 .., s'_0 .., a_0 .., options, one) -> (dpre .., ds_0 .. ds_{P-1})
    jvp(dpre .., ds_0 .. ds_{P-1}, s_0 .., s'_0 .., a_0 .., options, one) -> (ds'_0 .. ds'_{P-1})

``dpre`` has the length of ``pre``; ``ds_p`` is the *direct* part of the previous state's
cotangent (tangent): what does not pass through the matrix product, which the engine adds.

All three must be plain scalar Python functions that Numba can compile (``math`` functions,
arithmetic, calls of other such functions); numrnn compiles them into its ``@njit`` and
``@cuda.jit`` kernels (on the CPU with a ``math`` whose ``exp`` and ``tanh`` vectorise).
:func:`numrnn.check_cell` tests a definition against finite differences.
"""
import hashlib
import math
import random
import types

import numpy as np

__all__ = ["Cell", "check_cell", "CellCheckError"]

_PROJECTIONS = ("summed", "separate")


class Cell:
    """The definition of a recurrent cell (see the module docstring for the calling convention).

    Parameters
    ----------
    name : str
        What ``repr`` and error messages call it.
    gates : sequence of str
        The G blocks of N rows of ``weight_ih`` (and of ``weight_hh`` when dense), in order.
    step, vjp, jvp : function
        The pointwise math (scalar functions; see the module docstring).
    states : sequence of str, default ("h",)
        The state vectors, output first.  Two states (LSTM's h and c) make initial and final
        states pairs.
    aux : sequence of str, default ()
        Values ``step`` returns after the new states, kept per step for ``vjp`` and ``jvp``.
    projections : {"summed", "separate"}, default "summed"
        Whether ``step`` sees x_g + h_g or the input and recurrent projections apart.
    reads : sequence of str, optional
        States the recurrent product reads, concatenated (default: the first state).
    read_map : pair of functions, optional
        ``(f, f_grad)``: the recurrent input is r = f(s) elementwise (the rate network's
        phi(h)); ``f_grad(s, *options, one)`` is df/ds.  Default: r = s.
    weight_hh_shape : function, optional
        ``N -> shape`` of ``weight_hh`` (default (G*N, R*N), R = len(reads)).
    matrix : pair of functions, optional
        ``(to_matrix, from_matrix)``, NumPy functions of (array, N, options dict): the (G*N,
        R*N) matrix M the product uses from ``weight_hh``, and the gradient of ``weight_hh``
        from that of M (its transpose map).  Default: M = weight_hh.
    options : dict, optional
        Hyperparameters and their defaults (numbers; passed to the functions in this order).
    check_options : function, optional
        ``options dict -> None``, raising ValueError for values the cell does not accept.
    nonlinearity : str, optional
        The nonlinearity this definition was made with, for ``repr`` and ``RNN.config()``.
    time_step : str, optional
        The option that is the length of one step in the cell's own time unit, when the cell is
        a discretised continuous-time system: "alpha" (= dt/tau) for the leaky and rate cells,
        "dt" for coRNN.  The analysis reports exponents per unit time with it, and noise is
        scaled by it (Euler-Maruyama).  None: the step is the unit of time.
    torch : str, optional
        The ``torch.nn`` module with the same math and layout ("RNN_TANH", "LSTM", ...).
    doc : str, optional
        One line saying what the cell is.
    """

    def __init__(self, name, *, gates, step, vjp, jvp, states=("h",), aux=(),
                 projections="summed", reads=None, read_map=None, weight_hh_shape=None,
                 matrix=None, options=None, check_options=None, nonlinearity=None, torch=None,
                 doc="", time_step=None):
        if not isinstance(name, str) or not name:
            raise TypeError(f"name: expected a non-empty str, got {name!r}")
        self.name = name
        self.gates = _names("gates", gates, 1)
        self.states = _names("states", states, 1, 2)
        self.aux = _names("aux", aux, 0)
        if projections not in _PROJECTIONS:
            raise ValueError(f"projections: expected one of {_PROJECTIONS}, got {projections!r}")
        self.projections = projections
        self.reads = _names("reads", (self.states[0],) if reads is None else reads, 1)
        for r in self.reads:
            if r not in self.states:
                raise ValueError(f"reads: {r!r} is not one of the states {self.states}")
        self.read_index = tuple(self.states.index(r) for r in self.reads)
        for label, fn in (("step", step), ("vjp", vjp), ("jvp", jvp)):
            _check_function(label, fn)
        self.step, self.vjp, self.jvp = step, vjp, jvp
        if read_map is None:
            self.read_map = self.read_map_grad = None
            self.reads_states_as_they_are = True
        else:
            if not (isinstance(read_map, (tuple, list)) and len(read_map) == 2):
                raise TypeError("read_map: expected a pair (f, f_grad) of functions, got "
                                f"{read_map!r}")
            _check_function("read_map[0]", read_map[0])
            _check_function("read_map[1]", read_map[1])
            self.read_map, self.read_map_grad = read_map
            self.reads_states_as_they_are = False
        if weight_hh_shape is not None and not callable(weight_hh_shape):
            raise TypeError(f"weight_hh_shape: expected a function N -> shape, got "
                            f"{weight_hh_shape!r}")
        self._weight_hh_shape = weight_hh_shape
        if matrix is not None and not (isinstance(matrix, (tuple, list)) and len(matrix) == 2
                                       and all(callable(f) for f in matrix)):
            raise TypeError(f"matrix: expected a pair (to_matrix, from_matrix) of functions, got "
                            f"{matrix!r}")
        self.matrix = matrix
        options = {} if options is None else dict(options)
        for key, value in options.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise ValueError(f"options: names must be identifiers, got {key!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"options[{key!r}]: expected a finite number, got {value!r}")
        self.options = {k: float(v) for k, v in options.items()}
        if check_options is not None and not callable(check_options):
            raise TypeError(f"check_options: expected a function, got {check_options!r}")
        self._check_options = check_options
        if time_step is not None and time_step not in self.options:
            raise ValueError(f"time_step: expected the name of one of the options "
                             f"{tuple(self.options)}, got {time_step!r}")
        self.time_step = time_step
        self.nonlinearity = nonlinearity
        self.torch = torch
        self.doc = doc
        self._check_arity()

    # --- structure ------------------------------------------------------------------------

    @property
    def gate_count(self):
        """G: the number of N-row blocks of the projections."""
        return len(self.gates)

    @property
    def state_count(self):
        """P: the number of state vectors (1, or 2 as for LSTM)."""
        return len(self.states)

    @property
    def read_count(self):
        """R: the number of N-vectors the recurrent product reads."""
        return len(self.reads)

    @property
    def aux_count(self):
        """A: the number of auxiliary values kept per unit and step."""
        return len(self.aux)

    @property
    def separate(self):
        """True when the cell sees the input and recurrent projections apart."""
        return self.projections == "separate"

    @property
    def pre_count(self):
        """Number of pre-activation arguments of ``step``: G, or 2G when separate."""
        return self.gate_count * (2 if self.separate else 1)

    def weight_hh_shape(self, n):
        """The shape of ``weight_hh`` for N = ``n`` units."""
        if self._weight_hh_shape is None:
            return (self.gate_count * n, self.read_count * n)
        shape = tuple(int(s) for s in self._weight_hh_shape(n))
        return shape

    def recurrent_matrix(self, weight_hh, n, options):
        """M (G*N, R*N), the matrix the recurrent product uses, from ``weight_hh``."""
        if self.matrix is None:
            return weight_hh
        m = np.asarray(self.matrix[0](weight_hh, n, options))
        want = (self.gate_count * n, self.read_count * n)
        if m.shape != want:
            raise ValueError(f"cell {self.name!r}: matrix[0] returned shape {m.shape}; expected "
                             f"{want} (G*N, R*N)")
        return np.ascontiguousarray(m, dtype=weight_hh.dtype)

    def weight_hh_grad(self, d_matrix, n, options, out):
        """Write the gradient of ``weight_hh`` from that of M into ``out``."""
        if self.matrix is None:
            if d_matrix is not out:
                np.copyto(out, d_matrix)
            return out
        np.copyto(out, self.matrix[1](d_matrix, n, options))
        return out

    def resolve_options(self, given):
        """The cell's options with ``given`` (a dict or None) applied and checked."""
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise TypeError(f"cell_options: expected a dict, got {type(given).__name__}")
        unknown = [k for k in given if k not in self.options]
        if unknown:
            raise ValueError(f"cell_options: the {self.name!r} cell has no option(s) {unknown}; "
                             f"its options are {list(self.options) or 'none'}")
        out = dict(self.options)
        for key, value in given.items():
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float,
                                                                              np.number)):
                raise TypeError(f"cell_options[{key!r}]: expected a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ValueError(f"cell_options[{key!r}]: expected a finite number, got {value!r}")
            out[key] = float(value)
        if self._check_options is not None:
            self._check_options(out)
        return out

    def functions(self):
        """The scalar functions of the definition: step, vjp, jvp (and the read map's pair)."""
        fns = (self.step, self.vjp, self.jvp)
        return fns if self.read_map is None else fns + (self.read_map, self.read_map_grad)

    def fingerprint(self):
        """A hash of the definition's structure and of the code of its functions (and of the
        functions they call): compiled kernels are cached under it, so an edited cell is
        compiled afresh."""
        h = hashlib.sha256()
        h.update(repr((self.gates, self.states, self.aux, self.projections, self.reads,
                       self.reads_states_as_they_are)).encode())
        seen = set()
        for fn in self.functions():
            _hash_function(h, fn, seen)
        return h.hexdigest()[:24]

    def __repr__(self):
        nl = f", nonlinearity={self.nonlinearity!r}" if self.nonlinearity else ""
        return (f"Cell({self.name!r}, gates={self.gates}, states={self.states}, "
                f"aux={self.aux}{nl})")

    # --- checks ---------------------------------------------------------------------------

    def _check_arity(self):
        """Call each function once in Python: the number of values it returns must fit."""
        rng = random.Random(0)
        opts = list(self.options.values())
        pre = [rng.uniform(-0.5, 0.5) for _ in range(self.pre_count)]
        prev = [rng.uniform(-0.5, 0.5) for _ in self.states]
        P, A = self.state_count, self.aux_count
        self.returns_tuple = {}
        out, self.returns_tuple["step"] = _call(
            "step", self.step, pre + prev + opts + [1.0], P + A,
            f"{P} new state value(s) {self.states} then {A} aux value(s) {self.aux}")
        new, aux = out[:P], out[P:]
        self.returns_tuple["vjp"] = _call(
            "vjp", self.vjp, [1.0] * P + prev + new + aux + opts + [1.0], self.pre_count + P,
            f"{self.pre_count} pre-activation cotangent(s) then {P} state cotangent(s)")[1]
        self.returns_tuple["jvp"] = _call(
            "jvp", self.jvp, [1.0] * (self.pre_count + P) + prev + new + aux + opts + [1.0], P,
            f"{P} state tangent(s)")[1]
        if self.read_map is not None:
            _call("read_map[0]", self.read_map, [prev[0]] + opts + [1.0], 1, "one value")
            _call("read_map[1]", self.read_map_grad, [prev[0]] + opts + [1.0], 1, "one value")


def _names(label, value, low, high=None):
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{label}: expected a sequence of names, got {value!r}")
    value = tuple(value)
    if len(value) < low or (high is not None and len(value) > high):
        want = f"{low}" if high == low else (f"{low} to {high}" if high else f"at least {low}")
        raise ValueError(f"{label}: expected {want} name(s), got {len(value)}")
    if any(not isinstance(v, str) or not v.isidentifier() for v in value) \
            or len(set(value)) != len(value):
        raise ValueError(f"{label}: expected distinct identifiers, got {value}")
    return value


def _check_function(label, fn):
    if not isinstance(fn, types.FunctionType):
        raise TypeError(f"{label}: expected a Python function (scalar arithmetic that Numba "
                        f"compiles), got {type(fn).__name__}")


def _call(label, fn, args, count, what):
    try:
        out = fn(*args)
    except Exception as exc:
        raise ValueError(f"{label}: calling it with {len(args)} scalar arguments failed "
                         f"({type(exc).__name__}: {exc}); see numrnn.cells.protocol for the "
                         "arguments it receives") from exc
    values = out if isinstance(out, tuple) else (out,)
    if len(values) != count:
        raise ValueError(f"{label}: expected {count} returned value(s) ({what}), got "
                         f"{len(values)}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise ValueError(f"{label}: expected scalar numbers, got {type(v).__name__}")
    return [float(v) for v in values], isinstance(out, tuple)


def _hash_function(h, fn, seen):
    if id(fn) in seen:
        return
    seen.add(id(fn))
    code = fn.__code__
    _hash_code(h, code)
    h.update(_value_repr(fn.__defaults__))
    h.update(_value_repr(fn.__kwdefaults__))
    for cell in fn.__closure__ or ():
        value = cell.cell_contents
        if isinstance(value, types.FunctionType):
            _hash_function(h, value, seen)
        else:
            h.update(_value_repr(value))
    for name in _global_names(code):
        value = fn.__globals__.get(name)
        if isinstance(value, types.FunctionType):
            _hash_function(h, value, seen)
        else:
            h.update(name.encode() + _value_repr(value))


def _value_repr(value):
    """Bytes that change when a constant a cell's code reads changes (numbers, strings, tuples,
    arrays...); modules and other objects whose contents are code, by name."""
    if isinstance(value, (bool, int, float, complex, str, bytes, type(None), np.generic)):
        return repr((type(value).__name__, value)).encode()
    if isinstance(value, (tuple, list, frozenset)):
        return b"(" + b",".join(_value_repr(v) for v in value) + b")"
    if isinstance(value, dict):
        return b"{" + b",".join(_value_repr(k) + b":" + _value_repr(v)
                                for k, v in value.items()) + b"}"
    if isinstance(value, np.ndarray):
        return repr((value.dtype.str, value.shape)).encode() + value.tobytes()
    return repr(type(value)).encode() + getattr(value, "__name__", "").encode()


def _hash_code(h, code):
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _hash_code(h, c)
        else:
            h.update(repr(c).encode())


def _global_names(code):
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_names(c)
    return sorted(names)


# --- checking a definition -------------------------------------------------------------------


class CellCheckError(AssertionError):
    """A cell's vjp or jvp disagrees with finite differences of its step."""


def check_cell(cell, *, trials=20, seed=0, eps=1e-6, rtol=1e-5, atol=1e-7, options=None):
    """Test a cell's ``jvp`` and ``vjp`` against central differences of its ``step``.

    At ``trials`` random points (pre-activations and states in [-1, 1], the cell's options or
    ``options``), each column of the Jacobian of (pre, previous states) -> new states by
    ``jvp`` must match the central difference of ``step``, and ``vjp`` must be its transpose
    (every row).  Pure Python (no compilation): run it after writing a cell.

    Returns
    -------
    float
        The largest error found, relative to ``atol + rtol * |value|``: below 1 passes.

    Raises
    ------
    CellCheckError
        Naming the function, the derivative and the point where they disagree.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell: expected a numrnn.Cell, got {type(cell).__name__}")
    opts = list(cell.resolve_options(options).values())
    rng = random.Random(seed)
    P, n_pre = cell.state_count, cell.pre_count
    n_in = n_pre + P
    worst = 0.0

    def step(v):
        out = cell.step(*v[:n_pre], *v[n_pre:], *opts, 1.0)
        return list(out) if isinstance(out, tuple) else [out]

    def as_list(out):
        return list(out) if isinstance(out, tuple) else [out]

    for trial in range(trials):
        v = [rng.uniform(-1.0, 1.0) for _ in range(n_in)]
        base = step(v)
        prev, new, aux = v[n_pre:], base[:P], base[P:]
        jac = []
        for i in range(n_in):
            e = [1.0 if k == i else 0.0 for k in range(n_in)]
            col = as_list(cell.jvp(*e, *prev, *new, *aux, *opts, 1.0))
            jac.append(col)
            plus = list(v)
            minus = list(v)
            plus[i] += eps
            minus[i] -= eps
            fd = [(a - b) / (2 * eps) for a, b in zip(step(plus)[:P], step(minus)[:P])]
            for p in range(P):
                err = abs(col[p] - fd[p]) / (atol + rtol * abs(fd[p]))
                worst = max(worst, err)
                if err > 1:
                    raise CellCheckError(
                        f"cell {cell.name!r}: jvp gives d{cell.states[p]}'/d{_arg_name(cell, i)}"
                        f" = {col[p]!r}, finite differences of step give {fd[p]!r} (trial "
                        f"{trial}, inputs {v})")
        for p in range(P):
            e = [1.0 if k == p else 0.0 for k in range(P)]
            row = as_list(cell.vjp(*e, *prev, *new, *aux, *opts, 1.0))
            for i in range(n_in):
                err = abs(row[i] - jac[i][p]) / (atol + rtol * abs(jac[i][p]))
                worst = max(worst, err)
                if err > 1:
                    raise CellCheckError(
                        f"cell {cell.name!r}: vjp gives d{cell.states[p]}'/d{_arg_name(cell, i)}"
                        f" = {row[i]!r}, jvp gives {jac[i][p]!r}: vjp must be the transpose of "
                        f"jvp (trial {trial}, inputs {v})")
    for trial in range(trials if cell.read_map is not None else 0):
        s = rng.uniform(-1.0, 1.0)
        g = cell.read_map_grad(s, *opts, 1.0)
        fd = (cell.read_map(s + eps, *opts, 1.0) - cell.read_map(s - eps, *opts, 1.0)) / (2 * eps)
        err = abs(g - fd) / (atol + rtol * abs(fd))
        worst = max(worst, err)
        if err > 1:
            raise CellCheckError(f"cell {cell.name!r}: read_map's derivative at {s!r} is {g!r}, "
                                 f"finite differences give {fd!r}")
    return worst


def _arg_name(cell, i):
    G = cell.gate_count
    if i < cell.pre_count:
        if cell.separate:
            return ("x_" if i < G else "h_") + cell.gates[i % G]
        return "z_" + cell.gates[i]
    return cell.states[i - cell.pre_count]


def signature(cell):
    """The argument names of step, vjp and jvp, for documentation and error messages."""
    G = cell.gates
    pre = ([f"x_{g}" for g in G] + [f"h_{g}" for g in G]) if cell.separate else \
        [f"z_{g}" for g in G]
    prev = [f"{s}_prev" for s in cell.states]
    opts = list(cell.options) + ["one"]
    return {"step": pre + prev + opts,
            "vjp": [f"d{s}" for s in cell.states] + prev + list(cell.states) + list(cell.aux)
            + opts,
            "jvp": [f"d{p}" for p in pre] + [f"d{s}" for s in prev] + prev + list(cell.states)
            + list(cell.aux) + opts}

