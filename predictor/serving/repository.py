"""The model repository: the only thing that creates or destroys served models.

It scans ``--model-dir`` (again on every index, so a directory copied in after start can be
loaded), builds models on its own loader thread (weights, tracing and warm-up never run on
the event loop, and loads happen one at a time), publishes them to the edges, and retires
them: an unloaded model stops admitting, finishes what it admitted, and frees its engines.

Operations on one name are serialised by a per-name lock, so every race ends in a defined
state: two loads run one after the other (the second reloads); an unload during a load
waits for it and then unloads; a reload swaps the new version in before the old one drains,
so the model keeps answering throughout.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from predictor.config import Settings
from predictor.errors import (
    BadInput,
    Draining,
    LoadFailed,
    NotReady,
    PredictorError,
    UnknownModel,
)
from predictor.runtime.budget import MemoryBudget
from predictor.runtime.decode_pool import DecodePool
from predictor.runtime.devices import DeviceError
from predictor.runtime.memory import release_memory
from predictor.runtime.threads import name_current_thread
from predictor.serving.build import build_model
from predictor.serving.model import ImageModel
from predictor.serving.model_config import ModelSettings, ServerLimits, parse_load_config
from predictor.serving.state import ServingState
from predictor.store.manifest import ModelStoreError, read_manifest, scan
from predictor.store.spec import ModelSpec
from predictor.tasks.registry import task_for

log = logging.getLogger("predictor")

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


@dataclass(frozen=True)
class Status:
    """What the index says of a model that is not simply loaded and ready."""

    state: str
    reason: str = ""


class Repository:
    """Loads, reloads and unloads the models of ``--model-dir``.

    Args:
        settings: server settings (model directory, serving defaults, limits).
        state: the shared serving state; its ``models`` dict is what the edges serve.
        decode_pool: the shared image-decoding pool every model uses.
        budget: the process's memory budget decodes are held against.
    """

    def __init__(
        self,
        settings: Settings,
        state: ServingState,
        decode_pool: DecodePool,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.state = state
        self.models = state.models
        self._model_dir = settings.model_dir
        self._model_name = settings.model_name
        self._base = ModelSettings.from_settings(settings)
        self._drain_timeout_s = settings.drain_timeout_s
        self._limits = ServerLimits(
            settings.max_image_pixels,
            settings.request_timeout_s,
            settings.max_consecutive_failures,
            budget,
        )
        self._decode_pool = decode_pool
        self._status: dict[str, Status] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._loader = ThreadPoolExecutor(
            1, thread_name_prefix="loader", initializer=name_current_thread
        )

    # -- discovery ---------------------------------------------------------------------------

    def scan(self) -> dict[str, Path]:
        """Model directories by served name, read from disk now."""
        try:
            return scan(self._model_dir, self._model_name)
        except ModelStoreError as exc:
            raise BadInput(str(exc)) from None

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model directory, loaded or not, in Triton's index shape."""
        found = self.scan()
        for name in [
            n for n, s in self._status.items() if n not in found and s.state == UNAVAILABLE
        ]:
            del self._status[name]  # its directory is gone: nothing left to list
        names = sorted(set(found) | set(self.models) | set(self._status))
        entries = []
        for name in names:
            model = self.models.get(name)
            status = self._status.get(name)
            if status is None and model is not None:
                status = Status(READY)
            elif status is None or (status.state == UNAVAILABLE and name in found):
                status = _unloaded_status(found.get(name), name, status)
            if ready_only and status.state != READY:
                continue
            entry = {"name": name, "state": status.state, "reason": status.reason}
            if model is not None:
                entry["version"] = model.spec.version
            entries.append(entry)
        return entries

    def absent(self, name: str) -> UnknownModel | NotReady:
        """The error for a request naming a model that is not being served."""
        status = self._status.get(name)
        if status is not None and status.state == LOADING:
            return NotReady(f"model {name} is loading; retry shortly")
        if status is not None and status.reason == "unloaded":
            return UnknownModel(f"model {name} is unloaded; load it through the repository API")
        if status is not None and status.state == UNAVAILABLE:
            return UnknownModel(f"model {name} is not loaded: {status.reason}")
        return UnknownModel(f"model {name} is not served here")

    def get(self, name: str) -> ImageModel:
        """The served model ``name``, or the 404/503 that says why there is none."""
        model = self.models.get(name)
        if model is None:
            raise self.absent(name)
        return model

    # -- start-up ----------------------------------------------------------------------------

    def load_at_start(self, names: list[str] | None) -> list[ImageModel]:
        """Build the models to serve from the start, blocking, before the server listens.

        Args:
            names: the models to load; None loads every model found.

        Raises:
            ModelStoreError: a named model has no directory, or one fails to load.
        """
        found = scan(self._model_dir, self._model_name)
        if names is None:
            if not found:
                raise ModelStoreError(
                    f"no model found in {self._model_dir}: expected model.json there or in "
                    "its subdirectories"
                )
            names = list(found)
        missing = [n for n in names if n not in found]
        if missing:
            raise ModelStoreError(
                f"--load-models: no model directory for {', '.join(missing)} in "
                f"{self._model_dir} (found: {', '.join(found) or 'none'})"
            )
        return [
            build_model(read_manifest(found[n], n), self._base, self._limits, self._decode_pool)
            for n in names
        ]

    def publish(self, model: ImageModel) -> ImageModel | None:
        """Start ``model`` and serve it under its name; the model it replaces, if any."""
        model.start()
        return self.state.publish(model)

    # -- runtime operations ------------------------------------------------------------------

    async def load(self, name: str, config: Any = None) -> ImageModel:
        """Load ``name`` (or reload it: the new version takes over, then the old one drains).

        Args:
            name: a model directory's served name.
            config: a JSON object as text overriding serving settings for this load.

        Raises:
            UnknownModel: no directory of that name (404).
            BadInput: the manifest or the override is invalid (400, with the problem).
            LoadFailed: the weights or a device failed (500, with the problem).
            Draining: the server is shutting down.
        """
        self._refuse_when_closing()
        directory = self.scan().get(name)
        if directory is None:
            raise UnknownModel(f"no model directory named {name} in {self._model_dir}")
        loop = asyncio.get_running_loop()
        try:
            spec = await loop.run_in_executor(self._loader, read_manifest, directory, name)
        except ModelStoreError as exc:
            raise BadInput(str(exc)) from None
        settings = self._base
        if config is not None:
            settings = parse_load_config(config, self._base, task_for(spec))
        async with self._lock(name):
            self._refuse_when_closing()
            self._status[name] = Status(LOADING)
            try:
                model = await self._build(spec, settings)
            except BaseException as exc:
                if name in self.models:  # a failed reload: the loaded version keeps serving
                    self._status.pop(name, None)
                else:
                    reason = exc.message if isinstance(exc, PredictorError) else "load cancelled"
                    self._status[name] = Status(UNAVAILABLE, reason)
                raise
            self._status.pop(name, None)
            old = self.publish(model)
            log.info("model %s: loaded version %s", name, model.spec.version)
            if old is not None:
                await self._retire(old)
            return model

    async def unload(self, name: str) -> None:
        """Stop serving ``name``: refuse new work, finish admitted work, free its engines.

        Unloading a model that is not loaded succeeds (nothing to do), as Triton's does.

        Raises:
            UnknownModel: neither loaded nor a directory of that name (404).
        """
        if name not in self.models and name not in self.scan():
            raise UnknownModel(f"no model named {name} here")
        async with self._lock(name):
            model = self.models.get(name)
            if model is None:
                return
            self._status[name] = Status(UNLOADING)
            try:
                await self._retire(model)
            finally:
                if self.models.get(name) is model:
                    self.state.withdraw(name)
                self._status[name] = Status(UNAVAILABLE, "unloaded")
            log.info("model %s: unloaded", name)

    async def close(self) -> None:
        """Stop every model's batcher (at process exit, after the drain)."""
        for model in list(self.models.values()):
            await model.stop()
        self._loader.shutdown(wait=False, cancel_futures=True)

    # -- internals ---------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _refuse_when_closing(self) -> None:
        if self.state.closing:
            raise Draining("server is shutting down; retry on another replica")

    async def _build(self, spec: ModelSpec, settings: ModelSettings) -> ImageModel:
        loop = asyncio.get_running_loop()
        name = spec.name
        try:
            return await loop.run_in_executor(
                self._loader, build_model, spec, settings, self._limits, self._decode_pool
            )
        except (ModelStoreError, DeviceError) as exc:
            raise LoadFailed(f"model {name}: {exc}") from None
        except Exception as exc:
            log.exception("model %s: load failed", name)
            raise LoadFailed(f"model {name}: load failed ({type(exc).__name__}); see log") from None

    async def _retire(self, model: ImageModel) -> None:
        """Drain ``model`` (up to the drain timeout), stop it and give its memory back."""
        try:
            await asyncio.wait_for(model.drain(), self._drain_timeout_s)
        except TimeoutError:
            log.warning("model %s: drain timed out; queued requests get 503", model.name)
        await model.stop()
        await asyncio.get_running_loop().run_in_executor(self._loader, release_memory)


def _unloaded_status(directory: Path | None, name: str, status: Status | None) -> Status:
    """Why a model that is not loaded is not: a broken manifest says so at once."""
    if directory is None:
        return status or Status(UNAVAILABLE, "not loaded")
    try:
        read_manifest(directory, name)
    except ModelStoreError as exc:
        return Status(UNAVAILABLE, str(exc))
    return status or Status(UNAVAILABLE, "not loaded")
