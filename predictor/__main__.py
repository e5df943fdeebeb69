"""``python -m predictor``: the same as the ``gpu-predictor`` command."""

import sys

from predictor.cli import main

sys.exit(main())
