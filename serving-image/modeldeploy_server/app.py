"""The FastAPI application: lifespan (background model load), health, metrics, errors, body limit.

The process listens before the model is loaded, so liveness answers during a long load while readiness
stays 503 until the model is verified, loaded and warmed up. A load failure is written to the
termination-message file and ends the process with a non-zero code (see ``Lifecycle``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modeldeploy_server import __version__
from modeldeploy_server.dataplane import DataPlane
from modeldeploy_server.errors import ModelLoadError, PayloadTooLargeError, ServerError
from modeldeploy_server.metrics import CONTENT_TYPE, ServerMetrics
from modeldeploy_server.model import load_model
from modeldeploy_server.protocol import InferFastPath, InferHandler, build_router, too_large_message
from modeldeploy_server.settings import Settings

log = logging.getLogger(__name__)
EXIT_LOAD_FAILED = 1


def write_termination_message(path: Path, message: str) -> None:
    """Best effort: Kubernetes shows this file's content as the container's termination reason."""
    try:
        path.write_text(message[:4000] + "\n")
    except OSError as exc:
        log.error("cannot write termination message to %s: %s", path, exc)


class Lifecycle:
    """What the app tells the process runner: exit now (and with which code)."""

    def __init__(self) -> None:
        self.exit_code = 0
        self.request_exit: Callable[[], None] = lambda: None

    def fail(self, reason: str, termination_message_path: Path) -> None:
        log.error("cannot serve: %s", reason)
        write_termination_message(termination_message_path, reason)
        self.exit_code = EXIT_LOAD_FAILED
        self.request_exit()


class BodyLimit:
    """413 for bodies over the limit: at once from Content-Length, or while reading a chunked body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if length > self.limit:
                    await _send_error(send, PayloadTooLargeError(self._message(length)))
                    return
                await self.app(scope, receive, send)  # the HTTP parser holds the body to this length
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise PayloadTooLargeError(self._message(received))
            return message

        await self.app(scope, limited_receive, send)

    def _message(self, size: int) -> str:
        return too_large_message(size, self.limit)


async def _send_error(send: Send, error: ServerError) -> None:
    body = orjson.dumps({"error": error.message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings, lifecycle: Lifecycle | None = None) -> FastAPI:
    """The ASGI app for one model; the model loads in the background once the server runs."""
    lifecycle = lifecycle or Lifecycle()
    metrics = ServerMetrics()
    plane = DataPlane(settings, metrics)

    async def load() -> None:
        try:
            model = await asyncio.to_thread(load_model, settings)
            plane.attach(model)
            # Everything allocated so far lives as long as the process: keep it out of the
            # collector's full passes, which otherwise show up as latency spikes.
            gc.collect()
            gc.freeze()
        except ModelLoadError as exc:
            lifecycle.fail(str(exc), settings.termination_message_path)
        except Exception as exc:
            log.exception("unexpected failure while loading the model")
            lifecycle.fail(f"unexpected failure while loading the model: {exc!r}", settings.termination_message_path)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(load(), name="model-load")
        try:
            yield
        finally:
            plane.begin_shutdown()
            if not loading.done():
                loading.cancel()
            await plane.stop()

    app = FastAPI(
        title="modeldeploy server",
        version=__version__,
        description="One ONNX model over the Open Inference Protocol v2 (REST, JSON and binary tensors).",
        lifespan=lifespan,
    )
    app.state.dataplane = plane
    app.state.lifecycle = lifecycle
    handler = InferHandler(plane)
    app.include_router(build_router(plane, handler))

    @app.exception_handler(ServerError)
    async def server_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServerError)
        if exc.status_code >= 500 and exc.status_code != 503:
            log.error("%s", exc.message)
        return JSONResponse({"error": exc.message}, status_code=exc.status_code, headers=exc.headers())

    @app.get("/health/live", tags=["health"], summary="Liveness probe")
    async def live() -> Response:
        return JSONResponse({"live": True})

    @app.get("/health/ready", tags=["health"], summary="Readiness probe (503 while loading or draining)")
    async def ready() -> Response:
        return JSONResponse({"ready": plane.ready}, status_code=200 if plane.ready else 503)

    @app.get("/metrics", tags=["metrics"], summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        """The schema, with the model's input names filled in once it is loaded."""
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        if plane.model is not None:
            names = [spec.name for spec in plane.model.inputs]
            for path, item in schema.get("paths", {}).items():
                if path.endswith("/infer"):
                    body = item["post"]["requestBody"]["content"]["application/json"]["schema"]
                    body["properties"]["inputs"]["items"]["properties"]["name"]["enum"] = names
            app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.state.fast_path = InferFastPath(app, handler, settings.max_request_bytes)
    return app
