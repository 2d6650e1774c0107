"""The raw ASGI front: ``/v2/models/{name}[/versions/{v}]/infer`` answered before any routing.

Routing, dependency injection, Request objects and the middleware stack together cost more than
reading, running and answering a small request, so inference skips them; every other request goes on
to the FastAPI app. This is the server's only body reader and the only place its size limit applies
(no other route reads a body). The OpenAPI document describes the operation (``openapi``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from modeldeploy_server.dataplane import DataPlane
from modeldeploy_server.errors import (
    InternalError,
    MethodNotAllowedError,
    PayloadTooLargeError,
    ServerError,
    render,
)
from modeldeploy_server.rest_codec import HEADER_LENGTH, decode_request, encode_response

log = logging.getLogger(__name__)
_OFFLOAD_BYTES = 256 * 1024  # bodies larger than this are decoded/encoded off the event loop
_HEADER_LENGTH = HEADER_LENGTH.encode("latin-1")


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version) for an infer URL, else None."""
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    parts = path[len("/v2/models/") : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None


async def read_body(receive: Receive, declared_length: int | None, limit: int) -> bytes:
    """The whole request body; 413 as soon as the declared or the received size passes ``limit``."""
    if declared_length is not None and declared_length > limit:
        raise PayloadTooLargeError(declared_length, limit)
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # a chunked body has no declared length
            raise PayloadTooLargeError(size, limit)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class InferEndpoint:
    """One inference request from body to response bytes, with its metrics."""

    def __init__(self, plane: DataPlane, max_request_bytes: int) -> None:
        self.plane = plane
        self.limit = max_request_bytes
        self._metrics = plane.metrics.front(plane.name, "rest")
        self._latency = self._metrics.latency
        self._in_flight = self._metrics.in_flight

    async def respond(
        self,
        model_name: str,
        version: str | None,
        receive: Receive,
        declared_length: int | None,
        header_length: str | None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body; client errors become 4xx/503 here, never exceptions."""
        started = time.perf_counter()
        outcome = "error"
        self._in_flight.inc()
        try:
            self.plane.get_model(model_name, version)  # 404 / 503 before reading the body
            body = await read_body(receive, declared_length, self.limit)
            large = len(body) > _OFFLOAD_BYTES
            if large:
                request, encoding = await asyncio.to_thread(decode_request, body, header_length)
            else:
                request, encoding = decode_request(body, header_length)
            result = await self.plane.infer(model_name, request, version)
            if large:
                content, headers = await asyncio.to_thread(encode_response, result, encoding)
            else:
                content, headers = encode_response(result, encoding)
            outcome = "ok"
            return 200, headers, content
        except ServerError as exc:
            outcome = exc.outcome
            return render(exc)
        finally:
            self._in_flight.dec()
            self._metrics.count(outcome)
            self._latency.observe(time.perf_counter() - started)


class InferFront:
    """The ASGI app the server runs: inference here, everything else to ``app``."""

    def __init__(self, app: ASGIApp, endpoint: InferEndpoint) -> None:
        self.app = app
        self.endpoint = endpoint
        self.plane = endpoint.plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = infer_target(scope["path"])
            if target is not None:
                await self._infer(scope, receive, send, *target)
                return
        await self.app(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None) -> None:
        try:
            if scope["method"] != "POST":
                status, headers, content = render(MethodNotAllowedError(scope["method"], scope["path"], ("POST",)))
            else:
                declared, header_length = None, None
                for key, value in scope["headers"]:
                    if key == b"content-length":
                        declared = int(value) if value.isdigit() else None
                    elif key == _HEADER_LENGTH:
                        header_length = value.decode("latin-1")
                status, headers, content = await self.endpoint.respond(name, version, receive, declared, header_length)
        except Exception:  # a server bug: answer 500 rather than dropping the connection
            log.exception("inference request failed")
            status, headers, content = render(InternalError())
        raw_headers = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()]
        raw_headers.append((b"content-length", str(len(content)).encode("latin-1")))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})
