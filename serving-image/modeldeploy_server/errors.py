"""One exception hierarchy: the one table of what each failure is called on each front.

Each class carries the HTTP status, the gRPC status code (by its name in ``grpc.StatusCode``, so this
module needs no gRPC) and the metrics outcome it maps to, and builds its message from its arguments, so
the same failure reads the same on every front. Anything the client did wrong is a 4xx (gRPC:
INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED); only ``InferenceFailedError`` and ``InternalError``
are 500 (INTERNAL), so a 5xx always means the server (or the model) is at fault. A full queue is 503
over HTTP (retry, with Retry-After) and RESOURCE_EXHAUSTED over gRPC (the protocol's code for a server
out of capacity; clients' retry policies name it). Each front renders its own answer: ``render`` the
``{"error": message}`` response, the gRPC front a status and message.
"""

from __future__ import annotations

import logging

import orjson

log = logging.getLogger(__name__)
JSON_TYPE = "application/json"


class ServerError(Exception):
    """Base of every error the server reports to a client as ``{"error": message}``."""

    status_code = 500
    grpc_code = "INTERNAL"
    outcome = "error"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInputError(ServerError):
    """The request is malformed or does not fit the model."""

    status_code = 400
    grpc_code = "INVALID_ARGUMENT"
    outcome = "invalid_input"


class InvalidTensorError(InvalidInputError):
    """One input tensor does not fit: the message starts with the tensor's name."""

    def __init__(self, tensor: str, reason: str) -> None:
        super().__init__(f"input tensor {tensor!r}: {reason}")
        self.tensor = tensor
        self.reason = reason


class ModelNotFoundError(ServerError):
    status_code = 404
    grpc_code = "NOT_FOUND"
    outcome = "not_found"

    def __init__(self, name: str, version: str | None, served: str) -> None:
        suffix = f" version {version!r}" if version is not None else ""
        super().__init__(f"model {name!r}{suffix} not found; this server serves {served!r}")


class RouteNotFoundError(ServerError):
    status_code = 404
    grpc_code = "UNIMPLEMENTED"
    outcome = "not_found"

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"no endpoint {method} {path}; the endpoints are listed at /docs")


class MethodNotAllowedError(ServerError):
    status_code = 405
    grpc_code = "UNIMPLEMENTED"
    outcome = "invalid_input"

    def __init__(self, method: str, path: str, allowed: tuple[str, ...]) -> None:
        super().__init__(
            f"method {method} is not allowed on {path}; use {' or '.join(allowed)}", {"Allow": ", ".join(allowed)}
        )


class HttpStatusError(ServerError):
    """Any other status the web framework answers on its own, with its own words."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.grpc_code = "INVALID_ARGUMENT" if status_code < 500 else "INTERNAL"
        self.outcome = "invalid_input" if status_code < 500 else "error"


class PayloadTooLargeError(ServerError):
    status_code = 413
    grpc_code = "RESOURCE_EXHAUSTED"
    outcome = "too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"request body of {size} bytes exceeds the limit of {limit} bytes (MAX_REQUEST_BYTES)")


class UnavailableError(ServerError):
    """The server cannot take the request now; the client should retry later."""

    status_code = 503
    grpc_code = "UNAVAILABLE"
    outcome = "unavailable"

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message, {"Retry-After": str(retry_after_seconds)})


class ShuttingDownError(UnavailableError):
    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__("the server is shutting down", retry_after_seconds)


class QueueFullError(UnavailableError):
    grpc_code = "RESOURCE_EXHAUSTED"
    outcome = "queue_full"

    def __init__(self, max_queue_size: int, retry_after_seconds: int) -> None:
        super().__init__(
            f"inference queue is full ({max_queue_size} requests waiting); retry later", retry_after_seconds
        )


class ModelNotReadyError(UnavailableError):
    outcome = "not_ready"

    def __init__(self, name: str, retry_after_seconds: int) -> None:
        super().__init__(f"model {name!r} is still loading", retry_after_seconds)


class InferenceFailedError(ServerError):
    """onnxruntime failed on input that passed validation: the model's fault, hence 500."""


class InternalError(ServerError):
    """A bug in the server; the details go to the log, not to the client."""

    def __init__(self) -> None:
        super().__init__("internal server error")


class ModelLoadError(Exception):
    """The model cannot be served; the message goes to the termination-message file."""


def note_fault(error: ServerError) -> None:
    """Log a server fault (5xx but 503) as a front renders it; an ``InternalError`` was logged with its
    traceback where it was caught."""
    if error.status_code >= 500 and error.status_code != 503 and not isinstance(error, InternalError):
        log.error("%s", error.message)


def render(error: ServerError) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the REST error response."""
    note_fault(error)
    return error.status_code, {"content-type": JSON_TYPE, **error.headers}, orjson.dumps({"error": error.message})


def routing_error(method: str, path: str, status_code: int, detail: str, allow: str | None) -> ServerError:
    """The protocol error for a status the router answers (unknown path, wrong method, ...)."""
    if status_code == 404:
        return RouteNotFoundError(method, path)
    if status_code == 405 and allow:
        return MethodNotAllowedError(method, path, tuple(part.strip() for part in allow.split(",")))
    return HttpStatusError(status_code, detail)
