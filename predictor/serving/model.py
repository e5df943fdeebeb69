"""``ImageModel``: the KServe custom predictor, one per served model. Wiring only.

A request (an :class:`~predictor.serving.request.ImageRequest` the edge decoded) goes
through KServe's three hooks, timed into KServe's ``request_*_seconds`` histograms:
``preprocess`` takes room in the batcher (a :class:`~predictor.runtime.ticket.Ticket`,
or 503 at once), checks the task's parameters and prepares every image in the bounded
decode pool; ``predict`` submits the images under the ticket and awaits them under the
request's deadline; then the task turns the rows into results (timed as KServe's
postprocess), counted for the metrics, and :meth:`ImageModel.encode` answers them in the
protocol of the request (or :meth:`ImageModel.annotate` draws them on the image).
:meth:`ImageModel.results` owns the ticket from the first step to the last, so room is given
back whatever happens in between.

A model is built complete (:mod:`predictor.serving.build`) and published by the repository;
its batcher's ``closed`` flag is its one admission switch (drain and unload close it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import kserve
from kserve.metrics import POST_HIST_TIME, PRE_HIST_TIME, PREDICT_HIST_TIME, get_labels

from predictor.errors import BadInput, DeadlineExceeded, Draining, NotReady, PredictorError
from predictor.metrics import ModelObserver
from predictor.runtime.batcher import DynamicBatcher
from predictor.runtime.decode_pool import DecodePool
from predictor.runtime.ticket import Ticket
from predictor.serving.model_config import ModelSettings, ServerLimits
from predictor.serving.request import ImageRequest
from predictor.store.spec import ModelSpec
from predictor.tasks.annotate import render
from predictor.tasks.base import Item, Task, Tensor, V2Answer
from predictor.tasks.images import DecodeLimits

if TYPE_CHECKING:
    from predictor.runtime.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A request between preprocess and predict: prepared images, parameters, deadline."""

    request: ImageRequest
    items: list[Item]
    parameters: dict[str, Any]
    deadline: float
    ticket: Ticket


@dataclass
class Predicted:
    """A request between predict and postprocess: one result row per image."""

    prepared: Prepared
    rows: Sequence[Any]


class ImageModel(kserve.Model):  # type: ignore[misc]
    """An image model served through KServe with in-process dynamic batching.

    Args:
        spec: the model directory's manifest.
        task: what the model does (classification...).
        settings: how it is served (batching, devices, dtype).
        batcher: its batcher over one engine per device (started by :meth:`start`).
        engines: those engines (kept to describe and free them).
        decode_pool: the bounded thread pool images are prepared in.
        limits: the server-wide limits (pixels, deadline, failures before unhealthy).
    """

    def __init__(
        self,
        spec: ModelSpec,
        task: Task,
        settings: ModelSettings,
        batcher: DynamicBatcher,
        engines: Sequence[Engine],
        decode_pool: DecodePool,
        limits: ServerLimits,
    ) -> None:
        super().__init__(spec.name)
        self.spec = spec
        self.task = task
        self.settings = settings
        self.batcher = batcher
        self.engines = list(engines)
        #: Per-request defaults (the task's parameters), changeable while serving.
        self.defaults: dict[str, Any] = {**task.defaults(), **settings.defaults}
        self._decode_pool = decode_pool
        self._decode_limits = DecodeLimits(limits.max_image_pixels, limits.budget)
        self._timeout_s = limits.request_timeout_s
        self._max_failures = limits.max_consecutive_failures
        self.ready = True
        #: Where result counts go (the metrics; set when the model is published).
        self.observer: ModelObserver | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self) -> bool:
        """Nothing to do: the model is built complete."""
        return bool(self.ready)

    def start(self) -> None:
        """Start the batch collector on the running event loop."""
        self.batcher.start()

    @property
    def closed(self) -> bool:
        """True once draining or unloading: new requests are refused (503)."""
        return self.batcher.closed

    @property
    def broken(self) -> bool:
        """True after ``max_consecutive_failures`` failed batches in a row."""
        if self._max_failures == 0:
            return False
        return self.batcher.consecutive_failures >= self._max_failures

    async def healthy(self) -> bool:
        """Ready to take traffic: loaded, not closed, engine not failing."""
        return bool(self.ready) and not self.closed and not self.broken

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

    async def drain(self) -> None:
        """Refuse new work and wait until what was admitted is answered."""
        self.batcher.close()
        await self.batcher.drain()

    async def stop(self) -> None:
        """Stop the batcher and free the engines (device memory included)."""
        self.ready = False
        await self.batcher.stop()
        self.engines.clear()
        gc.collect()

    # -- metadata (KServe's names) ---------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        """v2 metadata of the inputs."""
        return self.task.input_metadata()

    def get_output_types(self) -> list[dict[str, Any]]:
        """v2 metadata of the outputs."""
        return self.task.output_metadata()

    # -- request path ------------------------------------------------------------------------

    async def __call__(
        self, body: ImageRequest, headers: dict[str, str] | None = None, verb: Any = None
    ) -> tuple[dict[str, Any] | V2Answer, dict[str, str]]:
        """Run the three hooks; the ticket taken in preprocess is released after predict."""
        return self.encode(body, await self.results(body, headers)), {}

    async def results(self, body: ImageRequest, headers: dict[str, str] | None = None) -> list[Any]:
        """The task's result for each image (preprocess, predict, the task's postprocess)."""
        labels = get_labels(self.name)
        with PRE_HIST_TIME.labels(**labels).time():
            prepared = await self.preprocess(body, headers)
        try:
            with PREDICT_HIST_TIME.labels(**labels).time():
                predicted = await self.predict(prepared, headers)
        finally:
            prepared.ticket.release()
        with POST_HIST_TIME.labels(**labels).time():
            results = self.task.postprocess(predicted.rows, prepared.items, prepared.parameters)
        counts = self.task.counts(results)
        if counts is not None and self.observer is not None:
            self.observer.results_counted(counts)
        return results

    async def annotate(
        self, body: ImageRequest, media: str, headers: dict[str, str] | None = None
    ) -> bytes:
        """The request's one image with its result drawn on it, encoded as ``media``."""
        image = body.images[0]
        if len(body.images) != 1 or not isinstance(image, bytes):
            raise BadInput("annotate takes exactly one encoded image")
        (result,) = await self.results(body, headers)
        return await self._decode_pool.run(self._render, (image, result, media))

    def _render(self, job: tuple[bytes, Any, str]) -> bytes:
        image, result, media = job
        return render(image, self.task, result, self._decode_limits, media)

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Prepared:
        """Take room in the batcher, check the parameters, prepare every image in the pool."""
        request: ImageRequest = payload
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self.closed:
            raise Draining(f"model {self.name} is shutting down or unloading; retry shortly")
        if not self.ready or self.broken:
            raise NotReady(f"model {self.name} is not ready")
        parameters = {**self.defaults, **self.task.check_parameters(request.parameters)}
        timeout_ms = request.timeout_ms or math.inf
        deadline = started + min(timeout_ms / 1000.0, self._timeout_s)
        ticket = self.batcher.reserve(len(request.images))
        try:
            jobs = [self._decode_pool.run(self._prepare_one, image) for image in request.images]
            outcomes = await asyncio.gather(*jobs, return_exceptions=True)
            del jobs  # the futures hold the outcomes too
            items: list[Item] = []
            failure: BaseException | None = None
            for index, outcome in enumerate(outcomes):
                label = request.label(index)
                if isinstance(outcome, PredictorError) and label is not None:
                    outcome.message = f"{label}: {outcome.message}"
                if isinstance(outcome, BaseException):
                    failure = outcome
                    break
                items.append(outcome)
            if failure is not None:
                # Not raised from the list: its traceback would reach this frame, which
                # holds the list, and the images would live on in a reference cycle.
                del outcomes, outcome
                raise failure
            if loop.time() >= deadline:
                raise DeadlineExceeded("deadline passed while decoding the images")
        except BaseException:
            ticket.release()
            raise
        return Prepared(request, items, parameters, deadline, ticket)

    def _prepare_one(self, image: bytes | Any) -> Item:
        return self.task.prepare(image, self._decode_limits)

    async def predict(self, prepared: Prepared, headers: dict[str, str] | None = None) -> Predicted:
        """Submit each image under the ticket; await all results before the deadline."""
        loop = asyncio.get_running_loop()
        request_id = (headers or {}).get("x-request-id") or prepared.request.request_id
        futures = [
            prepared.ticket.submit(
                self.task.batch_input(item, prepared.parameters), prepared.deadline, request_id
            )
            for item in prepared.items
        ]
        gathered = asyncio.gather(*futures, return_exceptions=True)
        try:
            outcomes = await asyncio.wait_for(gathered, max(0.0, prepared.deadline - loop.time()))
        except TimeoutError:
            raise DeadlineExceeded("deadline passed before the result was ready") from None
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return Predicted(prepared, outcomes)

    def encode(self, request: ImageRequest, results: list[Any]) -> dict[str, Any] | V2Answer:
        """Results in the protocol of the request (v1 JSON, or a v2 answer)."""
        if request.protocol == "v1":
            return self.task.encode_v1(results)
        arrays = self.task.v2_outputs(results)
        wanted = request.requested_outputs or dict.fromkeys(self.task.outputs)
        outputs = [
            Tensor(name, *arrays[name], request.binary_outputs if binary is None else binary)
            for name, binary in wanted.items()
        ]
        answer_id = request.request_id or str(uuid.uuid4())
        return V2Answer(self.name, self.spec.version, answer_id, outputs)
