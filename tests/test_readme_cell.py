"""The README's own cell ("Your own cell") runs as written and is the built-in GRU."""
import pathlib

import numpy as np

import numrnn
from tests.tolerance import assert_close

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_cell_block():
    """The Python block of the README's section "Your own cell", as a user copies it."""
    text = README.read_text()
    section = text.split("## Your own cell", 1)[1].split("\n## ", 1)[0]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_the_readme_gru_runs_the_whole_analysis_and_is_the_builtin_gru():
    """Executed as written: check_cell passes, forward, truncated vjp, the Lyapunov spectrum and
    the fixed points run; with the same parameters, cell="gru" gives the same output bits (the
    same expressions in the same order) and the same gradients to rounding (the backward
    expressions are grouped differently: 1e-13)."""
    ns = {}
    exec(compile(readme_cell_block(), str(README), "exec"), ns)
    net, x = ns["net"], ns["x"]
    assert net.cell == "my_gru" and isinstance(net.definition, numrnn.Cell)
    assert np.all(np.isfinite(ns["spectrum"].exponents))
    assert ns["points"].points.shape[0] >= 1
    ref = numrnn.RNN(3, 16, cell="gru", seed=0)
    ref.load_state_dict(net.state_dict())
    out, h_n = net.forward(x)
    out_ref, h_ref = ref.forward(x)
    assert np.array_equal(out, out_ref) and np.array_equal(h_n, h_ref)
    got = net.vjp(x, np.ones_like(out), truncate=10)
    want = ref.vjp(x, np.ones_like(out), truncate=10)
    for name in want:
        assert_close(got[name], want[name], rtol=1e-13, what=name)
    assert_close(numrnn.jacobians(net, x[:5]), numrnn.jacobians(ref, x[:5]), rtol=1e-13)
    prop = numrnn.gradient_propagation(net, x[:20], lags=np.array([1, 5, 20]), seed=0)
    assert_close(prop.log_singular_values,
                 numrnn.gradient_propagation(ref, x[:20], lags=np.array([1, 5, 20]),
                                             seed=0).log_singular_values, rtol=1e-11)
    # the input gradient of the user cell's full BPTT against central differences
    xs = x[:6, :2]
    w = np.random.default_rng(2).standard_normal((6, 2, 16))

    def loss(xx):
        out_x, _ = net.forward(xx)
        return float(np.sum(out_x * w)), [net.vjp(xx, w)["input"]]

    assert numrnn.gradcheck(loss, [xs]).passed


def test_the_readme_quick_start_runs_as_written():
    """The Quick start block, executed as a user copies it; its commented shapes hold."""
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    ns = {}
    exec(compile(section.split("```python", 1)[1].split("```", 1)[0], str(README), "exec"), ns)
    assert ns["output"].shape == (100, 8, 64) and ns["h_n"].shape == (2, 8, 64)
    assert ns["grads"]["weight_hh_l1"].shape == (256, 64)
    assert ns["res"].exponents[0] > 0 and ns["full"].exponents.shape == (200,)
    assert np.isfinite(ns["full"].kaplan_yorke_dimension_per_unit_stderr)
    assert ns["noisy"].exponents[0] < ns["res"].exponents[0]  # noise suppresses chaos
    assert ns["clv"].vectors.shape == (800, 1, 200, 60) and ns["clv"].angles.shape == (800, 1)
    assert 0.0 < ns["clv"].angles.min() <= np.pi / 2  # 60 exceeds the unstable dimension
    assert ns["long"]["input"].shape == (100_000, 1) and np.isfinite(ns["long"]["h0"]).all()
    assert len(ns["spectra"]) == 6 and ns["spectra"][5].exponents[0] > 0
