"""The REST routes: health, metadata, config and labels, the repository API, inference.

Each handler takes an :class:`~predictor.http_routes.HttpRequest` and returns an
:class:`~predictor.http_routes.Answer`; the edge (:mod:`predictor.edge.http_edge`) does auth,
limits, drain, accounting and error answers around them. :func:`routes` is the one table of
what is served, which the OpenAPI document (:mod:`predictor.edge.openapi`) describes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import REGISTRY, exposition

from predictor import __version__
from predictor.config import Settings
from predictor.edge import multipart, protocols, rest_v2
from predictor.edge.routes import Answer, HttpRequest, Route
from predictor.errors import BadInput, MethodNotAllowed, UnknownModel
from predictor.serving import model_docs
from predictor.serving.model import ImageModel
from predictor.serving.model_config import apply_patch
from predictor.serving.repository import Repository
from predictor.serving.request import ImagePayload, ImageRequest
from predictor.serving.state import ServingState
from predictor.tasks import annotate
from predictor.tasks.base import V2Answer

SERVER_NAME = "gpu-predictor"
_JSON = (b"content-type", b"application/json")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def json_answer(document: Any, status: int = 200) -> Answer:
    """A JSON answer."""
    return Answer(status, [_JSON], orjson.dumps(document, option=_JSON_OPTIONS))


def _json_body(request: HttpRequest, default: Any = None) -> Any:
    """The request's JSON body; ``default`` when it is empty."""
    if not request.body.strip():
        return default
    try:
        return orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise BadInput("malformed request: body is not valid JSON") from None


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


class HttpApi:
    """The handlers, bound to the serving state and the repository.

    Args:
        settings: server settings (model control, docs).
        state: the shared serving state.
        repository: the model repository.
    """

    def __init__(self, settings: Settings, state: ServingState, repository: Repository) -> None:
        self.state = state
        self.repository = repository
        self.explicit = settings.model_control == "explicit"

    # -- health and server ---------------------------------------------------------------------

    async def live(self, request: HttpRequest) -> Answer:
        """Liveness: 503 once a model's engine keeps failing."""
        ok = self.state.live()
        return json_answer({"live": ok, "status": "alive" if ok else "failing"}, 200 if ok else 503)

    async def ready(self, request: HttpRequest) -> Answer:
        """Readiness of the server: every loaded model healthy, not draining."""
        models = list(self.state.models.values())
        ok = not self.state.closing and all([await m.healthy() for m in models])
        return json_answer({"ready": ok}, 200 if ok else 503)

    async def metrics(self, request: HttpRequest) -> Answer:
        """Prometheus metrics."""
        encoder, content_type = exposition.choose_encoder(request.headers.get("accept", ""))
        return Answer(200, [(b"content-type", content_type.encode())], encoder(REGISTRY))

    async def server_metadata(self, request: HttpRequest) -> Answer:
        """v2 server metadata, with the protocol extensions served."""
        extensions = ["binary_tensor_data", "model_configuration"]
        if self.explicit:
            extensions.append("model_repository")
        return json_answer({"name": SERVER_NAME, "version": __version__, "extensions": extensions})

    async def model_list(self, request: HttpRequest) -> Answer:
        """The loaded models (KServe's ``/v1/models`` and ``/v2/models``)."""
        return json_answer({"models": sorted(self.state.models)})

    # -- one model ----------------------------------------------------------------------------

    def _model(self, request: HttpRequest) -> ImageModel:
        model = self.repository.get(request.params["model"])
        version = request.params.get("version")
        if version is not None and version != model.spec.version:
            raise UnknownModel(
                f"model {model.name} has no version {version[:40]!r}; it serves version "
                f"{model.spec.version}"
            )
        return model

    async def model_metadata(self, request: HttpRequest) -> Answer:
        """v2 model metadata."""
        return json_answer(model_docs.metadata(self._model(request)))

    async def model_ready(self, request: HttpRequest) -> Answer:
        """Model readiness: 200 loaded and healthy, 503 not (yet, or any more), 404 unknown."""
        model = self._model(request)
        ok = await model.healthy()
        if not ok:
            return json_answer({"error": f"model {model.name} is not ready"}, 503)
        return json_answer({"name": model.name, "ready": True})

    async def config(self, request: HttpRequest) -> Answer:
        """The model's configuration (this server's names and Triton's)."""
        return json_answer(model_docs.config(self._model(request)))

    async def patch_config(self, request: HttpRequest) -> Answer:
        """Change the per-request defaults (the task's parameters) for the next request."""
        if not self.explicit:
            raise MethodNotAllowed(
                "changing a model's config needs --model-control explicit", ("GET", "HEAD")
            )
        model = self._model(request)
        model.defaults = apply_patch(_json_body(request), model.defaults, model.task)
        return json_answer(model_docs.config(model))

    async def labels(self, request: HttpRequest) -> Answer:
        """The model's labels, index = class id."""
        return json_answer(model_docs.labels(self._model(request)))

    # -- repository ---------------------------------------------------------------------------

    async def index(self, request: HttpRequest) -> Answer:
        """Every model directory, loaded or not (Triton's repository index)."""
        body = _json_body(request, {})
        if not isinstance(body, dict):
            raise BadInput('the body must be a JSON object, e.g. {"ready": true}')
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise BadInput('"ready" must be true or false')
        return json_answer(self.repository.index(ready_only=ready))

    async def load(self, request: HttpRequest) -> Answer:
        """Load or reload a model, optionally with a config override."""
        body = _json_body(request, {})
        if not isinstance(body, dict):
            raise BadInput('the body must be a JSON object, e.g. {"parameters": {"config": ...}}')
        parameters = body.get("parameters", {})
        if not isinstance(parameters, dict):
            raise BadInput('"parameters" must be an object')
        unknown = sorted(k for k in parameters if k != "config")
        if unknown:
            raise BadInput(f"load parameters other than config are not supported: {unknown[:3]}")
        name = request.params["model"]
        await self.repository.load(name, parameters.get("config"))
        return json_answer({"name": name, "load": True})

    async def unload(self, request: HttpRequest) -> Answer:
        """Unload a model: finish what it admitted, free its engines."""
        name = request.params["model"]
        await self.repository.unload(name)
        return json_answer({"name": name, "unload": True})

    # -- inference ----------------------------------------------------------------------------

    async def v1_predict(self, request: HttpRequest) -> Answer:
        """KServe v1 ``:predict``: a raw image body, a multipart upload or JSON instances."""
        model = self._model(request)
        answer, _ = await model(_v1_request(request, model), headers=request.headers)
        return json_answer(answer)

    async def annotate(self, request: HttpRequest) -> Answer:
        """The image with the model's result drawn on it (JPEG, or PNG when accepted)."""
        model = self._model(request)
        media = annotate.media_type(request.headers.get("accept", ""))
        body = await model.annotate(_v1_request(request, model), media, request.headers)
        return Answer(200, [(b"content-type", media.encode())], body)

    async def v2_infer(self, request: HttpRequest) -> Answer:
        """v2 ``/infer``: JSON, or the binary tensor extension, both ways."""
        model = self._model(request)
        infer = rest_v2.parse_request(request.body, request.headers, model.name)
        image_request = protocols.decode_request(
            infer, request.headers, model.batcher.capacity, model.task.outputs
        )
        answer, _ = await model(image_request, headers=request.headers)
        body, headers = rest_v2.encode_answer(_v2(answer))
        return Answer(200, headers, body)


def _v1_request(request: HttpRequest, model: ImageModel) -> ImageRequest:
    """A v1 body (raw image, multipart upload or JSON) and the query string's parameters."""
    capacity = model.batcher.capacity
    media = _media_type(request.headers)
    if media == "multipart/form-data":
        upload = multipart.parse(request.body, request.headers["content-type"], capacity)
        images: list[ImagePayload] = list(upload.images)
        image_request = ImageRequest("v1", images, labels=upload.labels)
        parameters = {**protocols.query_parameters(request.query), **upload.parameters}
        return protocols.complete(image_request, parameters, request.headers)
    if (
        media == "application/json"
        or media.endswith("+json")
        or (not media and request.body[:1] == b"{")
    ):
        return protocols.decode_request(_json_body(request), request.headers, capacity)
    image_request = protocols.decode_request(request.body, request.headers, capacity)
    return protocols.complete(image_request, protocols.query_parameters(request.query), None)


def _v2(answer: object) -> V2Answer:
    if not isinstance(answer, V2Answer):
        raise TypeError(f"a v2 request was answered with {type(answer).__name__}")
    return answer


def routes(api: HttpApi, extra: list[Route] | None = None) -> list[Route]:
    """Every route served, in order of precedence (OpenAPI documents exactly these)."""
    m = "/v2/models/{model}"
    mv = "/v2/models/{model}/versions/{version}"
    table: list[tuple[str, str, Callable[..., Any], dict[str, bool], str]] = [
        ("POST", "/v1/models/{model}:predict", api.v1_predict, {"infer": True}, "Predict (v1)"),
        ("POST", "/v1/models/{model}:annotate", api.annotate, {"infer": True}, "Annotated image"),
        ("POST", f"{m}/infer", api.v2_infer, {"infer": True}, "Inference (v2)"),
        ("POST", f"{mv}/infer", api.v2_infer, {"infer": True}, "Inference (v2, versioned)"),
        ("GET", "/", api.live, {"open": True}, "Liveness"),
        ("GET", "/v2/health/live", api.live, {"open": True}, "Server live"),
        ("GET", "/v2/health/ready", api.ready, {"open": True}, "Server ready"),
        ("GET", "/metrics", api.metrics, {"open": True}, "Prometheus metrics"),
        ("GET", "/v2", api.server_metadata, {}, "Server metadata"),
        ("GET", "/v2/", api.server_metadata, {}, "Server metadata"),
        ("GET", "/v2/models", api.model_list, {}, "Loaded models"),
        ("GET", m, api.model_metadata, {}, "Model metadata"),
        ("GET", mv, api.model_metadata, {}, "Model metadata (versioned)"),
        ("GET", f"{m}/ready", api.model_ready, {"open": True}, "Model ready"),
        ("GET", f"{mv}/ready", api.model_ready, {"open": True}, "Model ready (versioned)"),
        ("GET", f"{m}/config", api.config, {}, "Model configuration"),
        ("PATCH", f"{m}/config", api.patch_config, {}, "Change per-request defaults"),
        ("GET", f"{m}/labels", api.labels, {}, "Model labels"),
        ("GET", "/v1/models", api.model_list, {}, "Loaded models (v1)"),
        ("GET", "/v1/models/{model}", api.model_ready, {"open": True}, "Model ready (v1)"),
    ]
    if api.explicit:
        table += [
            ("POST", "/v2/repository/index", api.index, {}, "Repository index"),
            ("POST", "/v2/repository/models/{model}/load", api.load, {}, "Load a model"),
            ("POST", "/v2/repository/models/{model}/unload", api.unload, {}, "Unload a model"),
        ]
    built = [
        Route(method, path, handler, summary=summary, **flags)
        for method, path, handler, flags, summary in table
    ]
    return built + (extra or [])
