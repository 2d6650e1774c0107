"""Every error is ``{"error": "..."}``: also unknown paths and wrong methods, on the infer front and on
the routes behind it, and an unexpected failure in a route."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from modeldeploy_server.app import Lifecycle, create_app
from modeldeploy_server.settings import Settings

# (method, path, status, Allow header or None)
ROUTER_ERRORS = [
    ("GET", "/v2/models", 404, None),
    ("GET", "/nope", 404, None),
    ("POST", "/nope", 404, None),
    ("GET", "/v2/models/mlp/versions/1/extra", 404, None),
    ("POST", "/v2/models/mlp/versions/1/versions/1/infer", 404, None),
    ("POST", "/v2/models//infer", 404, None),
    ("GET", "/v2/models/mlp/infer", 405, "POST"),
    ("DELETE", "/v2/models/mlp/infer", 405, "POST"),
    ("PUT", "/v2/models/mlp/versions/1/infer", 405, "POST"),
    ("POST", "/health/ready", 405, "GET"),
    ("DELETE", "/v2/models/mlp", 405, "GET"),
    ("POST", "/metrics", 405, "GET"),
]


@pytest.mark.parametrize(("method", "path", "status", "allow"), ROUTER_ERRORS)
def test_router_errors_are_protocol_errors(
    mlp_server: Any, method: str, path: str, status: int, allow: str | None
) -> None:
    response = mlp_server.client.request(method, path, content=b"{}")
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert list(document) == ["error"], document
    assert method in document["error"] and path in document["error"], document
    if allow is not None:
        assert allow in response.headers["allow"]
        assert allow in document["error"]


def test_an_unexpected_failure_in_a_route_is_a_protocol_error(model_dir: Path) -> None:
    """A route with a bug, added to the real app served by uvicorn in this process."""
    front = create_app(Settings(model_path=model_dir / "mlp.onnx"), Lifecycle())

    async def broken() -> None:
        raise RuntimeError("a bug")

    front.app.add_api_route("/broken", broken)  # type: ignore[attr-defined]
    server = uvicorn.Server(uvicorn.Config(front, host="127.0.0.1", port=0, log_config=None))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        response = httpx.get(f"http://127.0.0.1:{port}/broken", timeout=10)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "internal server error"}
