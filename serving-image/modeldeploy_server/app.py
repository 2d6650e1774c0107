"""The application: lifespan (background model load), the routes, error rendering, the infer front.

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

from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from modeldeploy_server import __version__
from modeldeploy_server.dataplane import DataPlane
from modeldeploy_server.errors import InternalError, ModelLoadError, ServerError, render, routing_error
from modeldeploy_server.infer_front import InferEndpoint, InferFront
from modeldeploy_server.metrics import ServerMetrics
from modeldeploy_server.model import load_model
from modeldeploy_server.openapi import openapi_builder
from modeldeploy_server.routes import build_router
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


def _response(error: ServerError) -> Response:
    status, headers, content = render(error)
    return Response(content, status_code=status, headers=headers)


def create_app(settings: Settings, lifecycle: Lifecycle) -> InferFront:
    """The ASGI app for one model; the model loads in the background once the server runs."""
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
    app.include_router(build_router(plane, metrics))

    @app.exception_handler(ServerError)
    async def server_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServerError)
        return _response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def router_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        allow = (exc.headers or {}).get("Allow")
        return _response(routing_error(request.method, request.url.path, exc.status_code, exc.detail, allow))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback after this answer has been sent.
        return _response(InternalError())

    app.openapi = openapi_builder(app, plane)  # type: ignore[method-assign]
    return InferFront(app, InferEndpoint(plane, settings.max_request_bytes))
