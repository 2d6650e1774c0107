"""``python -m modeldeploy_server --model PATH``: run the server under uvicorn (uvloop + httptools), with
the gRPC front on the same event loop.

SIGTERM (what Kubernetes sends) starts a graceful stop: readiness (and gRPC health) turns false at once,
requests keep being served for ``SHUTDOWN_DRAIN_SECONDS`` while endpoints stop routing here, then both
listeners close, in-flight requests and calls finish (up to ``SHUTDOWN_TIMEOUT_SECONDS``) and the
process exits 0. A second signal stops at once. Exit codes: 0 clean stop, 1 model could not be loaded
(or the gRPC port not listened on), 2 invalid configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from modeldeploy_server.app import Lifecycle, create_app, write_termination_message
from modeldeploy_server.grpc_front import GrpcBindError, GrpcFront
from modeldeploy_server.settings import Settings, load_settings

log = logging.getLogger("modeldeploy_server")
EXIT_BAD_CONFIG = 2


class GracefulServer(uvicorn.Server):
    """uvicorn with a drain phase between SIGTERM and closing the listener, and the gRPC front beside it:
    listening once HTTP does, and closing as HTTP does (the dataplane waits for its calls before it
    stops the batcher)."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_terminate: Callable[[], None],
        drain_seconds: float,
        grpc_front: GrpcFront | None = None,
        on_failure: Callable[[str], None] = lambda reason: None,
    ) -> None:
        super().__init__(config)
        self._on_terminate = on_terminate
        self._drain_seconds = drain_seconds
        self._drain_until: float | None = None
        self._announced = False
        self._grpc = grpc_front
        self._on_failure = on_failure

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._grpc is None or self.should_exit:
            return
        try:
            await self._grpc.start()
        except GrpcBindError as exc:
            self._on_failure(f"{exc}; set GRPC_PORT to a free port (0 disables gRPC)")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stopping = asyncio.ensure_future(self._grpc.stop()) if self._grpc is not None else None
        await super().shutdown(sockets)
        if stopping is not None and not self.force_exit:
            await stopping

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Unlike uvicorn's own, this does not re-raise the signal afterwards: a drained stop exits 0.
        # ``serve`` runs on the main thread, the only one allowed to set signal handlers.
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: only plain assignments here (no locks, no logging).
        if self._drain_until is not None or self.should_exit:
            self.should_exit = True
            self.force_exit = True
            return
        self._on_terminate()
        drain = self._drain_seconds if sig == signal.SIGTERM else 0.0
        self._drain_until = time.monotonic() + drain

    def request_exit(self) -> None:
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None:
            if not self._announced:
                self._announced = True
                log.info("stop requested: not ready; serving for %.1fs more, then draining", self._drain_seconds)
            if time.monotonic() >= self._drain_until:
                self.should_exit = True
        return await super().on_tick(counter)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _config_error(exc: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}" for error in exc.errors()
    )
    return f"invalid configuration: {problems}"


def serve(settings: Settings) -> int:
    """Run until stopped; returns the process exit code."""
    lifecycle = Lifecycle()
    app = create_app(settings, lifecycle)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=settings.access_log,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_seconds),
    )
    grpc_front = GrpcFront(app.plane, settings) if settings.grpc_port else None
    server = GracefulServer(
        config,
        app.plane.begin_shutdown,
        settings.shutdown_drain_seconds,
        grpc_front,
        lambda reason: lifecycle.fail(reason, settings.termination_message_path),
    )
    lifecycle.request_exit = server.request_exit
    try:
        server.run()
    except SystemExit as exc:  # uvicorn's way out when it cannot listen
        if exc.code not in (0, None) and lifecycle.exit_code == 0:
            write_termination_message(
                settings.termination_message_path,
                f"cannot serve on {settings.host}:{settings.port} (address in use or not permitted); see the log",
            )
        raise
    return lifecycle.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except (ValidationError, SettingsError) as exc:
        reason = _config_error(exc) if isinstance(exc, ValidationError) else f"invalid configuration: {exc}"
        _configure_logging("info")
        log.error("%s", reason)
        write_termination_message(Path(os.environ.get("TERMINATION_MESSAGE_PATH") or "/dev/termination-log"), reason)
        return EXIT_BAD_CONFIG
    _configure_logging(settings.log_level)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
