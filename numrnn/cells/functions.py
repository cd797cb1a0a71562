"""Scalar building blocks for cell definitions: the logistic function and the nonlinearities.

Plain Python functions of scalars, as the cell protocol asks (:mod:`numrnn.cells.protocol`); a
cell's own functions call them, and numrnn compiles the lot into its kernels.  Each takes
``one``, the number 1 in the kernel's dtype, so that float32 kernels stay in float32.
"""
import math

from numba.extending import register_jitable

__all__ = ["sigmoid", "sigmoid_grad", "NONLINEARITIES", "tanh", "tanh_grad", "relu", "relu_grad",
           "linear", "linear_grad"]


@register_jitable
def sigmoid(z, one):
    """The logistic function 1 / (1 + e^-z)."""
    return one / (one + math.exp(-z))


@register_jitable
def sigmoid_grad(s, one):
    """sigma'(z) written through its value s = sigma(z)."""
    return s * (one - s)


@register_jitable
def tanh(z, one):
    return math.tanh(z)


@register_jitable
def tanh_grad(y, one):
    """tanh'(z) through y = tanh(z)."""
    return one - y * y


@register_jitable
def relu(z, one):
    return z if z > 0 else one - one


@register_jitable
def relu_grad(y, one):
    """relu'(z) through y = relu(z) (0 at z = 0, as in PyTorch)."""
    return one if y > 0 else one - one


@register_jitable
def linear(z, one):
    return z


@register_jitable
def linear_grad(y, one):
    return one


#: name -> (phi(z, one), phi'(z, one) written through y = phi(z))
NONLINEARITIES = {"tanh": (tanh, tanh_grad), "relu": (relu, relu_grad),
                  "linear": (linear, linear_grad)}
