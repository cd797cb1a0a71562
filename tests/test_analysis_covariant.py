"""Covariant Lyapunov vectors (Ginelli et al. 2007) against exact results: eigenvectors of
constant maps, the covariance J_{t+1} v_i(t) || v_i(t+1) along chaotic and gated trajectories,
the exponents of lyapunov_spectrum, storage on disk, and the principal angles of Kuptsov and
Parlitz (2012) against scipy."""
import os

import numpy as np
import pytest
import scipy.linalg

import numrnn
from numrnn import _memory
from numrnn.analysis import (CovariantLyapunovResult, covariant_lyapunov_vectors,
                             covariant_lyapunov_vectors_from_jacobians, lyapunov_from_jacobians,
                             lyapunov_spectrum)
from numrnn.analysis import covariant as covariant_module
from numrnn.cpu import jacobians as cpu_jacobians

from .problems import overflowing_net
from .tolerance import assert_close

clv = covariant_lyapunov_vectors
clv_from = covariant_lyapunov_vectors_from_jacobians


def linear_net(w):
    net = numrnn.RNN(1, w.shape[0], cell="linear", bias=False, seed=0)
    net.parameters["weight_hh_l0"][:] = w
    return net


def chaotic_net():
    """A discrete-time tanh network that is chaotic on its own: lambda_1 ~ +0.10, three positive
    exponents.  (At N = 20 and g = 2 the autonomous network of seed 0 settles on a periodic
    orbit, lambda_1 ~ -0.29; discrete-time chaos needs a few more units.)"""
    return numrnn.RNN(1, 30, init="gaussian", gain=2.0, bias=False, seed=0)


def assert_parallel(u, v, rtol, what):
    """Unit columns of v and the columns of u agree up to sign and length: |u/|u| -+ v| <= rtol."""
    un = u / np.linalg.norm(u, axis=-2, keepdims=True)
    sign = np.sign(np.sum(un * v, axis=-2, keepdims=True))
    assert_close(un * sign, v, rtol=rtol, what=what)


def assert_same_up_to_sign(v, e, rtol, what):
    """Columns of v (..., S, k) equal the unit columns of e (S, k) up to their signs."""
    e = e / np.linalg.norm(e, axis=0)
    sign = np.sign(np.sum(v * e, axis=-2, keepdims=True))
    assert_close(v * sign, np.broadcast_to(e, v.shape), rtol=rtol, what=what)


# --- invalid input first ------------------------------------------------------------------------


@pytest.fixture
def no_kernels(monkeypatch):
    """Every check must run before the trajectory is computed or a QR loop starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel ran before the arguments were checked")
    monkeypatch.setattr(covariant_module, "Linearisation", refuse)
    monkeypatch.setattr(cpu_jacobians, "covariant_forward", refuse)


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(k=4), ValueError, "k: expected at most S = 3"),
    (dict(k=0), ValueError, "k: expected an integer >= 1"),
    (dict(transient=20), ValueError, "transient: expected fewer steps than the trajectory"),
    (dict(backward_transient=-1), ValueError, "backward_transient: expected an integer >= 0"),
    (dict(backward_transient=1.0), TypeError, "backward_transient: expected an integer"),
    (dict(transient=10, backward_transient=10), ValueError,
     r"backward_transient: expected fewer than T - transient = 10 steps"),
    (dict(transient=2, backward_transient=2, times=[1, 5]), ValueError,
     r"times: expected steps in \[transient, T - backward_transient\) = \[2, 18\), .* got steps "
     "from 1 to 5"),
    (dict(transient=2, backward_transient=2, times=[5, 18]), ValueError,
     r"times: expected steps in \[transient, T - backward_transient\) = \[2, 18\)"),
    (dict(times=[5, 5]), ValueError, "times: expected strictly increasing steps"),
    (dict(times=[7, 5]), ValueError, "times: expected strictly increasing steps"),
    (dict(times=[5.0, 6.0]), TypeError, "times: expected integer steps, got dtype float64"),
    (dict(times=True), TypeError, "times: expected integer steps"),
    (dict(times=[[5, 6]]), ValueError, r"times: expected a non-empty 1-D sequence of steps, got "
                                       r"shape \(1, 2\)"),
    (dict(times=[]), ValueError, "times: expected a non-empty 1-D sequence"),
    (dict(n_unstable=4), ValueError, "n_unstable: expected at most k = 3"),
    (dict(k=2, n_unstable=3), ValueError, "n_unstable: expected at most k = 2"),
    (dict(n_unstable=-1), ValueError, "n_unstable: expected an integer >= 0"),
    (dict(storage="ram"), ValueError, "storage: expected one of .*'auto'.* got 'ram'"),
    (dict(storage=None), TypeError, "storage: expected one of"),
    (dict(memory_budget=-5), ValueError, "memory_budget: expected an integer >= 0"),
    (dict(storage="disk", memory_budget=10), ValueError,
     "memory_budget: only storage='auto' chooses"),
    (dict(seed=-1), ValueError, "seed: .* got the negative integer -1"),
])
def test_rejects_bad_arguments(kwargs, error, words, no_kernels):
    net = numrnn.RNN(1, 3, seed=0)
    with pytest.raises(error, match=words):
        clv(net, np.zeros((20, 1)), **kwargs)
    J = np.tile(np.eye(3), (20, 1, 1))
    with pytest.raises(error, match=words):
        clv_from(J, **kwargs)


def test_rejects_bad_trajectories_and_matrices(no_kernels):
    net = numrnn.RNN(1, 3, seed=0)
    with pytest.raises(ValueError, match="n_steps: expected the number of steps"):
        clv(net)
    with pytest.raises(ValueError, match="n_steps: x fixes the number of steps"):
        clv(net, np.zeros((20, 1)), n_steps=5)
    with pytest.raises(TypeError, match="net: expected a numrnn.RNN"):
        clv("net", np.zeros((20, 1)))
    with pytest.raises(ValueError, match="no causal step map"):
        clv(numrnn.RNN(1, 3, num_layers=2, bidirectional=True), np.zeros((20, 1)))
    with pytest.raises(TypeError, match="J: expected a numpy array"):
        clv_from([[[1.0]]])
    with pytest.raises(ValueError, match=r"J: expected shape \(T, S, S\)"):
        clv_from(np.zeros((4, 2, 3)))
    with pytest.raises(TypeError, match="J: expected dtype float32 or float64"):
        clv_from(np.zeros((4, 2, 2), np.int64))
    with pytest.raises(ValueError, match="J: expected finite values"):
        clv_from(np.full((4, 2, 2), np.nan))


def test_memory_is_checked_before_allocating(monkeypatch):
    """R factors and vectors that cannot fit are a MemoryError naming their sizes; "auto" then
    puts the R factors on disk instead, and a disk without room is an OSError with the sizes."""
    monkeypatch.setattr(numrnn.config, "MEMORY_CHECK", True)
    monkeypatch.setattr(_memory, "CHECK_FROM", 0)
    monkeypatch.setattr(_memory, "available_bytes", lambda: 100 << 10)
    J = np.tile(np.diag([2.0, 1.0, 0.5, 0.25]), (1000, 1, 1))
    with pytest.raises(MemoryError, match=r"covariant_lyapunov_vectors_from_jacobians: the "
                       r"\(n_times, B, S, k\) = \(800, 1, 4, 4\) covariant vectors \(100.0 KiB\), "
                       r"the R factors of 899 steps \(112.4 KiB\) for T=1000 steps, B=1 "
                       r"sequences, S=4 needs [\d.]+ KiB, but only 100.0 KiB .*storage='disk'"):
        clv_from(J, storage="memory", seed=0)
    net = linear_net(np.diag([2.0, 1.0, 0.5, 0.25]))
    with pytest.raises(MemoryError, match=r"covariant_lyapunov_vectors: the \(n_times, B, S, k\) "
                       r"= \(800, 1, 4, 4\) covariant vectors .* S=4 state dimensions"):
        clv(net, np.zeros((1000, 1)), storage="memory", seed=0)
    monkeypatch.setattr(_memory, "available_bytes", lambda: 180 << 10)  # the vectors fit
    assert clv_from(J, times=np.arange(100, 900), seed=0).storage == "disk"

    class Full:
        free = 1000
    monkeypatch.setattr(covariant_module.shutil, "disk_usage", lambda path: Full)
    with pytest.raises(OSError, match=r"the R factors of 899 steps \(B=1, k=4\) need 112.4 KiB "
                                      r"on disk in .*, but only 1000 B are free"):
        clv_from(J, storage="disk", seed=0)


# --- exact results ------------------------------------------------------------------------------


def test_constant_diagonalisable_map(rng):
    """J_t = A = P diag(mu) P^-1 with real mu of distinct moduli: the Oseledets splitting is A's
    eigenbasis, so the CLVs are P's columns (up to sign) and lambda_i = ln|mu_i|.  The forward
    frame aligns at rate max |mu_{i+1}/mu_i| = 0.733 per step and the backward iteration at the
    same rate, so after transients of 150 steps (0.733^150 ~ 5e-21) both are exact to rounding:
    1e-10 for the vectors (cond(P) ~ 10 amplifies eps), 1e-12 for the exponents.  A batch of
    two maps gives each its own vectors."""
    mu = np.array([1.5, -1.1, 0.8, 0.3])
    P = rng.standard_normal((4, 4)) + 2.0 * np.eye(4)
    A = P @ np.diag(mu) @ np.linalg.inv(P)
    res = clv_from(np.tile(A, (400, 1, 1)), transient=150, backward_transient=150, seed=0)
    assert isinstance(res, CovariantLyapunovResult)
    assert res.vectors.shape == (100, 1, 4, 4) and res.angles.shape == (100, 1)
    assert_close(res.times, np.arange(150, 250))
    assert_same_up_to_sign(res.vectors, P, 1e-10, "CLVs vs eigenvectors")
    assert_close(res.exponents, np.log(np.abs(mu)), atol=1e-12, rtol=0.0)
    assert_close(res.local, np.broadcast_to(np.log(np.abs(mu)), res.local.shape), atol=1e-10,
                 rtol=0.0, what="one-step growth of each CLV")
    assert res.n_unstable == 2
    # two maps in one batch
    P2 = rng.standard_normal((4, 4)) + 2.0 * np.eye(4)
    A2 = P2 @ np.diag(mu[::-1] * 1.2) @ np.linalg.inv(P2)
    J = np.stack([np.tile(A, (400, 1, 1)), np.tile(A2, (400, 1, 1))], axis=1)
    res = clv_from(J, transient=150, backward_transient=150, times=[150, 249], seed=1)
    assert res.vectors.shape == (2, 2, 4, 4)
    assert_same_up_to_sign(res.vectors[:, 0], P, 1e-10, "sequence 0")
    assert_same_up_to_sign(res.vectors[:, 1], P2[:, ::-1], 1e-10, "sequence 1")


def test_constant_upper_triangular_map():
    """J_t = U upper triangular with diagonal (0.5, 2, -1): its eigenvalues are the diagonal and
    its eigenvectors follow by back substitution, e_0; (U01 / 1.5, 1, 0); and
    (-(U01 v1 + U02) / 1.5, -U12 / 3, 1) with v1 = -U12 / 3.  The CLVs come in the order of
    |mu|: mu = 2, -1, 0.5 (ratios at most 0.5 per step: 100-step transients are plenty).  The
    first k = 2 CLVs need only two forward directions and are the same vectors."""
    U = np.array([[0.5, 0.7, -1.3], [0.0, 2.0, 0.9], [0.0, 0.0, -1.0]])
    v1 = -U[1, 2] / 3.0
    E = np.array([[U[0, 1] / 1.5, -(U[0, 1] * v1 + U[0, 2]) / 1.5, 1.0],
                  [1.0, v1, 0.0],
                  [0.0, 1.0, 0.0]])
    J = np.tile(U, (300, 1, 1))
    res = clv_from(J, transient=100, backward_transient=100, seed=3)
    assert_close(res.exponents, np.log([2.0, 1.0, 0.5]), atol=1e-12, rtol=0.0)
    assert_same_up_to_sign(res.vectors, E, 1e-12, "CLVs vs eigenvectors")
    res2 = clv_from(J, k=2, transient=100, backward_transient=100, times=[100, 150], seed=3)
    assert res2.vectors.shape == (2, 1, 3, 2)
    assert_same_up_to_sign(res2.vectors, E[:, :2], 1e-12, "first two CLVs")


def test_linear_network_is_its_weight_matrix(rng):
    """The network path on a linear cell without bias: J_t = W_hh for every step, so the CLVs
    are W's eigenvectors and the exponents ln|mu| (transients as in the constant-map test)."""
    mu = np.array([1.2, 0.9, -0.6, 0.2])
    P = rng.standard_normal((4, 4)) + 2.0 * np.eye(4)
    net = linear_net(P @ np.diag(mu) @ np.linalg.inv(P))
    h0 = rng.standard_normal((1, 4))
    res = clv(net, np.zeros((450, 1)), h0, transient=200, backward_transient=200, seed=0)
    assert_same_up_to_sign(res.vectors, P, 1e-10, "CLVs vs eigenvectors of W")
    assert_close(res.exponents, np.log(np.abs(mu)), atol=1e-12, rtol=0.0)
    assert res.initial_state == "given"


def test_covariance_along_a_chaotic_trajectory(rng):
    """The defining property: v_i(t) is carried to v_i(t+1) by the step Jacobian,
    J_{t+1} v_i(t) = exp(local_i(t)) v_i(t+1) (up to sign).  J from numrnn.jacobians (formed
    densely, the kernels apply it matrix-free).  The relation holds by construction to rounding
    amplified by the triangular solve, ~ eps exp(lambda_1 - lambda_k) per step (the spectrum of
    this network spans ~3 per step): 1e-10."""
    net = chaotic_net()
    x, h0 = np.zeros((400, 1)), rng.standard_normal((1, 30))
    res = clv(net, x, h0, times=np.arange(200, 260), seed=1)
    assert res.n_unstable == 3 and res.vectors.shape == (60, 1, 30, 30)
    J = numrnn.jacobians(net, x, h0)
    V = res.vectors[:, 0]
    u = J[201:260] @ V[:-1]
    assert_parallel(u, V[1:], 1e-10, "J v_i(t) vs v_i(t+1)")
    assert_close(np.log(np.linalg.norm(u, axis=1)), res.local[:-1, 0], atol=1e-10, rtol=0.0)
    assert_close(np.linalg.norm(V, axis=1), np.ones((60, 30)), rtol=1e-13, what="unit columns")
    assert np.isfinite(res.local).all()  # t = 259 < T - 1 has a next step


def test_exponents_are_lyapunov_spectrums_bits():
    """The forward phase is lyapunov_spectrum's loop with ons_interval=1: the same seed draws the
    same h0 and frame, the same kernels advance and orthonormalise it (_advance and _after_step,
    or for the full spectrum the factored route), and the same pooling averages ln|R_ii|;
    keeping R_t (from the QR itself) and Q_t changes nothing.  So the exponents and stderr are
    bitwise equal, not merely close; on matrices too (there the full spectrum)."""
    net = chaotic_net()
    res = clv(net, n_steps=300, k=8, transient=50, seed=7, times=[100])
    ref = lyapunov_spectrum(net, n_steps=300, k=8, transient=50, seed=7)
    np.testing.assert_array_equal(res.exponents, ref.exponents)
    np.testing.assert_array_equal(res.stderr, ref.stderr)
    assert res.n_steps == ref.n_steps == 250
    J = numrnn.jacobians(net, np.zeros((200, 2, 1)))
    res = clv_from(J, transient=20, seed=2)
    np.testing.assert_array_equal(res.exponents, lyapunov_from_jacobians(J, transient=20,
                                                                         seed=2).exponents)


def test_disk_storage_gives_the_same_bits(tmp_path, monkeypatch):
    """R on disk (a memory-mapped file) is the same numbers read back: identical results.  The
    temporary folder is removed after the call, and after a call that fails in between."""
    monkeypatch.setattr(covariant_module.tempfile, "tempdir", str(tmp_path))
    net = chaotic_net()
    x = np.zeros((200, 2, 1))
    h0 = np.random.default_rng(0).standard_normal((1, 2, 30))
    mem = clv(net, x, h0, k=10, seed=4, storage="memory")
    disk = clv(net, x, h0, k=10, seed=4, storage="disk")
    auto = clv(net, x, h0, k=10, seed=4, memory_budget=0)
    assert (mem.storage, disk.storage, auto.storage) == ("memory", "disk", "disk")
    for res in (disk, auto):
        for name in ("exponents", "stderr", "vectors", "angles", "local", "times"):
            np.testing.assert_array_equal(getattr(res, name), getattr(mem, name), err_msg=name)
    assert os.listdir(tmp_path) == []

    def fail(*args):
        raise RuntimeError("stop")
    monkeypatch.setattr(cpu_jacobians, "covariant_backward", fail)
    with pytest.raises(RuntimeError, match="stop"):
        clv(net, x, h0, k=10, seed=4, storage="disk")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_cells_are_covariant(cell, rng):
    """Gated cells (two states for LSTM: S = 2N) through the same loops: covariance as for
    tanh, on a driven batch of two sequences (all exponents are negative for these untrained
    cells, so the angles are NaN: no unstable direction)."""
    net = numrnn.RNN(2, 6, cell=cell, init="gaussian", gain=1.5, seed=0)
    x = rng.standard_normal((150, 2, 2))
    res = clv(net, x, times=np.arange(60, 80), seed=0)
    S = 12 if cell == "lstm" else 6
    assert res.vectors.shape == (20, 2, S, S)
    J = numrnn.jacobians(net, x)
    for b in range(2):
        V = res.vectors[:, b]
        assert_parallel(J[61:80, b] @ V[:-1], V[1:], 1e-10, f"{cell}, sequence {b}")
    assert res.n_unstable == 0 and np.isnan(res.angles).all()


def test_angles_are_scipy_principal_angles(rng):
    """angles = the smallest principal angle between span(v_1..v_nu) and span(v_nu+1..v_k),
    computed as scipy.linalg.subspace_angles does (cosines, and sines of the residual below
    45 degrees): equal to it to rounding (1e-12 rad), in [0, pi/2]; NaN for nu = 0 and nu = k."""
    net = chaotic_net()
    x, h0 = np.zeros((300, 1)), rng.standard_normal((1, 30))
    for k, nu in [(30, None), (12, 2), (12, 9)]:
        res = clv(net, x, h0, k=k, n_unstable=nu, times=np.arange(100, 140), seed=5)
        nu = res.n_unstable
        assert nu == (3 if k == 30 else nu)
        a = res.angles[:, 0]
        assert np.all((a >= 0) & (a <= np.pi / 2))
        ref = [scipy.linalg.subspace_angles(V[:, :nu], V[:, nu:]).min()
               for V in res.vectors[:, 0]]
        assert_close(a, ref, atol=1e-12, rtol=0.0, what=f"angles, k={k}, nu={nu}")
    for nu in (0, 12):
        res = clv(net, x, h0, k=12, n_unstable=nu, times=[100, 101], seed=5)
        assert np.isnan(res.angles).all()
        assert "angle undefined" in repr(res)
    # any split, after the fact: split_angles(n_unstable) is angles
    np.testing.assert_array_equal(res.split_angles(3), clv(net, x, h0, k=12, n_unstable=3,
                                                           times=[100, 101], seed=5).angles)
    ref = [scipy.linalg.subspace_angles(V[:, :11], V[:, 11:]).min() for V in res.vectors[:, 0]]
    assert_close(res.split_angles(11)[:, 0], ref, atol=1e-12, rtol=0.0)
    with pytest.raises(ValueError, match="n: expected fewer than k = 12 vectors"):
        res.split_angles(12)
    with pytest.raises(ValueError, match="n: expected an integer >= 1"):
        res.split_angles(0)


def test_repr_prints_the_exponent_first():
    res = clv_from(np.tile(np.diag([2.0, 0.5]), (50, 1, 1)), seed=0)
    text = repr(res)
    assert text.startswith("CovariantLyapunovResult(lambda_1 = 0.693147")
    assert "nu = 1 unstable of k = 2" in text and "R in memory" in text


def test_float32_matrices_run_in_float32():
    J = np.tile(np.array([[2.0, 1.0], [0.0, 0.5]], np.float32), (100, 1, 1))
    res = clv_from(J, transient=40, backward_transient=40, seed=0)
    assert res.vectors.dtype == np.float32
    assert_same_up_to_sign(res.vectors, np.array([[1.0, 1.0], [0.0, -1.5]]), 1e-6, "float32")


def test_singular_step_and_nonfinite_frame_are_reported():
    """A step that kills a direction exactly (R_ii = 0: an exponent of -inf) leaves the CLVs
    before it undefined: reported through numrnn.errors, NaN under nonfinite("warn").  A frame
    that overflows is reported as by lyapunov_spectrum."""
    J = np.tile(np.diag([2.0, 0.5]), (100, 1, 1))
    J[60] = np.diag([2.0, 0.0])
    with pytest.raises(numrnn.NonFiniteError, match="covariant_lyapunov_vectors_from_jacobians: "
                       "in the backward iteration at step t=60 of sequence b=0, R_t has a zero "
                       "diagonal entry"):
        clv_from(J, seed=0)
    with numrnn.nonfinite("warn"):
        with pytest.warns(numrnn.NonFiniteWarning, match="before step t"):
            res = clv_from(J, seed=0)
    assert np.isnan(res.vectors[res.times < 60]).all()
    assert np.isfinite(res.vectors[res.times >= 60]).all()
    assert res.exponents[1] == -np.inf
    with pytest.raises(numrnn.NonFiniteError, match="covariant_lyapunov_vectors: the tangent "
                                                    "frame became NaN or inf at step t=0"):
        clv(overflowing_net(), np.zeros((10, 1)), seed=0)
    with numrnn.nonfinite("ignore"):
        res = clv(overflowing_net(), np.zeros((10, 1)), seed=0)
    assert np.isnan(res.vectors).all() and np.isnan(res.exponents).all()


def test_noisy_trajectory_is_covariant_with_its_own_jacobians():
    """With noise, the CLVs are those of the noisy trajectory (the realisation of ``seed``):
    J_{t+1} v_i(t) is parallel to v_i(t+1) for J from numrnn.jacobians with the same noise."""
    net = numrnn.RNN(1, 12, init="gaussian", gain=2.5, bias=False, seed=0)
    res = numrnn.covariant_lyapunov_vectors(net, n_steps=300, k=4, times=[150, 151], seed=3,
                                            noise_std=0.3)
    assert "noise: sigma=0.3" in repr(res)
    J = numrnn.jacobians(net, n_steps=300, seed=3, noise_std=0.3)
    v0, v1 = res.vectors[0, 0], res.vectors[1, 0]
    w = J[151] @ v0
    cos = np.abs(np.sum(w * v1, axis=0)) / np.linalg.norm(w, axis=0)
    assert np.all(np.abs(cos - 1.0) < 1e-10)
    quiet = numrnn.covariant_lyapunov_vectors(net, n_steps=300, k=4, times=[150, 151], seed=3)
    assert not np.allclose(np.abs(quiet.vectors), np.abs(res.vectors))
