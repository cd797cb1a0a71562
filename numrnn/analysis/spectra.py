r"""Spectra of weight matrices: eigenvalues, spectral radius, singular values, and the effective
spectral radius of a leaky network.

Dense matrices go to LAPACK (``scipy.linalg``).  Sparse ones (``scipy.sparse``) go to ARPACK with
a fixed start vector, so the same matrix always gives the same bits; ARPACK returns the ``k``
eigenvalues (singular values) of largest modulus.
"""
import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

from .. import _validation as _v

__all__ = ["eigenvalues", "spectral_radius", "singular_values", "effective_spectral_radius"]

#: Seed of the ARPACK start vector (fixed: same input, same answer).
_ARPACK_SEED = 0


def _check_matrix(w, square=True):
    """Return (matrix, is_sparse) after checking shape and values."""
    if scipy.sparse.issparse(w):
        m = scipy.sparse.csr_array(w)
        data = m.data
    else:
        if not isinstance(w, np.ndarray):
            if hasattr(w, "detach"):
                raise TypeError("w: expected a numpy array or a scipy.sparse matrix, got a torch "
                                "tensor; pass w.detach().cpu().numpy()")
            if not isinstance(w, (list, tuple)):
                raise TypeError(f"w: expected a numpy array or a scipy.sparse matrix, got "
                                f"{type(w).__name__}")
            w = np.asarray(w)
        m = data = w
    if data.dtype.kind not in "fiu" or data.dtype == np.bool_:
        raise TypeError(f"w: expected a real numeric matrix, got dtype {data.dtype}")
    if m.ndim != 2 or (square and m.shape[0] != m.shape[1]) or min(m.shape) < 1:
        want = "a square (N, N) matrix" if square else "a 2-D (M, N) matrix"
        raise ValueError(f"w: expected {want}, got shape {m.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError("w: expected finite entries, got NaN or inf")
    if scipy.sparse.issparse(m):
        return m.astype(np.float64), True
    return np.asarray(m, dtype=np.float64), False


def _start_vector(n):
    return np.random.default_rng(_ARPACK_SEED).standard_normal(n)


def _check_k(k, limit, sparse, what):
    if k is None:
        return None if not sparse else min(6, limit)
    k = _v.check_int("k", k, 1)
    if k > limit:
        raise ValueError(f"k: expected at most {limit} {what}"
                         f"{' (ARPACK needs k < N - 1 for a sparse matrix)' if sparse else ''}, "
                         f"got {k}")
    return k


def _by_modulus(values):
    # descending modulus; ties broken by real then imaginary part so the order is deterministic
    order = np.lexsort((-np.imag(values), -np.real(values), -np.abs(values)))
    return values[order]


def eigenvalues(w, k=None):
    r"""Eigenvalues of a square weight matrix, by descending modulus.

    Parameters
    ----------
    w : array_like, shape (N, N), or scipy.sparse matrix
        Real matrix, e.g. ``net.parameters["weight_hh_l0"]`` (for gated cells, one N x N gate
        block of it).
    k : int, optional
        Number of eigenvalues.  Dense: all N by default (LAPACK ``geev``), the first k otherwise.
        Sparse: the k of largest modulus by ARPACK (default 6, k < N - 1), with a fixed start
        vector.  A k that splits a complex-conjugate pair returns one member of it.

    Returns
    -------
    ndarray of complex128, shape (k,) or (N,)
        Ties in modulus are ordered by descending real, then imaginary part.

    References
    ----------
    Lehoucq, R. B., Sorensen, D. C. and Yang, C. (1998). ARPACK Users' Guide. SIAM.

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.analysis import eigenvalues
    >>> eigenvalues(np.array([[0.0, 2.0], [-2.0, 0.5]])).round(4)
    array([0.25+1.9843j, 0.25-1.9843j])
    """
    m, sparse = _check_matrix(w)
    n = m.shape[0]
    if sparse and n > 2:
        kk = _check_k(k, n - 2, True, "eigenvalues")
        vals = scipy.sparse.linalg.eigs(m, k=kk, which="LM", v0=_start_vector(n),
                                        return_eigenvectors=False)
        return _by_modulus(vals.astype(np.complex128))
    kk = _check_k(k, n, False, "eigenvalues")
    dense = m.toarray() if sparse else m
    vals = _by_modulus(scipy.linalg.eigvals(dense, check_finite=False).astype(np.complex128))
    return vals if kk is None else vals[:kk]


def spectral_radius(w):
    r"""max_i |lambda_i(w)|.

    Parameters
    ----------
    w : array_like, shape (N, N), or scipy.sparse matrix

    Returns
    -------
    float

    References
    ----------
    Jaeger, H. (2001). The "echo state" approach to analysing and training recurrent neural
    networks. GMD Report 148.

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.analysis import spectral_radius
    >>> spectral_radius(np.diag([0.5, -0.9]))
    0.9
    """
    m, sparse = _check_matrix(w)
    if sparse and m.shape[0] > 2:
        return float(np.abs(eigenvalues(m, k=1)[0]))
    return float(np.max(np.abs(eigenvalues(m))))


def singular_values(w, k=None):
    r"""Singular values of a weight matrix, descending.

    Parameters
    ----------
    w : array_like, shape (M, N), or scipy.sparse matrix
    k : int, optional
        Dense: all min(M, N) by default, the first k otherwise.  Sparse: the k largest by ARPACK
        (default 6, k < min(M, N)), with a fixed start vector.

    Returns
    -------
    ndarray of float64, shape (k,) or (min(M, N),)

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.analysis import singular_values
    >>> singular_values(np.array([[3.0, 0.0], [0.0, -4.0]]))
    array([4., 3.])
    """
    m, sparse = _check_matrix(w, square=False)
    p = min(m.shape)
    if sparse and p > 1:
        kk = _check_k(k, p - 1, True, "singular values")
        vals = scipy.sparse.linalg.svds(m, k=kk, v0=_start_vector(min(m.shape)),
                                        return_singular_vectors=False, solver="arpack")
        return np.sort(vals)[::-1]
    kk = _check_k(k, p, False, "singular values")
    dense = m.toarray() if sparse else m
    vals = scipy.linalg.svdvals(dense, check_finite=False)
    return vals if kk is None else vals[:kk]


def effective_spectral_radius(w, alpha):
    r"""Spectral radius of the leaky linearisation (1 - alpha) I + alpha w.

    For h_t = (1 - alpha) h_{t-1} + alpha phi(W h_{t-1} + ...) (numrnn's Elman cells with
    ``alpha``, and the rate network), the Jacobian at a point where phi' = 1 is
    (1 - alpha) I + alpha W, with eigenvalues 1 - alpha + alpha lambda_i(W).  Its spectral
    radius, max_i |1 - alpha + alpha lambda_i(W)|, is the leaky network's echo-state criterion.

    Parameters
    ----------
    w : array_like, shape (N, N), or scipy.sparse matrix
    alpha : float in (0, 1]
        Leak rate (``net.alpha``; dt / tau for the rate network).

    Returns
    -------
    float

    References
    ----------
    Jaeger, H., Lukosevicius, M., Popovici, D. and Siewert, U. (2007). Optimization and
    applications of echo state networks with leaky-integrator neurons. Neural Networks 20(3),
    335-352.

    Examples
    --------
    >>> import numpy as np
    >>> from numrnn.analysis import effective_spectral_radius
    >>> round(effective_spectral_radius(np.diag([2.0, -2.0]), 0.5), 12)
    1.5
    """
    m, sparse = _check_matrix(w)
    alpha = _v.check_real("alpha", alpha, 0.0, 1.0, low_open=True)
    n = m.shape[0]
    if sparse and n > 2:
        shifted = (1.0 - alpha) * scipy.sparse.eye_array(n, format="csr") + alpha * m
        return spectral_radius(shifted)
    return float(np.max(np.abs(1.0 - alpha + alpha * eigenvalues(m))))
