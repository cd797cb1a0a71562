"""NaN and inf born inside a computation: reported where they appear, never passed on silently.

Inputs are checked before any kernel (test_network.py); here the inputs are finite and the
computation itself overflows.  Default: numrnn.NonFiniteError naming the layer, direction, step
and sequence; ``numrnn.nonfinite("warn")`` and ``("ignore")`` return the results for people who
study divergence on purpose.
"""
import warnings

import numpy as np
import pytest

import numrnn

# --- bad input first ---------------------------------------------------------------------------


def test_policy_must_be_one_of_three():
    with pytest.raises(ValueError, match=r"policy: expected one of \('raise', 'warn', 'ignore'\)"):
        with numrnn.nonfinite("loud"):
            pass


def test_a_bad_configured_policy_is_named(monkeypatch):
    monkeypatch.setattr(numrnn.config, "NONFINITE", "sometimes")
    with pytest.raises(ValueError, match="numrnn.config.NONFINITE.*'sometimes'"):
        _diverging_linear().forward(np.ones((300, 1)))


# --- the forward pass --------------------------------------------------------------------------


def _diverging(cell="linear", **kw):
    """h_t = 1000 h_{t-1} + x_t (input weights 1, so that a relu unit grows too; IndRNN's
    u = 1000): overflows float64 after about 103 steps."""
    net = numrnn.RNN(1, 4, cell=cell, init="identity", gain=1e3, bias=False, seed=0, **kw)
    for name in net.parameters:
        if name.startswith("weight_ih"):
            net.parameters[name] = np.ones(net.parameters[name].shape)
    return net


def _diverging_linear():
    return _diverging("linear")


@pytest.mark.parametrize("cell, phi", [("linear", None), ("relu", None), ("rate", "relu"),
                                      ("indrnn", "relu")])
def test_a_diverging_state_raises_naming_layer_step_and_sequence(cell, phi):
    net = _diverging(cell, nonlinearity=phi, num_layers=2)
    x = np.ones((300, 3, 1))
    x[:, 0] = 0.0  # sequence 0 stays at 0 (relu, linear); sequences 1 and 2 diverge
    with pytest.raises(numrnn.NonFiniteError) as info:
        net.forward(x)
    msg = str(info.value)
    assert "forward: the hidden state of layer 0" in msg
    assert "sequence b=1" in msg and "step t=" in msg and "nonfinite('warn')" in msg
    t = int(msg.split("step t=")[1].split()[0])
    assert 90 < t < 300


def test_the_reverse_direction_reports_its_first_step_in_its_own_running_order():
    net = numrnn.RNN(1, 2, cell="linear", bidirectional=True, init="identity", gain=1e3,
                     bias=False, seed=0)
    net.parameters["weight_hh_l0"] = np.eye(2) * 0.5  # the forward direction stays bounded
    with pytest.raises(numrnn.NonFiniteError) as info:
        net.forward(np.ones((300, 1)))
    msg = str(info.value)
    assert "layer 0 (reverse direction)" in msg
    t = int(msg.split("step t=")[1].split()[0])
    assert 190 < t < 210  # ~103 steps from t = 299, going down


def test_warn_returns_the_results_and_ignore_stays_silent():
    net = _diverging_linear()
    with numrnn.nonfinite("warn"):
        with pytest.warns(numrnn.NonFiniteWarning, match="layer 0 became NaN or inf"):
            out, h_n = net.forward(np.ones((300, 1)))
    assert not np.isfinite(out[-1]).any() and np.isfinite(out[50]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with numrnn.nonfinite("ignore"):
            out2, _ = net.forward(np.ones((300, 1)))
    np.testing.assert_array_equal(out, out2)
    with pytest.raises(numrnn.NonFiniteError):  # the block is over
        net.forward(np.ones((300, 1)))


def test_the_configured_default_policy_applies(monkeypatch):
    monkeypatch.setattr(numrnn.config, "NONFINITE", "ignore")
    out, _ = _diverging_linear().forward(np.ones((300, 1)))
    assert not np.isfinite(out[-1]).any()


# --- backpropagation through time --------------------------------------------------------------


def test_exploding_gradients_raise_at_their_first_step():
    """A chaotic tanh network (g = 2, N = 128) amplifies dL/dh by about e^0.25 per step back: in
    float64 it overflows some 3000-5000 steps back from the end of a 6000-step sequence (main
    returned all-NaN weight gradients without a word)."""
    net = numrnn.RNN(1, 128, init="gaussian", gain=2.0, seed=0)
    x = np.zeros((6000, 1, 1))
    d_out = np.ones((6000, 1, 128))
    with pytest.raises(numrnn.NonFiniteError) as info:
        net.vjp(x, d_out)
    msg = str(info.value)
    assert "vjp: the gradient dL/dh of layer 0 became NaN or inf" in msg
    back = int(msg.split("(")[1].split(" steps back")[0])
    assert 1000 < back < 5999
    assert "float64)" not in msg  # it is float64 already: not suggested
    with numrnn.nonfinite("warn"):
        with pytest.warns(numrnn.NonFiniteWarning):
            g = net.vjp(x, d_out)
    assert np.isnan(g["weight_hh_l0"]).any()
    assert np.isfinite(g["state_grad_norm"][-100:]).all()
    # truncated BPTT does not explode
    g = net.vjp(x, d_out, truncate=50)
    assert np.isfinite(g["weight_hh_l0"]).all()


def test_float32_suggests_float64():
    net = numrnn.RNN(1, 64, init="gaussian", gain=3.0, seed=0, dtype=np.float32)
    with pytest.raises(numrnn.NonFiniteError, match="overflowed float32.*or float64"):
        net.vjp(np.zeros((2000, 1), np.float32), np.ones((2000, 64), np.float32))


# --- state_grad_norm: a scaled norm, finite whenever the gradient is ---------------------------


@pytest.mark.parametrize("dtype, scale", [(np.float32, 4e25), (np.float64, 1e200),
                                          (np.float64, 1e-200)])
def test_state_grad_norm_is_finite_whenever_the_gradient_is(dtype, scale):
    """main summed unscaled squares in the network's dtype: inf from float32 gradients of 4e25
    and float64 ones of 1.3e154, 0 below 1e-162."""
    net = numrnn.RNN(2, 6, cell="gru", num_layers=2, bidirectional=True, seed=0, dtype=dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 2)).astype(dtype)
    unit = rng.standard_normal((5, 3, 12))
    g = net.vjp(x, (scale * unit).astype(dtype))
    ref = net.vjp(x, unit.astype(dtype))
    assert g["state_grad_norm"].dtype == np.float64
    assert np.isfinite(g["state_grad_norm"]).all() and (g["state_grad_norm"] > 0).all()
    # the map d_output -> dL/dh_t is linear: the norm scales exactly (to rounding)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(g["state_grad_norm"], scale * ref["state_grad_norm"], rtol=tol)


def test_a_summed_gradient_that_overflowed_is_named_and_the_names_made_only_then():
    """dL/dh finite but a gradient's sum over steps not: the gradient is named (the names are
    built only when a buffer's sum is not finite)."""
    from numrnn import errors

    buffer = np.ones(5, np.float32)
    buffer[3] = np.inf
    named = lambda: [("weight_hh_l0", buffer[:2]), ("bias_hh_l0", buffer[2:])]  # noqa: E731
    with pytest.raises(numrnn.NonFiniteError, match="gradient of bias_hh_l0 holds 1 NaN/inf "
                       "entry although dL/dh stayed finite: its sum over 40 step-sequence "
                       "terms overflowed float32"):
        errors.check_sums((buffer,), named, 40, np.dtype(np.float32))
    assert not errors.check_sums((np.ones(3),), lambda: pytest.fail("names made"), 40,
                                 np.dtype(np.float64))
