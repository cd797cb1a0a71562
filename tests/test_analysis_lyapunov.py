"""Lyapunov spectra against exact results: random matrix products, linear and gate-only networks,
the determinant identity, and the mean-field theory of random tanh networks."""
import dataclasses
import re

import numpy as np
import pytest
from scipy.special import digamma

import numrnn
from numrnn.analysis import LyapunovResult, lyapunov_from_jacobians, lyapunov_spectrum
from numrnn.analysis import lyapunov as analysis_lyapunov
from numrnn.init import haar_orthogonal

from .problems import overflowing_net
from .tolerance import assert_close


def linear_net(w, **kw):
    net = numrnn.RNN(1, w.shape[0], cell="linear", bias=False, seed=0, **kw)
    net.parameters["weight_hh_l0"][:] = w
    return net


# --- invalid input first ----------------------------------------------------------------------


def test_rejects_bad_input():
    net = numrnn.RNN(1, 3, seed=0)
    x = np.zeros((20, 1))
    with pytest.raises(ValueError, match="n_steps: expected the number of steps"):
        lyapunov_spectrum(net)
    with pytest.raises(ValueError, match="n_steps: x fixes the number of steps"):
        lyapunov_spectrum(net, x, n_steps=5)
    with pytest.raises(ValueError, match="k: expected at most S = 3"):
        lyapunov_spectrum(net, x, k=4)
    with pytest.raises(TypeError, match="k: expected an integer"):
        lyapunov_spectrum(net, x, k=1.5)
    with pytest.raises(ValueError, match="transient: expected fewer steps than the trajectory"):
        lyapunov_spectrum(net, x, transient=20)
    with pytest.raises(ValueError, match="ons_interval: expected an integer >= 1"):
        lyapunov_spectrum(net, x, ons_interval=0)
    with pytest.raises(TypeError, match="seed: expected None, a non-negative integer"):
        lyapunov_spectrum(net, x, seed="a")
    with pytest.raises(ValueError, match="seed: .* got the negative integer -1"):
        lyapunov_spectrum(net, x, seed=-1)
    with pytest.raises(ValueError, match="seed: .* got the negative integer -2"):
        lyapunov_from_jacobians(np.ones((4, 2, 2)), seed=-2)
    with pytest.raises(ValueError, match="no causal step map"):
        lyapunov_spectrum(numrnn.RNN(1, 3, num_layers=2, bidirectional=True), x)
    with pytest.raises(TypeError, match="J: expected a numpy array"):
        lyapunov_from_jacobians([[[1.0]]])
    with pytest.raises(ValueError, match=r"J: expected shape \(T, S, S\)"):
        lyapunov_from_jacobians(np.zeros((4, 2, 3)))
    with pytest.raises(TypeError, match="J: expected dtype float32 or float64"):
        lyapunov_from_jacobians(np.zeros((4, 2, 2), np.int64))
    with pytest.raises(ValueError, match="J: expected finite values"):
        lyapunov_from_jacobians(np.full((4, 2, 2), np.nan))
    res = lyapunov_spectrum(net, x)
    with pytest.raises(ValueError, match="dt: expected a finite number"):
        res.per_time(0.0)
    with pytest.raises(ValueError, match="dt: this result is already per unit time"):
        res.per_time(0.1).per_time(0.1)


# --- exact results ----------------------------------------------------------------------------


@pytest.mark.parametrize("N,T", [(8, 20000), (64, 2000)])
def test_gaussian_matrix_products_newman(N, T, rng):
    """Products of i.i.d. Gaussian matrices with N(0, sigma^2) entries, fresh each step:
    lambda_i = 0.5 [ln(2 sigma^2) + digamma((N - i + 1) / 2)] (Newman 1986).  By rotation
    invariance each step's R_ii^2 is sigma^2 chi^2_{N-i+1} whatever the frame, so the local
    exponents are i.i.d. and unbiased: the error is pure sampling noise and every exponent must
    lie within 4 of its standard errors (for 72 exponents, a 4-sigma miss has probability < 1%)."""
    sigma = 0.7
    J = rng.standard_normal((T, N, N)) * sigma
    res = lyapunov_from_jacobians(J, transient=0, seed=1)
    i = np.arange(1, N + 1)
    theory = 0.5 * (np.log(2 * sigma ** 2) + digamma((N - i + 1) / 2))
    z = (res.exponents - theory) / res.stderr
    assert np.all(np.abs(z) < 4.0), np.max(np.abs(z))
    # the error bars are honest, not inflated: chi^2 of the z-scores is ~ N
    assert np.mean(z ** 2) < 2.0


@pytest.mark.parametrize("a", [0.9, 1.0, 1.07])
def test_linear_scaled_orthogonal(a, rng):
    """Linear cell, W_hh = a O with O orthogonal: J_t = a O, so J Q = a (O Q) is a times an
    orthonormal frame and R = a I up to signs: every exponent is ln a to rounding (1e-12), with
    one orthonormalisation per step or every 7 (a^7 is far from overflow)."""
    N = 12
    net = linear_net(a * haar_orthogonal(rng, N))
    for m in (1, 7):
        res = lyapunov_spectrum(net, np.zeros((300, 1)), ons_interval=m, seed=2)
        assert_close(res.exponents, np.full(N, np.log(a)), atol=1e-12, rtol=0.0)


def test_linear_diagonalisable(rng):
    """Linear cell with W = V diag(mu) V^-1 (real, distinct |mu|): the QR frame converges to the
    Schur basis at rate max |mu_{i+1}/mu_i| <= 0.82 per step, so after a 200-step transient
    (0.82^200 ~ 1e-17) R_ii = mu_i exactly and the exponents are ln|mu_i| to rounding."""
    mu = np.array([1.1, 0.9, -0.7, 0.5, 0.3, -0.2])
    V = rng.standard_normal((6, 6)) + 3 * np.eye(6)
    net = linear_net(V @ np.diag(mu) @ np.linalg.inv(V))
    res = lyapunov_spectrum(net, np.zeros((1000, 1)), transient=200, seed=0)
    assert_close(res.exponents, np.log(np.abs(mu)), atol=1e-12, rtol=0.0)


@pytest.mark.parametrize("cell,layers,m", [("tanh", 1, 1), ("lstm", 2, 2), ("gru", 1, 2)])
def test_sum_equals_mean_log_det(cell, layers, m, rng):
    """Sum of all exponents = time average of ln|det J_t| over the measured steps: the product of
    the R_ii of one block is |det(J_{t+m-1} ... J_t Q)| = prod |det J| since Q is orthogonal.
    Exact at finite T up to rounding: the small R_ii of a QR carry a relative error of about
    macheps * cond(block product), ~1e-12 per step for the 2-layer LSTM (cond(J_t) ~ 1e3, sum
    ~ -39 per step), hence rtol 1e-10.  (Three LSTM steps per block are refused: the frame's
    last columns come within sin ~ 1e-8 of the others, see test_ons_interval_*.  Whether two
    are refused too depends on the network: seed 0's LSTM takes two, as the test needs.)"""
    net = numrnn.RNN(2, 4, cell=cell, num_layers=layers, seed=0)
    x = rng.standard_normal((300, 2, 2))
    J = numrnn.jacobians(net, x)
    res = lyapunov_spectrum(net, x, transient=30, ons_interval=m, seed=0)
    logdet = np.linalg.slogdet(J[30:])[1].mean()
    assert_close(res.exponents.sum(), logdet, rtol=1e-10)
    # the dense and the matrix-free QR loops are one computation (same frame, same products,
    # rounded differently): each block's total sum_i ln|R_ii| is ln|det| of the block product
    # in both, to 1e-10.  The 2-layer LSTM has a near-degenerate pair (lambda_15 ~ lambda_16):
    # how a block's volume splits between the two follows the rounding of the frame (block
    # values differ by up to ~1e-3 between the two loops, while their total agrees), and the
    # time averages of the last three (lambda_14..16) differ by up to ~7e-6 (1.3e-6 relative to
    # the largest |lambda|; 0 with m = 1, where both loops take the factored route): rtol 1e-4
    # for the spectrum, 1e-10 for its well separated upper half.
    dense = lyapunov_from_jacobians(J, transient=30, ons_interval=m, seed=0)
    assert_close(dense.local.sum(axis=-1), res.local.sum(axis=-1), rtol=1e-10)
    if cell == "lstm":
        half = res.exponents.shape[0] // 2
        assert_close(dense.exponents[:half], res.exponents[:half], rtol=1e-10)
        assert_close(dense.exponents, res.exponents, rtol=1e-4)
    else:
        assert_close(dense.exponents, res.exponents, rtol=1e-10)
        assert_close(dense.local, res.local, rtol=1e-10)
    if cell == "lstm":
        with pytest.raises(ValueError, match="ons_interval: 3 steps between"):
            lyapunov_spectrum(net, x, transient=30, ons_interval=3, seed=0)


@pytest.mark.parametrize("kw", [dict(cell="tanh"), dict(cell="lstm"),
                                dict(cell="gru", num_layers=2),
                                dict(cell="tanh", bidirectional=True), dict(cell="cornn")],
                         ids=["tanh", "lstm", "gru-2", "tanh-bi", "cornn"])
def test_full_spectrum_with_q_factored_is_the_explicit_one(kw, monkeypatch, rng):
    """The full spectrum (k = S, a QR after every step) keeps Q as its reflectors and applies
    them to the dense J_t (numrnn.cpu.jacobians, the factored route); with Q formed explicitly
    and the frame advanced by the tangent map, the loop is the same computation rounded
    differently.  Exponents agree to 1e-12 relative to the largest; the local exponents of one
    step to 1e-8 (the LSTM's most contracting directions, ln|R_ii| ~ -10, carry a relative
    error of eps * cond(J) ~ 1e-10 per step), and the covariant vectors' forward phase takes the
    same route (its exponents are those bits)."""
    net = numrnn.RNN(2, 12, seed=1, **kw)
    x = rng.standard_normal((300, 2, 2))
    factored = lyapunov_spectrum(net, x, seed=0)
    clv = numrnn.covariant_lyapunov_vectors(net, x, seed=0, times=[200])
    monkeypatch.setattr(numrnn.cpu.jacobians, "FACTORED", False)
    explicit = lyapunov_spectrum(net, x, seed=0)
    scale = np.abs(explicit.exponents).max()
    assert_close(factored.exponents, explicit.exponents, atol=1e-12 * scale)
    assert_close(factored.local, explicit.local, atol=1e-8)
    assert np.array_equal(clv.exponents, factored.exponents)


def test_gru_and_lstm_without_recurrence():
    """Zero recurrent weights and constant input: the GRU's step Jacobian is diag(z) and the
    LSTM's has dc/dc_prev = diag(f) (h does not feed back), so the exponents are ln sigmoid of the
    update/forget pre-activation, b_ih + b_hh (PyTorch sums both bias vectors).  For LSTM the
    other N exponents are -inf (J is nilpotent on h); the first N are ln f.  The frame aligns with
    the eigenvectors at rate max ratio 0.84 per step, so after 300 transient steps the numbers
    are exact to rounding (1e-12); c0 = c* = i g / (1 - f) makes the trajectory stationary."""
    N = 5
    pre = np.array([2.5, 1.2, 0.3, -0.6, -1.6])
    sig = 1.0 / (1.0 + np.exp(-pre))
    gru = numrnn.RNN(2, N, cell="gru", seed=1)
    p = gru.parameters
    p["weight_hh_l0"][:] = 0.0
    p["bias_ih_l0"][N:2 * N] = 0.3 * pre
    p["bias_hh_l0"][N:2 * N] = 0.7 * pre
    x = np.tile(np.array([0.4, -0.2]), (1000, 1))
    p["weight_ih_l0"][N:2 * N] = 0.0  # input shifts r and n only
    res = lyapunov_spectrum(gru, x, transient=300, seed=0)
    assert_close(res.exponents, np.log(sig), atol=1e-12, rtol=0.0)

    lstm = numrnn.RNN(2, N, cell="lstm", seed=2)
    p = lstm.parameters
    p["weight_hh_l0"][:] = 0.0
    p["weight_ih_l0"][N:2 * N] = 0.0
    p["bias_ih_l0"][N:2 * N] = 0.5 * pre
    p["bias_hh_l0"][N:2 * N] = 0.5 * pre
    zx = p["weight_ih_l0"] @ x[0] + p["bias_ih_l0"] + p["bias_hh_l0"]
    i_gate, g_gate = 1 / (1 + np.exp(-zx[:N])), np.tanh(zx[2 * N:3 * N])
    c_star = i_gate * g_gate / (1 - sig)
    h0 = (np.zeros((1, N)), c_star[None])
    res = lyapunov_spectrum(lstm, x, h0, k=N, transient=300, seed=0)
    assert_close(res.exponents, np.log(sig), atol=1e-12, rtol=0.0)


# --- mean-field theory --------------------------------------------------------------------------


def mean_field_lambda_max(g, sigma_b):
    """q* = g^2 E[tanh^2(sqrt(q*) z)] + sigma_b^2 and lambda = 0.5 ln(g^2 E[sech^4(sqrt(q*) z)]),
    z ~ N(0, 1), by fixed-point iteration with 101-point Gauss-Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(101)
    w = w / w.sum()
    q = 1.0
    for _ in range(2000):
        q = g ** 2 * np.sum(w * np.tanh(np.sqrt(q) * z) ** 2) + sigma_b ** 2
    return 0.5 * np.log(g ** 2 * np.sum(w / np.cosh(np.sqrt(q) * z) ** 4))


@pytest.mark.parametrize("g", [0.8, 2.5])
def test_random_tanh_network_mean_field(g):
    """Random tanh network h_t = tanh(W h_{t-1} + b), W_ij ~ N(0, g^2/N), b_i ~ N(0, sigma_b^2):
    the largest exponent is 0.5 ln(g^2 E[sech^4(sqrt(q*) z)]) with
    q* = g^2 E[tanh^2(sqrt(q*) z)] + sigma_b^2 (Poole et al. 2016; Molgedey, Schuchhardt and
    Schuster 1992).  With sigma_b = 0.5 the transition (chi = 1) lies at g ~ 1.5: below it the
    network settles on a fixed point (lambda_max < 0, here -0.452), above it is chaotic (+0.219
    at g = 2.5).  Finite N = 200 shifts and scatters lambda_max by a few 0.01 (the edge of the
    circular law fluctuates as N^-1/2; in the chaotic phase the bias is about -0.02 at N = 200,
    shrinking with N), so the mean over four networks must agree to 0.04 (>= 2x the observed
    finite-N deviation); the time error (stderr < 0.003 over 3,000 steps) is negligible."""
    N, sigma_b = 200, 0.5
    theory = mean_field_lambda_max(g, sigma_b)
    lam = []
    for seed in range(4):
        net = numrnn.RNN(1, N, init="gaussian", gain=g, seed=seed)
        p = net.parameters
        p["bias_hh_l0"][:] = np.random.default_rng(100 + seed).standard_normal(N) * sigma_b
        p["bias_ih_l0"][:] = 0.0
        res = lyapunov_spectrum(net, n_steps=3000, k=1, transient=1000, seed=seed)
        assert res.stderr[0] < 0.005
        lam.append(res.exponents[0])
    assert np.sign(np.mean(lam)) == np.sign(theory) == (1 if g > 1.5 else -1)
    assert abs(np.mean(lam) - theory) < 0.04, (lam, theory)


# --- the result object --------------------------------------------------------------------------


def test_result_object(rng):
    """Frozen; prints lambda_1 first; per_time divides by dt; Kaplan-Yorke and KS by hand."""
    net = numrnn.RNN(1, 3, cell="rate", alpha=0.1, init="gaussian", gain=3.0, seed=0)
    res = lyapunov_spectrum(net, rng.standard_normal((200, 2, 1)), seed=0)
    assert repr(res).startswith("LyapunovResult(lambda_1 = ")
    assert res.local.shape == (180, 2, 3) and res.block_lengths.sum() == res.n_steps == 180
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.exponents = None
    per_t = res.per_time(0.1)
    assert_close(per_t.exponents, res.exponents / 0.1)
    assert_close(per_t.stderr, res.stderr / 0.1)
    assert "per unit time (dt=0.1)" in repr(per_t)

    def made(exps, S):
        e = np.array(exps, float)
        return LyapunovResult(exponents=e, stderr=np.zeros_like(e), local=e[None, None],
                              block_lengths=np.ones(1, int), segment_exponents=e[None],
                              n_steps=1, transient=0, ons_interval=1, n_segments=1,
                              state_size=S, units=S)
    assert made([0.5, 0.0, -1.0], 3).kaplan_yorke_dimension == 2.5
    assert made([0.5, 0.2, -0.5, -1.0], 4).ks_entropy == 0.7
    assert made([-0.1, -0.2], 2).kaplan_yorke_dimension == 0.0
    assert made([0.3, 0.1], 2).kaplan_yorke_dimension == 2.0
    assert np.isnan(made([0.3, 0.1], 5).kaplan_yorke_dimension)


def test_float32_network_agrees_with_float64(rng):
    """A float32 network follows its own float32 trajectory, but its tangent maps and QR run in
    float64 (the derivatives evaluated in float64 at its states).  On a contracting,
    input-driven GRU both dtypes follow the same trajectory to float32 rounding, so the
    exponents agree to that rounding of each step's log (~1e-7, averaged: assert 1e-5)."""
    x = rng.standard_normal((400, 2))
    nets = [numrnn.RNN(2, 6, cell="gru", seed=3, dtype=dt) for dt in (np.float64, np.float32)]
    res = [lyapunov_spectrum(net, x.astype(net.dtype), seed=0) for net in nets]
    assert res[1].exponents.dtype == np.float64
    assert_close(res[1].exponents, res[0].exponents, atol=1e-5, rtol=0.0)


# --- float32 networks, singular steps, ons_interval, non-finite values, memory ------------------


def test_float32_saturated_tanh_is_finite_and_matches_float64():
    """tanh network with W_ij ~ N(0, g^2/N), g = 100, N = 80: the pre-activations have a spread
    of about g, so most units sit where float32 rounds tanh(z) to exactly 1 (|z| > 9) and
    tanh' = 1 - tanh^2 to exactly 0; at some steps every unit does, and a float32 tangent map
    would be exactly 0 (k=1 was a ZeroDivisionError, k=3 gave -inf for all three exponents).
    The derivatives are now float64 at the float32 states (0 only for |z| > 19, as for a float64
    network), so the exponents are finite.  The float32 and float64 trajectories part within a
    few steps (chaos), so only their statistics can agree: each lambda_1 must lie within 4
    combined standard errors of the other's (batch means over 18,000 measured steps; the
    observed difference is 1.5 of them).  At g = 100 a float64 network too can meet a step where
    every unit has |z| > 19 (seed 0's does, and its lambda_1 is then -inf); seed 1's does not."""
    res = {}
    for dt in (np.float32, np.float64):
        net = numrnn.RNN(1, 80, init="gaussian", gain=100.0, bias=False, seed=1, dtype=dt)
        res[dt] = lyapunov_spectrum(net, n_steps=20000, k=1, seed=0)
    a, b = res[np.float32], res[np.float64]
    assert a.exponents.dtype == np.float64 and np.isfinite(a.exponents).all()
    assert abs(a.exponents[0] - b.exponents[0]) < 4 * np.hypot(a.stderr[0], b.stderr[0])
    # three exponents over a shorter run (where the float64 network has no exactly singular
    # step either): all finite, each within 4 combined standard errors
    short = {}
    for dt in (np.float32, np.float64):
        net = numrnn.RNN(1, 80, init="gaussian", gain=100.0, bias=False, seed=1, dtype=dt)
        short[dt] = lyapunov_spectrum(net, n_steps=3000, k=3, seed=0)
    a, b = short[np.float32], short[np.float64]
    assert np.isfinite(a.exponents).all() and np.isfinite(b.exponents).all()
    assert np.all(np.abs(a.exponents - b.exponents) < 4 * np.hypot(a.stderr, b.stderr))


def test_exactly_singular_steps_give_minus_inf():
    """A step that maps the frame exactly onto fewer dimensions makes R_ii exactly 0: the
    exponents it kills are -inf (never a ZeroDivisionError).  Zero matrices kill all of them;
    J = diag(2, 0, 0) keeps e_1 (lambda_1 = ln 2 exactly once the frame's first column is e_1,
    after the first step) and kills the rest; a linear network with W_hh = 0 has J_t = 0.  The
    result's derived quantities stay sensible: stderr NaN for -inf, Kaplan-Yorke ends its sum
    there, h_KS counts only the positive exponents."""
    for k in (1, 3):
        res = lyapunov_from_jacobians(np.zeros((10, 3, 3)), k=k, seed=0)
        assert np.array_equal(res.exponents, np.full(k, -np.inf))
        assert np.isnan(res.stderr).all()
        assert res.kaplan_yorke_dimension == 0.0 and res.ks_entropy == 0.0
    # a zero matrix kills the whole frame in one step, whatever the interval
    res = lyapunov_from_jacobians(np.zeros((10, 3, 3)), k=2, ons_interval=4, seed=0)
    assert np.array_equal(res.exponents, np.full(2, -np.inf))
    J = np.tile(np.diag([2.0, 0.0, 0.0]), (50, 1, 1))
    res = lyapunov_from_jacobians(J, transient=5, seed=0)
    assert_close(res.exponents[0], np.log(2.0), rtol=1e-14)
    assert np.array_equal(res.exponents[1:], [-np.inf, -np.inf])
    assert res.kaplan_yorke_dimension == 1.0
    assert_close(res.ks_entropy, np.log(2.0), rtol=1e-14)
    assert "exponents: [0.693147, -inf, -inf]" in repr(res)
    assert repr(res).startswith("LyapunovResult(lambda_1 = 0.693147 +- 0 per step")
    net = numrnn.RNN(1, 4, cell="linear", bias=False, seed=0)
    net.parameters["weight_hh_l0"][:] = 0.0
    res = lyapunov_spectrum(net, n_steps=20, k=1, seed=0)
    assert np.array_equal(res.exponents, [-np.inf])
    assert np.array_equal(res.per_time(0.5).exponents, [-np.inf])


def _suggested(message):
    return int(re.search(r"Use ons_interval=(\d+)", message).group(1))


def test_ons_interval_too_long_is_refused_for_loss_of_orthogonality():
    """tanh g = 3, N = 50, k = 3: lambda_1 - lambda_3 ~ 0.08 per step, so after 1000 steps the
    third column of J...J Q lies within sin ~ e^-80 of the span of the first two: far below
    rounding, and the QR returned lambda_3 = 0.217 instead of 0.175 with no error.  Now it is
    refused, with the step, the column and an interval estimated from the block replayed with
    a QR after every step.  (Column 2 lies below rounding too, lambda_1 - lambda_2 being ~0.05
    per step: which of the two shows the smaller measured sine is rounding's choice.)  With
    that interval the answer is the ons_interval=1 one: the R of a block is the product of its
    steps' R's (uniqueness of QR), so only rounding differs, about eps / s <= eps^(3/4) ~ 2e-12
    per block of ln|R_ii| (atol 1e-9 per step)."""
    net = numrnn.RNN(1, 50, init="gaussian", gain=3.0, bias=False, seed=0)
    ref = lyapunov_spectrum(net, n_steps=20000, k=3, seed=0)
    with pytest.raises(ValueError) as err:
        lyapunov_spectrum(net, n_steps=20000, k=3, seed=0, ons_interval=1000)
    msg = str(err.value)
    assert re.match(r"ons_interval: 1000 steps between orthonormalisations is too long here: at "
                    r"step t=999 of sequence b=0, 1000 steps after the last orthonormalisation, "
                    r"column [23] of the propagated frame .* below sqrt\(eps\) = 1.5e-08", msg), msg
    m = _suggested(msg)
    assert 1 < m < 1000
    res = lyapunov_spectrum(net, n_steps=20000, k=3, seed=0, ons_interval=m)
    assert_close(res.exponents, ref.exponents, atol=1e-9, rtol=0.0)


def test_ons_interval_too_long_is_refused_for_overflow():
    """Linear network, W ~ N(0, 4/N): the frame grows like 2^t, so 1080 steps without a QR
    overflow float64 (it was Numba's LinAlgError inside the QR).  h0 ~ 1e-250 keeps the state
    itself finite for 1500 steps.  The message names the overflow and an interval; following
    the suggestions (each from the growth measured on the refused block) ends at the
    ons_interval=1 answer, to rounding (atol 1e-9 per step, as above)."""
    net = numrnn.RNN(1, 50, cell="linear", init="gaussian", gain=2.0, bias=False, seed=0)
    h0 = 1e-250 * np.random.default_rng(0).standard_normal((1, 50))
    ref = lyapunov_spectrum(net, n_steps=1500, h0=h0, k=3, seed=0)
    with pytest.raises(ValueError, match=r"ons_interval: 2000 steps .* the propagated frame J_t "
                                         r"\.\.\. J_1 Q overflowed to inf or NaN") as err:
        lyapunov_spectrum(net, n_steps=1500, h0=h0, k=3, seed=0, ons_interval=2000)
    m = _suggested(str(err.value))
    for _ in range(5):
        try:
            res = lyapunov_spectrum(net, n_steps=1500, h0=h0, k=3, seed=0, ons_interval=m)
            break
        except ValueError as again:
            assert _suggested(str(again)) < m
            m = _suggested(str(again))
    assert_close(res.exponents, ref.exponents, atol=1e-9, rtol=0.0)


def test_ons_interval_checks_on_given_matrices():
    """J = diag(2, 0.5): after m steps the second column's part outside the first's span is
    about 4^-m of it.  m = 30 (4^-30 ~ 1e-18) is refused, and the replay of the refused block
    (from the random initial frame) measures a gap of nearly ln 4 per step, so the suggestion
    is about floor(ln(eps^-1/4) / ln 4) = 6, which gives +-ln 2 to rounding (1e-12).  A float32
    frame is held to its own sqrt(eps) ~ 3e-4: m = 8 (4^-8 ~ 2e-5) passes in float64, not in
    float32.  Contraction by 1e-100 per step underflows after 3 steps
    (refused with m = 5); overflow by 2 per step after 1024 (refused with m = 2000, k = 1).
    With m = 1 nothing is refused, however far apart the exponents (1e10 against 1e-10)."""
    J = np.tile(np.diag([2.0, 0.5]), (200, 1, 1))
    with pytest.raises(ValueError, match=r"ons_interval: 30 steps .* column 2 of the propagated "
                                         r"frame .* Use ons_interval=\d+ or less") as err:
        lyapunov_from_jacobians(J, ons_interval=30, seed=0)
    m = _suggested(str(err.value))
    assert 5 <= m <= 7
    res = lyapunov_from_jacobians(J, ons_interval=m, seed=0)
    assert_close(res.exponents, np.log([2.0, 0.5]), atol=1e-12, rtol=0.0)
    lyapunov_from_jacobians(J, ons_interval=8, seed=0)
    with pytest.raises(ValueError, match=r"ons_interval: 8 steps .* sqrt\(eps\) = 0.00035"):
        lyapunov_from_jacobians(J.astype(np.float32), ons_interval=8, seed=0)
    tiny = np.tile(1e-100 * np.eye(2), (20, 1, 1))
    with pytest.raises(ValueError, match=r"ons_interval: 5 steps .* at step t=2 of sequence b=0, "
                                         r"3 steps after .* shrank to [\d.]+e-30[01]"):
        lyapunov_from_jacobians(tiny, k=1, transient=0, ons_interval=5, seed=0)
    res = lyapunov_from_jacobians(tiny, k=1, seed=0)
    assert_close(res.exponents, [np.log(1e-100)], rtol=1e-15)
    with pytest.raises(ValueError, match="ons_interval: 2000 steps .* overflowed"):
        lyapunov_from_jacobians(np.tile(2.0 * np.eye(2), (1500, 1, 1)), k=1, transient=0,
                                ons_interval=2000, seed=0)
    wide = np.tile(np.diag([1e10, 1e-10]), (50, 1, 1))
    res = lyapunov_from_jacobians(wide, seed=0)
    assert_close(res.exponents, np.log([1e10, 1e-10]), rtol=1e-14)
    with pytest.raises(ValueError, match="ons_interval: 2 steps"):
        lyapunov_from_jacobians(wide, ons_interval=2, seed=0)


def test_nonfinite_frame_is_reported():
    """A frame that overflows one step after its QR (not the interval's fault) is reported
    through numrnn.errors with the function and the step: NonFiniteError by default, a warning
    and NaN exponents under nonfinite("warn"), the same silently under "ignore"."""
    net = overflowing_net()
    with pytest.raises(numrnn.NonFiniteError,
                       match="lyapunov_spectrum: the tangent frame became NaN or inf at step "
                             "t=0 of sequence b=0"):
        lyapunov_spectrum(net, np.zeros((10, 1)), seed=0)
    with numrnn.nonfinite("warn"):
        with pytest.warns(numrnn.NonFiniteWarning, match="lyapunov_spectrum: the tangent frame"):
            res = lyapunov_spectrum(net, np.zeros((10, 1)), seed=0)
    assert np.isnan(res.exponents).all()
    assert np.isnan(res.kaplan_yorke_dimension) and np.isnan(res.ks_entropy)
    with numrnn.nonfinite("ignore"):
        res = lyapunov_spectrum(net, np.zeros((10, 1)), seed=0)
    assert np.isnan(res.exponents).all()
    # J_0 turns the frame to (1, 1) / sqrt(2); J_1 q = 1.7e308 * sqrt(2) overflows
    J = np.stack([np.full((2, 2), 0.5), np.full((2, 2), 1.7e308), np.eye(2)])
    with pytest.raises(numrnn.NonFiniteError, match="lyapunov_from_jacobians: the tangent frame "
                                                    "became NaN or inf at step t=1"):
        lyapunov_from_jacobians(J, k=1, transient=0, seed=0)


def test_memory_check_before_the_float64_coefficients(monkeypatch):
    """A float32 network's float64 coefficients (and the float64 re-run of its steps) are
    compared with the memory available before anything is allocated: a request that cannot fit
    is a MemoryError naming T, B, S and the bytes."""
    monkeypatch.setattr(numrnn.config, "MEMORY_CHECK", True)
    monkeypatch.setattr(numrnn._memory, "available_bytes", lambda: 8 << 20)
    net = numrnn.RNN(1, 200, dtype=np.float32, seed=0)
    with pytest.raises(MemoryError, match=r"lyapunov_spectrum: the frames of k=1 tangent vectors "
                                          r"and the float64 tangent-map coefficients \(and the "
                                          r"float64 re-run of every float32 step\) for T=20000 "
                                          r"steps, B=1 sequences, S=200 state dimensions, .* "
                                          r"needs [\d.]+ MiB, but only 8.0 MiB"):
        lyapunov_spectrum(net, n_steps=20000, k=1, seed=0)


def test_linear_antisymmetric_cell_has_the_exponents_of_its_skew_matrix(rng):
    """The linear antisymmetric cell with gamma = 0 steps h' = (I + eps A) h + eps u with
    A = W - W^T skew-symmetric: J = I + eps A is normal, with eigenvalues 1 +- i eps mu_k for the
    eigenvalues +-i mu_k of A, so every singular value of J^t is |1 + i eps mu_k|^t and the
    exponents are exactly 1/2 ln(1 + eps^2 mu_k^2), in pairs (Chang et al. 2019's stability
    argument, made quantitative).  A is built with mu = (3, 2, 1): the frame aligns with the
    invariant planes at rate exp(lambda_{k+1} - lambda_k) <= 0.87 per step, so after a 400-step
    transient (0.87^400 ~ 1e-24) only rounding is left: 6.4e-15 at most over ten random
    orientations of A (with 100 transient steps it was up to 2e-11); atol 1e-13."""
    mu, eps, N = np.array([3.0, 2.0, 1.0]), 0.3, 6
    A = np.zeros((N, N))
    for k, m in enumerate(mu):
        A[2 * k, 2 * k + 1], A[2 * k + 1, 2 * k] = m, -m
    Q = np.linalg.qr(rng.standard_normal((N, N)))[0]
    A = Q @ A @ Q.T
    net = numrnn.RNN(1, N, cell="antisymmetric", nonlinearity="linear", bias=False,
                     cell_options={"epsilon": eps, "gamma": 0.0}, seed=1)
    net.parameters["weight_hh_l0"][:] = A / 2  # W - W^T = A
    res = lyapunov_spectrum(net, n_steps=2000, transient=400, seed=0)
    assert_close(res.exponents, np.repeat(0.5 * np.log1p(eps ** 2 * mu ** 2), 2), atol=1e-13,
                 rtol=0.0)


@pytest.mark.parametrize("cell,nonlinearity", [("mgu", None), ("ugrnn", None), ("indrnn", "tanh"),
                                               ("antisymmetric", "tanh"), ("cornn", None)])
def test_literature_cells_sum_equals_mean_log_det(cell, nonlinearity, rng):
    """The sum of the exponents is the mean ln|det J_t| (see test_sum_equals_mean_log_det), and
    the matrix-free loop over the cell's tangent map equals Benettin's loop on the dense
    Jacobians: the five literature cells through the same analysis."""
    net = numrnn.RNN(2, 4, cell=cell, nonlinearity=nonlinearity, seed=5)
    x = rng.standard_normal((300, 2, 2))
    J = numrnn.jacobians(net, x)
    res = lyapunov_spectrum(net, x, transient=30, seed=0)
    assert res.exponents.shape == (net.state_count * 4,)
    assert_close(res.exponents.sum(), np.linalg.slogdet(J[30:])[1].mean(), rtol=1e-10)
    dense = lyapunov_from_jacobians(J, transient=30, seed=0)
    assert_close(dense.exponents, res.exponents, rtol=1e-9)


# --- error bars of the derived quantities, shapes, units, initial state ------------------------


def test_derived_quantities_have_batch_means_errors(rng):
    """D_KY and h_KS (and their per-unit forms) get the standard error of the same batch means
    as the exponents: the quantity on each segment's spectrum, std / sqrt(segments)."""
    net = numrnn.RNN(1, 12, cell="lstm", init="gaussian", gain=3.0, bias=False, seed=0)
    res = lyapunov_spectrum(net, n_steps=1500, seed=0)
    seg = res.segment_exponents
    assert seg.shape == (res.n_segments, 24) and res.units == 12 and res.state_size == 24
    n = seg.shape[0]
    assert_close(res.stderr, seg.std(axis=0, ddof=1) / np.sqrt(n))
    ky = [analysis_lyapunov.kaplan_yorke(s, 24) for s in seg]
    ks = [s[s > 0].sum() for s in seg]
    assert_close(res.kaplan_yorke_dimension_stderr, np.std(ky, ddof=1) / np.sqrt(n))
    assert_close(res.ks_entropy_stderr, np.std(ks, ddof=1) / np.sqrt(n))
    assert res.kaplan_yorke_dimension_per_unit == res.kaplan_yorke_dimension / 12
    assert res.ks_entropy_per_unit_stderr == res.ks_entropy_stderr / 12
    assert res.kaplan_yorke_dimension_per_unit_stderr == res.kaplan_yorke_dimension_stderr / 12
    assert res.ks_entropy_per_unit == res.ks_entropy / 12
    assert "D_KY = " in repr(res) and "+-" in repr(res).split("D_KY = ")[1].split(",")[0]
    # a batch: the segments of every sequence, sequence-major
    x = np.zeros((600, 3, 1))
    h0 = (rng.standard_normal((1, 3, 12)), np.zeros((1, 3, 12)))
    batch = lyapunov_spectrum(net, x, h0, k=4, seed=0, n_segments=5)
    assert batch.segment_exponents.shape == (15, 4) and batch.local.shape[1:] == (3, 4)
    one = lyapunov_spectrum(net, x[:, 1:2], (h0[0][:, 1:2], h0[1][:, 1:2]), k=4,
                            seed=np.random.default_rng(0), n_segments=5)
    assert one.segment_exponents.shape == (5, 4)


def test_local_has_one_shape_whatever_the_batch(rng):
    net = numrnn.RNN(1, 5, init="gaussian", gain=2.0, seed=0)
    unbatched = lyapunov_spectrum(net, rng.standard_normal((100, 1)), k=2, seed=0)
    autonomous = lyapunov_spectrum(net, n_steps=100, k=2, seed=0)
    batched = lyapunov_spectrum(net, rng.standard_normal((100, 4, 1)), k=2, seed=0)
    assert unbatched.local.shape == autonomous.local.shape == (90, 1, 2)
    assert batched.local.shape == (90, 4, 2)


def test_results_know_their_time_step():
    """per_time() uses the network's own step (alpha = dt/tau for rate and leaky cells, dt for
    coRNN); units="time" takes the transient in time and returns per-time exponents; a cell
    without a time step refuses both, naming the argument."""
    rate = numrnn.RNN(1, 20, cell="rate", alpha=0.1, init="gaussian", gain=2.0, bias=False,
                      seed=0)
    assert rate.time_step == 0.1
    res = lyapunov_spectrum(rate, n_steps=400, k=3, seed=0, transient=100)
    assert res.time_step == 0.1
    per_t = res.per_time()
    assert per_t.dt == 0.1 and np.array_equal(per_t.exponents, res.exponents / 0.1)
    assert np.array_equal(per_t.segment_exponents, res.segment_exponents / 0.1)
    timed = lyapunov_spectrum(rate, n_steps=400, k=3, seed=0, transient=10.0, units="time")
    assert timed.transient == 100 and timed.dt == 0.1
    assert np.array_equal(timed.exponents, per_t.exponents)
    assert "per unit time (dt=0.1)" in repr(timed)
    assert numrnn.RNN(1, 3, cell="cornn", cell_options={"dt": 0.05}).time_step == 0.05
    assert numrnn.RNN(1, 3).time_step == 1.0  # Elman, alpha = 1: one step is one time unit
    lstm = numrnn.RNN(1, 3, cell="lstm", seed=0)
    assert lstm.time_step is None
    r = lyapunov_spectrum(lstm, n_steps=50, seed=0)
    with pytest.raises(ValueError, match="dt: this result's network has no time step"):
        r.per_time()
    with pytest.raises(ValueError, match="units: the lstm cell has no time step"):
        lyapunov_spectrum(lstm, n_steps=50, seed=0, units="time")
    with pytest.raises(ValueError, match="units: expected 'step' or 'time'"):
        lyapunov_spectrum(rate, n_steps=50, seed=0, units="seconds")
    with pytest.raises(ValueError, match="time_step: expected the name of one of the options"):
        numrnn.Cell("bad", gates=("z",), step=lambda z, h, one: (z,),
                    vjp=lambda dh, h, hn, one: (dh, dh * 0),
                    jvp=lambda dz, dh, h, hn, one: dz, time_step="alpha")


def test_every_trajectory_analysis_says_where_it_started(rng):
    net = numrnn.RNN(1, 4, init="gaussian", gain=2.0, bias=False, seed=0)
    x = np.zeros((30, 1))
    assert "h0: zeros (x given)" in repr(lyapunov_spectrum(net, x, k=1, seed=0))
    assert "h0: given" in repr(lyapunov_spectrum(net, x, rng.standard_normal((1, 4)), k=1,
                                                 seed=0))
    assert "h0: N(0, 1) drawn from seed (autonomous)" in repr(
        lyapunov_spectrum(net, n_steps=30, k=1, seed=0))
    fp = numrnn.fixed_points(net, n_initial=4, seed=0)
    assert fp.initial_states.startswith("states along 20-step trajectories from N(0, 1)")
    # jacobians and gradient_propagation follow the same rule: autonomous from the seed's h0
    J = numrnn.jacobians(net, n_steps=30, seed=5)
    h0 = np.random.default_rng(5).standard_normal((1, 4))
    assert np.array_equal(J, numrnn.jacobians(net, x, h0))
    with pytest.raises(ValueError, match="n_steps: expected the number of steps"):
        numrnn.jacobians(net)
    with pytest.raises(ValueError, match="n_steps: x fixes the number of steps"):
        numrnn.gradient_propagation(net, x, n_steps=30)


@pytest.fixture
def split_steps(monkeypatch):
    """Every step of Benettin's loop split by vectors over 3 blocks (numrnn.cpu.jacobians
    .vector_blocks), and a count of the split runs."""
    from numrnn import config
    from numrnn.cpu import jacobians

    monkeypatch.setattr(config, "SPLIT_MIN_STEP_WORK", 1)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 1)
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 3)
    return count_runs(monkeypatch, jacobians._lyapunov_split)


def count_runs(monkeypatch, kernel):
    """The thread counts of the runs of ``kernel`` through numrnn.cpu.threads.together."""
    from numrnn.cpu import threads

    runs = []
    together = threads.together

    def counting(k, args, n_threads):
        if k is kernel:
            runs.append(n_threads)
        return together(k, args, n_threads)

    monkeypatch.setattr(threads, "together", counting)
    return runs


@pytest.mark.parametrize("kw", [dict(cell="tanh"), dict(cell="lstm", num_layers=2),
                                dict(cell="gru", bidirectional=True)],
                         ids=["tanh", "lstm-2", "gru-bi"])
@pytest.mark.parametrize("householder_max_k", [None, 2], ids=["householder-qr", "lapack-qr"])
def test_steps_split_by_vectors_give_the_bits_of_one_thread(kw, householder_max_k, split_steps,
                                                            monkeypatch, rng):
    """The tangent products of each step split over threads by blocks of vectors: the same bits
    on 1, 2 and 3 threads, and the loop of one thread without the split to rounding (each
    block's products are their own BLAS call).  Each participant writes its own vectors of Q:
    formed from its own factored frame (the compiled QR), or LAPACK's for a frame wider than
    HOUSEHOLDER_MAX_K."""
    from numrnn import config
    from numrnn.cpu import jacobians

    if householder_max_k is not None:
        monkeypatch.setattr(jacobians, "HOUSEHOLDER_MAX_K", householder_max_k)
    net = numrnn.RNN(2, 12, seed=1, **kw)
    x = rng.standard_normal((200, 3, 2))
    runs = []
    for n in (1, 2, 3):
        monkeypatch.setattr(config, "NUM_THREADS", n)
        runs.append(lyapunov_spectrum(net, x, k=5, seed=0))
    assert len(split_steps) == 3 and max(split_steps) > 1
    for res in runs[1:]:
        assert res.local.tobytes() == runs[0].local.tobytes()
    monkeypatch.setattr(config, "SPLIT_MIN_STEP_WORK", 10**18)
    whole = lyapunov_spectrum(net, x, k=5, seed=0)
    assert len(split_steps) == 3
    assert_close(runs[0].exponents, whole.exponents,
                 atol=1e-12 * np.abs(whole.exponents).max())


@pytest.fixture
def split_factored(monkeypatch):
    """The full spectrum's factored route cut into 3 blocks from S = 1 on, its QR in panels of
    4 columns (numrnn.cpu.jacobians.factored_blocks), every run on threads; a count of the runs
    of its loop and their thread counts."""
    from numrnn import config
    from numrnn.cpu import jacobians

    monkeypatch.setattr(jacobians, "FACTORED_SPLIT_MIN_S", 1)
    monkeypatch.setattr(jacobians, "FACTORED_NB", 4)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 1)
    monkeypatch.setattr(config, "PARALLEL_BLOCKS", 3)
    return count_runs(monkeypatch, jacobians._factored_loop)


@pytest.mark.parametrize("kw", [dict(cell="tanh", hidden_size=12),
                                dict(cell="lstm", hidden_size=7, num_layers=2),
                                dict(cell="gru", hidden_size=9, bidirectional=True)],
                         ids=["tanh", "lstm-2", "gru-bi"])
def test_full_spectrum_split_over_threads_gives_the_bits_of_one_thread(kw, split_factored,
                                                                         monkeypatch, rng):
    """The factored route's steps cut into blocks (rows of J_t Q, then the QR's panels and the
    columns right of each): the same bits on 1, 2 and 3 threads, for the exponents and for the
    covariant vectors' forward phase; and the route in one block (one dgeqrt, one dgemqrt a
    step) to rounding: the same products summed in other orders."""
    from numrnn import config
    from numrnn.cpu import jacobians

    net = numrnn.RNN(2, seed=1, **kw)
    x = rng.standard_normal((150, 2, 2))
    runs = []
    for n in (1, 2, 3):
        monkeypatch.setattr(config, "NUM_THREADS", n)
        runs.append(lyapunov_spectrum(net, x, seed=0))
    clv = numrnn.covariant_lyapunov_vectors(net, x, seed=0, times=[100])
    S = runs[0].exponents.shape[-1]
    assert S > 2 * 4  # at least one panel before the QR's last columns
    assert len(split_factored) == 4 and max(split_factored) == 3
    for res in runs[1:]:
        assert res.local.tobytes() == runs[0].local.tobytes()
    assert np.array_equal(clv.exponents, runs[2].exponents)
    monkeypatch.setattr(jacobians, "FACTORED_SPLIT_MIN_S", 10**9)
    whole = lyapunov_spectrum(net, x, seed=0)
    # The sum of all exponents (the mean log |det J_t|) and the leading half to rounding, the
    # rest to 8 digits and the local exponents to 1e-5: two close exponents (the 2-layer LSTM's
    # 26th and 27th, -6.51 and -6.62) split their 2-D subspace's growth between them
    # ill-conditionedly, and another order of the same sums (OpenBLAS's SkylakeX kernels here)
    # moved 6e-10 of the pair's sum from one to the other, 1.1e-6 in one step's local pair.
    scale = np.abs(whole.exponents).max()
    assert_close(runs[0].exponents.sum(), whole.exponents.sum(),
                 atol=1e-12 * np.abs(whole.exponents).sum())
    assert_close(runs[0].exponents[:S // 2], whole.exponents[:S // 2], atol=1e-12 * scale)
    assert_close(runs[0].exponents, whole.exponents, atol=1e-8 * scale)
    assert_close(runs[0].local, whole.local, atol=1e-5)


@pytest.mark.parametrize("split, k", [("split_steps", 3), ("split_factored", None)],
                         ids=["by-vectors", "full-spectrum"])
def test_a_nonfinite_frame_is_reported_from_split_steps(split, k, request, monkeypatch):
    """A frame that overflows on two threads is reported as on one (the vectors' split, and
    the full spectrum's)."""
    from numrnn import config

    runs = request.getfixturevalue(split)
    monkeypatch.setattr(config, "NUM_THREADS", 2)
    net = overflowing_net()
    for _ in range(2):  # the first run is on one thread (it compiles), the second on two
        with pytest.raises(numrnn.NonFiniteError,
                           match="lyapunov_spectrum: the tangent frame became NaN or inf at "
                                 "step t=0 of sequence b=0"):
            lyapunov_spectrum(net, np.zeros((10, 1)), k=k, seed=0)
    with numrnn.nonfinite("ignore"):
        res = lyapunov_spectrum(net, np.zeros((10, 2, 1)), k=k, seed=0)
    assert np.isnan(res.exponents).all()
    assert runs and max(runs) == 2


def test_random_frames_hold_numpy_blas_to_one_thread(monkeypatch):
    """The initial frames' QRs run with every BLAS held to one thread (numrnn.cpu.blas): a
    threaded one would leave its threads spinning into the QR loop that follows, on numrnn's
    threads."""
    from numrnn.analysis import linearisation
    from numrnn.cpu import blas

    held = []
    qr = np.linalg.qr

    def watched(a):
        held.append(blas._depth)
        return qr(a)

    monkeypatch.setattr(linearisation.np.linalg, "qr", watched)
    q = linearisation.frames(np.random.default_rng(0), 3, 20, 5, np.float64)
    assert held == [1, 1, 1] and blas._depth == 0
    assert_close(np.einsum("bsk,bsl->bkl", q, q), np.broadcast_to(np.eye(5), (3, 5, 5)),
                 atol=1e-14)
