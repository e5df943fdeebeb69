"""gpu-predictor: a GPU image-inference server for Kubernetes.

A KServe custom predictor that batches concurrent requests onto the GPU inside the process.
Importing this package has no side effects and does not import torch or KServe; the entry
point is :func:`predictor.cli.main` (the ``gpu-predictor`` command).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
