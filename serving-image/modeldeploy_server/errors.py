"""One exception hierarchy; each class carries the HTTP status (and outcome label) it maps to.

Anything the client did wrong is a 4xx subclass; only ``InferenceFailedError`` and unexpected exceptions
become 500, so a 5xx always means the server (or the model) is at fault.
"""

from __future__ import annotations


class ServerError(Exception):
    """Base of every error the server reports to a client as ``{"error": message}``."""

    status_code = 500
    outcome = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        return {}


class InvalidInputError(ServerError):
    """The request is malformed or does not fit the model (names the tensor, expected and got)."""

    status_code = 400
    outcome = "invalid_input"


class ModelNotFoundError(ServerError):
    status_code = 404
    outcome = "not_found"


class PayloadTooLargeError(ServerError):
    status_code = 413
    outcome = "too_large"


class UnavailableError(ServerError):
    """The server cannot take the request now; the client should retry later."""

    status_code = 503
    outcome = "unavailable"

    def __init__(self, message: str, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class QueueFullError(UnavailableError):
    outcome = "queue_full"


class ModelNotReadyError(UnavailableError):
    outcome = "not_ready"


class InferenceFailedError(ServerError):
    """onnxruntime failed on input that passed validation: the model's fault, hence 500."""

    status_code = 500
    outcome = "error"


class ModelLoadError(Exception):
    """The model cannot be served; the message goes to the termination-message file."""
