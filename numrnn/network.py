"""The recurrent network: parameters in PyTorch's layout, forward pass and vector-Jacobian product.

Data flow of one (layer, direction): the input projection of all T steps is one matrix product,
the recurrence runs in a compiled kernel (:mod:`numrnn.cpu`), and in the backward pass the weight
gradients are one matrix product each after the BPTT sweep.
"""
import math
from collections.abc import MutableMapping

import numpy as np

from . import _validation as _v
from . import cells, driver
from .cpu import scratch
from .init import BIAS_INITS, INITS, ZERO_DIAGONAL_INITS, init_parameters

__all__ = ["RNN", "ParameterDict"]


class ParameterDict(MutableMapping):
    """The live parameters of a network, keyed by PyTorch's names: a checked view.

    Reading gives the network's own arrays (in-place edits such as ``p["weight_hh_l0"][:] = W``
    or ``p["weight_hh_l0"] *= 0.5`` take effect).  Assigning ``p[name] = value`` checks the
    name, shape, dtype (exactly the network's: nothing is cast) and finiteness first, then copies
    the values into the network's array.  The set of names is fixed by the architecture: entries
    cannot be added or deleted.  Whatever was written in place is checked again (shape, dtype,
    finiteness) when the network next runs, before any kernel reads it.
    """

    def __init__(self, net):
        self._net = net

    def __getitem__(self, name):
        try:
            return self._net._params[name]
        except (KeyError, TypeError):
            raise KeyError(f"parameters: {name!r} is not a parameter of {self._net!r}; its "
                           f"parameters are {list(self._net._params)}") from None

    def __setitem__(self, name, value):
        net = self._net
        shape = net._shapes().get(name) if isinstance(name, str) else None
        if shape is None:
            raise ValueError(f"parameters: {name!r} is not a parameter of {net!r}; expected one "
                             f"of {list(net._params)}")
        if value is net._params[name]:  # p[name] op= ...: checked in place, not copied
            net._check_parameter(name, value, shape)
            return
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        value = _v.check_float_array(f"parameters[{name!r}]", value, net.dtype, [shape])
        net._assign(name, value)

    def __delitem__(self, name):
        raise TypeError(f"parameters: the parameters of a network are fixed by its architecture; "
                        f"{name!r} cannot be deleted (assign a new value instead)")

    def __iter__(self):
        return iter(self._net._params)

    def __len__(self):
        return len(self._net._params)

    def __repr__(self):
        inner = ", ".join(f"{k!r}: array{tuple(v.shape)}" for k, v in self._net._params.items())
        return f"ParameterDict({{{inner}}}, dtype={self._net.dtype})"


class RNN:
    r"""A multi-layer recurrent network with PyTorch's parameter names, shapes and gate orders.

    Parameters
    ----------
    input_size : int
        Number of input features I.
    hidden_size : int
        Number of hidden units N (>= 1).
    cell : str or numrnn.Cell, default "tanh"
        A registered cell (``numrnn.cells.names()``) or a user's :class:`numrnn.Cell`.
        "tanh"/"relu"/"linear": Elman, :math:`h_t = (1-a) h_{t-1} + a\,\phi(W_{ih} x_t + b_{ih} +
        W_{hh} h_{t-1} + b_{hh})` (with a = 1 exactly ``torch.nn.RNN``).
        "rate": the continuous-time rate network of Sompolinsky, Crisanti and Sommers (1988), Euler
        step a = dt/tau: :math:`h_t = (1-a) h_{t-1} + a (W_{hh}\phi(h_{t-1}) + W_{ih} x_t + b_{ih} +
        b_{hh})`.  "lstm" and "gru": ``torch.nn.LSTM`` / ``torch.nn.GRU`` exactly (gates i, f, g, o
        and r, z, n).  "mgu", "ugrnn", "indrnn", "antisymmetric", "cornn": the cells of
        :mod:`numrnn.cells.literature`.
    num_layers : int, default 1
    bias : bool, default True
    bidirectional : bool, default False
    batch_first : bool, default False
        Input and output are (B, T, F) instead of (T, B, F); states stay (L*D, B, N).
    alpha : float, default 1.0
        Leak a in (0, 1] of the Elman and rate cells (their option "alpha"; must be 1 for cells
        without a leak).
    nonlinearity : str or None
        phi of the cells that offer a choice: the rate network ("tanh", "relu"), "indrnn"
        ("relu", "tanh"), "antisymmetric" ("tanh", "relu", "linear").  For Elman cells it may
        repeat the cell's name.
    cell_options : dict, optional
        The cell's hyperparameters (``numrnn.Cell.options``), e.g. ``{"dt": 0.042}`` for coRNN.
    dtype : numpy.float32 or numpy.float64, default float64
        Dtype of the parameters and of every computation; inputs must have it too.
    init : {"default", "gaussian", "orthogonal", "identity", "spectral_radius"}
        "default": PyTorch's U(-1/sqrt(N), 1/sqrt(N)) for every weight and, unless
        ``bias_init`` says otherwise, every bias.  The others set each
        N x N block of ``weight_hh``: "gaussian" N(0, gain^2/N) entries (the random network of the
        chaos literature), "orthogonal" gain times a Haar orthogonal matrix, "identity" gain times
        the identity with zero biases (Le et al. 2015), "spectral_radius" a Gaussian matrix
        rescaled to spectral radius ``gain``.  ``weight_ih`` keeps PyTorch's default.
    gain : float, optional
        The scale of the chosen ``init`` (default 1.0).  "default" takes no gain: passing one
        with it is an error, since it would be ignored.
    zero_diagonal : bool, default False
        Set the diagonal of each N x N block of ``weight_hh`` to 0 (no self-coupling J_ii, as in
        Sompolinsky et al. 1988).  For init "gaussian" after drawing (the other entries keep
        variance gain^2/N); for "spectral_radius" before rescaling (the radius stays ``gain``).
        Refused for the other inits: "default" and "identity" would not be what they say, and an
        orthogonal matrix would no longer be orthogonal; refused too for a recurrent weight that
        is a vector (IndRNN's u is the diagonal itself).
    bias_init : {"uniform", "zeros"}, optional
        The biases: "uniform" PyTorch's U(-1/sqrt(N), 1/sqrt(N)), "zeros" zeros (the textbook
        chaotic network: ``init="gaussian", bias_init="zeros"``).  None (default): the init's
        own, zeros for "identity" and uniform for the others.  With ``bias=False`` there are no
        biases, and giving one is an error.
    seed : None, int, sequence of int, numpy.random.SeedSequence or numpy.random.Generator
        Same seed, same bits.  Each parameter is drawn from its own stream of the seed, keyed by
        its name, so ``weight_hh_l0`` does not depend on ``input_size``, ``num_layers``,
        ``bidirectional`` or ``bias`` (nor ``weight_ih_l0`` on the last three).  None draws
        fresh entropy; a SeedSequence is used as is (not spawned from, so it gives the same
        network again); a Generator is advanced by 128 bits, which seed the network (so
        successive networks of one generator differ).  See :mod:`numrnn.init`.
    device : {"cpu", "cuda"}, default "cpu"
        Where :meth:`forward` and :meth:`vjp` run.  "cuda" runs the ``@cuda.jit`` kernels of
        :mod:`numrnn.gpu` (needs numba-cuda and a GPU, or the CUDA simulator); numpy arrays in
        give numpy arrays out, and device arrays (``__cuda_array_interface__``) in give device
        arrays out, without copies.  The parameters stay numpy arrays either way.

    Attributes
    ----------
    num_directions : int
        D = 2 if bidirectional else 1.
    cell : str
        The cell's name; ``definition`` is its :class:`numrnn.Cell`.
    cell_options : dict
        Every option of the cell, defaults included.
    gate_count : int
        G: 1 (Elman, rate), 4 (LSTM), 3 (GRU), ...

    References
    ----------
    Sompolinsky, H., Crisanti, A. and Sommers, H. J. (1988). Chaos in random neural networks.
    Physical Review Letters 61, 259.
    Hochreiter, S. and Schmidhuber, J. (1997). Long short-term memory. Neural Computation 9(8).
    Cho, K. et al. (2014). Learning phrase representations using RNN encoder-decoder. EMNLP.
    Le, Q. V., Jaitly, N. and Hinton, G. E. (2015). A simple way to initialize recurrent networks
    of rectified linear units. arXiv:1504.00941.

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> net = numrnn.RNN(3, 8, cell="gru", seed=0)
    >>> x = np.random.default_rng(1).standard_normal((20, 4, 3))   # (T, B, I)
    >>> out, h_n = net.forward(x)
    >>> out.shape, h_n.shape
    ((20, 4, 8), (1, 4, 8))
    >>> grads = net.vjp(x, np.ones_like(out))
    >>> grads["weight_hh_l0"].shape, grads["state_grad_norm"].shape
    ((24, 8), (20, 4))

    The textbook chaotic network, autonomous and driven: one seed, one W_hh.

    >>> kw = dict(init="gaussian", gain=2.0, zero_diagonal=True, bias_init="zeros", seed=0)
    >>> autonomous, driven = numrnn.RNN(1, 50, **kw), numrnn.RNN(4, 50, **kw)
    >>> np.array_equal(autonomous.parameters["weight_hh_l0"], driven.parameters["weight_hh_l0"])
    True
    """

    def __init__(self, input_size, hidden_size, *, cell="tanh", num_layers=1, bias=True,
                 bidirectional=False, batch_first=False, alpha=1.0, nonlinearity=None,
                 cell_options=None, dtype=np.float64, init="default", gain=None,
                 zero_diagonal=False, bias_init=None, seed=None, device="cpu"):
        self.device = self._check_device(device)
        self.input_size = _v.check_int("input_size", input_size, 1)
        self.hidden_size = _v.check_int("hidden_size", hidden_size, 1)
        self.num_layers = _v.check_int("num_layers", num_layers, 1)
        self.definition, self.nonlinearity = cells.resolve(cell, nonlinearity)
        self.cell = self.definition.name
        self.gate_count = self.definition.gate_count
        for name, flag in (("bias", bias), ("bidirectional", bidirectional),
                           ("batch_first", batch_first)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name}: expected True or False, got {flag!r}")
        self.bias = bool(bias)
        self.bidirectional = bool(bidirectional)
        self.batch_first = bool(batch_first)
        self.num_directions = 2 if self.bidirectional else 1
        alpha = _v.check_real("alpha", alpha, 0.0, 1.0, low_open=True)
        options = dict(cell_options) if isinstance(cell_options, dict) else cell_options
        if "alpha" in self.definition.options:
            if options is not None and "alpha" in options and alpha != 1.0:
                raise ValueError(f"alpha: given twice, as alpha={alpha!r} and in cell_options; "
                                 "give one")
            if alpha != 1.0:
                options = dict(options or {}, alpha=alpha)
        elif alpha != 1.0:
            raise ValueError(f"alpha: the {self.cell} cell has no leak; expected 1.0, got "
                             f"{alpha!r}")
        self.cell_options = self.definition.resolve_options(options)
        self.dtype = _v.check_dtype_arg(dtype)
        if not isinstance(init, str) or init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {init!r}")
        self.init = init
        if init == "default":
            if gain is not None:
                raise ValueError(f"gain: init='default' (PyTorch's U(-1/sqrt(N), 1/sqrt(N)) for "
                                 f"every parameter) takes no gain, so gain={gain!r} would be "
                                 "ignored; choose init='gaussian', 'orthogonal', 'identity' or "
                                 "'spectral_radius' to scale W_hh, or leave gain unset")
            self.gain = None
        else:
            self.gain = _v.check_real("gain", 1.0 if gain is None else gain, 0.0)
        self.zero_diagonal = self._check_zero_diagonal(zero_diagonal)
        self.bias_init = self._check_bias_init(bias_init)
        self._install(init_parameters(seed, self._shapes(), self.hidden_size, init,
                                      1.0 if self.gain is None else self.gain, self.dtype,
                                      self.zero_diagonal, self.bias_init))

    def _check_zero_diagonal(self, zero_diagonal):
        if not isinstance(zero_diagonal, (bool, np.bool_)):
            raise TypeError(f"zero_diagonal: expected True or False, got {zero_diagonal!r}")
        if not zero_diagonal:
            return False
        if self.init not in ZERO_DIAGONAL_INITS:
            why = {"default": "PyTorch's default would no longer be PyTorch's",
                   "identity": "the identity's diagonal is all it has",
                   "orthogonal": "the matrix would no longer be orthogonal"}[self.init]
            raise ValueError(f"zero_diagonal: only init='gaussian' or 'spectral_radius' draws a "
                             f"random diagonal to set to zero; with init={self.init!r} {why}")
        shape = self.definition.weight_hh_shape(self.hidden_size)
        if len(shape) == 1:
            raise ValueError(f"zero_diagonal: the {self.cell} cell's recurrent weight is a vector "
                             f"of shape {shape} (one self-coupling per unit, the diagonal "
                             "itself); zeroing it would remove the recurrence")
        if self.init == "spectral_radius" and self.hidden_size == 1:
            raise ValueError("zero_diagonal: a 1 x 1 block with zero diagonal is 0, which no "
                             "rescaling brings to the spectral radius gain (hidden_size=1)")
        return True

    def _check_bias_init(self, bias_init):
        if bias_init is None:
            return None
        if not isinstance(bias_init, str) or bias_init not in BIAS_INITS:
            raise ValueError(f"bias_init: expected None or one of {BIAS_INITS}, got "
                             f"{bias_init!r}")
        if not self.bias:
            raise ValueError(f"bias_init: bias=False leaves the network without biases, so "
                             f"bias_init={bias_init!r} would be ignored; leave it unset")
        return bias_init

    # --- configuration --------------------------------------------------------------------

    @property
    def alpha(self):
        """The leak a of cells that have one (their option "alpha"), 1.0 for every other."""
        return self.cell_options.get("alpha", 1.0)

    @property
    def time_step(self):
        """The length of one step in the cell's own time unit (its option
        :attr:`numrnn.Cell.time_step`: alpha = dt/tau for the leaky and rate cells, dt for
        coRNN, epsilon for the antisymmetric RNN), or None for a cell whose step is the unit."""
        name = self.definition.time_step
        return None if name is None else self.cell_options[name]

    @property
    def state_count(self):
        """P: 1, or 2 for cells with a second state (LSTM's c, coRNN's z)."""
        return self.definition.state_count

    def config(self):
        """The constructor arguments that rebuild this network's architecture, as a dict of
        plain values (JSON-able when the cell is a registered one; a user's cell is the
        :class:`numrnn.Cell` itself).  :meth:`from_config` is the inverse."""
        registered = cells.registered(self.cell, self.nonlinearity) is self.definition
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "cell": self.cell if registered else self.definition,
                "num_layers": self.num_layers, "bias": self.bias,
                "bidirectional": self.bidirectional, "batch_first": self.batch_first,
                "nonlinearity": self.nonlinearity, "cell_options": dict(self.cell_options),
                "dtype": str(self.dtype)}

    @classmethod
    def from_config(cls, config, *, seed=None, device="cpu"):
        """A network of the architecture :meth:`config` describes (parameters drawn with
        ``seed``; load trained ones with :meth:`load_state_dict`)."""
        if not isinstance(config, dict):
            raise TypeError(f"config: expected a dict from RNN.config(), got "
                            f"{type(config).__name__}")
        keys = ("input_size", "hidden_size", "cell", "num_layers", "bias", "bidirectional",
                "batch_first", "nonlinearity", "cell_options", "dtype")
        unknown = [k for k in config if k not in keys]
        missing = [k for k in ("input_size", "hidden_size", "cell") if k not in config]
        if unknown or missing:
            raise ValueError(f"config: expected the keys of RNN.config() {list(keys)}; unknown "
                             f"{unknown}, missing {missing}")
        kw = {k: v for k, v in config.items() if k not in ("input_size", "hidden_size")}
        if "dtype" in kw:
            kw["dtype"] = _v.check_dtype_arg(np.dtype(kw["dtype"]) if isinstance(kw["dtype"], str)
                                             else kw["dtype"])
        return cls(config["input_size"], config["hidden_size"], seed=seed, device=device, **kw)

    @staticmethod
    def _check_device(device):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            from . import gpu  # noqa: F401 - raises with instructions if numba-cuda is missing

            gpu.require()
        return device

    def to(self, device):
        """Run on ``device`` ("cpu" or "cuda") from now on; returns the network itself.

        The parameters stay numpy arrays (they are uploaded at each GPU call), so nothing is
        copied here; "cuda" checks that a GPU (or the CUDA simulator) can be used.
        """
        self.device = self._check_device(device)
        return self

    def suffix(self, layer, direction):
        """The parameter-name suffix of a layer and direction: '_l1', '_l0_reverse'."""
        return f"_l{layer}" + ("_reverse" if direction else "")

    def _shapes(self):
        """Ordered parameter shapes, in PyTorch's order (a dict computed once)."""
        shapes = self.__dict__.get("_shape_cache")
        if shapes is None:
            shapes = self._shape_cache = self._compute_shapes()
        return shapes

    def _compute_shapes(self):
        N, G, D = self.hidden_size, self.gate_count, self.num_directions
        shapes = {}
        w_hh = self.definition.weight_hh_shape(N)
        for layer in range(self.num_layers):
            n_in = self.input_size if layer == 0 else D * N
            for d in range(D):
                sfx = self.suffix(layer, d)
                shapes["weight_ih" + sfx] = (G * N, n_in)
                shapes["weight_hh" + sfx] = w_hh
                if self.bias:
                    shapes["bias_ih" + sfx] = (G * N,)
                    shapes["bias_hh" + sfx] = (G * N,)
        return shapes

    def __repr__(self):
        changed = {k: v for k, v in self.cell_options.items()
                   if k != "alpha" and v != self.definition.options[k]}
        extra = "".join([
            f", num_layers={self.num_layers}" if self.num_layers != 1 else "",
            ", bias=False" if not self.bias else "",
            ", bidirectional=True" if self.bidirectional else "",
            ", batch_first=True" if self.batch_first else "",
            f", alpha={self.alpha}" if self.alpha != 1.0 else "",
            f", nonlinearity={self.nonlinearity!r}" if self.nonlinearity else "",
            f", cell_options={changed!r}" if changed else "",
            f", init={self.init!r}" if getattr(self, "init", "default") != "default" else "",
            f", gain={self.gain}" if getattr(self, "gain", None) not in (None, 1.0) else "",
            ", zero_diagonal=True" if getattr(self, "zero_diagonal", False) else "",
            f", bias_init={self.bias_init!r}" if getattr(self, "bias_init", None) else "",
            ", device='cuda'" if getattr(self, "device", "cpu") == "cuda" else "",
        ])
        return (f"RNN({self.input_size}, {self.hidden_size}, cell={self.cell!r}{extra}, "
                f"dtype=numpy.{self.dtype})")

    # --- parameters -----------------------------------------------------------------------

    def state_dict(self):
        """A copy of every parameter, keyed by PyTorch's names, in PyTorch's order."""
        return {k: np.array(v) for k, v in self._params.items()}

    def load_state_dict(self, state_dict):
        """Replace every parameter. Names, shapes and dtype are checked; nothing is cast.

        Values may be numpy arrays or torch tensors (copied to the host).
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict: expected a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}")
        shapes = self._shapes()
        missing = [k for k in shapes if k not in state_dict]
        unexpected = [k for k in state_dict if k not in shapes]
        if missing or unexpected:
            raise ValueError(f"state_dict: names do not match {self!r}: missing {missing}, "
                             f"unexpected {unexpected}")
        new = {}
        for name, shape in shapes.items():
            value = state_dict[name]
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            new[name] = _v.check_float_array(f"state_dict[{name!r}]", value, self.dtype,
                                             [shape])
        self._install(new)

    # The parameters live in one contiguous buffer, ``_flat``; ``_params`` maps each name to a
    # view of it.  So checking every parameter for NaN/inf before a call is one reduction, and
    # the copy a pullback keeps is one copy, however many layers there are.

    def _install(self, values):
        """Copy ``values`` (name -> checked array, every name) into a fresh buffer."""
        shapes = self._shapes()
        sizes = [math.prod(shape) for shape in shapes.values()]
        flat = np.empty(sum(sizes), self.dtype)
        self._flat, self._params = flat, self.parameter_views(flat)
        for name, view in self._params.items():
            np.copyto(view, values[name])

    def parameter_views(self, flat):
        """name -> view of ``flat`` (any array of :meth:`parameter_count` entries, on either
        backend), shaped as the parameters, in PyTorch's order: where gradients are written."""
        views, start = {}, 0
        for name, shape in self._shapes().items():
            size = math.prod(shape)
            views[name] = flat[start:start + size].reshape(shape)
            start += size
        return views

    def _assign(self, name, value):
        """Write a checked value into the parameter ``name`` (its array stays the same object,
        unless its metadata was changed in place: then the buffer is rebuilt)."""
        view = self._params[name]
        if (isinstance(view, np.ndarray) and view.dtype == self.dtype
                and view.shape == value.shape and view.base is self._flat):
            np.copyto(view, value)
            return
        values = {k: v for k, v in self._params.items() if k != name}
        values[name] = value
        self._install(values)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_flat", None)
        state.pop("_shape_cache", None)
        state["_params"] = {k: np.array(v) for k, v in self._params.items()}
        return state

    def __setstate__(self, state):
        params = state.pop("_params")
        self.__dict__.update(state)
        self._install(params)

    @property
    def parameters(self):
        """The live parameters, a :class:`ParameterDict` keyed by PyTorch's names.

        Arrays read from it are the network's own (edit them in place, or assign a new value,
        which is checked and copied); every change is checked before the network next runs.
        """
        return ParameterDict(self)

    def _check_parameter(self, name, a, shape, finite=True):
        """Check one stored parameter array as it is now (it may have been edited in place)."""
        label = f"parameters[{name!r}]"
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{label}: expected a numpy array, got {type(a).__name__}")
        if a.dtype != self.dtype:
            raise TypeError(f"{label}: expected dtype {self.dtype} (the network's dtype), got "
                            f"{a.dtype} (changed in place)")
        if a.shape != shape:
            raise ValueError(f"{label}: expected shape {shape}, got {a.shape} (changed in place)")
        bad = _v.count_nonfinite(a) if finite else 0
        if bad:
            raise ValueError(f"{label}: expected finite values, got {bad} NaN/inf entr"
                             f"{'y' if bad == 1 else 'ies'} (written into the array in place)")

    def parameter_count(self):
        """The number of parameter entries (the length of the one buffer they live in)."""
        return self._flat.size

    def checked_parameters(self, snapshot=False):
        """The parameter dict checked as it is now, before any kernel reads it.

        ``snapshot``: copies, so that later in-place edits cannot reach a computation that has
        started (a pullback uses the parameters its forward pass ran with).
        """
        shapes, params, flat, dtype = self._shapes(), self._params, self._flat, self.dtype
        intact = True
        for name, shape in shapes.items():
            a = params[name]
            if type(a) is not np.ndarray or a.base is not flat or a.shape != shape \
                    or a.dtype != dtype:
                self._check_parameter(name, a, shape, finite=False)
                intact = False
        if not intact:  # a view was replaced or rebuilt in place: check each, gather them again
            for name, shape in shapes.items():
                self._check_parameter(name, self._params[name], shape)
            self._install(dict(self._params))
        elif _v.count_nonfinite(self._flat):
            for name, shape in shapes.items():
                self._check_parameter(name, self._params[name], shape)
        if snapshot:  # a scratch copy, dropped with the pullback that holds it
            copy = scratch.empty(self._flat.shape, self._flat.dtype)
            np.copyto(copy, self._flat)
            return self.parameter_views(copy)
        return dict(self._params)

    def layer_params(self, layer, direction, params=None):
        """(W_ih, M, b_ih, b_hh) of one layer and direction from ``params`` (default: the
        network's, checked now): M is the (G*N, R*N) matrix the recurrent product uses
        (``weight_hh`` itself unless the cell maps it, as IndRNN's diagonal and the
        antisymmetric cell's W - W^T - gamma I do); b_ih is None and b_hh zeros without
        biases."""
        sfx = self.suffix(layer, direction)
        p = self.checked_parameters() if params is None else params
        N = self.hidden_size
        m = self.definition.recurrent_matrix(p["weight_hh" + sfx], N, self.cell_options)
        if self.bias:
            return p["weight_ih" + sfx], m, p["bias_ih" + sfx], p["bias_hh" + sfx]
        return p["weight_ih" + sfx], m, None, np.zeros(self.gate_count * N, self.dtype)

    def options_array(self, dtype=None):
        """The cell's options in declaration order, as the kernels take them (``dtype``: the
        network's by default)."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        return np.array([self.cell_options[k] for k in self.definition.options], dtype=dtype)

    # --- torch interop --------------------------------------------------------------------

    @classmethod
    def from_torch(cls, module):
        """Build a network from ``torch.nn.RNN``, ``torch.nn.LSTM`` or ``torch.nn.GRU`` (weights copied)."""
        import torch

        cell = None
        for klass in (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN):
            if type(module) is klass:
                mode = klass.__name__.upper()
                if klass is torch.nn.RNN:
                    mode = "RNN_" + module.nonlinearity.upper()
                cell = cells.with_torch_twin(mode)
                break
        if cell is None:
            raise TypeError("module: expected torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU, got "
                            f"{type(module).__name__}")
        if getattr(module, "proj_size", 0):
            raise ValueError(f"module: LSTM projections (proj_size={module.proj_size}) are not "
                             "supported")
        if module.dropout:
            raise ValueError(f"module: dropout between layers ({module.dropout}) is not supported; "
                             "set it to 0")
        params = {k: v.detach().cpu().numpy() for k, v in module.named_parameters()}
        dtype = next(iter(params.values())).dtype
        net = cls(module.input_size, module.hidden_size, cell=cell, num_layers=module.num_layers,
                  bias=module.bias, bidirectional=module.bidirectional,
                  batch_first=module.batch_first, dtype=dtype)
        net.load_state_dict(params)
        return net

    def to_torch(self):
        """The equivalent ``torch.nn.RNN``/``LSTM``/``GRU`` module, with these weights."""
        import torch

        mode = self.definition.torch
        if mode is None:
            twins = [n for n in cells.names() if cells.registered(n).torch]
            raise ValueError(f"cell: PyTorch has no {self.cell!r} cell; to_torch supports "
                             f"{', '.join(twins)}")
        if self.alpha != 1.0:
            raise ValueError(f"alpha: PyTorch's RNN has no leak; expected 1.0, got {self.alpha}")
        for key, value in self.cell_options.items():
            if value != self.definition.options[key]:
                raise ValueError(f"cell_options[{key!r}]: PyTorch's {mode} has no such option; "
                                 f"expected the default {self.definition.options[key]}, got "
                                 f"{value}")
        kw = dict(num_layers=self.num_layers, bias=self.bias, bidirectional=self.bidirectional,
                  batch_first=self.batch_first,
                  dtype=torch.float64 if self.dtype == np.float64 else torch.float32)
        if mode.startswith("RNN_"):
            kw["nonlinearity"] = mode[4:].lower()
        module = getattr(torch.nn, mode.partition("_")[0])(self.input_size, self.hidden_size,
                                                            **kw)
        params = self.checked_parameters()
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.copy_(torch.from_numpy(params[name]))
        return module

    def forward(self, x, h0=None, *, noise_std=0.0, seed=None):
        """Run the network over a sequence.

        Parameters
        ----------
        x : ndarray, shape (T, B, I), (B, T, I) if batch_first, or (T, I) unbatched
            Input, of the network's dtype, finite.
        h0 : ndarray, shape (L*D, B, N) or (L*D, N) unbatched, optional
            Initial state (zeros by default).  For LSTM a pair (h0, c0) of such arrays, either of
            which may be None.
        noise_std : float >= 0, default 0
            Additive Gaussian noise in the dynamics: every step adds N(0, noise_std^2 / dt)
            numbers to the pre-activation of every gate (dt = :attr:`time_step`, 1 for cells
            without one: the Euler-Maruyama scaling, see :mod:`numrnn.noise`).
        seed : int, sequence of int, numpy.random.SeedSequence or numpy.random.Generator
            The noise realisation; required with noise.  The same seed gives the same noise in
            :meth:`forward`, :meth:`vjp` and every analysis.

        Returns
        -------
        output : ndarray, shape (T, B, D*N) (or (B, T, D*N), or (T, D*N))
            Last layer's hidden states, forward and reverse directions concatenated.
        h_n : ndarray, shape (L*D, B, N) (or (L*D, N))
            Final state of every layer and direction, ordered layer 0 forward, layer 0 reverse,
            layer 1 forward, ...  For LSTM a pair (h_n, c_n).

        Raises
        ------
        numrnn.NonFiniteError
            When the state becomes inf or NaN from finite inputs (a diverging relu, linear or
            rate network); the error names the layer, direction, first step and sequence.
            ``with numrnn.nonfinite("warn")`` (or "ignore") returns the diverged results.

        Notes
        -----
        Reproducibility: the same inputs and parameters give the same bits on the same machine,
        whatever ``numrnn.config.NUM_THREADS`` (work is cut into blocks that do not depend on
        the thread count).  Not bitwise: the same sequence run as two calls (the second starting
        from the first's h_n) against one call; the input projection is one matrix product over
        every step, and BLAS may round a row differently in products of different sizes (it
        agrees to rounding, a few ulps).
        """
        return driver.forward(self, x, h0, noise_std, seed)

    def forward_vjp(self, x, d_output, h0=None, d_h_n=None, truncate=None, *, noise_std=0.0,
                    seed=None, checkpoint=None, memory_budget=None, grad_steps=None):
        """Forward pass and vector-Jacobian product in one call.

        Returns ``(output, h_n, grads)`` where ``output, h_n`` are exactly what :meth:`forward`
        returns and ``grads`` is what :meth:`vjp` returns (with the same noise, if any); the
        keyword arguments are those of :meth:`vjp`.
        """
        return driver.vjp(self, x, d_output, h0, d_h_n, truncate, noise_std, seed, checkpoint,
                          memory_budget, grad_steps, keep_output=True)

    def forward_pullback(self, x, h0=None, *, noise_std=0.0, seed=None, checkpoint=None,
                         memory_budget=None):
        """Forward pass that keeps what BPTT needs, and returns the vector-Jacobian product.

        For losses whose cotangent depends on the output (training): one forward pass, then
        ``pullback(d_output, d_h_n=None, truncate=None)`` returns the same dict as :meth:`vjp`,
        without running the forward pass again.

        ``noise_std`` and ``seed``: noise in the dynamics, as in :meth:`forward`; the pullback
        differentiates that noisy trajectory (the noise is a fixed input).  ``checkpoint`` and
        ``memory_budget``: as in :meth:`vjp` (the pullback then runs each segment again).

        Returns
        -------
        output, h_n
            As :meth:`forward`.
        pullback : callable
            ``pullback(d_output, d_h_n=None, truncate=None, grad_steps=None) -> dict``.  It uses the parameters the
            forward pass ran with (a copy: later changes to the network's parameters, in place
            or through :meth:`load_state_dict`, do not reach it).  May be called several times.

        Examples
        --------
        >>> import numpy as np, numrnn
        >>> net = numrnn.RNN(2, 5, seed=0)
        >>> x = np.ones((10, 3, 2))
        >>> out, h_n, pullback = net.forward_pullback(x)
        >>> grads = pullback(2 * out)              # gradient of sum(out**2)
        >>> sorted(grads)[:2]
        ['bias_hh_l0', 'bias_ih_l0']
        """
        return driver.forward_pullback(self, x, h0, noise_std, seed, checkpoint, memory_budget)

    def vjp(self, x, d_output, h0=None, d_h_n=None, truncate=None, *, noise_std=0.0,
            seed=None, checkpoint=None, memory_budget=None, grad_steps=None):
        """Vector-Jacobian product by backpropagation through time.

        Computes the gradient of ``L = sum(output * d_output) + sum(h_n * d_h_n)`` (for LSTM the
        last term covers both h_n and c_n) with respect to every parameter, the input and the
        initial state.

        Parameters
        ----------
        x : ndarray, shape as in :meth:`forward`
        d_output : ndarray, shape of ``output``, or None
            None: no cotangent on the outputs (a loss on the final state alone, through
            ``d_h_n``); the outputs are then never kept.
        h0 : ndarray or pair, optional
            As in :meth:`forward`.
        d_h_n : ndarray, shape of ``h_n``, optional (LSTM: a pair, either may be None)
        truncate : int or None
            Truncated BPTT, BPTT(k, k) of Williams and Peng (1990): the sequence is cut into
            consecutive chunks of k steps ([0, k), [k, 2k), ...); no gradient flows through the
            recurrent state across a chunk boundary (the state entering a chunk is a constant, as
            when a PyTorch user detaches it every k steps).  The initial state still receives
            gradient: a forward direction's ``h0`` from the first chunk, a reverse direction's
            from the chunk holding t = T-1 (where it enters).  None: full BPTT.
        noise_std, seed
            Noise in the dynamics, as in :meth:`forward`: the gradient of the noisy trajectory
            with that realisation held fixed.
        checkpoint : None, int or "auto"
            Checkpointed BPTT (Griewank 1992; Gruslys et al. 2016) in bounded memory: the
            forward pass keeps only the state every k steps (k a multiple of the blocks of the
            products over time: 64 steps for large networks, up to 512 for small ones, see
            ``numrnn.config.STEP_BLOCK_*``), and the backward sweep runs each segment of k steps
            forward again before sweeping it.  The gradients are bitwise those of full BPTT
            (every product over time runs on the same blocks either way); the cost is one more
            forward pass; memory is about T/k states and one segment of k steps (plus the
            outputs' and the inputs' cotangents, and the outputs between layers).  "auto": the
            full tape when it fits ``memory_budget``, else the k that needs the least memory
            (about sqrt(T) steps).  None (default): the full tape when it fits the memory
            available, else as "auto".  CPU only.  Combines with ``truncate`` and noise.
        memory_budget : int, optional
            Bytes for ``checkpoint="auto"`` (default: the memory available).  MemoryError
            (with the sizes) when even the checkpointed pass does not fit it.
        grad_steps : sequence of int, optional
            Time steps t at which to return dL/dh_t of the last layer (``"state_grad"``, shape
            (len, B, D*N)): the gradient at chosen lags (t = T - 1 - lag) of a long run,
            without keeping the rest.

        Returns
        -------
        dict
            One entry per parameter (``state_dict`` names and shapes), and
            ``"input"`` (shape of x), ``"h0"`` (and ``"c0"`` for LSTM; shape of h0), and
            ``"state_grad_norm"``, float64, shape (T, B) (or (T,) unbatched; always
            time-major): the Euclidean norm of dL/dh_t of the last layer at every step (both
            directions together when bidirectional; h only for LSTM), the quantity studied in
            gradient-stability work.  It is computed with scaling where the sum of squares
            would overflow or underflow, so it is finite whenever dL/dh_t is (also for float32
            networks, whose norms can exceed float32's range).

        Raises
        ------
        numrnn.NonFiniteError
            Where dL/dh (or a gradient, summed over steps) overflows to inf or NaN from finite
            inputs: the error names the layer, direction, first step and sequence.  Inside
            ``with numrnn.nonfinite("warn")`` a warning says so instead and the gradients are
            returned as computed.
        MemoryError
            Before allocating, when the tape (the states of every step, about
            T * B * N * (2 + G) numbers per layer) does not fit in the memory available.

        References
        ----------
        Werbos, P. J. (1990). Backpropagation through time: what it does and how to do it.
        Proceedings of the IEEE 78(10).
        Williams, R. J. and Peng, J. (1990). An efficient gradient-based algorithm for on-line
        training of recurrent network trajectories. Neural Computation 2(4).
        """
        return driver.vjp(self, x, d_output, h0, d_h_n, truncate, noise_std, seed, checkpoint,
                          memory_budget, grad_steps, keep_output=False)[2]

