"""The ``numrnn`` command: studies, training, fixed points and system information.

Every subcommand prints what it found and writes machine-readable results to ``--out``: CSV,
JSON with every parameter and the numrnn version (strict JSON: a number that is NaN or infinite,
such as a Kaplan-Yorke dimension beyond the exponents computed, is written as ``null``) and a PNG
figure (it needs matplotlib; pass ``--no-plot`` without it).

Errors are one line on stderr, ``numrnn <command>: error: <option or file>: <what was expected,
what came>``, with exit status 2 and no traceback: bad arguments, unreadable or damaged files,
an ``--out`` that cannot be written (checked before any work), a missing optional extra, an
unreachable Dask scheduler, a training run that diverges (its files are still written), and what
the library refuses while running.

Order of work: check everything, compute, write the files, then print the results.  A reader
that stops early (``numrnn study | head -1``) only ends the printing: the files are written and
the exit status is that of the work (0 when every file was written).
"""
import argparse
import csv
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]

_EPILOG = """\
examples:
  numrnn study                          gradient stability of random tanh networks, g = 0.5 .. 3
  numrnn study --cell gru --gains 0.5 1 2 4 --seeds 2 --out gru-study
  numrnn study --scheduler local:2      the same sweep as Dask tasks (or --scheduler tcp://host:8786)
  numrnn study --cell cornn --cell-option dt=0.1 --gains 1 2 4
  numrnn train --task adding --T 50 --cell lstm --hidden-size 16
  numrnn train --task flipflop --hidden-size 24 --out ff
  numrnn fixed-points ff/params.npz     fixed points of the trained flip-flop network
  numrnn info                           versions, threads, CUDA, kernels, registered cells

Run `numrnn COMMAND --help` for each command's options.
"""


class _UsageError(Exception):
    """A bad argument, file or outcome: reported as one line with exit status 2."""


class _ParseError(_UsageError):
    """argparse's own error, from the parser named ``prog`` ("numrnn" or "numrnn study")."""

    def __init__(self, message, prog):
        super().__init__(message)
        self.prog = prog


def _argparse_message(message):
    """argparse's 'argument -N/--hidden-size: ...' as '--hidden-size: ...', and its other
    messages in the same shape: the option first."""
    m = re.fullmatch(r"argument (?P<names>[^:]+): (?P<rest>.*)", message, re.S)
    if m:
        names = m["names"].split("/")
        return f"{next((n for n in names if n.startswith('--')), names[0])}: {m['rest']}"
    m = re.fullmatch(r"the following arguments are required: (?P<names>.*)", message, re.S)
    if m:
        return f"{m['names']}: required, got nothing"
    return message


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, without the usage block."""

    def error(self, message):
        raise _ParseError(f"{_argparse_message(message)} (see `{self.prog} --help`)", self.prog)


def _int_at_least(low):
    """An argparse type: an integer >= ``low``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_float(text):
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _cell_help():
    """The help of --cell and --alpha, from the registry: each cell with its options."""
    from . import cells

    described = []
    for name in cells.names():
        options = cells.registered(name).options
        described.append(name + (f" ({', '.join(options)})" if options else ""))
    leaky = [n for n in cells.names() if "alpha" in cells.registered(n).options]
    return ("recurrent cell, with its options: " + ", ".join(described),
            f"leak a in (0, 1] of the cells with the option alpha ({', '.join(leaky)})")


def _add_cell_options(p, default):
    from . import cells

    cell_help, alpha_help = _cell_help()
    p.add_argument("--cell", choices=cells.names(), default=default, help=cell_help)
    p.add_argument("--cell-option", action="append", metavar="KEY=VALUE",
                   help="a hyperparameter of the cell (repeat for several), e.g. dt=0.1 for cornn")
    return alpha_help


def _build_parser():
    parser = _Parser(
        prog="numrnn",
        description="numrnn: Numba-accelerated recurrent networks for scientific study. "
                    "Measure how gradients and perturbations grow or vanish (Lyapunov spectra, "
                    "gradient-norm decay, mean-field theory), train on the classic memory tasks, "
                    "and find the fixed points a trained network computes with.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__
    parser.add_argument("--version", action="version", version=f"numrnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # --- study ------------------------------------------------------------------------------
    from .experiments.study import STUDY_INITS, StudyConfig
    d = StudyConfig()
    st = sub.add_parser(
        "study", help="gradient-stability study over a gain sweep (the main job)",
        description="For each gain g and seed: a random network (W_hh entries N(0, g^2/N) by "
                    "default), its full Lyapunov spectrum along an autonomous trajectory "
                    "(Benettin's QR method; -k for the first k only), the Kaplan-Yorke "
                    "dimension D_KY and Kolmogorov-Sinai entropy bound h_KS (sum of the "
                    "positive exponents) per unit, the per-step decay rate of gradient norms "
                    "|dh_T/dh_{T-tau}| over lags tau, and the discrete-time mean-field "
                    "prediction of the largest exponent (tanh, no leak: Poole et al. 2016). "
                    "Exponents are per step; negative means perturbations and gradients "
                    "vanish, positive means chaos and exploding gradients. Prints a table (mean "
                    "over seeds +- its standard error, n/a where a value does not apply) and "
                    "writes study.csv, study.json and study.png to --out (JSON has no NaN: a "
                    "value that is NaN or infinite, e.g. a Kaplan-Yorke dimension beyond the "
                    "exponents computed, is null).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    alpha_help = _add_cell_options(st, d.cell)
    st.add_argument("-N", "--hidden-size", type=_positive_int, default=d.hidden_size,
                    help="number of units N")
    st.add_argument("--gains", type=_positive_float, nargs="+", metavar="G",
                    help="explicit list of gains (overrides --g-min/--g-max/--n-gains)")
    st.add_argument("--g-min", type=_positive_float, default=min(d.gains), help="smallest gain")
    st.add_argument("--g-max", type=_positive_float, default=max(d.gains), help="largest gain")
    st.add_argument("--n-gains", type=_positive_int, default=len(d.gains),
                    help="number of gains, evenly spaced")
    st.add_argument("--seeds", type=_positive_int, default=len(d.seeds),
                    help="networks per gain (seeds 0 .. SEEDS-1)")
    st.add_argument("--alpha", type=_finite_float, default=d.alpha, help=alpha_help)
    st.add_argument("--sigma-b", type=_finite_float, default=d.sigma_b,
                    help="standard deviation of the biases")
    st.add_argument("--init", metavar="{" + ",".join(STUDY_INITS) + "}", default=d.init,
                    help="W_hh initialiser, scaled by the gain ('default', PyTorch's uniform "
                         "initialisation, takes no gain and cannot be swept)")
    st.add_argument("--dtype", choices=("float64", "float32"), default=d.dtype)
    st.add_argument("--device", choices=("cpu", "cuda"), default=d.device)
    st.add_argument("--steps", type=_positive_int, default=d.steps,
                    help="steps of the measured trajectory")
    st.add_argument("--transient", type=_nonneg_int, default=d.transient,
                    help="steps discarded before measuring")
    spec = st.add_mutually_exclusive_group()
    spec.add_argument("-k", "--n-exponents", type=_positive_int, default=argparse.SUPPRESS,
                      help="compute the first K Lyapunov exponents only (faster; D_KY is then "
                           "known only where it is below K) (default: all, the full spectrum)")
    spec.add_argument("--full-spectrum", action="store_true",
                      help="compute all exponents: the default, kept for old scripts")
    st.add_argument("--max-lag", type=_positive_int, default=d.max_lag,
                    help="largest lag of the gradient-norm decay fit")
    st.add_argument("--singular-values", action="store_true",
                    help="also compute all singular values of the Jacobian products over the "
                         "last MAX_LAG steps (O(MAX_LAG N^3) per point)")
    st.add_argument("--scheduler", metavar="ADDRESS",
                    help="run the points as Dask tasks: a scheduler address "
                         "(tcp://host:8786) or local[:N] for a LocalCluster; needs numrnn[dask]")
    st.add_argument("--scheduler-timeout", type=_positive_float, default=10.0, metavar="SECONDS",
                    help="how long to wait for the scheduler to answer")
    _add_common(st, "numrnn-study")
    st.set_defaults(func=_cmd_study)

    # --- train ------------------------------------------------------------------------------
    from .experiments.tasks import TASKS
    tr = sub.add_parser(
        "train", help="train a network and linear readout on a memory task",
        description="Train a network with a linear readout by exact BPTT (the engine's vjp), "
                    "with Adam or SGD with momentum and gradient-norm clipping, on a task "
                    "generated by numrnn. Prints the loss against the task's chance baseline as "
                    "it goes and writes params.npz (load with numrnn.experiments.load_model or "
                    "`numrnn fixed-points`), losses.csv, train.json and train.png to --out. If "
                    "training diverges (a NaN or inf in the state, loss, gradient or an update), "
                    "these files still hold the last finite parameters, the losses so far and "
                    "the step where it diverged, and the command exits with status 2. "
                    "Tasks: adding (Hochreiter & Schmidhuber 1997; chance MSE 1/6), copy "
                    "(Arjovsky et al. 2016; chance 10 ln 8/(T+20)), flipflop (3-bit, Sussillo & "
                    "Barak 2013; chance MSE 1), lorenz (forecast the Lorenz system), charlm "
                    "(min-char-rnn on Shakespeare's sonnets, with sampling).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tr.add_argument("--task", choices=tuple(TASKS), required=True)
    tr.add_argument("--T", type=_positive_int, help="sequence length (task default if omitted)")
    alpha_help = _add_cell_options(tr, "lstm")
    tr.add_argument("-N", "--hidden-size", type=_positive_int, default=32)
    tr.add_argument("--num-layers", type=_positive_int, default=1)
    tr.add_argument("--alpha", type=_finite_float, default=1.0, help=alpha_help)
    tr.add_argument("--steps", type=_positive_int, default=1000, help="optimiser steps")
    tr.add_argument("--batch-size", type=_positive_int, default=32)
    tr.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    tr.add_argument("--lr", type=_positive_float, default=1e-2, help="learning rate")
    tr.add_argument("--clip", type=_finite_float, default=1.0,
                    help="gradient-norm clipping threshold (0 disables)")
    tr.add_argument("--truncate", type=_positive_int, help="truncated BPTT chunk length")
    tr.add_argument("--stop-below", type=_positive_float, metavar="LOSS",
                    help="stop early once the mean loss of the last 20 batches is below LOSS")
    tr.add_argument("--seed", type=_nonneg_int, default=0)
    tr.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    _add_common(tr, "numrnn-train")
    tr.set_defaults(func=_cmd_train)

    # --- fixed-points -----------------------------------------------------------------------
    fp = sub.add_parser(
        "fixed-points", help="fixed points of a saved network, with stability",
        description="Find the fixed points of a network saved by `numrnn train` (zero input by "
                    "default): minimise q(s) = |F(s) - s|^2 / 2 from states the network visits "
                    "on its task, refine with Newton's method, de-duplicate, and classify each "
                    "by the eigenvalues of its Jacobian (Sussillo and Barak 2013). Prints a "
                    "table and writes fixed_points.csv, fixed_points.json and fixed_points.png "
                    "(states projected on their principal components; stable filled, unstable "
                    "open) to --out (JSON: null where a value is infinite, such as the time "
                    "constant of a marginal direction).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fp.add_argument("params", metavar="PARAMS", help="a params.npz written by `numrnn train`")
    fp.add_argument("--n-initial", type=_positive_int, default=256,
                    help="number of starting states")
    fp.add_argument("--tol", type=_positive_float, default=None,
                    help="largest residual |F(s) - s| accepted; None: numrnn.fixed_points' "
                         "default for the network's dtype (1e-10 float64, 1e-5 float32)")
    fp.add_argument("--seed", type=_nonneg_int, default=0)
    _add_common(fp, "numrnn-fixed-points")
    fp.set_defaults(func=_cmd_fixed_points)

    # --- info -------------------------------------------------------------------------------
    inf = sub.add_parser("info", help="versions, threads, CUDA availability, kernel choice, "
                                      "cells",
                         description="Print versions of numrnn and its dependencies, thread "
                                     "settings, whether a CUDA device is usable, which "
                                     "kernels run for typical sizes, and the registered cells "
                                     "with their gates, states and options.")
    inf.add_argument("--json", action="store_true", help="print JSON instead of text")
    inf.set_defaults(func=_cmd_info)
    return parser


def _add_common(p, default_out):
    p.add_argument("--out", default=default_out, help="output directory (created)")
    p.add_argument("--no-plot", action="store_true",
                   help="do not write the PNG figure (needed without matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


# --- helpers -------------------------------------------------------------------------------

def _out_dir(path):
    """The --out directory, created, and proven writable by creating and removing a file in it.

    Called before any work, so that results are never computed only to be lost.  (Permission
    bits say nothing for root, and read-only mounts ignore them: only a write tells.)
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise _UsageError(f"--out: expected a directory, got the existing file {str(out)!r}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".numrnn-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _UsageError(f"--out: expected a directory numrnn can create and write files in, "
                          f"got {str(out)!r} ({exc.strerror or exc})") from None
    return out


def _check_plot(args, name):
    """Before any work: the figure ``name`` needs matplotlib, unless --no-plot."""
    if args.no_plot:
        return
    from .experiments.plotting import require_matplotlib

    try:
        require_matplotlib()
    except ImportError as exc:
        raise _UsageError(f"{name}: {exc}, or pass --no-plot") from None


def _csv_writer(rows, columns):
    def write(path):
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            for r in rows:
                w.writerow([r[c] for c in columns])
    return write


def _json_writer(payload):
    """Strict JSON of ``payload`` as it is when written (NaN and inf as null: see
    numrnn.experiments.to_json)."""
    from .experiments.persistence import to_json

    return lambda path: Path(path).write_text(to_json(payload) + "\n")


def _write_all(out, files):
    """Write each ``(name, write(path))`` of ``files`` into ``out``.

    A file that cannot be written there (the disk filled up during the run) is written to a
    fresh temporary directory instead, so nothing computed is lost.  Returns the paths written
    and a message about the failures (None if there were none).
    """
    written, failed, spare = [], [], None
    for name, write in files:
        try:
            write(out / name)
            written.append(str(out / name))
        except OSError as exc:
            spare = spare or Path(tempfile.mkdtemp(prefix="numrnn-"))
            write(spare / name)
            written.append(str(spare / name))
            failed.append(f"{name} ({exc.strerror or exc})")
    if not failed:
        return written, None
    return written, (f"--out: could not write {', '.join(failed)} in {str(out)!r}; written to "
                     f"{str(spare)!r} instead")


def _finish(out, files, report, error=None):
    """The end of every command: write the files, then print ``report``, then fail with
    ``error`` (or a write failure) as one line, if any; returns the exit status 0."""
    written, problem = _write_all(out, files)
    for line in report:
        print(line)
    print(f"wrote {', '.join(written)}")
    problems = [p for p in (error, problem) if p]
    if problems:
        raise _UsageError("; ".join(problems))
    return 0


def _parameters(args):
    return {k: v for k, v in vars(args).items() if k not in ("func", "_argv")}


def _header(args):
    from . import __version__
    return {"numrnn_version": __version__, "command": args.command,
            "argv": list(getattr(args, "_argv", [])), "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# library argument names that differ from the destination of the option they came from
_LIBRARY_NAMES = {"path": "params", "gain": "gains", "timeout": "scheduler_timeout",
                  "cell_options": "cell_option"}


def _cell_options(args):
    """The --cell-option KEY=VALUE pairs as a dict, checked against the cell's definition (its
    option names and its own checks of the values) before any work."""
    from . import cells

    definition = cells.registered(args.cell)
    options = {}
    for item in args.cell_option or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise _UsageError(f"--cell-option: expected KEY=VALUE, got {item!r}")
        if key not in definition.options:
            raise _UsageError(f"--cell-option: the {args.cell} cell has no option {key!r}; its "
                              f"options are {', '.join(definition.options) or 'none'}")
        if key in options:
            raise _UsageError(f"--cell-option: {key} given twice ({key}={options[key]:g} and "
                              f"{item}); give it once")
        try:
            value = float(text)
        except ValueError:
            raise _UsageError(f"--cell-option: {key}: expected a number, got {text!r}") from None
        if not np.isfinite(value):
            raise _UsageError(f"--cell-option: {key}: expected a finite number, got {text!r}")
        options[key] = value
    if "alpha" in options and args.alpha != 1.0:
        raise _UsageError(f"--alpha: given twice, as --alpha {args.alpha:g} and --cell-option "
                          f"alpha={options['alpha']:g}; give one")
    try:
        definition.resolve_options(options)
    except (TypeError, ValueError) as exc:  # the cell's own checks, e.g. coRNN's dt > 0
        msg = " ".join(str(exc).split())
        label = re.match(r"cell_options(?:\[['\"](\w+)['\"]\])?: ", msg)
        if label:  # the library's "cell_options['dt']: ..." as "dt: ..."
            msg = (label[1] + ": " if label[1] else "") + msg[label.end():]
        raise _UsageError(f"--cell-option: {msg}") from None
    return options


def _option_message(exc, args):
    """The library's 'hidden_size: ...' as the command line's '--hidden-size: ...', for names the
    command passed on from an option or argument; other messages as the library wrote them."""
    msg = " ".join((str(exc) or type(exc).__name__).split())
    name, sep, rest = msg.partition(":")
    dest = _LIBRARY_NAMES.get(name, name)
    if not sep or dest not in _parameters(args) or dest == "command":
        return msg
    return ("PARAMS" if dest == "params" else "--" + dest.replace("_", "-")) + ":" + rest


# --- study ---------------------------------------------------------------------------------

def _cmd_study(args):
    from .experiments.study import StudyConfig, check_scheduler, run_study

    if args.gains:
        gains = tuple(args.gains)
    else:
        if args.g_min > args.g_max:
            raise _UsageError(f"--g-min: expected at most --g-max={args.g_max}, got {args.g_min}")
        gains = tuple(np.round(np.linspace(args.g_min, args.g_max, args.n_gains), 6).tolist())
    config = StudyConfig(cell=args.cell, hidden_size=args.hidden_size, gains=gains,
                         seeds=tuple(range(args.seeds)), alpha=args.alpha, sigma_b=args.sigma_b,
                         init=args.init, dtype=args.dtype, device=args.device, steps=args.steps,
                         transient=args.transient,
                         n_exponents=getattr(args, "n_exponents", None),
                         max_lag=args.max_lag, singular_values=args.singular_values,
                         cell_options=_cell_options(args))
    check_scheduler(args.scheduler)
    _check_plot(args, "study.png")
    out = _out_dir(args.out)
    print(f"numrnn study: {len(config.points())} points ({config.cell}, N={config.hidden_size}, "
          f"{len(gains)} gains x {args.seeds} seeds), "
          f"{'all' if config.n_exponents is None else f'k = {config.n_exponents}'} "
          f"exponents, {config.steps} steps after {config.transient} transient; results in "
          f"{out}/", flush=True)
    result = run_study(config, scheduler=args.scheduler, timeout=args.scheduler_timeout,
                       progress=not args.quiet)
    columns = ["gain", "seed", "lyapunov_max", "lyapunov_max_stderr", "meanfield_lyapunov",
               "grad_decay_rate", "jacobian_decay_rate", "jacobian_max_singular_value",
               "kaplan_yorke_dimension", "kaplan_yorke_dimension_stderr",
               "kaplan_yorke_dimension_per_unit", "kaplan_yorke_dimension_per_unit_stderr",
               "ks_entropy", "ks_entropy_stderr", "ks_entropy_per_unit",
               "ks_entropy_per_unit_stderr", "units", "seconds"]
    payload = _header(args)
    payload.update(parameters=config.as_dict(), scheduler=result.scheduler,
                   seconds=result.seconds, summary=result.summary(), rows=result.rows)
    files = [("study.csv", _csv_writer(result.rows, columns)),
             ("study.json", _json_writer(payload))]
    if not args.no_plot:
        from .experiments.plotting import plot_study

        files.append(("study.png", lambda path: plot_study(result, path=path)))
    return _finish(out, files, [result.table(), result.status])


# --- train ---------------------------------------------------------------------------------

def _cmd_train(args):
    from .experiments.tasks import make_task
    from .experiments.readout import LinearReadout
    from .experiments.sampling import sample_text
    from .experiments.training import TrainingDiverged, train
    from .network import RNN

    dtype = np.dtype(args.dtype)
    options = _cell_options(args)
    task = make_task(args.task, args.T, dtype=dtype)
    net = RNN(task.input_size, args.hidden_size, cell=args.cell, num_layers=args.num_layers,
              alpha=args.alpha, cell_options=options or None, dtype=dtype, seed=args.seed)
    if args.clip < 0:
        raise _UsageError(f"--clip: expected a threshold >= 0 (0 disables), got {args.clip}")
    _check_plot(args, "train.png")
    out = _out_dir(args.out)
    print(f"numrnn train: {task!r} with {net!r}; chance {task.chance:.4g} ({task.loss})",
          flush=True)
    readout = LinearReadout(net.hidden_size, task.output_size, dtype=dtype, seed=[args.seed, 1])
    diverged = False
    try:
        result = train(net, task, steps=args.steps, batch_size=args.batch_size,
                       optimizer=args.optimizer, lr=args.lr, clip=args.clip or None,
                       truncate=args.truncate, readout=readout, seed=[args.seed, 2],
                       progress=not args.quiet, stop_below=args.stop_below)
    except TrainingDiverged as exc:  # the partial result is saved all the same
        result, diverged = exc.result, True
    files, report, payload = _train_outputs(args, task, result)
    error = None
    if diverged:
        error = (f"training {result.status}, written to {out / 'params.npz'} with the losses "
                 f"so far (a smaller --lr or a --clip threshold may help)")
    elif task.name == "charlm":
        text = sample_text(net, readout, task, 200, seed=args.seed)
        report.append("sample:\n" + text)
        payload["sample"] = text
    return _finish(out, files, report, error)


def _train_outputs(args, task, result):
    """The files (params.npz, losses.csv, train.json, train.png), the printed report and the
    JSON payload (filled in until the files are written) of a training run."""
    from .experiments.persistence import save_model

    losses = result.losses
    meta = {"task": task.name, "T": task.T, "chance": task.chance, "eval_loss": result.eval_loss,
            "steps_run": len(losses), "seed": args.seed, "diverged_at": result.diverged_at}
    payload = _header(args)
    payload.update(parameters=_parameters(args), network=repr(result.net), chance=task.chance,
                   loss=task.loss, eval_loss=result.eval_loss,
                   final_running_loss=float(np.mean(losses[-20:])) if len(losses) else None,
                   steps_run=len(losses), stopped_early=len(losses) < args.steps,
                   diverged_at=result.diverged_at, status=result.status)
    files = [("params.npz", lambda path: save_model(path, result.net, result.readout, meta)),
             ("losses.csv", _csv_writer([{"step": i, "loss": float(v)}
                                         for i, v in enumerate(losses)], ["step", "loss"])),
             ("train.json", _json_writer(payload))]
    if not args.no_plot and len(losses):
        from .experiments.plotting import plot_training

        net = result.net
        files.append(("train.png", lambda path: plot_training(
            losses, task.chance, path=path,
            title=f"{task.name} (T={task.T}), {net.cell} N={net.hidden_size}")))
    return files, [result.status], payload


# --- fixed points --------------------------------------------------------------------------

def _cmd_fixed_points(args):
    from .analysis import fixed_points
    from .experiments.tasks import make_task
    from .experiments.persistence import load_model

    saved = load_model(args.params)
    net = saved.net
    task_name = saved.meta.get("task")
    try:
        task = make_task(task_name, saved.meta.get("T"), dtype=net.dtype) if task_name else None
    except (TypeError, ValueError) as exc:
        raise _UsageError(f"PARAMS: {args.params!r} names a task numrnn cannot rebuild "
                          f"({exc})") from None
    _check_plot(args, "fixed_points.png")
    out = _out_dir(args.out)
    print(f"numrnn fixed-points: {net!r}" + (f" trained on {task_name}" if task_name else ""),
          flush=True)
    states = None if task is None else net.forward(task.sample(16, [args.seed, 1]).x)[0]
    # candidates along autonomous trajectories from random states (the analysis' sampling): they
    # pass near the saddles between memories as well as the attractors; task states would only
    # give the attractors.  tol None: the library's default for the network's dtype
    result = fixed_points(net, n_initial=args.n_initial, seed=args.seed, tol=args.tol)
    rows = _fixed_point_rows(result)
    n_stable = int(np.sum(result.stable))
    payload = _header(args)
    payload.update(parameters=_parameters(args), network=repr(net), meta=saved.meta,
                   n_fixed_points=len(rows), n_stable=n_stable, rows=rows,
                   points=np.asarray(result.points),
                   eigenvalues_abs=np.abs(np.asarray(result.eigenvalues)))
    files = [("fixed_points.csv", _csv_writer(rows, list(rows[0]) if rows else
                                              ["index", "residual", "stable", "n_unstable",
                                               "max_abs_eigenvalue", "slowest_time_constant"])),
             ("fixed_points.json", _json_writer(payload))]
    if not args.no_plot and rows:
        from .experiments.plotting import plot_fixed_points

        files.append(("fixed_points.png", lambda path: plot_fixed_points(
            np.asarray(result.points), np.asarray(result.stable),
            None if states is None else _state_view(states, result), path=path,
            title=f"fixed points: {n_stable} stable, {len(rows) - n_stable} unstable")))
    return _finish(out, files, [_fixed_point_table(rows), f"{len(rows)} fixed points, "
                                f"{n_stable} stable, {len(rows) - n_stable} unstable"])


def _state_view(output, result):
    """Trajectories in the fixed points' state coordinates, if those are the hidden states."""
    S = np.asarray(result.points).shape[1]
    return output if output.shape[-1] == S else None


def _fixed_point_rows(result):
    rows = []
    eig = np.asarray(result.eigenvalues)
    tau = np.asarray(result.time_constants)
    for i in range(len(np.asarray(result.residuals))):
        mags = np.abs(eig[i])
        finite_tau = tau[i][np.isfinite(tau[i])]
        rows.append({"index": i, "residual": float(result.residuals[i]),
                     "stable": bool(result.stable[i]), "n_unstable": int(result.n_unstable[i]),
                     "max_abs_eigenvalue": float(mags.max()),
                     "slowest_time_constant": float(finite_tau.max()) if finite_tau.size
                     else float("inf")})
    return rows


def _fixed_point_table(rows):
    head = f"{'#':>3} {'residual':>10} {'stable':>7} {'unstable dirs':>14} {'max|eig|':>9} {'slowest tau':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['index']:3d} {r['residual']:10.2e} {str(r['stable']):>7} "
                     f"{r['n_unstable']:14d} {r['max_abs_eigenvalue']:9.4f} "
                     f"{r['slowest_time_constant']:12.2f}")
    return "\n".join(lines)


# --- info ----------------------------------------------------------------------------------

def _cuda_status():
    """(usable, description, numrnn.gpu.info() or None); never raises, never fails when
    numba-cuda or a GPU is absent."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from . import gpu
        except Exception as exc:  # numba-cuda missing or broken: the message says what to do
            return False, f"numrnn.gpu not importable ({type(exc).__name__}: {exc})", None
        try:
            gpu.require()
            device = gpu.info()
        except gpu.CUDAUnavailableError as exc:
            return False, str(exc), None
        except Exception as exc:  # the driver failed while describing the device
            return False, f"the CUDA driver failed ({type(exc).__name__}: {exc})", None
    return True, (f"{device['device']} ({device['multiprocessors']} multiprocessors, "
                  f"{device['shared_memory_per_block'] // 1024} KiB shared memory per block)"), \
        device


def _cells():
    """Every registered cell: name, gates, states, options (defaults) and nonlinearity."""
    from . import cells

    out = []
    for name in cells.names():
        cell = cells.registered(name)
        out.append({"name": name, "gates": list(cell.gates), "states": list(cell.states),
                    "options": dict(cell.options), "nonlinearity": cell.nonlinearity,
                    "doc": cell.doc})
    return out


def _info():
    import numba
    import scipy

    from . import __version__, config, cpu

    versions = {"numrnn": __version__, "python": platform.python_version(),
                "numpy": np.__version__, "scipy": scipy.__version__, "numba": numba.__version__}
    for name in ("llvmlite", "torch", "matplotlib", "dask", "distributed"):
        try:
            mod = __import__(name)
            versions[name] = getattr(mod, "__version__", "?")
        except Exception:
            versions[name] = None
    # the engine's own dispatch rules, for a float32 Elman network with T = 200 steps
    backend = cpu.describe(((1, 32), (1, 512), (32, 128), (32, 512)), steps=200,
                           dtype=np.float32)
    threads = {"cpu_count": os.cpu_count(), "numrnn_threads": backend["threads"],
               "numrnn_parallel_blocks": backend["parallel_blocks"],
               "blas_thread_control": backend["blas_thread_control"],
               "blas_threads": backend["blas_threads"],
               "numpy_blas_thread_control": backend["numpy_blas_thread_control"],
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
               "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")}
    usable, desc, device = _cuda_status()
    tunables = {k: getattr(config, k) for k in dir(config) if k.isupper()}
    kernels = [{"batch": k["batch"], "hidden": k["hidden"], "steps": k["steps"], "device": "cpu",
                "recurrence": (f"@njit kernel, batch split over {k['pieces']} thread(s)"
                               if k["split"] == "sequences" else
                               f"@njit kernel, each step split into {k['pieces']} unit blocks "
                               f"(a barrier per step)"),
                "recurrent_product": k["recurrent_product"]} for k in backend["kernels"]]
    return {"versions": versions, "threads": threads,
            "cuda": {"usable": usable, "detail": desc, "device": device,
                     "kernels": "numrnn.gpu @cuda.jit kernels (device='cuda')" if usable
                     else "none: device='cuda' is unavailable, the CPU kernels run"},
            "blas": {"libraries": backend["blas_libraries"], "note": backend["blas_note"],
                     "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
                     "products_over_time": _products_over_time(backend)},
            "config": tunables, "cpu_kernels": kernels, "cells": _cells()}


def _products_over_time(backend):
    """Who makes the products over all steps (input projection, input and weight gradients)."""
    if not backend["dot_products"]:
        return "BLAS"
    if backend["blas_avx512_kernels"]:
        from .cpu import products
        return (f"BLAS (AVX-512 kernels); float64 weight gradients under "
                f"{products.PACKED_TN_MIN_COLUMNS} columns compiled")
    return "compiled (AVX-512) where their sums are deep enough, else BLAS"


def _cmd_info(args):
    info = _info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print("numrnn " + info["versions"]["numrnn"])
    print("\nversions:")
    for k, v in info["versions"].items():
        print(f"  {k:12s} {v if v is not None else 'not installed'}")
    print("\nthreads:")
    for k, v in info["threads"].items():
        print(f"  {k:22s} {v}")
    print("\nblas:")
    for lib in info["blas"]["libraries"]:
        print(f"  {lib['name'] + ' OpenBLAS':22s} {lib['config']} (kernels: {lib['core']})")
    print(f"  {'OPENBLAS_CORETYPE':22s} {info['blas']['OPENBLAS_CORETYPE']}")
    print(f"  {'products over time':22s} {info['blas']['products_over_time']}")
    if info["blas"]["note"]:
        print(f"  note: {info['blas']['note']}")
    print("\ncuda:")
    print(f"  usable                 {info['cuda']['usable']}")
    print(f"  detail                 {info['cuda']['detail']}")
    print(f"  kernels                {info['cuda']['kernels']}")
    print("\nconfig (numrnn.config, NUMRNN_* environment variables):")
    for k, v in info["config"].items():
        print(f"  {k:22s} {v}")
    print("\nCPU kernels for typical sizes (float32, forward and BPTT):")
    for r in info["cpu_kernels"]:
        print(f"  B={r['batch']:<3d} N={r['hidden']:<4d} {r['recurrence']}, "
              f"{r['recurrent_product']}")
    print("\ncells (RNN(..., cell=NAME, cell_options={...}); numrnn train/study --cell NAME "
          "--cell-option KEY=VALUE):")
    for c in info["cells"]:
        options = ", ".join(f"{k}={v:g}" for k, v in c["options"].items()) or "none"
        phi = f"; default nonlinearity {c['nonlinearity']}" if c["nonlinearity"] else ""
        print(f"  {c['name']:14s} gates {','.join(c['gates']):8s} states "
              f"{','.join(c['states']):4s} options {options}{phi}")
    return 0


# --- entry point ---------------------------------------------------------------------------

class _QuietStream:
    """``sys.stdout`` or ``sys.stderr`` while a command runs: when the reader goes away
    (``numrnn study | head -1``, or ``2>&1 | head -1``), printing stops quietly and the command
    carries on (its files are written)."""

    def __init__(self, stream):
        self._stream = stream
        self.reader_gone = False

    def write(self, text):
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self.reader_gone = True
        return len(text)

    def flush(self):
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self.reader_gone = True

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _discard(stream):
    """Point ``stream``'s file descriptor at /dev/null: the interpreter's last flush of what the
    closed pipe refused then succeeds silently (no "Exception ignored ... BrokenPipeError")."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture, say)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _fail(prog, message):
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _run(argv):
    parser = _build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except _ParseError as exc:
        return _fail(exc.prog, str(exc))
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    args._argv = argv
    prog = f"numrnn {args.command}"
    if unknown:  # named here, where the command is known (argparse reports them at the top)
        return _fail(prog, f"{' '.join(unknown)}: not an option or argument of this command "
                           f"(see `{prog} --help`)")
    try:
        return args.func(args)
    except _UsageError as exc:
        return _fail(prog, str(exc))
    except OSError as exc:  # a file the command reads or writes
        return _fail(prog, f"{exc.filename}: {exc.strerror}" if exc.filename
                     else _option_message(exc, args))
    except (ImportError, ValueError, TypeError, RuntimeError, MemoryError,
            ArithmeticError) as exc:
        # the library's own checks while running (a tape too large for memory, a NaN or inf
        # born inside the computation: numrnn.NonFiniteError, CUDA unavailable, a missing extra)
        return _fail(prog, _option_message(exc, args))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv=None):
    """Run the ``numrnn`` command; returns the exit status.

    0: done, every file written.  2: an error, reported as one line on stderr (``numrnn
    <command>: error: <option or file>: <what was expected, what came>``).  130: interrupted.
    A closed standard output or error (``numrnn study | head -1``) does not change the status:
    the printing stops, the work and the files do not.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after the program name (``sys.argv[1:]`` by default).

    Examples
    --------
    >>> from numrnn.cli import main
    >>> main(["info", "--json"])  # doctest: +SKIP
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = quiet = [_QuietStream(s) for s in streams]
    try:
        return _run(argv)
    finally:
        sys.stdout, sys.stderr = streams
        for stream, q in zip(streams, quiet):
            if q.reader_gone:
                _discard(stream)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
