"""The gRPC front: the Open Inference Protocol's ``inference.GRPCInferenceService``, gRPC health checking
(``grpc.health.v1``) and server reflection, on grpcio's asyncio server in the event loop the HTTP front
and the batcher run in.

The same dataplane, batcher and metrics serve both fronts; a call's failure is the same ``ServerError``
as over REST, rendered as the gRPC status its class names (``errors``). A call cancelled by its client
or past its deadline is cancelled here too: its task is cancelled, it leaves the batch queue and never
runs (``Batcher``), and it is counted with outcome ``cancelled``. Messages larger than
``MAX_REQUEST_BYTES`` are refused by grpcio itself with RESOURCE_EXHAUSTED. Health follows readiness
live: SERVING once the model is loaded, NOT_SERVING while loading and from SIGTERM on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Never

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from modeldeploy_server.dataplane import DataPlane
from modeldeploy_server.errors import InternalError, InvalidInputError, ServerError, note_fault
from modeldeploy_server.grpc_codec import decode_request, encode_response
from modeldeploy_server.protos import grpc_predict_v2_pb2 as pb
from modeldeploy_server.settings import Settings

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
CANCELLED_OUTCOME = "cancelled"
WATCH_INTERVAL_SECONDS = 0.5
_OFFLOAD_BYTES = 256 * 1024  # messages larger than this are decoded/encoded off the event loop
_LIVE = pb.ServerLiveResponse(live=True)

Context = grpc.aio.ServicerContext[Any, Any]
Behaviour = Callable[[Any, Context], Awaitable[Any]]


class GrpcBindError(Exception):
    """The gRPC port cannot be listened on."""


async def abort(context: Context, error: ServerError) -> Never:
    """End the call with the gRPC status the error's class names (Retry-After travels as metadata)."""
    note_fault(error)
    metadata = tuple((key.lower(), value) for key, value in error.headers.items())
    await context.abort(grpc.StatusCode[error.grpc_code], error.message, metadata)


def answering(behaviour: Behaviour, request_class: type[Message]) -> Callable[[bytes, Context], Awaitable[Any]]:
    """A method that parses its own request, so a malformed message is the client's INVALID_ARGUMENT
    (grpcio's own deserializer would answer INTERNAL), whose ``ServerError`` becomes its status, and
    whose bug becomes INTERNAL (logged here)."""
    expected = request_class.DESCRIPTOR.full_name

    async def method(data: bytes, context: Context) -> Any:
        try:
            try:
                request = request_class.FromString(data)
            except DecodeError as exc:
                raise InvalidInputError(f"the request is not a valid {expected} message: {exc}") from None
            return await behaviour(request, context)
        except ServerError as exc:
            await abort(context, exc)
        except Exception:
            log.exception("gRPC call %s failed", behaviour.__name__)
            await abort(context, InternalError())

    return method


def _tensor_metadata(spec: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])


class InferenceService:
    """``inference.GRPCInferenceService`` over the dataplane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.metrics = plane.metrics.front(plane.name, "grpc")

    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return _LIVE

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version or None))

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        metadata = self.plane.model_metadata(request.name, request.version or None)
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[_tensor_metadata(spec) for spec in metadata["inputs"]],
            outputs=[_tensor_metadata(spec) for spec in metadata["outputs"]],
        )

    async def model_infer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        """One inference, with its request metrics; a client error raises, as over REST."""
        started = time.perf_counter()
        outcome = "error"
        metrics = self.metrics
        metrics.in_flight.inc()
        try:
            version = request.model_version or None
            self.plane.get_model(request.model_name, version)  # NOT_FOUND / UNAVAILABLE before decoding
            large = request.ByteSize() > _OFFLOAD_BYTES
            decoded, raw = await asyncio.to_thread(decode_request, request) if large else decode_request(request)
            result = await self.plane.infer(request.model_name, decoded, version)
            response = await asyncio.to_thread(encode_response, result, raw) if large else encode_response(result, raw)
            outcome = "ok"
            return response
        except ServerError as exc:
            outcome = exc.outcome
            raise
        except asyncio.CancelledError:
            outcome = CANCELLED_OUTCOME
            raise
        finally:
            metrics.in_flight.dec()
            metrics.count(outcome)
            metrics.latency.observe(time.perf_counter() - started)

    def handler(self) -> grpc.GenericRpcHandler:
        """Every method of the service as the proto declares it, with its messages' (de)serializers."""
        behaviours: dict[str, Behaviour] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
        }
        methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for method in SERVICE.methods:
            request_class, response_class = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
            methods[method.name] = grpc.unary_unary_rpc_method_handler(
                answering(behaviours[method.name], request_class),
                response_serializer=response_class.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE.full_name, methods)


class HealthService:
    """``grpc.health.v1.Health`` answered from readiness at each call, for the server ("") and the
    inference service; a Watch stream ends when the server stops, so it never holds up the drain."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.services = ("", SERVICE.full_name)
        self.stopping = False

    def _status(self, service: str) -> int:
        statuses = health_pb2.HealthCheckResponse
        if service not in self.services:
            return statuses.SERVICE_UNKNOWN
        return statuses.SERVING if self.plane.ready else statuses.NOT_SERVING

    async def check(self, request: health_pb2.HealthCheckRequest, context: Context) -> health_pb2.HealthCheckResponse:
        status = self._status(request.service)
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            known = ", ".join(repr(name) for name in self.services)
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}; known: {known}")
        return health_pb2.HealthCheckResponse(status=status)

    async def watch(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while not self.stopping:
            status = self._status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)

    def handler(self) -> grpc.GenericRpcHandler:
        request, response = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        return grpc.method_handlers_generic_handler(
            HEALTH.full_name,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.check, request_deserializer=request.FromString, response_serializer=response.SerializeToString
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self.watch, request_deserializer=request.FromString, response_serializer=response.SerializeToString
                ),
            },
        )


class GrpcFront:
    """The gRPC server's life: listen (call on the serving event loop), then drain on stop."""

    def __init__(self, plane: DataPlane, settings: Settings) -> None:
        self.plane = plane
        self.settings = settings
        self.health = HealthService(plane)
        self.inference = InferenceService(plane)
        self.address = f"[{settings.host}]:{settings.grpc_port}" if ":" in settings.host else (
            f"{settings.host}:{settings.grpc_port}"
        )
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Listen; raises ``GrpcBindError`` when the port cannot be had (never shared: no SO_REUSEPORT)."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.settings.max_request_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
                ("grpc.enable_channelz", 0),  # per-call bookkeeping nothing here reads
            ]
        )
        server.add_generic_rpc_handlers((self.inference.handler(), self.health.handler()))
        reflection.enable_server_reflection((SERVICE.full_name, HEALTH.full_name, reflection.SERVICE_NAME), server)
        try:
            bound = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise GrpcBindError(f"cannot serve gRPC on {self.address}: {exc}") from exc
        if not bound:
            raise GrpcBindError(f"cannot serve gRPC on {self.address} (address in use or not permitted)")
        await server.start()
        self._server = server
        self.plane.drains.append(self.stop)
        log.info("gRPC (inference.GRPCInferenceService, health, reflection) listening on %s", self.address)

    async def stop(self) -> None:
        """Refuse new calls and let those under way finish (up to SHUTDOWN_TIMEOUT_SECONDS); idempotent,
        so the process runner starts it as the HTTP listener closes and the dataplane awaits it before
        stopping the batcher."""
        if self._server is None:
            return
        if self._stopping is None:
            self.health.stopping = True
            self._stopping = asyncio.ensure_future(self._server.stop(self.settings.shutdown_timeout_seconds))
        await asyncio.shield(self._stopping)
