"""numrnn: Numba-accelerated recurrent neural networks for scientific study."""
from .gradcheck import GradcheckError, GradcheckResult, gradcheck
from .network import RNN
from .analysis import jacobians

__version__ = "0.1.0"

__all__ = ["RNN", "gradcheck", "GradcheckResult", "GradcheckError", "__version__",
           "jacobians"]
