"""The numrnn command, run for real at small sizes: exit codes, messages, files that parse."""
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numrnn
from numrnn.cli import main
from numrnn.experiments import save_model
from tests.problems import save_gru_model
from tests.usercells import registry, user_cell  # noqa: F401 - a fixture

TINY_STUDY = ["study", "-N", "4", "--gains", "1", "2", "--seeds", "1", "--steps", "30",
              "--transient", "5", "-k", "2", "--max-lag", "5", "--no-plot"]


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _strict_json(path):
    """Parse as strict JSON: a bare NaN, Infinity or -Infinity token is an error."""
    def refuse(token):
        raise ValueError(f"{path}: invalid JSON token {token}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _one_error_line(err, prog):
    """stderr holds exactly one line, ``<prog>: error: ...``, and no traceback."""
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    assert "Traceback" not in err and "usage:" not in err
    return err.strip()


def _no_work(monkeypatch):
    """Make any computation fail the test: errors must come before the work."""
    def refuse(*a, **kw):
        raise AssertionError("the work started although an argument was bad")
    for name in ("numrnn.experiments.study.run_study", "numrnn.experiments.training.train",
                 "numrnn.analysis.fixed_points"):
        monkeypatch.setattr(name, refuse)


# --- bad arguments first -----------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["study", "--hidden-size", "0"], ["--hidden-size", "expected an integer >= 1, got 0"]),
    (["study", "--cell", "transformer"], ["--cell", "invalid choice", "'transformer'"]),
    (["study", "--g-min", "3", "--g-max", "1"], ["--g-min", "at most --g-max=1.0", "3.0"]),
    (["study", "--gains", "-1"], ["--gains", "expected a number > 0", "-1"]),
    (["study", "--alpha", "1.5"], ["--alpha", "(0.0, 1.0]", "1.5"]),
    (["study", "-N", "4", "-k", "5"], ["--n-exponents", "at most the state size 4", "5"]),
    (["study", "--steps", "10", "--max-lag", "20"], ["--max-lag", "fewer than steps=10"]),
    (["study", "--steps", "ten"], ["--steps", "'ten'"]),
    (["train"], ["--task", "required"]),
    (["train", "--task", "adding", "--T", "1"], ["--T", "at least 2 steps, got 1"]),
    (["train", "--task", "adding", "--cell", "lstm", "--alpha", "0.5"],
     ["--alpha", "lstm cell has no leak"]),
    (["train", "--task", "sorting"], ["--task", "invalid choice", "'sorting'"]),
    (["train", "--task", "adding", "--clip", "-1"], ["--clip", ">= 0", "-1.0"]),
    (["fixed-points", "no/such/params.npz"], ["PARAMS", "no such file"]),
    (["frobnicate"], ["COMMAND: invalid choice", "'frobnicate'", "(see `numrnn --help`)"]),
    (["study", "--steps"], ["--steps: expected one argument", "(see `numrnn study --help`)"]),
    (["study", "--no-such-option", "1"], ["--no-such-option 1: not an option"]),
    (["study", "-k", "2", "--full-spectrum"], ["--full-spectrum: not allowed with"]),
    # a gain sweep of an initialiser that takes no gain would print identical rows
    (["study", "--init", "default", "--gains", "0.5", "2", "4"],
     ["--init: 'default'", "takes no gain", "identical rows", "'gaussian'"]),
    (["study", "--scheduler", "bogus"], ["--scheduler: expected a Dask scheduler address",
                                         "got 'bogus'"]),
    (["study", "--scheduler", "local:0"], ["--scheduler: expected 'local' or 'local:N'"]),
    # longer than the shipped text: the option is --T (there is no --text)
    (["train", "--task", "charlm", "--T", "100000"],
     ["--T: expected at most 4350, the longest window this text allows", "the text has 4351",
      "got 100000"]),
    # --cell-option KEY=VALUE: the key is one of the cell's options, the value a finite number
    # the cell accepts, each key once, the leak given once
    (["train", "--task", "adding", "--cell", "gru", "--cell-option", "dt=0.1"],
     ["--cell-option: the gru cell has no option 'dt'; its options are none"]),
    (["study", "--cell", "cornn", "--cell-option", "beta=1"],
     ["--cell-option: the cornn cell has no option 'beta'; its options are dt, gamma, epsilon"]),
    (["train", "--task", "adding", "--cell", "cornn", "--cell-option", "dt"],
     ["--cell-option: expected KEY=VALUE, got 'dt'"]),
    (["study", "--cell", "cornn", "--cell-option", "=0.1"],
     ["--cell-option: expected KEY=VALUE, got '=0.1'"]),
    (["train", "--task", "adding", "--cell", "cornn", "--cell-option", "dt=fast"],
     ["--cell-option: dt: expected a number, got 'fast'"]),
    (["study", "--cell", "cornn", "--cell-option", "dt=nan"],
     ["--cell-option: dt: expected a finite number, got 'nan'"]),
    (["train", "--task", "adding", "--cell", "cornn", "--cell-option", "dt=-0.1"],
     ["--cell-option: dt: expected a time step > 0, got -0.1"]),
    (["study", "--cell", "antisymmetric", "--cell-option", "epsilon=0"],
     ["--cell-option: epsilon: expected a step size > 0"]),
    (["train", "--task", "adding", "--cell", "tanh", "--cell-option", "alpha=2"],
     ["--cell-option: alpha: expected a leak in (0, 1], got 2.0"]),
    (["study", "--cell", "cornn", "--cell-option", "dt=0.1", "--cell-option", "dt=0.2"],
     ["--cell-option: dt given twice (dt=0.1 and dt=0.2); give it once"]),
    (["train", "--task", "adding", "--cell", "rate", "--alpha", "0.5", "--cell-option",
      "alpha=0.2"], ["--alpha: given twice, as --alpha 0.5 and --cell-option alpha=0.2"]),
    (["study", "--cell", "gru", "--alpha", "0.5"], ["--alpha: the gru cell has no leak"]),
    (["train", "--task", "adding", "--cell", "transformer"],
     ["--cell", "invalid choice", "'transformer'", "'cornn'"]),
    # IndRNN's recurrent weight is a vector: a Gaussian matrix does not describe it
    (["study", "--cell", "indrnn"], ["--init: the recurrent weight is a vector", "'identity'"]),
])
def test_bad_arguments_exit_2_with_one_clear_line(capsys, monkeypatch, argv, words):
    _no_work(monkeypatch)
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and out == ""
    prog = "numrnn" if argv[0] == "frobnicate" else f"numrnn {argv[0]}"
    line = _one_error_line(err, prog)
    for w in words:
        assert w in line, (w, line)
    assert "--text" not in line


@pytest.mark.parametrize("exc, words", [
    (ValueError("max_lag: expected fewer than steps=30, got 40"),
     ["--max-lag: expected fewer than steps=30, got 40"]),
    (ValueError("hidden_size: expected an integer >= 1, got 0"), ["--hidden-size: expected"]),
    (TypeError("x: expected a numpy array, got list"), ["x: expected a numpy array"]),
    (RuntimeError("device: no CUDA device is usable"), ["--device: no CUDA device"]),
    (MemoryError("forward: the tape needs 24 GB,\nat most T=100 steps fit"),
     ["forward: the tape needs 24 GB, at most T=100 steps fit"]),
    (numrnn.NonFiniteError("vjp: the gradient dL/dh of layer 0 became NaN or inf at step t=3"),
     ["vjp: the gradient dL/dh of layer 0 became NaN or inf at step t=3"]),
])
def test_library_errors_while_running_are_one_line_with_status_2(capsys, monkeypatch, tmp_path,
                                                                 exc, words):
    """What the library raises while the command runs is one line with exit status 2 (it was a
    traceback, or status 1), with the library's argument names as the command's options."""
    def run_study(*a, **kw):
        raise exc
    monkeypatch.setattr("numrnn.experiments.study.run_study", run_study)
    rc, _, err = _run(capsys, *TINY_STUDY, "--out", str(tmp_path))
    assert rc == 2
    line = _one_error_line(err, "numrnn study")
    for w in words:
        assert w in line, (w, line)


# --- --out is checked before any work, and results are never lost ---------------------------


@pytest.mark.parametrize("where", ["file", "file/sub", "/proc/numrnn-no-such-dir/out",
                                   "/proc/self"])
def test_unwritable_out_fails_before_the_work(capsys, monkeypatch, tmp_path, where):
    """An --out under an existing file, where directories cannot be made (/proc), or where no
    file can be created (/proc/self exists): one line, status 2, before any computation."""
    (tmp_path / "file").write_text("x")
    out = where if where.startswith("/") else str(tmp_path / where)
    _no_work(monkeypatch)
    rc, stdout, err = _run(capsys, *TINY_STUDY, "--out", out)
    assert rc == 2 and stdout == ""
    line = _one_error_line(err, "numrnn study")
    assert line.startswith("numrnn study: error: --out: expected a directory") and out in line


def test_train_out_must_be_a_directory(capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    rc, _, err = _run(capsys, "train", "--task", "adding", "--T", "5", "--steps", "1",
                      "--no-plot", "--out", str(target))
    assert rc == 2 and "--out: expected a directory" in _one_error_line(err, "numrnn train")


def test_a_late_write_failure_loses_nothing(capsys, monkeypatch, tmp_path):
    """study.json cannot be written in --out after the computation (a disk filled up): the
    table is still printed, the file goes to a temporary directory, and the one error line
    says where."""
    import numrnn.cli as cli

    out = tmp_path / "out"
    real = cli._json_writer

    def full_disk(payload):
        write = real(payload)

        def maybe(path):
            if path.parent == out:
                raise OSError(28, "No space left on device")
            write(path)
        return maybe
    monkeypatch.setattr(cli, "_json_writer", full_disk)
    rc, stdout, err = _run(capsys, *TINY_STUDY, "-q", "--out", str(out))
    assert rc == 2 and "lambda_max" in stdout and (out / "study.csv").exists()
    line = _one_error_line(err, "numrnn study")
    assert "--out: could not write study.json (No space left on device)" in line
    spare = line.split("written to '")[1].split("'")[0]
    assert len(_strict_json(f"{spare}/study.json")["rows"]) == 2


# --- broken pipe ------------------------------------------------------------------------------


def _study_command(out, *extra):
    return [sys.executable, "-m", "numrnn", *TINY_STUDY, "--out", str(out), *extra]


@pytest.mark.parametrize("redirect", ["", "2>&1"])
def test_study_piped_into_head_ends_quietly_after_writing_its_files(tmp_path, redirect):
    """`numrnn study ... | head -1` (also with stderr in the pipe): the first line comes out, the
    files are written, no traceback and no "Exception ignored" message, exit status 0
    (pipefail: numrnn's own)."""
    cmd = " ".join(shlex.quote(a) for a in _study_command(tmp_path))
    res = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} {redirect} | head -1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("numrnn study: 2 points") and res.stdout.count("\n") == 1
    for word in ("Traceback", "Exception ignored", "BrokenPipe", "error"):
        assert word not in res.stderr, res.stderr
    assert len(_csv(tmp_path / "study.csv")) == 2
    assert len(_strict_json(tmp_path / "study.json")["rows"]) == 2


def test_study_with_a_closed_stdout_writes_its_files_and_exits_0(tmp_path):
    """The reader is gone before the first line (its end of the pipe is closed at once), so
    every print meets EPIPE: the command still computes and writes, says nothing on stderr,
    and exits 0."""
    with subprocess.Popen(_study_command(tmp_path, "-q"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        proc.stdout.close()
        err = proc.stderr.read()
        rc = proc.wait(timeout=300)
    assert rc == 0 and err == "", err
    assert len(_csv(tmp_path / "study.csv")) == 2
    assert len(_strict_json(tmp_path / "study.json")["rows"]) == 2


# --- optional extras: missing ones are named before the work ---------------------------------


@pytest.mark.parametrize("command, figure", [
    (["study", "-N", "4", "--gains", "1", "--seeds", "1", "--steps", "30", "--transient", "5",
      "-k", "2", "--max-lag", "5"], "study.png"),
    (["train", "--task", "adding", "--T", "5", "-N", "4", "--steps", "2"], "train.png"),
    (["fixed-points", "PARAMS"], "fixed_points.png"),
])
def test_missing_matplotlib_fails_before_the_work(capsys, monkeypatch, tmp_path, saved_params,
                                                  command, figure):
    """The commands promise a PNG: without matplotlib (and without --no-plot) they say so in one
    line, with both ways out, before computing anything."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    _no_work(monkeypatch)
    argv = [str(saved_params) if a == "PARAMS" else a for a in command]
    rc, out, err = _run(capsys, *argv, "--out", str(tmp_path / "out"))
    assert rc == 2 and out == ""
    line = _one_error_line(err, f"numrnn {command[0]}")
    assert f"error: {figure}: figures need matplotlib" in line
    assert "pip install 'numrnn[plot]'" in line and "--no-plot" in line
    assert not (tmp_path / "out").exists()


def test_missing_dask_is_named_with_the_extra_to_install(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    monkeypatch.setitem(sys.modules, "distributed", None)
    _no_work(monkeypatch)
    rc, _, err = _run(capsys, *TINY_STUDY, "--scheduler", "local:2", "--out",
                      str(tmp_path / "out"))
    assert rc == 2
    line = _one_error_line(err, "numrnn study")
    assert "--scheduler: Dask sweeps need" in line and "pip install 'numrnn[dask]'" in line
    assert not (tmp_path / "out").exists()


def test_unreachable_scheduler_is_one_line_after_the_timeout(tmp_path):
    """Nothing listens on port 1 of the loopback: one line naming the address and the timeout
    (--scheduler-timeout, 10 s by default; 1 s here), status 2, no rows computed."""
    pytest.importorskip("dask.distributed", reason="the Dask scheduler test needs numrnn[dask]")
    res = subprocess.run(_study_command(tmp_path, "-q", "--scheduler", "tcp://127.0.0.1:1",
                                        "--scheduler-timeout", "1"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    line = _one_error_line(res.stderr, "numrnn study")
    assert "--scheduler: could not connect to 'tcp://127.0.0.1:1' within 1 s" in line
    assert not (tmp_path / "study.csv").exists()


# --- fixed-points: damaged and foreign files ---------------------------------------------------


@pytest.fixture
def saved_params(tmp_path):
    """A params.npz as `numrnn train` writes it (GRU, flip-flop metadata), without training."""
    return save_gru_model(tmp_path / "params.npz", 3, 4, 3, {"task": "flipflop", "T": 10})


def _damage(kind, good, path):
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif kind == "bit-flipped":  # one bit inside the stored data of the first array
        flipped = bytearray(data)
        flipped[200] ^= 0x10
        path.write_bytes(bytes(flipped))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "plain npz":
        np.savez(path, weights=np.ones(3))
    elif kind == "npy":
        with open(path, "wb") as fh:
            np.save(fh, np.ones(3))
    elif kind == "text":
        path.write_text("gain,seed\n1.0,0\n")
    elif kind == "directory":
        path.mkdir()


@pytest.mark.parametrize("kind, words", [
    ("truncated", ["could not read", "truncated or damaged", "BadZipFile"]),
    ("bit-flipped", ["could not read", "truncated or damaged", "Bad CRC-32"]),
    ("empty", ["an empty file"]),
    ("plain npz", ["is not a numrnn parameter file", "no '__numrnn__' record"]),
    ("npy", ["not a zip archive"]),
    ("text", ["not a zip archive"]),
    ("directory", ["a directory"]),
])
def test_fixed_points_refuses_a_damaged_or_foreign_params_file(capsys, tmp_path, saved_params,
                                                               kind, words):
    bad = tmp_path / "bad.npz"
    _damage(kind, saved_params, bad)
    rc, out, err = _run(capsys, "fixed-points", str(bad), "--out", str(tmp_path / "fp"))
    assert rc == 2 and out == ""
    line = _one_error_line(err, "numrnn fixed-points")
    assert line.startswith("numrnn fixed-points: error: PARAMS: ") and str(bad) in line
    for w in words:
        assert w in line, (w, line)


def test_no_command_prints_help(capsys):
    rc, out, _ = _run(capsys)
    assert rc == 2 and "study" in out and "fixed-points" in out


# --- the console script and python -m ----------------------------------------------------


def test_python_m_numrnn_help_teaches():
    res = subprocess.run([sys.executable, "-m", "numrnn", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0
    for word in ("study", "train", "fixed-points", "info", "Lyapunov", "examples:"):
        assert word in res.stdout
    res = subprocess.run([sys.executable, "-m", "numrnn", "study", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "Kaplan-Yorke" in res.stdout and "--scheduler" in res.stdout


# --- info --------------------------------------------------------------------------------


def test_info_reports_versions_threads_and_cuda(capsys):
    rc, out, _ = _run(capsys, "info", "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["versions"]["numrnn"] and info["versions"]["numba"]
    assert isinstance(info["cuda"]["usable"], bool) and info["cuda"]["detail"]
    assert info["threads"]["numrnn_threads"] >= 1
    assert {"batch", "hidden", "recurrence"} <= set(info["cpu_kernels"][0])
    rc, out, _ = _run(capsys, "info")
    assert rc == 0 and "cuda:" in out and "usable" in out


def test_info_lists_every_registered_cell(capsys, registry):
    """The cells come from the registry (a cell registered now is listed), each with its gates,
    states and options (defaults)."""
    registry.register("leaky_user", user_cell("leaky_user"))
    rc, out, _ = _run(capsys, "info", "--json")
    assert rc == 0
    listed = json.loads(out)["cells"]
    assert [c["name"] for c in listed] == list(registry.names())
    assert "leaky_user" in registry.names() and "cornn" in registry.names()
    for c in listed:
        cell = registry.registered(c["name"])
        assert (c["gates"], c["states"], c["options"]) == (list(cell.gates), list(cell.states),
                                                           cell.options)
    rc, out, _ = _run(capsys, "info")
    assert rc == 0
    text = out[out.index("\ncells ("):]
    assert "leaky_user" in text and "options beta=0.5" in text
    assert "gates i,f,g,o" in text and "states h,c" in text
    assert "options dt=0.042, gamma=2.7, epsilon=4.7" in text


def test_info_reports_what_the_cpu_backend_describes(capsys):
    """`numrnn info` asks numrnn.cpu.describe() (not the backend's private dispatch rules)."""
    rc, out, _ = _run(capsys, "info", "--json")
    info = json.loads(out)
    backend = numrnn.cpu.describe(((1, 32), (1, 512), (32, 128), (32, 512)), steps=200,
                                  dtype=np.float32)
    assert info["threads"]["numrnn_threads"] == backend["threads"]
    assert info["threads"]["numrnn_parallel_blocks"] == backend["parallel_blocks"]
    assert [r["recurrent_product"] for r in info["cpu_kernels"]] == \
        [k["recurrent_product"] for k in backend["kernels"]]
    assert info["blas"]["libraries"] == backend["blas_libraries"]
    assert info["blas"]["note"] == backend["blas_note"]
    over_time = info["blas"]["products_over_time"]
    columns = numrnn.cpu.products.PACKED_TN_MIN_COLUMNS
    wide = (f"BLAS (AVX-512 kernels); float64 weight gradients under {columns} columns "
            f"compiled")
    assert over_time == ("BLAS" if not backend["dot_products"] else
                         wide if backend["blas_avx512_kernels"] else
                         "compiled (AVX-512) where their sums are deep enough, else BLAS")
    rc, out, _ = _run(capsys, "info")
    text = out[out.index("\nblas:"):out.index("\ncuda:")]
    for lib in backend["blas_libraries"]:
        assert f"{lib['name']} OpenBLAS" in text and f"(kernels: {lib['core']})" in text
    if backend["blas_note"] is None:  # (OpenBLAS runs kernels as wide as the CPU's)
        assert "note: " not in text
    else:
        assert "note: " + backend["blas_note"] in text
    assert f"products over time     {over_time}" in text
    assert [r["recurrence"] for r in info["cpu_kernels"]] == \
        [f"@njit kernel, batch split over {k['pieces']} thread(s)" if k["split"] == "sequences"
         else f"@njit kernel, each step split into {k['pieces']} unit blocks (a barrier per step)"
         for k in backend["kernels"]]
    assert backend["blas_min_work"] == numrnn.config.BLAS_MIN_WORK
    assert info["cuda"]["usable"] == (info["cuda"]["device"] is not None)


def test_import_numrnn_pulls_in_neither_matplotlib_nor_dask_nor_cuda():
    code = ("import sys, numrnn, numrnn.experiments, numrnn.cli; "
            "bad = [m for m in ('matplotlib', 'dask', 'distributed', 'numba.cuda') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# --- train -------------------------------------------------------------------------------


@pytest.mark.parametrize("task, extra", [("adding", ["--T", "10"]), ("copy", ["--T", "5"]),
                                         ("lorenz", ["--T", "30"]),
                                         ("charlm", ["--T", "12", "--cell", "gru"])])
def test_train_writes_parameters_losses_and_figure(capsys, tmp_path, task, extra):
    pytest.importorskip("matplotlib", reason="the figure needs numrnn[plot]")
    out_dir = tmp_path / task
    rc, out, err = _run(capsys, "train", "--task", task, "-N", "8", "--steps", "12",
                        "--batch-size", "8", "--out", str(out_dir), *extra)
    assert rc == 0, err
    assert "chance" in out and "eval loss" in out
    assert "train " + task in err  # the progress bar
    losses = [float(r["loss"]) for r in _csv(out_dir / "losses.csv")]
    assert len(losses) == 12 and np.isfinite(losses).all()
    meta = _strict_json(out_dir / "train.json")
    assert meta["numrnn_version"] and meta["parameters"]["task"] == task
    assert np.isfinite(meta["eval_loss"]) and meta["chance"] > 0
    assert (out_dir / "train.png").stat().st_size > 1000
    from numrnn.experiments import load_model
    saved = load_model(out_dir / "params.npz")
    assert saved.meta["task"] == task and saved.readout is not None
    if task == "charlm":
        assert "sample:" in out and len(meta["sample"]) > 100


def test_train_with_cell_options_saves_them(capsys, tmp_path):
    """--cell-option reaches the network (its repr, the JSON) and params.npz keeps it."""
    from numrnn.experiments import load_model

    rc, out, err = _run(capsys, "train", "--task", "adding", "--T", "8", "-N", "4", "--steps",
                        "3", "--batch-size", "4", "--cell", "cornn", "--cell-option", "dt=0.1",
                        "--cell-option", "gamma=3", "--no-plot", "-q", "--out", str(tmp_path))
    assert rc == 0, err
    assert "cell='cornn', cell_options={'dt': 0.1, 'gamma': 3.0}" in out
    saved = load_model(tmp_path / "params.npz")
    assert saved.net.cell_options == {"dt": 0.1, "gamma": 3.0, "epsilon": 4.7}
    meta = _strict_json(tmp_path / "train.json")
    assert meta["parameters"]["cell_option"] == ["dt=0.1", "gamma=3"]
    assert "cell_options={'dt': 0.1, 'gamma': 3.0}" in meta["network"]


def test_a_registered_user_cell_is_a_choice_of_train_and_study(capsys, monkeypatch, registry):
    """--cell and --cell-option read the registry: a cell registered before main() runs is a
    choice, and its options are checked against its definition."""
    _no_work(monkeypatch)
    registry.register("leaky_user", user_cell("leaky_user"))
    for command in (["train", "--task", "adding"], ["study"]):
        rc, _, err = _run(capsys, *command, "--cell", "leaky_user", "--cell-option", "gamma=1")
        line = _one_error_line(err, f"numrnn {command[0]}")
        assert rc == 2 and ("--cell-option: the leaky_user cell has no option 'gamma'; its "
                            "options are beta") in line


def test_study_passes_cell_options_to_the_study(capsys, monkeypatch, tmp_path):
    seen = []

    def run_study(config, **kw):
        seen.append(config)
        raise RuntimeError("stop here")
    monkeypatch.setattr("numrnn.experiments.study.run_study", run_study)
    rc, _, err = _run(capsys, *TINY_STUDY, "--cell", "cornn", "--cell-option", "dt=0.1",
                      "--cell-option", "epsilon=2", "--out", str(tmp_path))
    assert rc == 2 and "stop here" in err
    assert seen[0].cell == "cornn" and seen[0].cell_options == {"dt": 0.1, "epsilon": 2.0}
    assert seen[0].as_dict()["cell_options"] == {"dt": 0.1, "epsilon": 2.0}


def test_study_computes_the_full_spectrum_unless_k_is_given(capsys, monkeypatch, tmp_path):
    """Issue 15: the full spectrum is the default (the help says so); --full-spectrum is the
    same, kept for old scripts; -k K asks for the first K exponents only."""
    seen = []

    def run_study(config, **kw):
        seen.append(config.n_exponents)
        raise RuntimeError("stop here")
    monkeypatch.setattr("numrnn.experiments.study.run_study", run_study)
    k = TINY_STUDY.index("-k")
    base = TINY_STUDY[:k] + TINY_STUDY[k + 2:] + ["--out", str(tmp_path)]
    for extra in ([], ["--full-spectrum"], ["-k", "3"]):
        rc, out, err = _run(capsys, *base, *extra)
        assert rc == 2 and "stop here" in err
        assert out.startswith("numrnn study: 2 points")
        assert ("k = 3 exponents" if extra[:1] == ["-k"] else "all exponents") in out
    assert seen == [None, None, 3]
    res = subprocess.run([sys.executable, "-m", "numrnn", "study", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert "default: all, the full spectrum" in " ".join(res.stdout.split())


def test_train_no_plot_and_quiet(capsys, tmp_path):
    rc, out, err = _run(capsys, "train", "--task", "flipflop", "--T", "10", "-N", "4",
                        "--steps", "3", "--optimizer", "sgd", "--truncate", "4", "--no-plot",
                        "-q", "--dtype", "float32", "--out", str(tmp_path))
    assert rc == 0 and err == "" and not (tmp_path / "train.png").exists()
    assert (tmp_path / "params.npz").exists()


@pytest.mark.slow
def test_lstm_beats_half_of_chance_on_the_adding_problem(capsys, tmp_path):
    """Proof of issue 5: a small LSTM trained by `numrnn train` on the adding problem at T = 50
    reaches an evaluation MSE below half the chance MSE 1/6 (Hochreiter and Schmidhuber 1997).

    The run stops once the running training loss is below chance / 6, far enough below the bar
    that the evaluation batch (256 fresh sequences) clears it; 1,500 steps is a cap, not a budget
    (the measured run crosses at a few hundred steps).
    """
    rc, out, err = _run(capsys, "train", "--task", "adding", "--T", "50", "--cell", "lstm",
                        "-N", "16", "--lr", "0.02", "--steps", "1500", "--stop-below",
                        str(1 / 36), "--seed", "0", "--out", str(tmp_path), "-q", "--no-plot")
    assert rc == 0, err
    meta = json.loads((tmp_path / "train.json").read_text())
    assert meta["eval_loss"] < 0.5 * meta["chance"], out
    assert abs(meta["chance"] - 1 / 6) < 1e-15


@pytest.mark.slow
def test_flipflop_trains_and_has_eight_stable_fixed_points(capsys, tmp_path):
    """Proof of issue 5: `numrnn train --task flipflop` reaches a low error (evaluation MSE below
    1% of chance), and `numrnn fixed-points` finds 2^3 = 8 stable fixed points of the trained
    network under zero input, one per memory (Sussillo and Barak 2013), each read out as a
    distinct sign pattern."""
    pytest.importorskip("matplotlib", reason="the figure needs numrnn[plot]")
    from numrnn.experiments import load_model

    rc, out, err = _run(capsys, "train", "--task", "flipflop", "--cell", "tanh", "-N", "24",
                        "--lr", "0.01", "--steps", "1500", "--stop-below", "0.003", "--seed", "0",
                        "--out", str(tmp_path), "-q", "--no-plot")
    assert rc == 0, err
    meta = json.loads((tmp_path / "train.json").read_text())
    assert meta["eval_loss"] < 0.01 * meta["chance"], out
    rc, out, err = _run(capsys, "fixed-points", str(tmp_path / "params.npz"), "--out",
                        str(tmp_path / "fp"), "-q")
    assert rc == 0, err
    rows = _csv(tmp_path / "fp" / "fixed_points.csv")
    stable = [r for r in rows if r["stable"] == "True"]
    assert len(stable) == 8, out
    assert all(float(r["residual"]) < 1e-8 for r in rows)
    payload = _strict_json(tmp_path / "fp" / "fixed_points.json")
    points = np.array(payload["points"])[[r["stable"] for r in payload["rows"]]]
    readout = load_model(tmp_path / "params.npz").readout
    patterns = {tuple(p) for p in np.sign(readout.forward(points)).astype(int)}
    assert len(patterns) == 8
    assert (tmp_path / "fp" / "fixed_points.png").stat().st_size > 1000


def test_diverging_training_saves_the_last_finite_state_and_says_where(capsys, tmp_path):
    """SGD with lr = 1e10 and no clipping overflows at the second step: one error line naming
    the step (it named the engine's argument `d_output` and saved nothing), status 2, and
    params.npz (the finite parameters after step 0), losses.csv and train.json are written.
    (Seed 2: with some networks the gradient stays finite for a few more steps.)"""
    from numrnn.experiments import load_model

    rc, out, err = _run(capsys, "train", "--task", "adding", "--cell", "relu", "--lr", "1e10",
                        "--clip", "0", "--optimizer", "sgd", "-N", "4", "--T", "10", "--steps",
                        "20", "--batch-size", "4", "--seed", "2", "--no-plot", "-q", "--out",
                        str(tmp_path))
    assert rc == 2
    line = _one_error_line(err, "numrnn train")
    assert "training diverged at step 1 of 20" in line and "d_output" not in line
    assert f"written to {tmp_path / 'params.npz'}" in line and "--lr" in line
    assert "diverged at step 1 of 20" in out
    saved = load_model(tmp_path / "params.npz")
    assert all(np.isfinite(v).all() for v in saved.net.state_dict().values())
    assert saved.meta["diverged_at"] == 1 and saved.meta["eval_loss"] is None
    assert [r["step"] for r in _csv(tmp_path / "losses.csv")] == ["0"]
    meta = _strict_json(tmp_path / "train.json")
    assert meta["diverged_at"] == 1 and meta["steps_run"] == 1 and meta["eval_loss"] is None
    assert meta["status"].startswith("diverged at step 1 of 20: ")


def test_fixed_points_uses_the_library_tolerance_of_a_float32_network(capsys, tmp_path):
    """A float32 network's fixed points have residuals of about 1e-8 (float32 rounding), so the
    CLI's old --tol 1e-10 missed most of them; without --tol the CLI uses numrnn.fixed_points'
    per-dtype default (1e-5 for float32) and finds exactly what the library finds."""
    net = numrnn.RNN(1, 6, cell="tanh", bias=False, dtype=np.float32, init="gaussian", gain=2.0,
                     seed=2)
    save_model(tmp_path / "params.npz", net)
    rc, out, err = _run(capsys, "fixed-points", str(tmp_path / "params.npz"), "--n-initial",
                        "64", "--no-plot", "-q", "--out", str(tmp_path / "fp"))
    assert rc == 0, err
    ours = numrnn.fixed_points(net, n_initial=64, seed=0)
    strict = numrnn.fixed_points(net, n_initial=64, seed=0, tol=1e-10)
    assert len(strict.residuals) < len(ours.residuals)  # the case tells the two apart
    payload = _strict_json(tmp_path / "fp" / "fixed_points.json")
    assert payload["n_fixed_points"] == len(ours.residuals)
    assert payload["n_stable"] == int(np.sum(ours.stable))
    assert [r["residual"] for r in payload["rows"]] == [float(r) for r in ours.residuals]
    assert payload["parameters"]["tol"] is None
