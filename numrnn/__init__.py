"""numrnn: Numba-accelerated recurrent neural networks for scientific study."""
from . import cells, config
from .cells import Cell, CellCheckError, check_cell
from .errors import NonFiniteError, NonFiniteWarning, nonfinite
from .gradcheck import GradcheckError, GradcheckResult, gradcheck
from .network import RNN, ParameterDict
from .analysis import (CovariantLyapunovResult, covariant_lyapunov_vectors,
                       covariant_lyapunov_vectors_from_jacobians)
from .analysis import (FixedPointsResult, GradientPropagationResult, LyapunovResult,
                       effective_spectral_radius, eigenvalues, fixed_points, gradient_propagation,
                       jacobians, lyapunov_from_jacobians, lyapunov_spectrum, singular_values,
                       spectral_radius)
from .ensemble import Ensemble

__version__ = "0.1.0"

__all__ = ["RNN", "ParameterDict", "Cell", "CellCheckError", "check_cell", "cells",
           "NonFiniteError", "NonFiniteWarning", "nonfinite", "config", "gradcheck",
           "GradcheckResult", "GradcheckError", "__version__", "jacobians", "lyapunov_spectrum",
           "lyapunov_from_jacobians", "LyapunovResult", "gradient_propagation",
           "GradientPropagationResult", "eigenvalues", "spectral_radius", "singular_values",
           "effective_spectral_radius", "fixed_points", "FixedPointsResult",
           "covariant_lyapunov_vectors", "covariant_lyapunov_vectors_from_jacobians",
           "CovariantLyapunovResult", "Ensemble"]
