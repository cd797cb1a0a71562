"""The gradient-stability study: Lyapunov spectra, gradient decay and mean field over a sweep.

One *point* of a study is a (gain, seed) pair; :func:`study_point` computes it from a plain dict of
parameters, so the same function runs in a loop here or as a task on a Dask cluster
(:func:`run_study` with ``scheduler=``) and gives the same bits either way: every random number of a
point comes from generators seeded by the point's own parameters.
"""
import re
import textwrap
import time
from dataclasses import dataclass, field

import numpy as np

from .. import _validation as _v
from .. import cells
from .meanfield import meanfield_applies, meanfield_lyapunov
from .progress import ProgressBar

__all__ = ["StudyConfig", "StudyResult", "study_point", "run_study", "check_scheduler",
           "STUDY_CELLS", "STUDY_INITS"]

#: The cells registered when numrnn was imported (built-in and literature cells).  A study runs on
#: any registered cell: these, and those registered later (``numrnn.cells.names()``).
STUDY_CELLS = cells.names()
#: The initialisers a gain sweep can use: each scales W_hh by the gain.  "default" (PyTorch's
#: uniform initialisation) takes no gain, so every gain would give the same network.
STUDY_INITS = ("gaussian", "orthogonal", "spectral_radius", "identity")


@dataclass(frozen=True)
class StudyConfig:
    """Every parameter of a gradient-stability study (all of it is written to the JSON output).

    Parameters
    ----------
    cell : str
        A registered cell (``numrnn.cells.names()``), with its default nonlinearity.
    hidden_size : int
        N.
    gains : tuple of float
        The swept gain g (std of W_hh entries times sqrt(N) for init "gaussian").
    seeds : tuple of int
        One network per (gain, seed).
    alpha : float
        Leak of the cells that have one (those with the option "alpha"); 1.0 for the others.
    sigma_b : float
        Standard deviation of the biases (b_ih ~ N(0, sigma_b^2), b_hh = 0).
    init : str
        Initialiser of W_hh, one of ``STUDY_INITS`` (see :class:`numrnn.RNN`); the gain scales
        it.  "default" is refused: it takes no gain, so the sweep would repeat one network.
    dtype : str
        "float64" or "float32".
    device : str
        "cpu" or "cuda".
    steps : int
        Steps of the trajectory along which exponents and gradients are measured.
    transient : int
        Steps discarded first.
    n_exponents : int or None
        How many Lyapunov exponents: None (the default) for the full spectrum, whose
        Kaplan-Yorke dimension is always determined; k < N for the first k only (cheaper, but
        D_KY is then known only where it is below k).
    max_lag : int
        Largest lag of the gradient-norm decay fit.
    singular_values : bool
        Also compute every singular value of the Jacobian products d s_T / d s_{T-tau} over the
        last ``max_lag`` steps (:func:`numrnn.gradient_propagation`), and their norm's decay
        rate.  Costs O(max_lag N^3) per point, so it is off by default.
    cell_options : dict
        The cell's hyperparameters (:attr:`numrnn.Cell.options`) that differ from its defaults,
        e.g. ``{"dt": 0.1}`` for coRNN.
    """

    cell: str = "tanh"
    hidden_size: int = 200
    gains: tuple = tuple(np.round(np.linspace(0.5, 3.0, 11), 6).tolist())
    seeds: tuple = (0, 1, 2)
    alpha: float = 1.0
    sigma_b: float = 0.0
    init: str = "gaussian"
    dtype: str = "float64"
    device: str = "cpu"
    steps: int = 500
    transient: int = 200
    n_exponents: int = None
    max_lag: int = 50
    singular_values: bool = False
    cell_options: dict = field(default_factory=dict)

    def __post_init__(self):
        definition = self.definition()
        if definition is None:
            raise ValueError(f"cell: expected one of the registered cells {cells.names()}, got "
                             f"{self.cell!r}")
        _v.check_int("hidden_size", self.hidden_size, 1)
        gains = tuple(float(_v.check_real("gains", g, 0.0, low_open=True)) for g in self.gains)
        if not gains:
            raise ValueError("gains: expected at least one gain, got none")
        object.__setattr__(self, "gains", gains)
        seeds = tuple(_v.check_int("seeds", s, 0) for s in self.seeds)
        if not seeds:
            raise ValueError("seeds: expected at least one seed, got none")
        object.__setattr__(self, "seeds", seeds)
        _v.check_real("alpha", self.alpha, 0.0, 1.0, low_open=True)
        if not isinstance(self.cell_options, dict):
            raise TypeError(f"cell_options: expected a dict, got "
                            f"{type(self.cell_options).__name__}")
        _v.check_real("sigma_b", self.sigma_b, 0.0)
        if self.init == "default":
            raise ValueError(f"init: 'default' (PyTorch's U(-1/sqrt(N), 1/sqrt(N))) takes no "
                             f"gain, so every gain of the sweep would give the same network and "
                             f"identical rows; expected one of {STUDY_INITS}")
        if self.init not in STUDY_INITS:
            raise ValueError(f"init: expected one of {STUDY_INITS}, got {self.init!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype: expected 'float64' or 'float32', got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")
        _v.check_int("steps", self.steps, 2)
        _v.check_int("transient", self.transient, 0)
        if self.n_exponents is not None:
            _v.check_int("n_exponents", self.n_exponents, 1)
            n_state = self.hidden_size * definition.state_count
            if self.n_exponents > n_state:
                raise ValueError(f"n_exponents: expected at most the state size {n_state}, got "
                                 f"{self.n_exponents}")
        _v.check_int("max_lag", self.max_lag, 2)
        if self.max_lag >= self.steps:
            raise ValueError(f"max_lag: expected fewer than steps={self.steps}, got {self.max_lag}")
        if not isinstance(self.singular_values, (bool, np.bool_)):
            raise TypeError(f"singular_values: expected True or False, got "
                            f"{self.singular_values!r}")
        # what RNN refuses (a leak for a cell without one, an option the cell does not have or
        # accept, an init that does not describe its recurrent weight) is found now, not at the
        # first point, which builds such a network too (so this costs one point's initialisation)
        from ..network import RNN

        net = RNN(1, self.hidden_size, cell=self.cell, alpha=self.alpha,
                  cell_options=self.cell_options or None, dtype=np.dtype(self.dtype),
                  init=self.init, gain=1.0, seed=0)
        object.__setattr__(self, "cell_options",
                           {k: net.cell_options[k] for k in self.cell_options})

    def definition(self):
        """The :class:`numrnn.Cell` registered as ``cell`` (None if there is none)."""
        return cells.registered(self.cell) if isinstance(self.cell, str) else None

    def network_options(self):
        """The options the networks' cell gets: ``cell_options`` and the leak ``alpha`` (for a
        cell that has one)."""
        options = dict(self.cell_options)
        if self.alpha != 1.0:
            options["alpha"] = self.alpha
        return options

    def state_size(self):
        """S, the number of Lyapunov exponents of the full spectrum (N per state of the cell)."""
        return self.hidden_size * self.definition().state_count

    def has_meanfield(self):
        """True when :func:`meanfield_lyapunov` predicts the largest exponent of these networks
        (see :func:`numrnn.experiments.meanfield.meanfield_applies`)."""
        return meanfield_applies(self.definition(), self.network_options(), self.init)

    def points(self):
        """The sweep's points as plain dicts (gain-major, then seed), ready for :func:`study_point`."""
        base = {k: getattr(self, k) for k in self.__dataclass_fields__
                if k not in ("gains", "seeds", "cell_options")}
        return [dict(base, gain=g, seed=s, cell_options=dict(self.cell_options))
                for g in self.gains for s in self.seeds]

    def as_dict(self):
        return {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, dict) else v)
                for k, v in ((k, getattr(self, k)) for k in self.__dataclass_fields__)}


def _build_network(p):
    """The point's network: W_hh from the initialiser, biases N(0, sigma_b^2) in b_ih, b_hh = 0."""
    from ..network import RNN

    kw = {}
    if p["device"] != "cpu":
        kw["device"] = p["device"]
    rng = _v.check_seed([p["seed"], 1], "seed")
    try:
        net = RNN(1, p["hidden_size"], cell=p["cell"], alpha=p["alpha"],
                  cell_options=p.get("cell_options") or None, dtype=np.dtype(p["dtype"]),
                  init=p["init"], gain=p["gain"], seed=_v.check_seed([p["seed"], 0], "seed"),
                  **kw)
    except TypeError as exc:
        if "device" in str(exc) and kw:
            raise ValueError(f"device: this numrnn build cannot run on {p['device']!r}: "
                             f"{exc}") from None
        raise
    params = net.state_dict()
    for name in params:
        if name.startswith("bias_ih"):
            params[name] = (p["sigma_b"] * rng.standard_normal(params[name].shape)).astype(net.dtype)
        elif name.startswith("bias_hh"):
            params[name] = np.zeros_like(params[name])
    net.load_state_dict(params)
    return net


def _batch_of(a, B):
    """B contiguous copies of an unbatched array, (L, n) -> (L, B, n) (time-major for inputs)."""
    return np.ascontiguousarray(np.broadcast_to(a[:, None, :], (a.shape[0], B, a.shape[1])))


def _bptt_decay_rate(net, x, h0, max_lag, seed):
    """Per-step growth rate of BPTT gradient norms |dL/dh_{T-1-tau}| over lags tau = 1..max_lag.

    L = <v, h_{T-1}> for 8 random unit cotangents v (a batch of copies of the trajectory), the
    slope of the mean of ln|dL/dh_t| against lag: the engine's own backpropagated gradients,
    measured independently of the analysis package's Jacobian products.  Negative: vanishing.

    Only the last max_lag + 1 steps are backpropagated (the state entering them comes from a
    forward pass): lags beyond max_lag are not used, and in a chaotic network their gradients
    grow past the dtype's range.
    """
    B = 8
    rng = _v.check_seed([seed, 3], "seed")
    cut = x.shape[0] - max_lag - 1
    if cut > 0:
        _, h0 = net.forward(x[:cut], h0)
        x = x[cut:]
    pair = isinstance(h0, tuple)  # a cell with two states: the cotangent enters the first
    hb = _batch_of(h0[0] if pair else h0, B)
    v = rng.standard_normal(hb.shape).astype(net.dtype)
    v /= np.linalg.norm(v, axis=2, keepdims=True)
    if pair:
        hb, v = (hb, _batch_of(h0[1], B)), (v, np.zeros_like(v))
    out_shape = (x.shape[0], B, net.hidden_size * net.num_directions)
    grads = net.vjp(_batch_of(x, B), np.zeros(out_shape, net.dtype), hb, d_h_n=v)
    norms = np.asarray(grads["state_grad_norm"], np.float64)[::-1][1:max_lag + 1]  # lags 1..
    with np.errstate(divide="ignore"):
        logs = np.log(norms).mean(axis=1)
    lags = np.arange(1, max_lag + 1)
    ok = np.isfinite(logs)
    if ok.sum() < 2:
        return float("-inf")
    return float(np.polyfit(lags[ok], logs[ok], 1)[0])


def study_point(p):
    """Compute one point of a study from a dict of parameters (a :meth:`StudyConfig.points` entry).

    Returns
    -------
    dict
        The point's parameters ``gain`` and ``seed`` and the measured ``lyapunov_max``,
        ``lyapunov_max_stderr``, ``exponents`` (list), ``kaplan_yorke_dimension``, ``ks_entropy``
        and their ``*_per_unit`` forms (divided by ``units``, the N hidden units), each with its
        ``*_stderr`` (batch means along the trajectory, from :func:`numrnn.lyapunov_spectrum`:
        finite-time error of this one network, not the spread between networks; D_KY is NaN
        where a partial spectrum cannot determine it); ``grad_decay_rate`` (per step: the slope
        of the log norm of BPTT gradients dL/dh_{T-tau} against the lag tau, from the engine's
        vjp);
        ``jacobian_decay_rate`` and ``jacobian_max_singular_value`` (the decay rate of the norm of
        the Jacobian products d s_T / d s_{T-tau} and their largest singular value at tau =
        max_lag, from :func:`numrnn.gradient_propagation`; NaN unless ``singular_values``);
        ``meanfield_lyapunov`` (NaN where the theory does not apply: it covers tanh without
        leak, Gaussian weights) and ``seconds``.
    """
    import numrnn

    start = time.perf_counter()
    net = _build_network(p)
    dtype = np.dtype(p["dtype"])
    rng = _v.check_seed([p["seed"], 2], "seed")
    n_state = net.num_layers * net.hidden_size
    h0 = rng.standard_normal((1, n_state)).astype(dtype)
    if net.state_count == 2:  # the second state (LSTM's c, coRNN's z) starts at zero
        h0 = (h0, np.zeros_like(h0))
    total = p["transient"] + p["steps"]
    x = np.zeros((total, 1), dtype)
    spec = numrnn.lyapunov_spectrum(net, x, h0, k=p["n_exponents"], transient=p["transient"],
                                    seed=int(p["seed"]))
    row = {"gain": float(p["gain"]), "seed": int(p["seed"])}
    exps = np.asarray(spec.exponents, dtype=np.float64)
    row.update(lyapunov_max=float(exps[0]), lyapunov_max_stderr=float(np.asarray(spec.stderr)[0]),
               units=int(spec.units))
    for name in ("kaplan_yorke_dimension", "ks_entropy"):
        for form in (name, name + "_per_unit"):
            row[form] = float(getattr(spec, form))
            row[form + "_stderr"] = float(getattr(spec, form + "_stderr"))
    row.update(grad_decay_rate=_bptt_decay_rate(net, x, h0, p["max_lag"], p["seed"]))
    if p["singular_values"]:
        from ..analysis import gradient_propagation

        # the products over the last max_lag steps of the same trajectory
        cut = total - p["max_lag"]
        _, h_cut = net.forward(x[:cut], h0)
        prop = gradient_propagation(net, x[cut:], h_cut, lags=np.arange(1, p["max_lag"] + 1),
                                    seed=int(p["seed"]))
        row.update(jacobian_decay_rate=float(prop.decay_rate),
                   jacobian_max_singular_value=float(np.asarray(prop.singular_values)[-1, 0]))
    else:
        row.update(jacobian_decay_rate=float("nan"), jacobian_max_singular_value=float("nan"))
    mf = (meanfield_lyapunov(p["gain"], p["sigma_b"])
          if meanfield_applies(net.definition, net.cell_options, p["init"]) else np.nan)
    row.update(meanfield_lyapunov=float(mf), exponents=exps.tolist(),
               seconds=time.perf_counter() - start)
    return row


@dataclass(frozen=True)
class StudyResult:
    """The rows of a study, in the order of :meth:`StudyConfig.points`.

    Attributes
    ----------
    status : str
        One line: number of points, time, where it ran.
    config : StudyConfig
    rows : list of dict
        One :func:`study_point` result per point.
    seconds : float
    scheduler : str
        "serial" or the Dask scheduler's address.
    version : str
        numrnn.__version__ that computed it.

    Notes
    -----
    Error bars of :meth:`summary` and :meth:`table`.  A gain's number is the mean over its seeds
    (independent networks): an estimate of the average over the ensemble of networks at that
    gain.  Its error bar is the standard error of that mean, the sd over seeds / sqrt(number of
    seeds).  Each seed's value differs from the ensemble average by the network's own deviation
    and by the finite-time error of its trajectory, so the sd over seeds counts both, each once;
    the batch-means stderr of a point (``*_stderr`` in the rows) counts the second only and would
    understate the error of an ensemble average (and adding it to the sd would count it twice).
    Few seeds give an uncertain sd (3 seeds: 2 degrees of freedom, so a 95% interval is about
    4.3 standard errors wide on each side).  With one seed, the table falls back to the point's
    batch-means stderr and says so.
    """

    status: str
    config: StudyConfig
    rows: list
    seconds: float
    scheduler: str
    version: str
    extra: dict = field(default_factory=dict)

    def column(self, name):
        """One field of every row as an array, shape (len(gains) * len(seeds),)."""
        return np.array([r[name] for r in self.rows])

    def summary(self):
        """Per gain, the mean over seeds of each quantity with its spread and its error.

        Returns
        -------
        list of dict, one per gain
            ``gain``, ``n_seeds``, and for each of ``lyapunov_max``, ``meanfield_lyapunov``,
            ``grad_decay_rate``, ``kaplan_yorke_dimension``, ``ks_entropy`` and their
            ``*_per_unit`` forms: the mean over seeds, ``*_sd`` (standard deviation over seeds,
            NaN for one seed) and ``*_stderr``, the error of the mean that :meth:`table` prints
            (see :class:`StudyResult`).  Where a partial spectrum cannot determine D_KY for some
            seed, ``kaplan_yorke_dimension`` (and per unit) is NaN and
            ``kaplan_yorke_dimension_lower_bound`` (and per unit) is the mean with k, the
            number of exponents computed, in place of each undetermined value: a lower bound
            (NaN otherwise).  ``ks_entropy_is_lower_bound`` is True where some seed's last
            computed exponent is positive (the exponents not computed may add to it).
        """
        n_state = self.config.state_size()
        out = []
        for g in self.config.gains:
            rows = [r for r in self.rows if r["gain"] == g]
            entry = {"gain": g, "n_seeds": len(rows)}
            for key, point_stderr in _SUMMARY:
                vals = np.array([r[key] for r in rows], dtype=np.float64)
                entry.update(_mean_and_errors(key, vals, [r.get(point_stderr, np.nan)
                                                          for r in rows] if point_stderr else None))
            for key in ("kaplan_yorke_dimension", "kaplan_yorke_dimension_per_unit"):
                bounds = [_ky_lower_bound(r, key.endswith("per_unit")) for r in rows]
                undetermined = [b is not None for b in bounds]
                entry[key + "_lower_bound"] = (
                    float(np.mean([b if b is not None else r[key] for b, r in zip(bounds, rows)]))
                    if any(undetermined) else float("nan"))
            entry["ks_entropy_is_lower_bound"] = any(
                len(r["exponents"]) < n_state and r["exponents"][-1] > 0.0 for r in rows)
            out.append(entry)
        return out

    def table(self):
        """The summary as aligned text: per gain, the mean over seeds +- its error.

        The first line says what the error is (see :class:`StudyResult`); "n/a" marks a value that
        does not apply (the mean field outside its theory) or is not finite; "> x" a lower
        bound (D_KY/N beyond a partial spectrum, h_KS/N with positive exponents not computed).
        Footnotes below the rows explain the marks that occur.
        """
        n = len(self.config.seeds)
        units = self.config.hidden_size
        what = (f"mean over {n} seeds +- its standard error (sd over seeds / sqrt({n}))" if n > 1
                else "one seed, +- its batch-means standard error (finite time only)")
        head = (f"{'g':>6} {'lambda_max':>17} {'mean-field':>11} {'grad decay':>17} "
                f"{'D_KY/N':>16} {'h_KS/N':>18}")
        lines = [f"{what}; per step; D_KY and h_KS per unit (N = {units})", head,
                 "-" * len(head)]
        marks = set()
        for e in self.summary():
            cells = [f"{e['gain']:6.3f}",
                     _cell(e["lyapunov_max"], e["lyapunov_max_stderr"], 17, "+.4f", ".4f"),
                     _cell(e["meanfield_lyapunov"], None, 11, "+.4f", ""),
                     _cell(e["grad_decay_rate"], e["grad_decay_rate_stderr"], 17, "+.4f", ".4f")]
            bound = e["kaplan_yorke_dimension_per_unit_lower_bound"]
            if np.isfinite(bound):
                cells.append(f"{'> ' + format(bound, '.4f'):>16}")
                marks.add("ky")
            else:
                cells.append(_cell(e["kaplan_yorke_dimension_per_unit"],
                                   e["kaplan_yorke_dimension_per_unit_stderr"], 16, ".4f", ".4f"))
            if e["ks_entropy_is_lower_bound"] and np.isfinite(e["ks_entropy_per_unit"]):
                cells.append(f"{'> ' + format(e['ks_entropy_per_unit'], '.5f'):>18}")
                marks.add("ks")
            else:
                cells.append(_cell(e["ks_entropy_per_unit"], e["ks_entropy_per_unit_stderr"], 18,
                                   ".5f", ".5f"))
            if not np.isfinite(e["meanfield_lyapunov"]):
                marks.add("mf")
            if "n/a" in " ".join(cells[:2] + cells[3:]):
                marks.add("n/a")
            lines.append(" ".join(cells))
        k, notes = self.config.n_exponents, []
        if "mf" in marks:
            notes.append("mean-field n/a: the theory covers the tanh cell without leak and with "
                         "Gaussian W_hh (init gaussian) only")
        if "n/a" in marks:
            notes.append("n/a elsewhere: not finite (a trajectory lost to inf or NaN, gradients "
                         "that became exactly 0), or no error bar (one seed: grad decay has none)")
        if "ky" in marks:
            notes.append(f"> x: D_KY/N exceeds x: every partial sum of the k = {k} exponents "
                         f"computed is >= 0 (k/N = {k / units:.4f} counted for those seeds); "
                         f"the full spectrum (no -k) determines it")
        if "ks" in marks:
            notes.append(f"> x: h_KS/N exceeds x: lambda_{k} > 0, so exponents beyond the k = {k} "
                         f"computed add to it")
        for note in notes:
            lines.extend(textwrap.wrap(note, width=len(head), subsequent_indent="  "))
        return "\n".join(lines)

    def __repr__(self):
        return f"StudyResult({self.status})"


#: (quantity, the point's own batch-means stderr of it or None): what the summary averages
_SUMMARY = (("lyapunov_max", "lyapunov_max_stderr"), ("meanfield_lyapunov", None),
            ("grad_decay_rate", None),
            ("kaplan_yorke_dimension", "kaplan_yorke_dimension_stderr"),
            ("kaplan_yorke_dimension_per_unit", "kaplan_yorke_dimension_per_unit_stderr"),
            ("ks_entropy", "ks_entropy_stderr"),
            ("ks_entropy_per_unit", "ks_entropy_per_unit_stderr"))


def _mean_and_errors(key, vals, point_stderr):
    """{key: mean over seeds, key_sd: their sd, key_stderr: the error of the mean}: sd / sqrt(n)
    for n >= 2 seeds, else the one point's batch-means stderr (NaN where it has none)."""
    n = vals.size
    with np.errstate(invalid="ignore"):  # the sd of rates of -inf (inf - inf): NaN, n/a
        mean = float(vals.mean())
        sd = float(vals.std(ddof=1)) if n > 1 else float("nan")
    if n > 1:
        stderr = sd / np.sqrt(n)
    else:
        stderr = float(point_stderr[0]) if point_stderr is not None else float("nan")
    return {key: mean, key + "_sd": sd, key + "_stderr": stderr}


def _ky_lower_bound(row, per_unit):
    """k (k / units if ``per_unit``) where the row's D_KY is undetermined because every partial
    sum of its k exponents is >= 0 (D_KY > k); None where it is determined, or NaN because an
    exponent is."""
    exps = np.asarray(row["exponents"], dtype=np.float64)
    if not np.isnan(row["kaplan_yorke_dimension"]) or np.isnan(exps).any():
        return None
    return exps.size / row["units"] if per_unit else float(exps.size)


def _cell(value, err, width, fmt, efmt):
    """``value +-err`` right-aligned in ``width`` characters (``err`` None: the value alone);
    n/a for a value that is not finite, +-n/a for an error that is not."""
    if not np.isfinite(value):
        return f"{'n/a':>{width}}"
    text = format(value, fmt)
    if err is not None:
        text += " +-" + (format(err, efmt) if np.isfinite(err) else "n/a")
    return f"{text:>{width}}"


_ADDRESS = re.compile(r"[a-z][a-z0-9+.-]*://\S+|[^\s:/]+:\d+")
_LOCAL = re.compile(r"local(:(?P<n>[1-9][0-9]*))?")


def _dask_distributed():
    """The ``dask.distributed`` module, or an ImportError that says how to install it."""
    try:
        import dask.distributed
    except ImportError as exc:
        raise ImportError("scheduler: Dask sweeps need the optional extra, which is not "
                          "installed: pip install 'numrnn[dask]'") from exc
    return dask.distributed


def check_scheduler(scheduler):
    """Check a ``scheduler`` argument of :func:`run_study` without connecting to it.

    Parameters
    ----------
    scheduler : None, str or dask.distributed.Client
        None (serial), "local" or "local:N" (N >= 1 worker processes), a scheduler address
        ("tcp://host:8786", "host:8786") or a Client.

    Returns
    -------
    The same ``scheduler``.

    Raises
    ------
    TypeError, ValueError
        For anything else, naming ``scheduler``.
    ImportError
        When a Dask scheduler is asked for and Dask is not installed, with the command that
        installs it.
    """
    if scheduler is None or hasattr(scheduler, "submit"):
        return scheduler
    if not isinstance(scheduler, str):
        raise TypeError(f"scheduler: expected an address string, 'local[:N]' or a "
                        f"dask.distributed.Client, got {type(scheduler).__name__}")
    if scheduler == "local" or scheduler.startswith("local:"):
        if not _LOCAL.fullmatch(scheduler):
            raise ValueError(f"scheduler: expected 'local' or 'local:N' with N >= 1 worker "
                             f"processes, got {scheduler!r}")
    elif not _ADDRESS.fullmatch(scheduler):
        raise ValueError(f"scheduler: expected a Dask scheduler address (tcp://host:8786 or "
                         f"host:8786) or 'local[:N]', got {scheduler!r}")
    _dask_distributed()
    return scheduler


def _client(scheduler, timeout):
    """(client, what to close when done, address) for a checked ``scheduler``."""
    distributed = _dask_distributed()
    if hasattr(scheduler, "submit"):  # the caller's client: theirs to close
        return scheduler, [], getattr(getattr(scheduler, "scheduler", None), "address", "client")
    local = _LOCAL.fullmatch(scheduler)
    if local:
        cluster = distributed.LocalCluster(n_workers=int(local["n"] or 2), threads_per_worker=1,
                                           processes=True, dashboard_address=None)
        client = distributed.Client(cluster)
        return client, [client, cluster], cluster.scheduler_address
    try:
        client = distributed.Client(scheduler, timeout=timeout)
    except OSError as exc:  # refused, unreachable, timed out
        raise ConnectionError(f"scheduler: could not connect to {scheduler!r} within "
                              f"{timeout:g} s ({exc})") from None
    except ValueError as exc:  # an address Dask cannot parse
        raise ValueError(f"scheduler: {scheduler!r} is not an address Dask accepts ({exc})") \
            from None
    return client, [client], scheduler


def _point_rows(points, client):
    """(index, row) of every point as it is done: here, the points run side by side on
    numrnn's threads as one ensemble (:func:`numrnn.ensemble.run_all`: each point's numbers are
    those it gives alone); or as Dask tasks finish."""
    if client is None:
        import queue
        import threading

        from ..ensemble import run_all

        done = queue.Queue()
        outcome = {}

        def work():
            outcome["failures"] = run_all(lambda i: study_point(points[i]), len(points),
                                          parallel=True,
                                          done=lambda i, row: done.put((i, row)))
            done.put(None)

        runner = threading.Thread(target=work, name="numrnn-study", daemon=True)
        runner.start()
        for item in iter(done.get, None):
            yield item
        runner.join()
        for exc in outcome["failures"]:
            if exc is not None:
                raise exc
        return
    futures = client.map(study_point, points, pure=False)
    index = {f.key: i for i, f in enumerate(futures)}
    for fut in _dask_distributed().as_completed(futures):
        yield index[fut.key], fut.result()


def run_study(config=None, *, scheduler=None, timeout=10.0, progress=False, stream=None):
    """Run a gradient-stability study, serially or on a Dask cluster.

    Parameters
    ----------
    config : StudyConfig, optional
        Defaults: tanh, N = 200, g in 0.5 .. 3.0 (11 values), seeds 0, 1, 2, the full
        spectrum along 500 steps after a transient of 200.
    scheduler : str or dask.distributed.Client, optional
        None runs the points in this process.  A scheduler address ("tcp://host:8786"), or
        "local[:N]" for a ``LocalCluster`` of N single-threaded worker processes, or a Client,
        runs each point as a Dask task.  The numbers are identical either way.  Checked (and
        connected to) before any point is computed.
    timeout : float
        Seconds to wait for a scheduler address to answer (10 s).
    progress : bool
        Show a progress bar.
    stream : file-like, optional
        Where the progress bar goes (stderr by default).

    Returns
    -------
    StudyResult

    Raises
    ------
    ImportError
        A Dask scheduler without Dask installed (the message says how to install it).
    ConnectionError
        The scheduler did not answer within ``timeout``.

    References
    ----------
    Pascanu, R., Mikolov, T. and Bengio, Y. (2013). On the difficulty of training recurrent
    neural networks. ICML.
    Engelken, R., Wolf, F. and Abbott, L. F. (2020). Lyapunov spectra of chaotic recurrent neural
    networks. arXiv:2006.02427.

    Examples
    --------
    >>> from numrnn.experiments import StudyConfig, run_study
    >>> cfg = StudyConfig(hidden_size=50, gains=(0.5, 2.0), seeds=(0,), steps=100,
    ...                   transient=20, n_exponents=3, max_lag=10)
    >>> result = run_study(cfg)
    >>> result.rows[0]["lyapunov_max"] < 0 < result.rows[1]["lyapunov_max"]
    True
    """
    import numrnn

    config = StudyConfig() if config is None else config
    if not isinstance(config, StudyConfig):
        raise TypeError(f"config: expected a StudyConfig, got {type(config).__name__}")
    check_scheduler(scheduler)
    timeout = _v.check_real("timeout", timeout, 0.0, low_open=True)
    points = config.points()
    start = time.perf_counter()
    client, owned, where = None, [], "serial"
    if scheduler is not None:  # connect before any work: a bad address costs nothing
        client, owned, where = _client(scheduler, timeout)
    rows = [None] * len(points)
    bar = ProgressBar(len(points), "study", enabled=progress, stream=stream)
    try:
        with bar:
            for i, row in _point_rows(points, client):
                rows[i] = row
                bar.update(postfix=f"g={points[i]['gain']:.3g} seed={points[i]['seed']}")
    finally:
        for c in owned:
            c.close()
    seconds = time.perf_counter() - start
    status = (f"{len(points)} points ({len(config.gains)} gains x {len(config.seeds)} seeds, "
              f"{config.cell}, N={config.hidden_size}) in {seconds:.1f} s on {where}")
    return StudyResult(status, config, rows, seconds, where, numrnn.__version__)
