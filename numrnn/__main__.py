"""``python -m numrnn``: the same as the ``numrnn`` command."""
import sys

from .cli import main

sys.exit(main())
