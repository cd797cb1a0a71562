r"""Ensembles: M networks of one architecture, run in one call.

Every study is a sweep over gains, seeds, sizes or trained weights.  :class:`Ensemble` holds M
networks of the same architecture (cell, sizes, layers, directions, options, dtype, device) with
their own parameters, and runs :meth:`~Ensemble.forward`, :meth:`~Ensemble.vjp` and the
trajectory analyses on all of them in one call: results get a leading M axis.

How the members run.  Each member runs exactly the code it runs alone (``RNN.forward_vjp``,
:func:`numrnn.lyapunov_spectrum`, ...), with the same blocks of parallel work, so every member's
result has the same bits as the network run alone, whatever the thread count or the schedule.
What the ensemble changes is where that work runs: when one member's own work would leave
numrnn's threads idle (few sequences, small N: the recurrence of one sequence is serial, and the
products are too small to split), the members are shared out over the threads, each thread
running whole members one after another (``parallel="members"``).  The call holds the BLAS at one
thread once for all of them (:func:`numrnn.cpu.blas.helping`), and each member's own parallel
work runs in its thread, block by block (:func:`numrnn.cpu.threads.serial`).  When a member's
batch is large enough to fill the threads, the members run one after another, each splitting its
batch over the threads as it does alone (``parallel="batch"``).  The trajectory analyses always
run the members in parallel: their QR loops do not split.  Members on a GPU run one after
another.
"""
import contextvars
import itertools
import numbers
import threading

import numpy as np

from . import _memory
from . import _validation as _v
from .analysis.gradients import gradient_propagation as _gradient_propagation
from .analysis.jacobians import jacobians as _jacobians
from .analysis.lyapunov import lyapunov_spectrum as _lyapunov_spectrum
from .cpu import blas, threads
from .network import RNN

__all__ = ["Ensemble"]

_SCHEDULES = ("auto", "members", "batch")


class _Stack:
    """Results of M members, written into arrays with a leading M axis as each member finishes
    (allocated at the first: the members' results all have its structure and shapes)."""

    def __init__(self, M, what):
        self.M, self.what = M, what
        self.tree = None
        self.lock = threading.Lock()

    def _allocate(self, result):
        leaves = []

        def walk(r, make):
            if isinstance(r, dict):
                return {k: walk(v, make) for k, v in r.items()}
            if isinstance(r, tuple):
                return tuple(walk(v, make) for v in r)
            return make(np.asarray(r))

        walk(result, leaves.append)  # the bytes, checked before anything is allocated
        _memory.check(f"Ensemble.{self.what}: the stacked results",
                      self.M * sum(a.nbytes for a in leaves), f"M={self.M} members",
                      lambda avail: "fewer members per call may fit")
        return walk(result, lambda a: np.empty((self.M,) + a.shape, a.dtype))

    def put(self, i, result):
        with self.lock:
            if self.tree is None:
                self.tree = self._allocate(result)

        def write(dst, r):
            if isinstance(dst, dict):
                for k in dst:
                    write(dst[k], r[k])
            elif isinstance(dst, tuple):
                for d, v in zip(dst, r):
                    write(d, v)
            else:
                dst[i] = r

        write(self.tree, result)


def run_all(fn, n, parallel=True, done=None):
    """Call ``fn(i)`` for i in range(n), shared out over numrnn's threads (``parallel``) or in
    order; ``done(i, result)`` as each finishes (serialised by a lock).  Returns the exception
    of each call (None where it succeeded); in order, the first failure stops the loop.

    Each call gives the bits it gives alone: it runs its own work serially in its thread
    (:func:`numrnn.cpu.threads.serial`, the same blocks as any thread count), with every BLAS
    held at one thread by this thread for all of them (:func:`numrnn.cpu.blas.helping`), and
    calls are taken in turn from a shared counter, so which thread runs one changes nothing."""
    failures = [None] * n
    contexts = [contextvars.copy_context() for _ in range(n)] if parallel else None
    lock = threading.Lock()

    def one(i):
        try:
            r = contexts[i].run(fn, i) if parallel else fn(i)
        except Exception as exc:  # raised in order by the caller, whichever thread ran it
            failures[i] = exc
            if not parallel:
                raise
            return
        if done is not None:
            with lock:
                done(i, r)

    queue = itertools.count()  # next() is atomic: each call is taken once

    def worker(_, __):
        # calls are taken in turn, not in fixed shares: a thread slowed by the GIL or the load
        # takes fewer
        with blas.helping(), threads.serial():
            for i in iter(queue.__next__, None):
                if i >= n:
                    return
                one(i)

    try:
        if parallel and n > 1:
            k = min(threads.num_threads(), n)
            with blas.single_threaded():
                threads.run(worker, k, k)
        else:
            for i in range(n):
                one(i)
    except Exception:
        pass
    return failures


class Ensemble:
    r"""M networks of one architecture with their own parameters, run in one call.

    Parameters
    ----------
    members : sequence of numrnn.RNN, length M >= 1
        The networks: the same ``config()`` (input and hidden size, cell, layers, bias,
        directions, batch_first, nonlinearity, cell options, dtype) and device; any parameters
        (different seeds, gains, initialisations or trained weights).  They are held, not
        copied: a change to a member's parameters shows in the next call.
    parallel : {"auto", "members", "batch"}, default "auto"
        How :meth:`forward` and :meth:`vjp` use numrnn's threads: "members" shares the members
        out over the threads; "batch" runs them one after another, each splitting its own batch
        as it does alone; "auto" chooses "members" when one member's recurrence would not fill
        the threads (few sequences or small N) and "batch" otherwise.  The results are the same
        bits either way.  GPU members always run one after another.

    Attributes
    ----------
    members : tuple of numrnn.RNN
    grid : tuple of (gain, seed) pairs or None
        For :meth:`random`: the gain and seed of each member, in order; None otherwise.

    Notes
    -----
    Inputs and states are shared by every member or given one per member, stacked on a leading
    axis of length M: ``x`` of shape (T, B, I) (or (B, T, I) with ``batch_first``, or (T, I)
    unbatched) is run through every member, and (M, T, B, I) gives member m the input ``x[m]``
    (one per member and unbatched: give (M, T, 1, I)).  The same holds for ``h0``, ``d_output``
    and ``d_h_n``: their shape in :meth:`numrnn.RNN.vjp`, or that shape with a leading M.  In
    an autonomous analysis (x None) ``h0`` is (L*D, N) or (L*D, B, N) shared, or
    (M, L*D, B, N) one per member.

    Seeds (the noise of :meth:`forward`, the frames and autonomous initial states of the
    analyses): ``seed`` gives every member the same seed (so the same noise realisation and
    frames as each member run alone with that seed); ``seeds``, a sequence of M seeds, gives
    member m ``seeds[m]``.  A ``numpy.random.Generator`` is stateful: it is refused as the
    shared ``seed`` (each member would see it at a different state), and allowed in ``seeds``
    when the M generators are distinct objects.

    Each member's result has the same bits as the member run alone with the same arguments
    (``member.forward_vjp(x[m], ...)``, ``numrnn.lyapunov_spectrum(member, ...)``), for any
    ``numrnn.config.NUM_THREADS`` and ``parallel``.

    Examples
    --------
    >>> import numpy as np, numrnn
    >>> ens = numrnn.Ensemble.random(1, 32, gains=[0.5, 3.0], seeds=[0, 1, 2], bias=False)
    >>> len(ens), ens.grid[:2]
    (6, ((0.5, 0), (0.5, 1)))
    >>> x = np.random.default_rng(0).standard_normal((100, 1, 1))     # (T, B, I), shared
    >>> out, h_n = ens.forward(x)
    >>> out.shape, h_n.shape
    ((6, 100, 1, 32), (6, 1, 1, 32))
    >>> grads = ens.vjp(x, np.ones_like(out))                  # one d_output per member
    >>> grads["weight_hh_l0"].shape
    (6, 32, 32)
    >>> solo = ens[4].vjp(x, np.ones_like(out[4]))             # member 4 alone: the same bits
    >>> np.array_equal(grads["weight_hh_l0"][4], solo["weight_hh_l0"])
    True
    >>> res = ens.lyapunov_spectrum(n_steps=300, k=2, seed=0)  # one LyapunovResult per member
    >>> lam = np.array([r.exponents[0] for r in res]).reshape(2, 3)   # (gains, seeds)
    >>> bool((lam[0] < 0).all() and (lam[1] > 0).all())
    True
    """

    #: The analysis functions given an ensemble (``numrnn.lyapunov_spectrum(ens, ...)``) call
    #: its method of the same name.
    is_ensemble = True

    def __init__(self, members, *, parallel="auto"):
        if isinstance(members, RNN) or not isinstance(members, (list, tuple)):
            raise TypeError(f"members: expected a list or tuple of numrnn.RNN, got "
                            f"{type(members).__name__}")
        if len(members) == 0:
            raise ValueError("members: expected at least one network, got an empty sequence")
        for i, net in enumerate(members):
            if not isinstance(net, RNN):
                raise TypeError(f"members[{i}]: expected a numrnn.RNN, got "
                                f"{type(net).__name__}")
        first = members[0].config()
        for i, net in enumerate(members[1:], 1):
            config = net.config()
            for key, value in first.items():
                if not _same(config[key], value):
                    raise ValueError(f"members[{i}]: expected the architecture of members[0], "
                                     f"got {key}={config[key]!r} where members[0] has "
                                     f"{key}={value!r}")
            if net.device != members[0].device:
                raise ValueError(f"members[{i}]: expected the device of members[0] "
                                 f"({members[0].device!r}), got {net.device!r}")
        if parallel not in _SCHEDULES:
            raise ValueError(f"parallel: expected one of {_SCHEDULES}, got {parallel!r}")
        self.members = tuple(members)
        self.parallel = parallel
        self.grid = None

    @classmethod
    def random(cls, input_size, hidden_size, *, gains=None, seeds=(0,), cell="tanh",
               init="gaussian", parallel="auto", **rnn_kwargs):
        """Random members, one for every (gain, seed) pair, gain-major.

        Parameters
        ----------
        input_size, hidden_size : int
            I and N of every member.
        gains : sequence of float or float, optional
            The ``gain`` of ``init`` of each row of the grid (default: the init's own, 1.0;
            must be None with ``init="default"``, which takes no gain).
        seeds : sequence of seeds or one seed, default (0,)
            The ``seed`` of each column of the grid: integers, sequences of integers (as a
            tuple) or ``numpy.random.SeedSequence``; a Generator is refused (it would give each
            gain a different network).
        cell, init : as in :class:`numrnn.RNN` (default init "gaussian": W_hh entries
            N(0, gain^2 / N), the random network of the chaos literature).
        parallel : as in :class:`Ensemble`.
        **rnn_kwargs
            Any other keyword of :class:`numrnn.RNN` (``num_layers``, ``bias``, ``dtype``, ...).

        Returns
        -------
        Ensemble
            M = len(gains) * len(seeds) members, member ``g * len(seeds) + s`` built with
            ``RNN(input_size, hidden_size, cell=cell, init=init, gain=gains[g],
            seed=seeds[s], **rnn_kwargs)``; ``grid`` holds the pairs.
        """
        for key in ("gain", "seed"):
            if key in rnn_kwargs:
                raise TypeError(f"{key}: Ensemble.random takes {key}s=, a sequence (one "
                                f"{key} per row or column of the grid), not {key}=")
        if gains is None:
            gains = [None]
        elif isinstance(gains, numbers.Real) and not isinstance(gains, (bool, np.bool_)):
            gains = [gains]
        elif not isinstance(gains, (list, tuple, np.ndarray)) or len(gains) == 0:
            raise TypeError(f"gains: expected a non-empty sequence of numbers, got {gains!r}")
        if isinstance(seeds, (numbers.Integral, np.random.SeedSequence)):
            seeds = [seeds]
        elif not isinstance(seeds, (list, tuple, np.ndarray)) or len(seeds) == 0:
            raise TypeError(f"seeds: expected a non-empty sequence of seeds, got {seeds!r}")
        for j, s in enumerate(seeds):
            if isinstance(s, np.random.Generator) or s is None:
                raise TypeError(f"seeds[{j}]: expected an integer, a tuple of integers or a "
                                f"SeedSequence (a reproducible seed shared by every gain), got "
                                f"{s!r}")
            _v.check_seed(s, f"seeds[{j}]")
        gains = [None if g is None else _v.check_real(f"gains[{i}]", g, 0.0)
                 for i, g in enumerate(gains)]
        seeds = [int(s) if isinstance(s, numbers.Integral) else s for s in seeds]
        members, grid = [], []
        for g in gains:
            for s in seeds:
                members.append(RNN(input_size, hidden_size, cell=cell, init=init, gain=g,
                                   seed=s, **rnn_kwargs))
                grid.append((g, s))
        ens = cls(members, parallel=parallel)
        ens.grid = tuple(grid)
        return ens

    # --- the container --------------------------------------------------------------------

    def __len__(self):
        return len(self.members)

    def __getitem__(self, i):
        return self.members[i]

    def __iter__(self):
        return iter(self.members)

    def __repr__(self):
        net = self.members[0]
        return (f"Ensemble(M={len(self)} x {net.cell} I={net.input_size} N={net.hidden_size}"
                f"{f' L={net.num_layers}' if net.num_layers > 1 else ''}"
                f"{' bidirectional' if net.bidirectional else ''}, {net.dtype}, "
                f"{net.device}, parallel={self.parallel!r})")

    def stacked_parameters(self):
        """Every parameter of every member: a dict name -> array of shape (M,) + the
        parameter's shape (copies)."""
        dicts = [net.checked_parameters() for net in self.members]
        return {name: np.stack([d[name] for d in dicts]) for name in dicts[0]}

    # --- checks -----------------------------------------------------------------------------

    def _split(self, name, a, shape):
        """``a`` for each member: None, shared (``shape``) or one per member ((M,) + shape);
        returns (list of M, per_member)."""
        M = len(self)
        if a is None:
            return [None] * M, False
        shape = tuple(shape)
        dtype = self.members[0].dtype
        try:
            a = _v.check_float_array(name, a, dtype, [shape, (M,) + shape], finite=False)
        except ValueError:
            raise ValueError(f"{name}: expected shape {_shape_text(shape)} (shared by every "
                             f"member) or {_shape_text((M,) + shape)} (one per member), got "
                             f"{_shape_text(np.shape(a))}") from None
        a = _v.check_float_array(name, a, dtype, [a.shape])  # finite
        if a.ndim == len(shape) + 1:
            return [a[i] for i in range(M)], True
        return [a] * M, False

    def _inputs(self, x):
        """(x of each member, the member's x shape) from a shared or per-member x."""
        net, M = self.members[0], len(self)
        if x is None:
            return [None] * M, None
        I = net.input_size
        x = _v.check_float_array("x", x, net.dtype, [(None, I), (None, None, I),
                                                      (M, None, None, I)])
        if x.ndim == 4:
            return [x[i] for i in range(M)], x.shape[1:]
        return [x] * M, x.shape

    def _states(self, name, s, shape):
        """A state argument (h0, d_h_n) of each member; a pair of them for two-state cells."""
        net, M = self.members[0], len(self)
        if s is None:
            return [None] * M
        if net.state_count == 2:
            a, b = net.definition.states
            if not isinstance(s, (tuple, list)) or len(s) != 2:
                raise TypeError(f"{name}: the {net.cell} cell's state is a pair ({a}, {b}), "
                                f"each shared or one per member; got {type(s).__name__}")
            second = "d_c_n" if name == "d_h_n" else "c0"
            first, _ = self._split(name, s[0], shape)
            other, _ = self._split(second, s[1], shape)
            return list(zip(first, other))
        if isinstance(s, (tuple, list)):
            raise TypeError(f"{name}: the {net.cell} cell's state is one array, got a "
                            f"{type(s).__name__}")
        return self._split(name, s, shape)[0]

    def _state_shape(self, x_shape):
        """A member's state shape for an input of shape ``x_shape`` (None: autonomous)."""
        net = self.members[0]
        LD, N = net.num_layers * net.num_directions, net.hidden_size
        if x_shape is None:  # the analyses' autonomous run: either form
            return None
        if len(x_shape) == 2:
            return (LD, N)
        return (LD, x_shape[0] if net.batch_first else x_shape[1], N)

    def _seeds(self, seed, seeds):
        """The seed of each member (see the class Notes)."""
        M = len(self)
        if seeds is None:
            if isinstance(seed, np.random.Generator):
                raise TypeError("seed: a numpy.random.Generator is consumed by each member's "
                                "call, so the members would not share one seed; give an integer "
                                "or a SeedSequence, or seeds= with one per member")
            if seed is not None:
                _v.check_seed(seed)
            return [seed] * M
        if seed is not None:
            raise ValueError("seed, seeds: give one seed for every member (seed=) or one per "
                             "member (seeds=), not both")
        if not isinstance(seeds, (list, tuple)):
            raise TypeError(f"seeds: expected a list or tuple of {M} seeds (one per member), "
                            f"got {type(seeds).__name__}")
        if len(seeds) != M:
            raise ValueError(f"seeds: expected {M} seeds (one per member), got {len(seeds)}")
        for i, s in enumerate(seeds):
            _v.check_seed(s, f"seeds[{i}]")
        gens = [id(s) for s in seeds if isinstance(s, np.random.Generator)]
        if len(set(gens)) != len(gens):
            raise ValueError("seeds: the same numpy.random.Generator appears twice; give each "
                             "member its own (or integers)")
        return list(seeds)

    # --- running the members ----------------------------------------------------------------

    def _in_parallel(self, T, B):
        """Whether a pass of T steps of B sequences runs the members across the threads."""
        net = self.members[0]
        if len(self) == 1 or net.device != "cpu" or self.parallel == "batch":
            return False
        if self.parallel == "members":
            return True
        n = threads.num_threads()
        if n == 1:
            return False
        N, G = net.hidden_size, net.gate_count
        work = T * B * N * net.definition.read_count * N * G
        return threads.pieces(B, work) < n

    def _map(self, what, fn, parallel):
        """Run ``fn(m)`` for every member m; results stacked on a leading M axis (``fn``'s
        structure: an array, a tuple or a dict of them) or, for ``what`` ending in "[]", a
        list.  The first member (in order) to raise has its error raised, with a note."""
        M = len(self)
        as_list = what.endswith("[]")
        stack = None if as_list else _Stack(M, what)
        results = [None] * M

        def done(m, r):
            if as_list:
                results[m] = r
            else:
                stack.put(m, r)

        failures = run_all(fn, M, parallel, done)
        for m, exc in enumerate(failures):
            if exc is not None:
                _name_member(exc, m, M)
                raise exc
        return results if as_list else stack.tree

    # --- the passes -------------------------------------------------------------------------

    def forward(self, x, h0=None, *, noise_std=0.0, seed=None, seeds=None):
        """Run every member over its input.

        Parameters
        ----------
        x : ndarray, shape (T, B, I) (or (B, T, I), (T, I)) shared, or (M, T, B, I) one per member
            As in :meth:`numrnn.RNN.forward`; see the class Notes for per-member arguments.
        h0 : ndarray, shape (L*D, B, N) shared or (M, L*D, B, N), optional
            (L*D, N) or (M, L*D, N) for an unbatched x.  Two-state cells: a pair (h0, c0), each
            None, shared or one per member.
        noise_std : float >= 0, default 0
            Noise in the dynamics, as in :meth:`numrnn.RNN.forward`.
        seed, seeds
            The noise realisation: one seed for every member, or one per member (class Notes).

        Returns
        -------
        output : ndarray, shape (M, T, B, D*N) (or (M, B, T, D*N), (M, T, D*N))
        h_n : ndarray, shape (M, L*D, B, N) (or (M, L*D, N)); for two-state cells a pair
        """
        xs, x_shape = self._inputs(x)
        h0s = self._states("h0", h0, self._state_shape(x_shape))
        member_seeds = self._seeds(seed, seeds)
        T, B = self._sizes(x_shape)

        def run(m):
            return self.members[m].forward(xs[m], h0s[m], noise_std=noise_std,
                                           seed=member_seeds[m])

        self._check_parameters()
        return self._map("forward", run, self._in_parallel(T, B))

    def forward_vjp(self, x, d_output, h0=None, d_h_n=None, truncate=None, *, noise_std=0.0,
                    seed=None, seeds=None, **options):
        """Forward pass and vector-Jacobian product of every member in one call.

        Parameters
        ----------
        x, h0, noise_std, seed, seeds
            As in :meth:`forward`.
        d_output : ndarray, shape of one member's output, shared, or (M,) + that shape
        d_h_n : ndarray, shape of one member's h_n, shared, or (M,) + that shape, optional
            Two-state cells: a pair, each None, shared or one per member.
        truncate : int or None
            Truncated BPTT, as in :meth:`numrnn.RNN.vjp`.
        **options
            Any further keyword of :meth:`numrnn.RNN.forward_vjp`, passed to every member.

        Returns
        -------
        output, h_n
            As :meth:`forward`.
        grads : dict
            The keys of :meth:`numrnn.RNN.vjp`, each with a leading M axis: every parameter
            (M,) + its shape, ``"input"`` (M,) + x's shape, ``"h0"`` (and ``"c0"``),
            ``"state_grad_norm"`` (M, T, B) float64.
        """
        xs, x_shape = self._inputs(x)
        if x_shape is None:
            raise TypeError("x: expected an input array, got None")
        net = self.members[0]
        D, N = net.num_directions, net.hidden_size
        if len(x_shape) == 2:
            out_shape = (x_shape[0], D * N)
        else:
            out_shape = x_shape[:2] + (D * N,)
        state_shape = self._state_shape(x_shape)
        h0s = self._states("h0", h0, state_shape)
        d_outs = self._split("d_output", d_output, out_shape)[0]
        d_hs = self._states("d_h_n", d_h_n, state_shape)
        if truncate is not None:
            truncate = _v.check_int("truncate", truncate, 1)
        member_seeds = self._seeds(seed, seeds)
        T, B = self._sizes(x_shape)

        def run(m):
            out, h_n, grads = self.members[m].forward_vjp(
                xs[m], d_outs[m], h0s[m], d_hs[m], truncate, noise_std=noise_std,
                seed=member_seeds[m], **options)
            return out, h_n, grads

        self._check_parameters()
        return self._map("forward_vjp", run, self._in_parallel(T, B))

    def vjp(self, x, d_output, h0=None, d_h_n=None, truncate=None, *, noise_std=0.0, seed=None,
            seeds=None, **options):
        """The vector-Jacobian product of every member: the ``grads`` of :meth:`forward_vjp`
        (a dict of the keys of :meth:`numrnn.RNN.vjp`, each with a leading M axis)."""
        return self.forward_vjp(x, d_output, h0, d_h_n, truncate, noise_std=noise_std,
                                seed=seed, seeds=seeds, **options)[2]

    def _sizes(self, x_shape):
        net = self.members[0]
        if len(x_shape) == 2:
            return x_shape[0], 1
        return (x_shape[1], x_shape[0]) if net.batch_first else (x_shape[0], x_shape[1])

    def _check_parameters(self):
        # in this thread, before the members run in several: a network whose parameter views
        # were replaced gathers them again here (once), and a bad one is named before any work
        for m, net in enumerate(self.members):
            try:
                net.checked_parameters()
            except Exception as exc:
                _name_member(exc, m, len(self))
                raise

    # --- the analyses -----------------------------------------------------------------------

    def _analysis(self, what, fn, x, h0, seed, seeds):
        xs, x_shape = self._inputs(x)
        h0s = self._states("h0", h0, self._state_shape(x_shape)) if x_shape is not None else \
            self._autonomous_states(h0)
        member_seeds = self._seeds(seed, seeds)
        self._check_parameters()
        parallel = len(self) > 1 and self.members[0].device == "cpu" \
            and self.parallel != "batch"
        return self._map(what, lambda m: fn(self.members[m], xs[m], h0s[m], member_seeds[m]),
                         parallel)

    def _autonomous_states(self, h0):
        """h0 of an autonomous run (x None): (L*D, N) or (L*D, B, N) shared, or one per
        member with a leading M."""
        if h0 is None:
            return [None] * len(self)
        net = self.members[0]
        LD, N = net.num_layers * net.num_directions, net.hidden_size
        first = h0[0] if net.state_count == 2 and isinstance(h0, (tuple, list)) else h0
        nd = np.ndim(first) if first is not None else 2
        if nd in (3, 4):  # batched: (LD, B, N) or (M, LD, B, N)
            shape = (LD, np.shape(first)[-2], N)
        else:
            shape = (LD, N)
        return self._states("h0", h0, shape)

    def jacobians(self, x=None, h0=None, *, n_steps=None, seed=None, seeds=None,
                  noise_std=0.0):
        """The step Jacobians of every member (:func:`numrnn.jacobians`).

        Parameters
        ----------
        x, h0
            Shared or one per member (class Notes); x None: the autonomous run of ``n_steps``.
        n_steps, noise_std
            As in :func:`numrnn.jacobians`.
        seed, seeds
            One seed for every member or one per member (class Notes).

        Returns
        -------
        J : ndarray of float64, shape (M, T, B, S, S), or (M, T, S, S) for an unbatched x
        """
        return self._analysis("jacobians", lambda net, x, h0, s: _jacobians(
            net, x, h0, n_steps=n_steps, seed=s, noise_std=noise_std), x, h0, seed, seeds)

    def lyapunov_spectrum(self, x=None, h0=None, *, n_steps=None, k=None, transient=None,
                          ons_interval=1, seed=None, seeds=None, n_segments=None,
                          noise_std=0.0, units="step"):
        """The Lyapunov spectrum of every member (:func:`numrnn.lyapunov_spectrum`).

        Parameters
        ----------
        x, h0
            Shared or one per member (class Notes); x None: the autonomous run of ``n_steps``.
        n_steps, k, transient, ons_interval, n_segments, noise_std, units
            As in :func:`numrnn.lyapunov_spectrum`.
        seed, seeds
            One seed for every member or one per member (class Notes): member m's result is
            ``numrnn.lyapunov_spectrum(members[m], ..., seed=<its seed>)``, bit for bit.

        Returns
        -------
        list of numrnn.LyapunovResult, length M
        """
        return self._analysis("lyapunov_spectrum[]", lambda net, x, h0, s: _lyapunov_spectrum(
            net, x, h0, n_steps=n_steps, k=k, transient=transient, ons_interval=ons_interval,
            seed=s, n_segments=n_segments, noise_std=noise_std, units=units), x, h0, seed, seeds)

    def gradient_propagation(self, x=None, h0=None, *, n_steps=None, lags=None, transient=None,
                             seed=None, seeds=None, noise_std=0.0):
        """Gradient propagation of every member (:func:`numrnn.gradient_propagation`).

        Parameters
        ----------
        x, h0
            Shared or one per member (class Notes); x None: the autonomous run of ``n_steps``.
        n_steps, lags, transient, noise_std
            As in :func:`numrnn.gradient_propagation`.
        seed, seeds
            One seed for every member or one per member (class Notes).

        Returns
        -------
        list of numrnn.GradientPropagationResult, length M
        """
        return self._analysis("gradient_propagation[]", lambda net, x, h0, s:
                              _gradient_propagation(net, x, h0, n_steps=n_steps, lags=lags,
                                                    transient=transient, seed=s,
                                                    noise_std=noise_std), x, h0, seed, seeds)


def _name_member(exc, m, M):
    """Say in ``exc`` which member raised it (a note, shown under the message; Python >= 3.11)."""
    if hasattr(exc, "add_note"):
        exc.add_note(f"(in member {m} of the ensemble of {M}: members[{m}])")


def _shape_text(shape):
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _same(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # an object without a plain equality
        return a is b
