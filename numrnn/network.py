"""The recurrent network: parameters in PyTorch's layout, forward pass and vector-Jacobian product.

Data flow of one (layer, direction): the input projection of all T steps is one matrix product,
the recurrence runs in a compiled kernel (:mod:`numrnn.cpu`), and in the backward pass the weight
gradients are one matrix product each after the BPTT sweep.
"""
import math
from collections.abc import MutableMapping

import numpy as np

from . import _memory
from . import _validation as _v
from . import cells, cpu, errors
from .init import INITS, init_parameters

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
        "default": PyTorch's U(-1/sqrt(N), 1/sqrt(N)) for every parameter.  The others set each
        N x N block of ``weight_hh``: "gaussian" N(0, gain^2/N) entries (the random network of the
        chaos literature), "orthogonal" gain times a Haar orthogonal matrix, "identity" gain times
        the identity with zero biases (Le et al. 2015), "spectral_radius" a Gaussian matrix
        rescaled to spectral radius ``gain``.
    gain : float, optional
        The scale of the chosen ``init`` (default 1.0).  "default" takes no gain: passing one
        with it is an error, since it would be ignored.
    seed : int, sequence of int, numpy.random.SeedSequence or numpy.random.Generator, optional
        Same seed, same bits.
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
    """

    def __init__(self, input_size, hidden_size, *, cell="tanh", num_layers=1, bias=True,
                 bidirectional=False, batch_first=False, alpha=1.0, nonlinearity=None,
                 cell_options=None, dtype=np.float64, init="default", gain=None, seed=None,
                 device="cpu"):
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
        rng = _v.check_seed(seed)
        self._install(init_parameters(rng, self._shapes(), self.hidden_size, init,
                                      1.0 if self.gain is None else self.gain, self.dtype))

    # --- configuration --------------------------------------------------------------------

    @property
    def alpha(self):
        """The leak a of cells that have one (their option "alpha"), 1.0 for every other."""
        return self.cell_options.get("alpha", 1.0)

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

    def _suffix(self, layer, direction):
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
                sfx = self._suffix(layer, d)
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
        self._flat, self._params = flat, self._views(flat)
        for name, view in self._params.items():
            np.copyto(view, values[name])

    def _views(self, flat):
        """name -> view of ``flat``, in PyTorch's order."""
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

    def _validated_parameters(self, snapshot=False):
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
        if snapshot:
            return self._views(self._flat.copy())
        return dict(self._params)

    def layer_params(self, layer, direction, params=None):
        """(W_ih, M, b_ih, b_hh) of one layer and direction from ``params`` (default: the
        network's, checked now): M is the (G*N, R*N) matrix the recurrent product uses
        (``weight_hh`` itself unless the cell maps it, as IndRNN's diagonal and the
        antisymmetric cell's W - W^T - gamma I do); b_ih is None and b_hh zeros without
        biases."""
        sfx = self._suffix(layer, direction)
        p = self._validated_parameters() if params is None else params
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
        params = self._validated_parameters()
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.copy_(torch.from_numpy(params[name]))
        return module

    # --- input handling -------------------------------------------------------------------

    def _check_input(self, x):
        """Validate x; return (x as (T, B, I) C-contiguous, unbatched flag)."""
        I = self.input_size
        x = _v.check_float_array("x", x, self.dtype,
                                 [(None, I), (None, None, I)])
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"x: expected at least one time step and one sequence, got shape "
                             f"{x.shape if not unbatched else x[:, 0].shape}")
        return x, unbatched

    def _check_state(self, name, s, batch, unbatched):
        LD, N = self.num_layers * self.num_directions, self.hidden_size
        if s is None:
            return np.zeros((LD, batch, N), self.dtype)
        shape = (LD, N) if unbatched else (LD, batch, N)
        s = _v.check_float_array(name, s, self.dtype, [shape])
        return s[:, None, :] if unbatched else s

    def _split_state(self, h0, batch, unbatched):
        if self.state_count == 2:
            if h0 is None:
                h0 = (None, None)
            if not isinstance(h0, (tuple, list)) or len(h0) != 2:
                a, b = self.definition.states
                raise TypeError(f"h0: the {self.cell} cell's state is a pair ({a}0, {b}0), got "
                                f"{type(h0).__name__}")
            return (self._check_state("h0", h0[0], batch, unbatched),
                    self._check_state("c0", h0[1], batch, unbatched))
        if isinstance(h0, (tuple, list)) and not isinstance(h0, np.ndarray):
            raise TypeError(f"h0: the {self.cell} cell's state is one array, got a "
                            f"{type(h0).__name__}")
        h = self._check_state("h0", h0, batch, unbatched)
        return h, np.zeros_like(h)

    def _to_user_layout(self, out, unbatched):
        if unbatched:
            return out[:, 0]
        if self.batch_first:
            return np.ascontiguousarray(out.transpose(1, 0, 2))
        return out

    # --- forward and backward -------------------------------------------------------------

    def _bytes_needed(self, T, B, backward):
        """Peak bytes a forward pass (``backward``: keeping the tape, then BPTT) allocates."""
        N, D, L = self.hidden_size, self.num_directions, self.num_layers
        GN = self.gate_count * N
        cell = self.definition
        record = N * (cell.state_count + cell.aux_count)  # out_h, out_c, aux per step
        concat = D * N if D == 2 else 0  # a bidirectional layer's output is a concatenated copy
        widest_in = max(self.input_size, D * N)
        if backward:  # every layer's records stay, then the sweep's cotangents
            kept = L * (D * record + concat)
            extra = (GN * (2 if cell.separate else 1) + cell.read_count * N + N
                     + 2 * widest_in + 1)
        else:  # one layer's records, its input and the projection in flight
            kept = D * record + concat + D * N
            extra = GN
        return T * B * (kept + extra) * self.dtype.itemsize

    def _check_memory(self, what, T, B, backward):
        need = self._bytes_needed(T, B, backward)
        if need < _memory.CHECK_FROM:
            return
        _memory.check(what, need, f"T={T} steps, B={B} sequences, {self._describe()}",
                      _memory.steps_that_fit(T, need, "run the sequence in shorter pieces (each "
                                                      "continues from the previous h_n)"))

    def _describe(self):
        """'N=64 units (lstm, 2 layers, float32)': what a memory error names."""
        layers = f"{self.num_layers} layer{'s' if self.num_layers > 1 else ''}"
        return (f"N={self.hidden_size} units ({self.cell}, {layers}"
                f"{', bidirectional' if self.bidirectional else ''}, {self.dtype})")

    def _forward_pass(self, x, h0, c0, params=None):
        """x (T, B, I), h0/c0 (L*D, B, N). Returns output (T, B, D*N), h_n, c_n, tape.

        ``params``: checked parameters (:meth:`_validated_parameters`; default: checked now).
        """
        if params is None:
            params = self._validated_parameters()
        # numrnn's own threads do the parallel work (cpu.threads); NaN/inf born inside are
        # reported by numrnn itself (numrnn.errors), not as NumPy's RuntimeWarnings
        with cpu.single_threaded(), np.errstate(all="ignore"):
            return self._forward_layers(x, h0, c0, params)

    def _forward_layers(self, x, h0, c0, params):
        T, B, _ = x.shape
        N, D = self.hidden_size, self.num_directions
        h_n = np.empty((self.num_layers * D, B, N), self.dtype)
        c_n = np.empty_like(h_n)
        layer_in = x
        tape = []
        reported = False
        opts = self.options_array()
        for layer in range(self.num_layers):
            outs, records = [], []
            flat_in = layer_in.reshape(T * B, -1)
            for d in range(D):
                k = layer * D + d
                w_ih, w_hh, b_ih, b_hh = self.layer_params(layer, d, params)
                xp = cpu.matmul(flat_in, w_ih.T)
                if b_ih is not None:
                    if self.definition.separate:  # the cell sees W_ih x + b_ih on its own
                        xp += b_ih
                    else:  # only xp + hp enters the cell: add b_ih with b_hh, once per step
                        b_hh = b_hh + b_ih
                xp = xp.reshape(T, B, -1)
                out_h, out_c, aux, bad = cpu.forward(self.definition, opts, xp, w_hh, b_hh,
                                                     h0[k], c0[k], d == 1)
                reported = reported or errors.check_state(bad, layer, d == 1)
                last = 0 if d == 1 else T - 1
                h_n[k] = out_h[last]
                c_n[k] = out_c[last] if self.state_count == 2 else 0.0
                outs.append(out_h)
                records.append((out_h, out_c, aux))
            tape.append((layer_in, records))
            layer_in = outs[0] if D == 1 else np.concatenate(outs, axis=2)
        return layer_in, h_n, c_n, tape

    def _backward_pass(self, tape, h0, c0, d_out, d_h_n, d_c_n, truncate, params):
        """BPTT through every layer with the parameters the forward pass ran with; returns
        (grads, time-major input gradient, d_h0, d_c0, state_grad_norm (T, B) float64)."""
        with cpu.single_threaded(), np.errstate(all="ignore"):
            return self._backward_layers(tape, h0, c0, d_out, d_h_n, d_c_n, truncate, params)

    def _backward_layers(self, tape, h0, c0, d_out, d_h_n, d_c_n, truncate, params):
        N, D, G = self.hidden_size, self.num_directions, self.gate_count
        T, B = d_out.shape[:2]
        # every parameter's gradient, and those of h0 and c0, in one buffer (laid out as the
        # parameters): one reduction checks them all for NaN/inf at the end
        n_params = self._flat.size
        buffer = np.empty(n_params + 2 * h0.size, self.dtype)
        grads = self._views(buffer[:n_params])
        d_h0 = buffer[n_params:n_params + h0.size].reshape(h0.shape)
        d_c0 = buffer[n_params + h0.size:].reshape(c0.shape)
        norms = None
        reported = False
        cell, opts = self.definition, self.options_array()
        for layer in reversed(range(self.num_layers)):
            layer_in, records = tape[layer]
            flat_in = layer_in.reshape(T * B, -1)
            d_in = None
            for d in range(D):
                k = layer * D + d
                sfx = self._suffix(layer, d)
                w_ih, w_hh, b_ih, _ = self.layer_params(layer, d, params)
                out_h, out_c, aux = records[d]
                d_dir = np.ascontiguousarray(d_out[:, :, d * N:(d + 1) * N])
                dxp, dhp, d_h0[k], d_c0[k], norm, bad = cpu.backward(
                    cell, opts, w_hh, h0[k], c0[k], out_h, out_c, aux, d_dir, d_h_n[k],
                    d_c_n[k], d == 1, truncate)
                reported = reported or errors.check_gradient(bad, layer, d == 1, T, self.dtype)
                if layer == self.num_layers - 1:  # the last layer's dL/dh_t, both directions
                    norms = norm if norms is None else np.hypot(norms, norm)
                dxp2 = dxp.reshape(T * B, G * N)
                dhp2 = dhp.reshape(T * B, G * N)
                cpu.matmul_tn(dxp2, flat_in, out=grads["weight_ih" + sfx])
                d_w = grads["weight_hh" + sfx]
                d_m = cpu.recurrent_weight_grad(cell, opts, dhp, h0[k], c0[k], out_h, out_c,
                                                d == 1, out=d_w if cell.matrix is None else None)
                cell.weight_hh_grad(d_m, N, self.cell_options, out=d_w)
                if self.bias:
                    np.add.reduce(dxp2, axis=0, out=grads["bias_ih" + sfx])
                    # the two cotangents are one array for summed projections: sum it once
                    if dhp is dxp:
                        np.copyto(grads["bias_hh" + sfx], grads["bias_ih" + sfx])
                    else:
                        np.add.reduce(dhp2, axis=0, out=grads["bias_hh" + sfx])
                d_proj = cpu.matmul(dxp2, w_ih)
                d_in = d_proj if d_in is None else d_in + d_proj
            d_out = d_in.reshape(T, B, -1)
        if not reported:  # dL/dh stayed finite: a sum over T*B terms may still overflow
            errors.check_sums(list(grads.items()) + [("input", d_out), ("h0", d_h0),
                                                     ("c0", d_c0)], T * B, self.dtype,
                              together=(buffer, d_out))
        return grads, d_out, d_h0, d_c0, norms

    def forward(self, x, h0=None):
        """Run the network over a sequence.

        Parameters
        ----------
        x : ndarray, shape (T, B, I), (B, T, I) if batch_first, or (T, I) unbatched
            Input, of the network's dtype, finite.
        h0 : ndarray, shape (L*D, B, N) or (L*D, N) unbatched, optional
            Initial state (zeros by default).  For LSTM a pair (h0, c0) of such arrays, either of
            which may be None.

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
        if self.device == "cuda":
            from .gpu import passes

            return passes.forward(self, x, h0)
        x, unbatched = self._check_input(x)
        h0, c0 = self._split_state(h0, x.shape[1], unbatched)
        params = self._validated_parameters()
        self._check_memory("forward", x.shape[0], x.shape[1], backward=False)
        out, h_n, c_n, _ = self._forward_pass(x, h0, c0, params)
        return self._pack(out, h_n, c_n, unbatched)

    def _pack(self, out, h_n, c_n, unbatched):
        out = self._to_user_layout(out, unbatched)
        if unbatched:
            h_n, c_n = h_n[:, 0], c_n[:, 0]
        return out, ((h_n, c_n) if self.state_count == 2 else h_n)

    def forward_vjp(self, x, d_output, h0=None, d_h_n=None, truncate=None):
        """Forward pass and vector-Jacobian product in one call.

        Returns ``(output, h_n, grads)`` where ``output, h_n`` are exactly what :meth:`forward`
        returns and ``grads`` is what :meth:`vjp` returns.
        """
        if self.device == "cuda":
            from .gpu import passes

            return passes.forward_vjp(self, x, d_output, h0, d_h_n, truncate)
        out, h_n, pullback = self.forward_pullback(x, h0)
        return out, h_n, pullback(d_output, d_h_n, truncate)

    def forward_pullback(self, x, h0=None):
        """Forward pass that keeps what BPTT needs, and returns the vector-Jacobian product.

        For losses whose cotangent depends on the output (training): one forward pass, then
        ``pullback(d_output, d_h_n=None, truncate=None)`` returns the same dict as :meth:`vjp`,
        without running the forward pass again.

        Returns
        -------
        output, h_n
            As :meth:`forward`.
        pullback : callable
            ``pullback(d_output, d_h_n=None, truncate=None) -> dict``.  It uses the parameters the
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
        if self.device == "cuda":
            from .gpu import passes

            out, h_n = passes.forward(self, x, h0)

            def pullback_gpu(d_output, d_h_n=None, truncate=None):
                # the GPU passes keep no tape between calls: the forward pass is recomputed
                return passes.forward_vjp(self, x, d_output, h0, d_h_n, truncate)[2]

            return out, h_n, pullback_gpu
        x, unbatched = self._check_input(x)
        T, B = x.shape[:2]
        h0, c0 = self._split_state(h0, B, unbatched)
        params = self._validated_parameters(snapshot=True)
        self._check_memory("forward_vjp: the BPTT tape", T, B, backward=True)
        out, h_n, c_n, tape = self._forward_pass(x, h0, c0, params)
        D, N, LD = self.num_directions, self.hidden_size, self.num_layers * self.num_directions
        out_shape = (T, D * N) if unbatched else ((B, T, D * N) if self.batch_first
                                                  else (T, B, D * N))

        def pullback(d_output, d_h_n=None, truncate=None):
            d_out = _v.check_float_array("d_output", d_output, self.dtype, [out_shape])
            if unbatched:
                d_out = d_out[:, None, :]
            elif self.batch_first:
                d_out = np.ascontiguousarray(d_out.transpose(1, 0, 2))
            d_h, d_c = self._check_state_cotangent(d_h_n, B, unbatched, LD, N)
            if truncate is not None:
                truncate = _v.check_int("truncate", truncate, 1)
            grads, d_x, d_h0, d_c0, norms = self._backward_pass(tape, h0, c0, d_out, d_h, d_c,
                                                                truncate, params)
            grads["input"] = self._to_user_layout(d_x, unbatched)
            grads["h0"] = d_h0[:, 0] if unbatched else d_h0
            if self.state_count == 2:  # the second state's (LSTM's c0, coRNN's z0)
                grads["c0"] = d_c0[:, 0] if unbatched else d_c0
            grads["state_grad_norm"] = norms[:, 0] if unbatched else norms
            return grads

        out, h_n = self._pack(out, h_n, c_n, unbatched)
        return out, h_n, pullback

    def _check_state_cotangent(self, d_h_n, batch, unbatched, LD, N):
        zeros = np.zeros((LD, batch, N), self.dtype)
        if d_h_n is None:
            return zeros, zeros
        if self.state_count == 2:
            if not isinstance(d_h_n, (tuple, list)) or len(d_h_n) != 2:
                a, b = self.definition.states
                raise TypeError(f"d_h_n: the {self.cell} cell's final state is a pair ({a}_n, "
                                f"{b}_n); expected a pair of cotangents, got "
                                f"{type(d_h_n).__name__}")
            dh, dc = d_h_n
        else:
            dh, dc = d_h_n, None
        dh = zeros if dh is None else self._check_state("d_h_n", dh, batch, unbatched)
        dc = zeros if dc is None else self._check_state("d_c_n", dc, batch, unbatched)
        return dh, dc

    def vjp(self, x, d_output, h0=None, d_h_n=None, truncate=None):
        """Vector-Jacobian product by backpropagation through time.

        Computes the gradient of ``L = sum(output * d_output) + sum(h_n * d_h_n)`` (for LSTM the
        last term covers both h_n and c_n) with respect to every parameter, the input and the
        initial state.

        Parameters
        ----------
        x : ndarray, shape as in :meth:`forward`
        d_output : ndarray, shape of ``output``
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
        return self.forward_vjp(x, d_output, h0, d_h_n, truncate)[2]

