"""numrnn: Numba-accelerated recurrent neural networks for scientific study."""
from .network import RNN

__version__ = "0.1.0"

__all__ = ["RNN", "__version__"]
