"""numrnn: Numba-accelerated recurrent neural networks for scientific study."""
from .gradcheck import GradcheckError, GradcheckResult, gradcheck
from .network import RNN

__version__ = "0.1.0"

__all__ = ["RNN", "gradcheck", "GradcheckResult", "GradcheckError", "__version__"]
