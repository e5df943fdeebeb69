"""KServe's data plane, hardened: request-body parsing failures are 400s, never 500s."""

from __future__ import annotations

from typing import Any

from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.dataplane import DataPlane

from predictor.errors import BadInput


class HardenedDataPlane(DataPlane):  # type: ignore[misc]
    """KServe's data plane whose request decoding cannot fail with a 500.

    KServe parses a request body into its own types before the model sees it; for the v2
    binary extension (``Inference-Header-Content-Length``) and CloudEvents that parsing
    indexes untrusted JSON and framing directly, so a malformed body raises ``KeyError``,
    ``TypeError``, ``struct.error``... and, for non-UTF-8 binary BYTES, an error whose text
    quotes the payload. Here every such failure is a one-line 400 that names only the
    exception type.
    """

    def decode(
        self,
        body: Any,
        headers: Any,
        protocol_version: str = "v1",
        model_name: str | None = None,
    ) -> Any:
        """Decode like KServe does; anything but a clean ``InvalidInput`` becomes 400."""
        try:
            return super().decode(body, headers, protocol_version, model_name)
        except (InvalidInput, MemoryError):
            raise
        except InferenceError:  # KServe's text quotes the bytes it could not convert
            raise BadInput(
                "binary v2 tensor data could not be decoded (BYTES must be UTF-8 text on this "
                "route: send images base64-encoded in JSON, or raw over gRPC)"
            ) from None
        except Exception as exc:  # untrusted body: every parsing failure is bad input
            raise BadInput(f"malformed request body ({type(exc).__name__})") from None
