"""Studies and sweeps: configuration checks, mean-field theory, serial run, Dask equals serial."""
import json
import sys

import numpy as np
import pytest
from scipy.optimize import brentq

import numrnn
from numrnn.cli import main
from numrnn.experiments import (StudyConfig, check_scheduler, meanfield_lyapunov, meanfield_q_star,
                                run_study, study_point)
from numrnn.experiments import meanfield as mf
from numrnn.experiments import study
from tests.tolerance import assert_close
from tests.usercells import registry, user_cell  # noqa: F401 - a fixture

# N = 16 is small: at g = 3 about half of such networks settle on a fixed point or a cycle
# within 120 steps (finite size), so the seeds are two whose networks are chaotic at g = 3
SMALL = dict(hidden_size=16, gains=(0.5, 1.5, 3.0), seeds=(8, 1), steps=120, transient=30,
             n_exponents=3, max_lag=10)
FULL = dict(SMALL, n_exponents=None)  # the full spectrum, the default

# --- invalid input first ------------------------------------------------------------------


@pytest.mark.parametrize("kw, exc, words", [
    (dict(cell="transformer"), ValueError, ["cell", "'transformer'"]),
    (dict(gains=()), ValueError, ["gains", "at least one"]),
    (dict(gains=(1.0, -2.0)), ValueError, ["gains", "-2.0"]),
    (dict(seeds=(-1,)), ValueError, ["seeds", ">= 0"]),
    (dict(dtype="float16"), ValueError, ["dtype", "'float16'"]),
    (dict(device="tpu"), ValueError, ["device", "'tpu'"]),
    (dict(hidden_size=4, n_exponents=9), ValueError, ["n_exponents", "state size 4"]),
    (dict(cell="gru", alpha=0.5), ValueError, ["alpha", "gru cell has no leak"]),
    (dict(steps=10, max_lag=10), ValueError, ["max_lag", "fewer than steps=10"]),
    (dict(singular_values="yes"), TypeError, ["singular_values", "True or False"]),
    # PyTorch's default initialisation takes no gain: a sweep would repeat one network
    (dict(init="default"), ValueError, ["init: 'default'", "takes no gain", "identical rows"]),
    (dict(init="xavier"), ValueError, ["init", "'xavier'", "'spectral_radius'"]),
    # the cell's options: names and values its definition accepts, the leak given once
    (dict(cell_options=[("alpha", 0.5)]), TypeError, ["cell_options: expected a dict"]),
    (dict(cell="gru", cell_options={"dt": 0.1}), ValueError,
     ["cell_options", "'gru' cell has no option(s) ['dt']"]),
    (dict(cell="cornn", cell_options={"dt": -0.1}), ValueError,
     ["cell_options['dt']", "time step > 0"]),
    (dict(cell="cornn", cell_options={"dt": "fast"}), TypeError,
     ["cell_options['dt']", "expected a number"]),
    (dict(alpha=0.5, cell_options={"alpha": 0.5}), ValueError, ["alpha: given twice"]),
    (dict(cell_options={"alpha": 1.5}), ValueError, ["alpha", "(0, 1]", "1.5"]),
    # a two-state cell has 2N exponents; IndRNN's recurrent weight is a vector, which a Gaussian
    # matrix does not describe (found before any point runs)
    (dict(cell="cornn", hidden_size=4, n_exponents=9), ValueError,
     ["n_exponents", "state size 8"]),
    (dict(cell="indrnn", init="gaussian"), ValueError, ["init", "vector", "'identity'"]),
])
def test_study_config_rejects_bad_values(kw, exc, words):
    with pytest.raises(exc) as info:
        StudyConfig(**kw)
    for w in words:
        assert w in str(info.value)


def test_run_study_rejects_bad_scheduler_and_config():
    with pytest.raises(TypeError, match="config: expected a StudyConfig"):
        run_study({"cell": "tanh"})
    with pytest.raises(TypeError, match="scheduler: expected an address string"):
        run_study(StudyConfig(**SMALL), scheduler=42)
    with pytest.raises(ValueError, match="gain"):
        meanfield_q_star(-1.0)


@pytest.mark.parametrize("scheduler, words", [
    ("bogus", ["expected a Dask scheduler address", "'bogus'"]),
    ("tcp://", ["expected a Dask scheduler address"]),
    ("local:0", ["'local:N' with N >= 1", "'local:0'"]),
    ("local:two", ["'local:N' with N >= 1", "'local:two'"]),
])
def test_bad_scheduler_is_refused_before_any_work(monkeypatch, scheduler, words):
    monkeypatch.setattr(study, "study_point", lambda p: pytest.fail("a point was computed"))
    with pytest.raises(ValueError) as info:
        run_study(StudyConfig(**SMALL), scheduler=scheduler)
    assert str(info.value).startswith("scheduler: ")
    for w in words:
        assert w in str(info.value)


def test_missing_dask_says_how_to_install_it(monkeypatch):
    """The hint was lost: `as_completed` was imported before the check that gives it."""
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    monkeypatch.setitem(sys.modules, "distributed", None)
    for call in (lambda: check_scheduler("localhost:8786"),
                 lambda: run_study(StudyConfig(**SMALL), scheduler="local:2")):
        with pytest.raises(ImportError, match=r"^scheduler: .*pip install 'numrnn\[dask\]'"):
            call()
    assert check_scheduler(None) is None


def test_unreachable_scheduler_times_out_with_a_clear_error(monkeypatch):
    """Nothing listens on port 1 of the loopback; the wait is bounded by `timeout`."""
    pytest.importorskip("dask.distributed", reason="the Dask scheduler test needs numrnn[dask]")
    monkeypatch.setattr(study, "study_point", lambda p: pytest.fail("a point was computed"))
    with pytest.raises(ConnectionError, match=r"^scheduler: could not connect to "
                                              r"'tcp://127.0.0.1:1' within 0.5 s"):
        run_study(StudyConfig(**SMALL), scheduler="tcp://127.0.0.1:1", timeout=0.5)


@pytest.mark.parametrize("seed", [-1, 2.5, "abc"])
def test_a_point_with_a_bad_seed_names_the_seed(seed):
    point = dict(StudyConfig(**SMALL).points()[0], seed=seed)
    with pytest.raises((TypeError, ValueError), match=r"^seed: expected None, a non-negative"):
        study_point(point)


def test_study_config_takes_every_registered_cell_and_its_options(registry):
    """The cells are the registry's, a cell registered now included; the options reach the
    points and the networks."""
    registry.register("leaky_user", user_cell("leaky_user"))
    for name in registry.names():
        cell = registry.registered(name)
        options = {k: v / 2 if v else 0.5 for k, v in cell.options.items()}
        config = StudyConfig(cell=name, init="identity", cell_options=options,
                             **dict(SMALL, n_exponents=cell.state_count * SMALL["hidden_size"]))
        assert config.cell_options == options
        assert config.as_dict()["cell_options"] == options
        point = config.points()[0]
        assert point["cell_options"] == options and point["cell"] == name
        net = study._build_network(point)
        assert net.definition is cell and net.cell_options == dict(cell.options, **options)


def test_meanfield_applies_to_the_tanh_cell_without_leak_and_gaussian_weights():
    """The theory's networks: h_t = tanh(W h_{t-1} + b), W_ij ~ N(0, g^2/N) (Poole et al.
    2016); a leak, another nonlinearity or another ensemble is outside it."""
    assert StudyConfig().has_meanfield()
    assert not StudyConfig(alpha=0.5).has_meanfield()
    assert not StudyConfig(cell_options={"alpha": 0.5}).has_meanfield()
    assert not StudyConfig(init="orthogonal").has_meanfield()
    assert not StudyConfig(cell="relu").has_meanfield()
    # the rate network's phi is tanh too, but of the rate equation h' = -h + W tanh(h)
    assert [n for n in study.STUDY_CELLS
            if mf.meanfield_applies(numrnn.cells.registered(n), {}, "gaussian")] == ["tanh"]


# --- mean-field theory --------------------------------------------------------------------


def test_meanfield_below_the_transition_is_ln_g():
    """With sigma_b = 0 and g <= 1, q* = 0 and lambda_max = 0.5 ln(g^2 sech^4(0)) = ln g
    (Molgedey et al. 1992; Poole et al. 2016): exact."""
    for g in (0.3, 0.7, 1.0):
        assert meanfield_q_star(g) == 0.0
        assert_close(meanfield_lyapunov(g), np.log(g), atol=1e-15)


@pytest.mark.parametrize("g, sb", [(1.2, 0.0), (2.0, 0.0), (3.0, 0.0), (1.5, 0.5), (0.8, 0.3)])
def test_meanfield_q_star_solves_its_equation(g, sb):
    """q* = g^2 E[tanh^2(sqrt(q*) z)] + sigma_b^2 (Poole et al. 2016, eq. 3), expectation by
    Gauss-Hermite quadrature, checked against adaptive quadrature (scipy.integrate.quad).

    Tolerance 1e-11 relative: the 401-node rule's error (about 1e-14 here) plus quad's own
    (1e-12 requested).
    """
    from scipy.integrate import quad

    def expect(f, q):
        return quad(lambda z: f(np.sqrt(q) * z) * np.exp(-z * z / 2) / np.sqrt(2 * np.pi),
                    -12, 12, epsabs=1e-14, epsrel=1e-12, limit=200)[0]

    q = meanfield_q_star(g, sb)
    assert q > 0
    assert_close(g * g * expect(lambda a: np.tanh(a) ** 2, q) + sb * sb, q, rtol=1e-11)
    lam = 0.5 * np.log(g * g * expect(mf._sech4, q))
    assert_close(meanfield_lyapunov(g, sb), lam, rtol=1e-11)


def test_meanfield_transition_moves_right_with_bias_noise():
    """The order-to-chaos boundary (lambda_max = 0) is g = 1 for sigma_b = 0 and moves to larger
    g as sigma_b grows (Poole et al. 2016, Fig. 2)."""
    crossings = [brentq(lambda g: meanfield_lyapunov(g, sb), 0.5, 5.0) for sb in (0.0, 0.3, 0.6)]
    assert abs(crossings[0] - 1.0) < 1e-6
    assert crossings[0] < crossings[1] < crossings[2]
    assert np.all(np.diff(meanfield_lyapunov(np.linspace(1.1, 4, 30))) > 0)


# --- the study -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serial_result():
    return run_study(StudyConfig(**SMALL))


@pytest.fixture(scope="module")
def full_result():
    return run_study(StudyConfig(**FULL))


def test_the_default_study_is_the_full_spectrum_of_200_units():
    """Issue 15: `numrnn study` measures D_KY/N for every gain, which needs every exponent."""
    config = StudyConfig()
    assert config.n_exponents is None and config.hidden_size == 200
    assert config.state_size() == 200 and StudyConfig(cell="lstm").state_size() == 400


@pytest.mark.parametrize("name", study.STUDY_CELLS)
def test_study_runs_every_registered_cell(name):
    """Lyapunov exponents and gradient decay of every cell, two gains (identity initialisation:
    every cell's recurrent weight takes it); for the one- and two-state cells alike the rows
    are finite and the network's cell options reach the exponents."""
    cell = numrnn.cells.registered(name)
    options = {k: v / 2 if v else 0.5 for k, v in cell.options.items()}
    config = StudyConfig(cell=name, hidden_size=5, gains=(0.5, 2.0), seeds=(0,), steps=40,
                         transient=5, n_exponents=2 * cell.state_count, max_lag=5,
                         init="identity", cell_options=options)
    result = run_study(config)
    for key in ("lyapunov_max", "grad_decay_rate"):
        assert np.isfinite(result.column(key)).all(), (key, result.rows)
    assert all(len(r["exponents"]) == 2 * cell.state_count for r in result.rows)
    assert np.isnan(result.column("meanfield_lyapunov")).all()


def test_study_rows_are_finite_and_ordered(serial_result):
    res = serial_result
    assert [(r["gain"], r["seed"]) for r in res.rows] == [(g, s) for g in SMALL["gains"]
                                                          for s in SMALL["seeds"]]
    for key in ("lyapunov_max", "grad_decay_rate", "meanfield_lyapunov"):
        assert np.isfinite(res.column(key)).all(), key
    # D_KY is 0 in the ordered phase; NaN means "more than the k = 3 exponents computed"
    ky = res.column("kaplan_yorke_dimension")
    assert np.all(ky[:2] == 0) and np.all(np.isnan(ky) | (ky >= 0))
    assert res.status.startswith("6 points") and "serial" in repr(res)
    assert "lambda_max" in res.table() and len(res.summary()) == 3


def test_study_sees_the_transition(serial_result):
    """Ordered at g = 0.5, chaotic at g = 3 (Sompolinsky et al. 1988); at g = 0.5 the origin is
    a stable fixed point and every measured rate is ln(spectral radius of W) <= ln 0.5 + finite-N
    slack, and the gradient-norm decay rate is negative with it."""
    lam = serial_result.column("lyapunov_max").reshape(3, 2)
    decay = serial_result.column("grad_decay_rate").reshape(3, 2)
    assert np.all(lam[0] < -0.3) and np.all(lam[2] > 0.1)
    assert np.all(decay[0] < -0.3) and np.all(decay[2] > 0.0)
    assert_close(serial_result.column("meanfield_lyapunov")[:2], np.log([0.5, 0.5]))


def test_study_is_reproducible(serial_result):
    again = run_study(StudyConfig(**dict(SMALL, gains=(3.0,), seeds=(1,))))
    assert again.rows[0]["lyapunov_max"] == serial_result.rows[-1]["lyapunov_max"]


def test_full_spectrum_gives_dimension_and_entropy_per_unit_with_errors(full_result):
    """Issue 15: with every exponent, D_KY is determined at every gain; the rows hold D_KY and
    h_KS (the sum of the positive exponents, Pesin's bound), their values per unit (/ N) and
    batch-means errors; 0 exactly in the ordered phase (g = 0.5: every exponent < 0)."""
    n = FULL["hidden_size"]
    for r in full_result.rows:
        assert len(r["exponents"]) == n and r["units"] == n
        for name in ("kaplan_yorke_dimension", "ks_entropy"):
            assert np.isfinite(r[name]) and r[name + "_per_unit"] == r[name] / n
            assert r[name + "_stderr"] >= 0
            assert r[name + "_per_unit_stderr"] == r[name + "_stderr"] / n
        lam = np.array(r["exponents"])
        assert_close(r["ks_entropy"], lam[lam > 0].sum(), rtol=1e-12)
    ordered, chaotic = full_result.rows[:2], full_result.rows[-2:]
    for r in ordered:
        assert r["kaplan_yorke_dimension"] == r["ks_entropy"] == 0.0
        assert r["kaplan_yorke_dimension_stderr"] == r["ks_entropy_stderr"] == 0.0
    for r in chaotic:
        assert 1 < r["kaplan_yorke_dimension"] < n and r["ks_entropy"] > 0


def test_summary_error_is_the_standard_error_of_the_seed_mean(full_result):
    """The table's +- is sd over seeds / sqrt(n_seeds) (see StudyResult), for every column."""
    for e, pair in zip(full_result.summary(), np.split(np.array(full_result.rows), 3)):
        assert e["n_seeds"] == 2
        for key in ("lyapunov_max", "grad_decay_rate", "kaplan_yorke_dimension_per_unit",
                    "ks_entropy_per_unit"):
            vals = np.array([r[key] for r in pair])
            assert e[key] == vals.mean() and e[key + "_sd"] == vals.std(ddof=1)
            assert e[key + "_stderr"] == vals.std(ddof=1) / np.sqrt(2)
        assert np.isnan(e["kaplan_yorke_dimension_lower_bound"])
        assert not e["ks_entropy_is_lower_bound"]
    table = full_result.table().splitlines()
    assert table[0].startswith("mean over 2 seeds +- its standard error (sd over seeds / "
                               "sqrt(2)); per step; D_KY and h_KS per unit (N = 16)")
    for word in ("lambda_max", "mean-field", "grad decay", "D_KY/N", "h_KS/N"):
        assert word in table[1]
    # the mean field applies, everything is finite and determined: no marks, no footnotes
    assert len(table) == 3 + 3 and "n/a" not in "".join(table) and ">" not in "".join(table)


def _row(gain, seed, lam=-0.5, grad=-0.5, ky=0.0, ks=0.0, exponents=(-0.5, -0.6, -0.7)):
    """A hand-made row of a study of N = 16 units with k = 3 exponents."""
    row = dict(gain=gain, seed=seed, lyapunov_max=lam, lyapunov_max_stderr=0.01,
               meanfield_lyapunov=np.nan, grad_decay_rate=grad, exponents=list(exponents),
               units=16)
    for name, value in (("kaplan_yorke_dimension", ky), ("ks_entropy", ks)):
        row.update({name: value, name + "_stderr": 0.16, name + "_per_unit": value / 16,
                    name + "_per_unit_stderr": 0.01})
    return row


def test_table_says_na_and_lower_bound_where_a_value_does_not_apply():
    """Issue 15: "n/a" where a value does not apply (the mean field outside its theory) or is
    not finite (NaN, a rate of -inf); "> x" where a partial spectrum leaves D_KY undetermined
    for a seed (D_KY > k there, so the mean with k in its place is a lower bound) and where
    h_KS is a lower bound (lambda_k > 0); each mark is explained under the rows."""
    config = StudyConfig(**dict(SMALL, cell="relu"))  # no mean field for relu
    rows = [_row(0.5, 8), _row(0.5, 1),
            _row(1.5, 8, lam=np.nan, grad=-np.inf), _row(1.5, 1, grad=-np.inf),
            _row(3.0, 8, lam=0.3, ky=np.nan, ks=0.64, exponents=(0.3, 0.2, 0.14)),
            _row(3.0, 1, lam=0.1, ky=2.5, ks=0.16, exponents=(0.1, 0.06, -0.1))]
    result = study.StudyResult("test", config, rows, 0.0, "serial", "0")
    summary = result.summary()
    assert np.isnan(summary[2]["kaplan_yorke_dimension"])
    assert summary[2]["kaplan_yorke_dimension_lower_bound"] == (3 + 2.5) / 2
    assert summary[2]["kaplan_yorke_dimension_per_unit_lower_bound"] == (3 + 2.5) / 2 / 16
    assert summary[2]["ks_entropy_is_lower_bound"] and not summary[0]["ks_entropy_is_lower_bound"]
    table = result.table().splitlines()
    assert [line.split() for line in table[3:6]] == [
        ["0.500", "-0.5000", "+-0.0000", "n/a", "-0.5000", "+-0.0000", "0.0000", "+-0.0000",
         "0.00000", "+-0.00000"],
        ["1.500", "n/a", "n/a", "n/a", "0.0000", "+-0.0000", "0.00000", "+-0.00000"],
        ["3.000", "+0.2000", "+-0.1000", "n/a", "-0.5000", "+-0.0000", ">", "0.1719", ">",
         "0.02500"]]
    notes = " ".join(table[6:])
    for words in ("mean-field n/a: the theory covers the tanh cell", "n/a elsewhere: not finite",
                  "> x: D_KY/N exceeds x", "k = 3 exponents", "> x: h_KS/N exceeds x"):
        assert words in notes, (words, notes)
    # one seed: the error is the point's own batch-means stderr, and grad decay has none
    one = study.StudyResult("test", StudyConfig(**dict(SMALL, seeds=(8,))), rows[::2], 0.0,
                            "serial", "0")
    table = one.table().splitlines()
    assert table[0].startswith("one seed, +- its batch-means standard error")
    assert table[3].split()[:5] == ["0.500", "-0.5000", "+-0.0100", "n/a", "-0.5000"]
    assert table[3].split()[5] == "+-n/a" and "grad decay has none" in " ".join(table[6:])


def test_the_figure_shows_lambda_max_spectra_dimension_and_entropy(serial_result, full_result,
                                                                    tmp_path):
    """Four panels: lambda_max with the mean field, the spectrum against i/N (one curve per
    gain), D_KY/N and h_KS/N against g; a partial spectrum's D_KY lower bounds are drawn too."""
    pytest.importorskip("matplotlib", reason="the figure needs numrnn[plot]")
    from numrnn.experiments.plotting import plot_study

    n = SMALL["hidden_size"]
    for name, res, k in (("partial", serial_result, 3), ("full", full_result, n)):
        fig = plot_study(res, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        a, b, c, d = fig.axes[:4]
        assert "mean field" in [t.get_text() for t in a.get_legend().get_texts()]
        assert b.get_xlabel() == "i / N" and len(b.lines) == len(SMALL["gains"]) + 1
        assert_close(b.lines[0].get_xdata()[-1], k / n)
        assert c.get_ylabel() == "D_KY / N" and d.get_ylabel().startswith("h_KS / N")


@pytest.mark.slow
def test_dask_local_cluster_equals_serial(full_result):
    """Issue 5: the same sweep as Dask tasks on a LocalCluster (2 worker processes) gives the
    serial numbers exactly (every random number of a point is seeded by the point itself); the
    full spectrum, the default since issue 15, with the columns derived from it."""
    pytest.importorskip("dask.distributed", reason="Dask sweeps need numrnn[dask]")
    dist = run_study(StudyConfig(**FULL), scheduler="local:2")
    assert dist.scheduler.startswith("tcp://") and len(dist.rows) == len(full_result.rows)
    for a, b in zip(full_result.rows, dist.rows):
        a = {k: v for k, v in a.items() if k != "seconds"}
        b = {k: v for k, v in b.items() if k != "seconds"}
        np.testing.assert_equal(a, b)  # exact, NaN == NaN


def _strict_json(path):
    def refuse(token):
        raise ValueError(f"{path}: invalid JSON token {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_study_command_writes_table_csv_json_png(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="the figure needs numrnn[plot]")
    rc = main(["study", "-N", "12", "--gains", "0.5", "2.5", "--seeds", "2", "--steps", "80",
               "--transient", "20", "--max-lag", "8", "--singular-values",
               "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "lambda_max" in out and "mean-field" in out and "study [" in err
    assert "D_KY/N" in out and "+- its standard error" in out
    lines = (tmp_path / "study.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("gain,seed,lyapunov_max")
    for column in ("kaplan_yorke_dimension_per_unit,kaplan_yorke_dimension_per_unit_stderr",
                   "ks_entropy_per_unit,ks_entropy_per_unit_stderr", "units"):
        assert column in lines[0]
    payload = _strict_json(tmp_path / "study.json")
    assert payload["numrnn_version"] and payload["parameters"]["hidden_size"] == 12
    assert payload["parameters"]["gains"] == [0.5, 2.5] and len(payload["rows"]) == 4
    assert all(np.isfinite(r["lyapunov_max"]) for r in payload["rows"])
    rows = payload["rows"]
    assert all(np.isfinite(r["jacobian_decay_rate"]) for r in rows)
    # ordered at g = 0.5: the Jacobian products shrink, the largest singular value is < 1
    assert rows[0]["jacobian_decay_rate"] < 0 and rows[0]["jacobian_max_singular_value"] < 1
    # the full spectrum (the default) determines D_KY: per unit, with its error, in the summary
    assert all(len(r["exponents"]) == 12 for r in rows)
    assert all(np.isfinite(e["kaplan_yorke_dimension_per_unit_stderr"])
               for e in payload["summary"])
    assert (tmp_path / "study.png").stat().st_size > 1000


def test_study_json_is_strict_json_with_null_for_what_was_not_measured(capsys, tmp_path):
    """Without --singular-values the Jacobian columns are NaN, and a Kaplan-Yorke dimension
    beyond the k exponents computed is NaN: JSON has no NaN, so they are null (study.json held
    bare NaN tokens).  (N = 12: seed 0's network is chaotic at g = 3, which few networks of
    4 units are.)"""
    rc = main(["study", "-N", "12", "--gains", "0.5", "3", "--seeds", "1", "--steps", "40",
               "--transient", "5", "-k", "1", "--max-lag", "5", "--no-plot", "-q", "--out",
               str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    rows = _strict_json(tmp_path / "study.json")["rows"]
    assert [r["jacobian_decay_rate"] for r in rows] == [None, None]
    assert rows[0]["kaplan_yorke_dimension"] == 0.0 and rows[1]["kaplan_yorke_dimension"] is None


# --- the gradient-norm decay rate --------------------------------------------------------------


def _full_bptt_decay_rate(net, x, h0, max_lag, seed):
    """The rate as it was measured first: BPTT over the whole trajectory from its last state."""
    B = 8
    v = np.random.default_rng([seed, 3]).standard_normal((1, B, net.hidden_size))
    v /= np.linalg.norm(v, axis=2, keepdims=True)
    xb = np.ascontiguousarray(np.broadcast_to(x[:, None], (x.shape[0], B, 1)))
    hb = np.ascontiguousarray(np.broadcast_to(h0[:, None], (1, B, net.hidden_size)))
    grads = net.vjp(xb, np.zeros((x.shape[0], B, net.hidden_size)), hb, d_h_n=v)
    logs = np.log(grads["state_grad_norm"][::-1][1:max_lag + 1]).mean(axis=1)
    return np.polyfit(np.arange(1, max_lag + 1), logs, 1)[0]


def test_grad_decay_rate_backpropagates_only_the_lags_it_fits(monkeypatch):
    """BPTT runs over the last max_lag + 1 steps only (the state entering them from a forward
    pass), and gives the rate of BPTT over the whole trajectory (float64, g = 1.5: nothing
    overflows) up to rounding: the same lags from the same state, reached in two calls instead
    of one (not bitwise: the input projection is one product per call)."""
    p = dict(StudyConfig(**SMALL).points()[2], gain=1.5)
    net = study._build_network(p)
    x = np.zeros((p["transient"] + p["steps"], 1))
    h0 = np.random.default_rng(0).standard_normal((1, net.hidden_size))
    lengths = []
    vjp = net.vjp

    def spy(x, *a, **kw):
        lengths.append(x.shape[0])
        return vjp(x, *a, **kw)
    monkeypatch.setattr(net, "vjp", spy)
    rate = study._bptt_decay_rate(net, x, h0, p["max_lag"], p["seed"])
    assert lengths == [p["max_lag"] + 1]
    monkeypatch.undo()
    assert_close(rate, _full_bptt_decay_rate(net, x, h0, p["max_lag"], p["seed"]), rtol=1e-9)


def test_float32_study_at_high_gain_runs(capsys, tmp_path):
    """At g = 3 and 4 the gradient over the whole 350-step trajectory overflows float32 (the
    engine raises NonFiniteError); the lags the fit uses (30) stay far inside its range."""
    rc = main(["study", "--dtype", "float32", "--gains", "3", "4", "-N", "50", "--seeds", "1",
               "--steps", "300", "--transient", "50", "-k", "3", "--max-lag", "30", "--no-plot",
               "-q", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = _strict_json(tmp_path / "study.json")["rows"]
    assert all(r["grad_decay_rate"] > 0.1 for r in rows), rows

