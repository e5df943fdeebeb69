"""Loading a model's network and weights, never through arbitrary pickle.

A state dict loads with ``torch.load(weights_only=True)`` or safetensors into a known
architecture (:mod:`predictor.store.archs`); a ``torch.export`` program loads with every
unpickling inside it forced through the weights-only unpickler.
"""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from predictor.store.manifest import ModelStoreError
from predictor.store.spec import ModelSpec

if TYPE_CHECKING:
    from torch import nn


def load_module(spec: ModelSpec) -> nn.Module:
    """Build the network and load its weights through a safe loader.

    Args:
        spec: the model to load.

    Returns:
        The module on CPU, in eval mode.

    Raises:
        ModelStoreError: the weights do not load or do not fit the architecture.
    """
    import torch

    from predictor.store import archs

    try:
        if spec.program is not None:
            return _load_program(spec.program)
        if spec.arch is None or spec.weights is None:
            raise ModelStoreError(f"model {spec.name}: the manifest names no architecture")
        module: nn.Module = archs.build(spec.arch, **spec.arch_kwargs)
        if spec.weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(spec.weights), device="cpu")
        else:
            state = torch.load(str(spec.weights), map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        return module.eval()
    except ModelStoreError:
        raise
    except Exception as exc:  # any loader failure becomes a clear, named error
        raise ModelStoreError(f"model {spec.name}: cannot load weights ({exc})") from exc


#: Makes every ``torch.load`` weights-only, whatever its caller asked for.
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
#: ``torch.export.load`` reads that variable; it is process-wide, so programs load one at a
#: time (the repository loads on one thread anyway; this keeps any other caller out too).
_ENV_LOCK = threading.Lock()


def _load_program(path: Path) -> nn.Module:
    """``torch.export.load`` without its pickle paths.

    ``torch.export.load`` unpickles archive members with ``torch.load(weights_only=False)``
    (tensors marked ``use_pickle``, and as a fallback for the legacy format) and with plain
    ``pickle.loads`` (opaque-object constants): a crafted ``.pt2`` runs code on load. Here
    archives holding custom or opaque objects are refused, and every ``torch.load`` inside
    is forced to the weights-only unpickler, so a pickle payload fails to load instead.
    """
    import torch

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any("opaque_obj_" in name or "custom_obj_" in name for name in names):
        raise ModelStoreError(
            f"program {path.name}: archives holding custom or opaque Python objects are not "
            "loaded (they unpickle arbitrary code)"
        )
    with _ENV_LOCK:
        previous = os.environ.get(_FORCE_WEIGHTS_ONLY)
        os.environ[_FORCE_WEIGHTS_ONLY] = "1"
        try:
            module: nn.Module = torch.export.load(str(path)).module()
        finally:
            if previous is None:
                del os.environ[_FORCE_WEIGHTS_ONLY]
            else:
                os.environ[_FORCE_WEIGHTS_ONLY] = previous
    return module
