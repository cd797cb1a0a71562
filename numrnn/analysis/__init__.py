"""Dynamical-systems analysis of recurrent networks: step Jacobians, Lyapunov spectra, gradient
propagation, weight spectra and fixed points.  Everything is built on one tangent map per cell
(:mod:`numrnn.cells`), the same one backpropagation through time uses.

Results are float64 for float32 and float64 networks alike: a float32 network's own trajectory,
with its derivatives evaluated in float64 (see :mod:`numrnn.analysis.jacobians`)."""
from .jacobians import jacobians, pack_state, state_size, step_jvp, step_vjp, unpack_state
from .fixed_points import FixedPointsResult, fixed_points
from .gradients import GradientPropagationResult, gradient_propagation
from .lyapunov import LyapunovResult, lyapunov_from_jacobians, lyapunov_spectrum
from .covariant import (CovariantLyapunovResult, covariant_lyapunov_vectors,
                        covariant_lyapunov_vectors_from_jacobians)
from .spectra import effective_spectral_radius, eigenvalues, singular_values, spectral_radius

__all__ = ["jacobians", "step_jvp", "step_vjp", "state_size", "pack_state", "unpack_state",
           "lyapunov_spectrum", "lyapunov_from_jacobians", "LyapunovResult",
           "covariant_lyapunov_vectors", "covariant_lyapunov_vectors_from_jacobians",
           "CovariantLyapunovResult",
           "gradient_propagation", "GradientPropagationResult", "eigenvalues", "spectral_radius",
           "singular_values", "effective_spectral_radius", "fixed_points", "FixedPointsResult"]
