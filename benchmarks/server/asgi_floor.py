"""The HTTP floor: a bare ASGI app that reads the whole body and returns a fixed JSON response."""

from __future__ import annotations

from typing import Any

RESPONSE = b'{"outputs":[{"name":"output","datatype":"FP32","shape":[1,8],"data":[0,0,0,0,0,0,0,0]}]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(RESPONSE)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan: accept startup/shutdown
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": RESPONSE})
