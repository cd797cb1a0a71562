"""The norm of a gradient, written once for the CPU (``@njit``) and GPU (``@cuda.jit``) kernels.

``gradient_norm(u, v)`` is ||u + v||_2 (the BPTT sweep carries dL/dh_t as the recurrent part u
plus the step's own cotangent v) in float64, finite whenever u + v is:

- the fast form sums the squares in float64 in eight interleaved partial sums (a fixed order, so
  the result depends on nothing but the inputs; eight chains keep the adder busy, where one
  running sum is a chain of dependent adds).  A float32 gradient's squares cannot overflow or
  underflow in float64;
- a float64 gradient's can (entries above about 1e154, or all below about 1e-154): where the sum
  of squares is not safely inside float64's range, the norm is recomputed with scaling by the
  largest entry (LAPACK's nrm2 idea), NaN if an entry is NaN and inf if one is infinite.
"""
import math

import numba
from numba.extending import register_jitable

#: A sum of squares at least this large and finite has lost nothing to underflow that matters
#: (an underflowed square is below 2.2e-308: at most N of them against 1e-280).
SAFE_SQUARES = 1e-280


@register_jitable
def squared_sum(u, v):
    """sum over j of (u_j + v_j)^2 in float64 (u_j + v_j formed in the arrays' dtype)."""
    n = u.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    n8 = n - n % 8
    for j in range(0, n8, 8):
        d0 = numba.float64(u[j] + v[j])
        d1 = numba.float64(u[j + 1] + v[j + 1])
        d2 = numba.float64(u[j + 2] + v[j + 2])
        d3 = numba.float64(u[j + 3] + v[j + 3])
        d4 = numba.float64(u[j + 4] + v[j + 4])
        d5 = numba.float64(u[j + 5] + v[j + 5])
        d6 = numba.float64(u[j + 6] + v[j + 6])
        d7 = numba.float64(u[j + 7] + v[j + 7])
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
        s4 += d4 * d4
        s5 += d5 * d5
        s6 += d6 * d6
        s7 += d7 * d7
    for j in range(n8, n):
        d = numba.float64(u[j] + v[j])
        s0 += d * d
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@register_jitable
def scaled_norm(u, v):
    """||u + v||_2 in float64, scaled by the largest |u_j + v_j|: no overflow, no underflow of
    the squares; NaN if an entry is NaN, inf if one is infinite."""
    n = u.shape[0]
    m = 0.0
    for j in range(n):
        d = abs(numba.float64(u[j] + v[j]))
        if d != d:
            return d
        if d > m:
            m = d
    if m == 0.0 or m == math.inf:
        return m
    acc = 0.0
    for j in range(n):
        d = numba.float64(u[j] + v[j]) / m
        acc += d * d
    return m * math.sqrt(acc)


@register_jitable
def gradient_norm(u, v):
    """||u + v||_2 in float64: the fast sum of squares where it is safe, else the scaled form."""
    acc = squared_sum(u, v)
    if acc >= SAFE_SQUARES and acc < math.inf:
        return math.sqrt(acc)
    return scaled_norm(u, v)
