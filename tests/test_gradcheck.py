"""Finite-difference gradient checks of numrnn's BPTT, and of numrnn.gradcheck itself."""
import numpy as np
import pytest

import numrnn
from numrnn import driver
from tests.problems import CELL_CASES, CELL_IDS, has_leak, make_problem

# --- gradcheck itself: bad input, and that it can fail ------------------------------------------


def test_gradcheck_rejects_non_float64():
    with pytest.raises(TypeError, match=r"inputs\[0\].*float64.*float32"):
        numrnn.gradcheck(lambda x: (x.sum(), [np.ones_like(x)]), [np.ones(3, np.float32)])


def test_gradcheck_rejects_wrong_gradient_shape():
    with pytest.raises(ValueError, match="shape"):
        numrnn.gradcheck(lambda x: (x.sum(), [np.ones(2)]), [np.ones(3)])


def test_gradcheck_detects_a_wrong_gradient():
    def f(x):
        return np.sum(x**3), [3 * x**2 * (1 + 1e-4)]

    with pytest.raises(numrnn.GradcheckError) as info:
        numrnn.gradcheck(f, [np.linspace(0.5, 2.0, 4)])
    assert 5e-5 < info.value.result.max_error[0] < 2e-4
    res = numrnn.gradcheck(f, [np.linspace(0.5, 2.0, 4)], raise_on_failure=False)
    assert not res.passed and "FAILED" in repr(res)


@pytest.mark.parametrize("f, words", [
    (lambda x: (np.sum(x**2), [np.full_like(x, np.nan)]),
     ["analytic gradient of input 0 holds 3 NaN/inf entries"]),
    (lambda x: (np.sum(x**2), [np.where(x > 0.5, np.inf, 2 * x)]),
     ["analytic gradient of input 0 holds 2 NaN/inf entries"]),
    (lambda x: (np.nan, [2 * x]), ["f returned the non-finite value nan"]),
    (lambda x: (np.inf, [2 * x]), ["f returned the non-finite value inf"]),
    # finite at the point (exp(709.78) = 1.79e308), infinite one step of the differences away
    (lambda x: (float(np.sum(np.exp(x))), [np.exp(x)]), ["finite differences of input 0 hold"]),
])
def test_gradcheck_fails_on_any_non_finite_value(f, words):
    """main returned passed=True whenever a NaN made every comparison false."""
    x = np.array([709.78]) if "differences" in words[0] else np.array([0.25, 0.75, 1.0])
    with np.errstate(all="ignore"):
        res = numrnn.gradcheck(f, [x], raise_on_failure=False)
        with pytest.raises(numrnn.GradcheckError):
            numrnn.gradcheck(f, [x])
    assert not res.passed
    text = "\n".join(res.problems)
    for w in words:
        assert w in text, (w, text)
    assert "FAILED" in repr(res)


def test_gradcheck_rejects_non_finite_inputs_and_bad_tolerances():
    with pytest.raises(ValueError, match=r"inputs\[0\]: expected finite values, got 1 NaN/inf"):
        numrnn.gradcheck(lambda x: (x.sum(), [np.ones_like(x)]), [np.array([1.0, np.nan])])
    with pytest.raises(ValueError, match="rtol"):
        numrnn.gradcheck(lambda x: (x.sum(), [np.ones_like(x)]), [np.ones(2)], rtol=-1.0)
    with pytest.raises(ValueError, match="eps"):
        numrnn.gradcheck(lambda x: (x.sum(), [np.ones_like(x)]), [np.ones(2)], eps=0.0)
    with pytest.raises(TypeError, match="f: expected a callable"):
        numrnn.gradcheck("f", [np.ones(2)])


def test_gradcheck_passes_exact_gradient_with_small_errors():
    res = numrnn.gradcheck(lambda p: (np.sum(np.exp(p["a"]) * p["b"]),
                                      {"a": np.exp(p["a"]) * p["b"], "b": np.exp(p["a"])}),
                           {"a": np.linspace(-1, 1, 5), "b": np.linspace(0, 2, 5)})
    assert res.passed and max(res.max_error.values()) < 1e-8
    assert max(res.mean_error.values()) <= max(res.max_error.values())


# --- numrnn's BPTT ----------------------------------------------------------------------------


def _detached_loss(net, x, h0, d_out, d_h, truncate, entry):
    """L computed chunk by chunk, each chunk starting from constant entry states.

    ``entry[c]`` holds the (L*D, B, N) states entering chunk c, taken from an unperturbed run,
    except that chunk 0's forward directions and the last chunk's reverse directions start from
    the live h0: so finite differences of this loss are exactly truncated BPTT's gradient.
    """
    T = x.shape[0]
    starts = list(range(0, T, truncate))
    D = net.num_directions
    lstm = net.state_count == 2  # a paired state (LSTM's (h, c), coRNN's (y, z))
    total = 0.0
    h_final = None
    for c, s in enumerate(starts):
        e = min(s + truncate, T)
        parts = (entry[c][0].copy(), entry[c][1].copy()) if lstm else (entry[c].copy(),)
        live = (h0[0], h0[1]) if lstm else (h0,)
        for layer in range(net.num_layers):
            for d in range(D):
                k = layer * D + d
                if (d == 0 and c == 0) or (d == 1 and c == len(starts) - 1):
                    for p, lv in zip(parts, live):
                        p[k] = lv[k]
        out, h_n = net.forward(x[s:e], parts if lstm else parts[0])
        total += np.sum(out * d_out[s:e])
        hn = h_n if lstm else (h_n,)
        if h_final is None:
            h_final = [np.empty_like(a) for a in hn]
        for layer in range(net.num_layers):
            for d in range(D):
                k = layer * D + d
                if (d == 0 and c == len(starts) - 1) or (d == 1 and c == 0):
                    for hf, a in zip(h_final, hn):
                        hf[k] = a[k]
    dh = d_h if lstm else (d_h,)
    return total + sum(np.sum(a * b) for a, b in zip(h_final, dh))


def _chunk_entries(net, x, h0, truncate):
    """States entering every chunk in the full (unperturbed) run, from the forward tape."""
    lstm = net.state_count == 2  # a paired state (LSTM's (h, c), coRNN's (y, z))
    hh, cc = (h0 if lstm else (h0, np.zeros_like(h0)))
    tape = driver.forward_pass(net, None, x, hh, cc)[3].records
    T = x.shape[0]
    D = net.num_directions
    entries = []
    for s in range(0, T, truncate):
        e = min(s + truncate, T)
        H, C = np.zeros_like(hh), np.zeros_like(hh)
        for layer in range(net.num_layers):
            for d in range(D):
                out_h, out_c, _ = tape[layer][1][d]
                idx = s - 1 if d == 0 else e
                if 0 <= idx < T:
                    H[layer * D + d] = out_h[idx]
                    if lstm:
                        C[layer * D + d] = out_c[idx]
        entries.append((H, C) if lstm else H)
    return entries


def _check(net, x, h0, d_out, d_h, truncate):
    lstm = net.state_count == 2  # a paired state (LSTM's (h, c), coRNN's (y, z))
    names = list(net.state_dict())
    entries = _chunk_entries(net, x, h0, truncate or x.shape[0])

    def f(p):
        net.load_state_dict({k: p[k] for k in names})
        state = (p["h0"], p["c0"]) if lstm else p["h0"]
        value = _detached_loss(net, p["x"], state, d_out, d_h, truncate or x.shape[0], entries)
        g = net.vjp(p["x"], d_out, state, d_h, truncate=truncate)
        grads = {k: g[k] for k in names}
        grads.update(x=g["input"], h0=g["h0"])
        if lstm:
            grads["c0"] = g["c0"]
        return value, grads

    point = net.state_dict()
    point.update(x=x, h0=h0[0] if lstm else h0)
    if lstm:
        point["c0"] = h0[1]
    res = numrnn.gradcheck(f, point, rtol=1e-6)
    assert max(res.max_error.values()) <= 1e-6
    assert max(res.mean_error.values()) <= 1e-7
    return res


CONFIGS = [  # (num_layers, bidirectional, bias, leak)
    (1, False, True, False),
    (1, False, False, True),
    (2, False, True, True),
    (2, True, False, False),
    (1, True, True, True),
]


@pytest.mark.parametrize("cell, phi", CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize("layers, bidir, bias, leak", CONFIGS)
@pytest.mark.parametrize("truncate", [None, 1, 3])
def test_bptt_matches_finite_differences(rng, cell, phi, layers, bidir, bias, leak, truncate):
    alpha = 0.55 if leak and has_leak(cell) else 1.0
    net, x, h0, d_out, d_h = make_problem(rng, cell, num_layers=layers, bidirectional=bidir,
                                          bias=bias, alpha=alpha, nonlinearity=phi, T=7, B=2,
                                          I=2, N=3)
    _check(net, x, h0, d_out, d_h, truncate)


def test_truncation_changes_the_gradient(rng):
    """Guard against a vacuous truncation test: truncated and full gradients differ."""
    net, x, h0, d_out, d_h = make_problem(rng, "tanh", T=7)
    full = net.vjp(x, d_out, h0, d_h)
    cut = net.vjp(x, d_out, h0, d_h, truncate=3)
    assert np.max(np.abs(full["weight_hh_l0"] - cut["weight_hh_l0"])) > 1e-3
    assert np.max(np.abs(full["h0"] - cut["h0"])) > 1e-6
