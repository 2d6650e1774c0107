"""A stand-in for many serving pods' /metrics, for benchmarking the operator's rollout analysis without
real pods: one process answers on every address of the given CIDRs (the addresses kwok gives the fake
pods), each address with its own registry built by the real server's `modeldeploy_server.metrics`
(so the text is exactly the server's format), served over real HTTP by uvicorn.

It is a stand-in, not a serving server: no model runs. Each address that has been scraped once gets a
steady synthetic load (requests by outcome, latency, batch sizes, queue wait, one input's statistics,
one real-valued output's histogram, 8 values per request) recorded through the same metric objects the
server records into.
A JSON line on stdin, ``{"ip": "...", "error_rate": 0.3}``, makes an address a bad version.

    python benchmarks/operator/metrics_standin.py --cidr 127.77.0.0/24 [--cidr ...] [--port 8080]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
import uvicorn

from modeldeploy_server.drift import InputMonitor, OutputMonitor
from modeldeploy_server.metrics import CONTENT_TYPE, ServerMetrics

MODEL = "model"
TICK_S = 0.5
OUTPUT_VALUES = 8  # per request: a model with an 8-value output (scores, logits)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class FakePod:
    """One serving pod's metrics under a synthetic load."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.metrics = ServerMetrics()
        self.metrics.ready.set(1)
        self.metrics.load_seconds.labels(MODEL).set(0.2)
        self.inputs = {"input": InputMonitor(None, 1000)}
        self.outputs = {"output": OutputMonitor("f")}
        self.metrics.add_drift(MODEL, self.inputs)
        self.metrics.add_outputs(MODEL, self.outputs)
        self.metrics.bind_queue_depth(MODEL, lambda: 0)
        self.error_rate = 0.0
        self.rng = rng
        self.lock = threading.Lock()

    def load(self, requests: int) -> None:
        """`requests` answered requests' worth of observations."""
        rng = self.rng
        errors = int(rng.binomial(requests, self.error_rate)) if self.error_rate else 0
        metrics = self.metrics
        with self.lock:
            metrics.requests.labels(MODEL, "ok").inc(requests - errors)
            if errors:
                metrics.requests.labels(MODEL, "error").inc(errors)
            for latency in rng.lognormal(np.log(0.004), 0.3, requests):
                metrics.latency.labels(MODEL).observe(float(latency))
                metrics.queue_wait.labels(MODEL).observe(float(latency) / 4)
            metrics.batch_size.labels(MODEL).observe(float(requests))
            metrics.run_seconds.labels(MODEL).observe(0.003)
            self.inputs["input"].observe(rng.normal(0, 1, requests * 4).astype(np.float32))
            values = rng.normal(0.5, 0.2, requests * OUTPUT_VALUES).astype(np.float32)
            self.outputs["output"].observe(values)

    def render(self) -> bytes:
        with self.lock:
            return self.metrics.render()


class StandIn:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.pods: dict[str, FakePod] = {}
        self.error_rates: dict[str, float] = {}
        self.rng = np.random.default_rng(7)

    def pod(self, ip: str) -> FakePod:
        pod = self.pods.get(ip)
        if pod is None:
            pod = self.pods[ip] = FakePod(np.random.default_rng(len(self.pods)))
            pod.error_rate = self.error_rates.get(ip, 0.0)
        return pod

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        ip = scope["server"][0]
        if scope["path"] != "/metrics":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = self.pod(ip).render()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE.encode())]})
        await send({"type": "http.response.body", "body": body})

    async def traffic(self) -> None:
        """Every tick, each pod scraped at least once answers its share of requests."""
        per_tick = max(1, round(self.rate * TICK_S))
        while True:
            await asyncio.sleep(TICK_S)
            for pod in list(self.pods.values()):
                pod.load(per_tick)

    def control(self) -> None:
        """Read `{"ip": ..., "error_rate": ...}` lines from stdin (a thread: stdin blocks)."""
        for line in sys.stdin:
            if not line.strip():
                continue
            order = json.loads(line)
            self.error_rates[order["ip"]] = float(order["error_rate"])
            if order["ip"] in self.pods:
                self.pods[order["ip"]].error_rate = float(order["error_rate"])


def sockets_for(cidrs: list[str], port: int) -> list[socket.socket]:
    bound = []
    for cidr in cidrs:
        for address in ipaddress.ip_network(cidr).hosts():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(address), port))
            sock.listen(64)
            bound.append(sock)
    return bound


async def serve(args: argparse.Namespace) -> None:
    stand_in = StandIn(args.rate)
    sockets = sockets_for(args.cidr, args.port)
    threading.Thread(target=stand_in.control, daemon=True).start()
    server = uvicorn.Server(uvicorn.Config(stand_in.app, log_level="warning", access_log=False, lifespan="off",
                                                interface="asgi3"))
    traffic = asyncio.create_task(stand_in.traffic())
    print(f"listening on {len(sockets)} addresses, port {args.port}", flush=True)
    try:
        await server.serve(sockets=sockets)
    finally:
        traffic.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cidr", action="append", required=True, help="answer on every address of this CIDR")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--rate", type=float, default=20.0, help="synthetic requests per second per pod")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
