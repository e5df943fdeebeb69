"""``ImageModel``: the KServe custom predictor. Wiring only.

``preprocess`` decodes the request (codec) and each image (preprocess, in the bounded decode
pool), ``predict`` submits every image to the model's :class:`DynamicBatcher` and awaits the
results under the request's deadline, ``postprocess`` turns probabilities into top-k and
encodes the answer in the protocol it was asked in.

A model is built complete (engines warmed up, see :mod:`predictor.build`) and published by
the repository; unloading drains it and frees its engines.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import kserve
import numpy as np

from predictor import codec
from predictor.batcher import DynamicBatcher, Reservation
from predictor.decode_pool import DecodePool
from predictor.errors import DeadlineExceeded, Draining, NotReady, PredictorError
from predictor.model_config import ModelSettings, RequestDefaults
from predictor.model_store import ModelSpec
from predictor.postprocess import top_k
from predictor.preprocess import check_tensor, decode_image

if TYPE_CHECKING:
    from predictor.build import ServerLimits
    from predictor.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A request between preprocess and predict: decoded images plus its deadline."""

    request: codec.ImageRequest
    pixels: list[np.ndarray]
    deadline: float
    reservation: Reservation


@dataclass
class Predicted:
    """A request between predict and postprocess: one probability row per image."""

    request: codec.ImageRequest
    rows: Sequence[np.ndarray]


class ImageModel(kserve.Model):  # type: ignore[misc]
    """An image classifier served through KServe with in-process dynamic batching.

    Args:
        spec: the model directory's manifest.
        settings: how it is served (batching, devices, dtype).
        batcher: its batcher over one engine per device (started by :meth:`start`).
        engines: those engines (kept to describe and free them).
        defaults: per-request defaults, changeable while serving.
        decode_pool: the bounded thread pool images are decoded in.
        limits: the server-wide limits (pixels, deadline, failures before unhealthy).
    """

    def __init__(
        self,
        spec: ModelSpec,
        settings: ModelSettings,
        batcher: DynamicBatcher,
        engines: Sequence[Engine],
        defaults: RequestDefaults,
        decode_pool: DecodePool,
        limits: ServerLimits,
    ) -> None:
        super().__init__(spec.name)
        self.spec = spec
        self.settings = settings
        self.batcher = batcher
        self.engines = list(engines)
        self.defaults = defaults
        self._decode_pool = decode_pool
        self._max_pixels = limits.max_image_pixels
        self._timeout_s = limits.request_timeout_s
        self._max_failures = limits.max_consecutive_failures
        self.draining = False
        self.ready = True

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self) -> bool:
        """Nothing to do: the model is built complete. KServe calls this when unhealthy."""
        return bool(self.ready)

    def start(self) -> None:
        """Start the batch collector on the running event loop."""
        self.batcher.start()

    @property
    def broken(self) -> bool:
        """True after ``max_consecutive_failures`` failed batches in a row."""
        if self._max_failures == 0:
            return False
        return self.batcher.consecutive_failures >= self._max_failures

    async def healthy(self) -> bool:
        """Ready to take traffic: loaded, not draining, engine not failing."""
        return bool(self.ready) and not self.draining and not self.broken

    def devices(self) -> list[str]:
        """Physical devices this model runs on (``cpu``, ``cuda:0``...)."""
        return sorted({worker.device for worker in self.batcher.workers})

    @property
    def dtype_name(self) -> str:
        """The compute dtype in use (``float16``...)."""
        return self.engines[0].dtype_name if self.engines else self.settings.dtype

    @property
    def traced(self) -> bool:
        """Whether the engines run a TorchScript trace (else eager PyTorch)."""
        return bool(self.engines) and all(engine.jit for engine in self.engines)

    def begin_drain(self) -> None:
        """Stop reporting ready and refuse new work; admitted work still finishes."""
        self.draining = True
        self.batcher.close()

    async def stop(self) -> None:
        """Stop the batcher and free the engines (device memory included)."""
        self.ready = False
        await self.batcher.stop()
        self.engines.clear()
        gc.collect()

    # -- metadata ----------------------------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        """v2 metadata: encoded images (BYTES), or a preprocessed FP32 tensor."""
        height, width = self.spec.input.crop
        return [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {
                "name": "tensor",
                "datatype": "FP32",
                "shape": [-1, self.spec.input.channels, height, width],
            },
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        """v2 metadata: top-k labels, scores and class ids."""
        return [
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "class_ids", "datatype": "INT64", "shape": [-1, -1]},
        ]

    # -- request path ------------------------------------------------------------------------

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Prepared:
        """Decode the request and every image; images decode in parallel in the pool."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        batcher = self._admitting()
        request = codec.decode_request(payload, headers, max_images=batcher.capacity)
        count = len(request.images)
        timeout_ms = request.timeout_ms or math.inf
        deadline = started + min(timeout_ms / 1000.0, self._timeout_s)
        reservation = batcher.reserve(count)
        try:
            jobs = [self._decode_pool.run(self._prepare_one, image) for image in request.images]
            outcomes = await asyncio.gather(*jobs, return_exceptions=True)
            for index, outcome in enumerate(outcomes):
                label = request.label(index)
                if isinstance(outcome, PredictorError) and label is not None:
                    outcome.message = f"{label}: {outcome.message}"
                if isinstance(outcome, BaseException):
                    raise outcome
            if loop.time() >= deadline:
                raise DeadlineExceeded("deadline passed while decoding the images")
        except BaseException:
            reservation.release()
            raise
        return Prepared(request, list(outcomes), deadline, reservation)  # type: ignore[arg-type]

    def _prepare_one(self, image: codec.ImagePayload) -> np.ndarray:
        if isinstance(image, bytes):
            return decode_image(image, self.spec.input, self._max_pixels)
        return check_tensor(image, self.spec.input)

    async def predict(self, prepared: Prepared, headers: dict[str, str] | None = None) -> Predicted:
        """Submit each image to the batcher; await all results before the deadline."""
        loop = asyncio.get_running_loop()
        batcher = self.batcher
        request_id = (headers or {}).get("x-request-id") or prepared.request.request_id
        try:
            futures = [
                batcher.submit(pixels, prepared.deadline, prepared.reservation, request_id)
                for pixels in prepared.pixels
            ]
        finally:
            prepared.reservation.release()
        gathered = asyncio.gather(*futures, return_exceptions=True)
        try:
            outcomes = await asyncio.wait_for(gathered, max(0.0, prepared.deadline - loop.time()))
        except TimeoutError:
            raise DeadlineExceeded("deadline passed before the result was ready") from None
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return Predicted(prepared.request, cast(list[np.ndarray], outcomes))

    async def postprocess(
        self, predicted: Predicted, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | Any:
        """Softmax top-k per image, encoded in the protocol of the request."""
        request = predicted.request
        k = request.top_k or self.defaults.top_k
        results = [top_k(row, self.spec.labels, k) for row in predicted.rows]
        if request.protocol == "v1":
            return codec.encode_v1(results)
        answer = codec.encode_v2(request, self.name, self.spec.version, results)
        if request.protocol == "grpc":
            return codec.to_infer_response(answer, request)
        return answer

    def _admitting(self) -> DynamicBatcher:
        if self.draining:
            raise Draining(f"model {self.name} is shutting down or unloading; retry shortly")
        if not self.ready or self.broken:
            raise NotReady(f"model {self.name} is not ready")
        return self.batcher
