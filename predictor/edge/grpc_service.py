"""The v2 gRPC service (``inference.GRPCInferenceService``) over the served models.

KServe's protocol messages, answered from the same models and repository as REST, so both
transports say the same thing: readiness, metadata (with versions), inference, and, with
``--model-control explicit``, the repository RPCs. With ``none`` those RPCs are not
registered at all, so clients get ``UNIMPLEMENTED``.

The repository RPCs accept both wire shapes in use: KServe's (``model_name`` is field 1)
and Triton's (``repository_name`` 1, ``model_name`` 2, a ``parameters`` map with the
``config`` override), so ``tritonclient.grpc``'s ``load_model(name, config=...)``,
``unload_model`` and ``get_model_repository_index`` work as they do against Triton. The
answers are KServe's messages, which Triton's (empty) ones parse without complaint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import to_headers

from predictor import __version__
from predictor.edge import protocols
from predictor.edge.grpc_edge import lenient
from predictor.edge.grpc_parameters import request_parameters
from predictor.errors import BadInput, UnknownModel
from predictor.runtime.budget import MemoryBudget
from predictor.serving import model_docs
from predictor.serving.model import ImageModel
from predictor.serving.repository import Repository
from predictor.serving.state import ServingState
from predictor.tasks.base import V2Answer

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "gpu-predictor"


def _triton_messages() -> dict[str, type[Message]]:
    """Triton's repository messages, in a private descriptor pool (no clash with KServe's)."""
    file = descriptor_pb2.FileDescriptorProto(name="triton_repository.proto", package="inference")
    file.syntax = "proto3"
    string, boolean, int64, raw, nested = 9, 8, 3, 12, 11
    optional, repeated = 1, 3

    def add(
        message: Any, name: str, number: int, kind: int, label: int = optional, **kw: Any
    ) -> Any:
        return message.field.add(name=name, number=number, type=kind, label=label, **kw)

    parameter = file.message_type.add(name="ModelRepositoryParameter")
    parameter.oneof_decl.add(name="parameter_choice")
    for name, number, kind in (("bool_param", 1, boolean), ("int64_param", 2, int64)):
        add(parameter, name, number, kind, oneof_index=0)
    for name, number, kind in (("string_param", 3, string), ("bytes_param", 4, raw)):
        add(parameter, name, number, kind, oneof_index=0)
    for request_name in ("RepositoryModelLoadRequest", "RepositoryModelUnloadRequest"):
        request = file.message_type.add(name=request_name)
        add(request, "repository_name", 1, string)
        add(request, "model_name", 2, string)
        entry = request.nested_type.add(name="ParametersEntry")
        entry.options.map_entry = True
        add(entry, "key", 1, string)
        add(entry, "value", 2, nested, type_name=".inference.ModelRepositoryParameter")
        add(
            request,
            "parameters",
            3,
            nested,
            repeated,
            type_name=f".inference.{request_name}.ParametersEntry",
        )
    index_request = file.message_type.add(name="RepositoryIndexRequest")
    add(index_request, "repository_name", 1, string)
    add(index_request, "ready", 2, boolean)
    index_response = file.message_type.add(name="RepositoryIndexResponse")
    model_index = index_response.nested_type.add(name="ModelIndex")
    for number, name in enumerate(("name", "version", "state", "reason"), start=1):
        add(model_index, name, number, string)
    add(
        index_response,
        "models",
        1,
        nested,
        repeated,
        type_name=".inference.RepositoryIndexResponse.ModelIndex",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    names = (
        "RepositoryModelLoadRequest",
        "RepositoryModelUnloadRequest",
        "RepositoryIndexRequest",
        "RepositoryIndexResponse",
    )
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
        for name in names
    }


TRITON = _triton_messages()


def _target(request: Any) -> str:
    """The model a repository request names, in KServe's shape or Triton's."""
    return str(request.model_name or request.repository_name)


def to_infer_response(answer: V2Answer, binary: bool) -> InferResponse:
    """A v2 answer as KServe's ``InferResponse`` (raw contents when the request sent raw)."""
    outputs = []
    for tensor in answer.outputs:
        output = InferOutput(
            name=tensor.name, shape=list(tensor.array.shape), datatype=tensor.datatype
        )
        output.set_data_from_numpy(tensor.array, binary_data=binary)
        outputs.append(output)
    return InferResponse(
        response_id=answer.id,
        model_name=answer.model_name,
        model_version=answer.model_version,
        infer_outputs=outputs,
        from_grpc=True,
        use_binary_outputs=binary,
    )


class GrpcService:
    """The RPC implementations.

    Args:
        state: the shared serving state.
        repository: the model repository.
        budget: the memory budget inference messages are held against while in flight.
    """

    def __init__(
        self, state: ServingState, repository: Repository, budget: MemoryBudget | None = None
    ) -> None:
        self.state = state
        self.repository = repository
        self.budget = budget

    def _model(self, name: str, version: str = "") -> ImageModel:
        model = self.repository.get(name)
        if version and version != model.spec.version:
            raise UnknownModel(
                f"model {name} has no version {version[:40]!r}; it serves version "
                f"{model.spec.version}"
            )
        return model

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        """Liveness: false once a model's engine keeps failing."""
        return pb.ServerLiveResponse(live=self.state.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        """Every loaded model healthy and not draining."""
        models = list(self.state.models.values())
        ready = not self.state.closing and all([await m.healthy() for m in models])
        return pb.ServerReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        """Server name, version and protocol extensions."""
        extensions = ["binary_tensor_data", "model_configuration"]
        if self.repository_rpcs:
            extensions.append("model_repository")
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=extensions
        )

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        """Whether a model is loaded and healthy (NOT_FOUND when it is not served)."""
        model = self._model(request.name, request.version)
        return pb.ModelReadyResponse(ready=await model.healthy())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        """Inputs, outputs and versions (the gRPC message has no tensor parameters)."""
        document = model_docs.metadata(self._model(request.name, request.version))
        tensors = {
            key: [{k: v for k, v in t.items() if k != "parameters"} for t in document[key]]
            for key in ("inputs", "outputs")
        }
        return pb.ModelMetadataResponse(
            name=document["name"],
            versions=document["versions"],
            platform=document["platform"],
            **tensors,
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        """Inference; images as BYTES (raw contents: the cheapest route) or an FP32 tensor."""
        model = self._model(request.model_name, request.model_version)
        InferenceServicer.validate_grpc_request(request)
        headers = to_headers(context)
        with contextlib.ExitStack() as held:
            if self.budget is not None:
                held.enter_context(self.budget.hold(request.ByteSize(), "this request"))
            infer = InferRequest.from_grpc(request)
            infer.parameters = request_parameters(request.parameters)
            image_request = protocols.decode_request(
                infer, headers, model.batcher.capacity, model.task.outputs
            )
            answer, _ = await model(image_request, headers=headers)
        if not isinstance(answer, V2Answer):
            raise TypeError(f"a v2 request was answered with {type(answer).__name__}")
        return to_infer_response(answer, image_request.binary_outputs).to_grpc()

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        """Every model directory, loaded or not (Triton's RPC)."""
        entries = self.repository.index(ready_only=bool(request.ready))
        response: Any = TRITON["RepositoryIndexResponse"]()
        for entry in entries:
            response.models.add(**entry)
        return response

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        """Load or reload a model; Triton's ``config`` parameter overrides its settings."""
        name = _target(request)
        config = None
        for key, value in request.parameters.items():
            if key != "config":
                raise BadInput(f"load parameters other than config are not supported: {key[:40]!r}")
            if value.WhichOneof("parameter_choice") != "string_param":
                raise BadInput("the config parameter must be a string (JSON)")
            config = value.string_param
        await self.repository.load(name, config)
        return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        """Unload a model: finish what it admitted, free its engines."""
        name = _target(request)
        await self.repository.unload(name)
        return pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True)

    repository_rpcs = False


def add_to_server(server: aio.Server, service: GrpcService, repository_rpcs: bool) -> None:
    """Register the service's RPCs; the repository ones only when ``repository_rpcs``."""
    service.repository_rpcs = repository_rpcs
    messages: list[tuple[str, type[Message], type[Message]]] = [
        ("ServerLive", pb.ServerLiveRequest, pb.ServerLiveResponse),
        ("ServerReady", pb.ServerReadyRequest, pb.ServerReadyResponse),
        ("ServerMetadata", pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        ("ModelReady", pb.ModelReadyRequest, pb.ModelReadyResponse),
        ("ModelMetadata", pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        ("ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse),
    ]
    if repository_rpcs:
        messages += [
            (
                "RepositoryIndex",
                TRITON["RepositoryIndexRequest"],
                TRITON["RepositoryIndexResponse"],
            ),
            (
                "RepositoryModelLoad",
                TRITON["RepositoryModelLoadRequest"],
                pb.RepositoryModelLoadResponse,
            ),
            (
                "RepositoryModelUnload",
                TRITON["RepositoryModelUnloadRequest"],
                pb.RepositoryModelUnloadResponse,
            ),
        ]
    handlers = {}
    for name, request_type, response_type in messages:
        method: Callable[[Any, Any], Awaitable[Message]] = getattr(service, name)
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            method,
            request_deserializer=lenient(request_type.FromString, name + "Request"),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
