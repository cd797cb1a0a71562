"""Weight spectra: dense vs ARPACK, determinism, random-matrix laws, the leaky effective radius."""
import numpy as np
import pytest
import scipy.sparse

import numrnn
from numrnn.analysis import (effective_spectral_radius, eigenvalues, singular_values,
                             spectral_radius)
from numrnn.init import haar_orthogonal

from .tolerance import assert_close


def assert_close_complex(actual, expected, rtol):
    """The tolerance helper on (real, imaginary) pairs."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert_close(np.stack([actual.real, actual.imag]), np.stack([expected.real, expected.imag]),
                 rtol=rtol)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match=r"w: expected a square \(N, N\) matrix, got shape"):
        eigenvalues(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"w: expected a 2-D \(M, N\) matrix, got shape \(3,\)"):
        singular_values(np.zeros(3))
    with pytest.raises(ValueError, match="w: expected finite entries"):
        spectral_radius(np.array([[np.nan]]))
    with pytest.raises(TypeError, match="w: expected a real numeric matrix, got dtype complex"):
        eigenvalues(np.eye(2, dtype=complex))
    with pytest.raises(TypeError, match="w: expected a numpy array or a scipy.sparse matrix"):
        eigenvalues("w")
    with pytest.raises(ValueError, match="k: expected at most 3 eigenvalues"):
        eigenvalues(np.eye(3), k=4)
    with pytest.raises(ValueError, match=r"k: expected at most 8 eigenvalues \(ARPACK"):
        eigenvalues(scipy.sparse.eye(10), k=9)
    with pytest.raises(ValueError, match=r"alpha: expected a finite number in \(0.0, 1.0\]"):
        effective_spectral_radius(np.eye(2), 0.0)


def test_dense_closed_forms(rng):
    """Eigenvalues of V diag(mu) V^-1 are mu (by descending modulus, to rounding times cond(V));
    singular values of a O (O orthogonal) are all a; a 2x2 rotation block gives a conjugate pair
    of modulus r."""
    mu = np.array([0.3, -1.5, 0.9, 0.05])
    V = rng.standard_normal((4, 4)) + 2 * np.eye(4)
    got = eigenvalues(V @ np.diag(mu) @ np.linalg.inv(V))
    assert_close_complex(got, mu[np.argsort(-np.abs(mu))], rtol=1e-12)
    assert_close(singular_values(0.7 * haar_orthogonal(rng, 5)), np.full(5, 0.7), rtol=1e-12)
    r, th = 0.8, 0.6
    rot = r * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    assert_close(spectral_radius(rot), r, rtol=1e-14)
    assert_close_complex(eigenvalues(rot), r * np.exp(np.array([1j, -1j]) * th), rtol=1e-14)


def test_sparse_arpack_matches_dense_and_is_deterministic():
    """ARPACK's leading eigenvalues and singular values of a sparse matrix equal LAPACK's on the
    dense copy (rtol 1e-10: ARPACK's default tolerance is machine precision on Ritz values), and
    two calls give identical bits (fixed start vector).  k = 4 ends after a complex-conjugate
    pair (a cut inside a pair may return either member)."""
    w = scipy.sparse.random(300, 300, density=0.03, random_state=3, format="csr")
    dense = w.toarray()
    assert_close_complex(eigenvalues(w, k=4), eigenvalues(dense)[:4], rtol=1e-10)
    assert_close(singular_values(w, k=4), singular_values(dense)[:4], rtol=1e-10)
    assert_close(spectral_radius(w), spectral_radius(dense), rtol=1e-10)
    assert_close(effective_spectral_radius(w, 0.2), effective_spectral_radius(dense, 0.2),
                 rtol=1e-10)
    a, b = eigenvalues(w, k=5), eigenvalues(w, k=5)
    assert np.array_equal(a, b)


def test_gaussian_circular_and_quarter_circle_laws():
    """W_ij ~ N(0, g^2/N): the spectral radius tends to g (circular law; Girko 1984, Bai 1997) and
    the largest singular value to 2g (Marchenko-Pastur / quarter-circle edge).  At N = 400 the
    edges fluctuate by O(N^-1/2) relative and the Tracy-Widom-scale N^-2/3 for sigma_max, so 5%
    tolerance holds with a wide margin."""
    g, N = 1.3, 400
    net = numrnn.RNN(1, N, init="gaussian", gain=g, seed=7)
    w = net.parameters["weight_hh_l0"]
    assert abs(spectral_radius(w) / g - 1) < 0.05
    assert abs(singular_values(w)[0] / (2 * g) - 1) < 0.05


def test_effective_radius_is_the_leaky_jacobian_radius(rng):
    """For a linear leaky cell, the step Jacobian is exactly (1 - alpha) I + alpha W_hh, so its
    spectral radius (numrnn.jacobians + LAPACK) equals effective_spectral_radius(W_hh, alpha) to
    rounding."""
    net = numrnn.RNN(1, 6, cell="linear", alpha=0.3, init="gaussian", gain=1.8, seed=2)
    J = numrnn.jacobians(net, np.zeros((1, 1)))[0]
    assert_close(spectral_radius(J),
                 effective_spectral_radius(net.parameters["weight_hh_l0"], 0.3), rtol=1e-13)
    assert effective_spectral_radius(net.parameters["weight_hh_l0"], 1.0) == \
        spectral_radius(net.parameters["weight_hh_l0"])
