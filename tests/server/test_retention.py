"""Nothing the server keeps after a response may reference the request's buffer.

A binary tensor at an aligned offset is decoded as a zero-copy view of the whole body, so anything that
outlives the request (drift statistics waiting to be folded in, a worker thread's last batch) must
hold a copy or nothing: a small tensor in a large body would otherwise keep the whole body alive.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from modeldeploy_server.batching import Batcher, Feeds
from modeldeploy_server.drift import InputMonitor

BODY_BYTES = 16 * 1024 * 1024


def padded_binary_body(rows: int) -> tuple[bytes, int]:
    """A [rows, 64] FP32 tensor at an 8-byte-aligned offset after a JSON header padded to ~16 MiB."""
    tensor = np.random.default_rng(rows).standard_normal((rows, 64)).astype(np.float32)
    inputs = [
        {"name": "input", "datatype": "FP32", "shape": [rows, 64], "parameters": {"binary_data_size": 256 * rows}}
    ]
    head = json.dumps({"inputs": inputs}).encode()
    head += b" " * (BODY_BYTES - len(head) - tensor.nbytes)
    head += b" " * (-len(head) % 8)
    return head + tensor.tobytes(), len(head)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_small_tensors_in_large_bodies_leave_no_memory_behind(mlp_server: Any) -> None:
    body, header_length = padded_binary_body(1)
    headers = {"Inference-Header-Content-Length": str(header_length), "Content-Type": "application/octet-stream"}

    def send(count: int) -> None:
        for _ in range(count):
            response = mlp_server.client.post("/v2/models/mlp/infer", content=body, headers=headers)
            assert response.status_code == 200, response.text

    send(4)  # the allocator's steady state: a body and its header copy, freed and reused
    before = rss_bytes(mlp_server.process.pid)
    send(12)
    after = rss_bytes(mlp_server.process.pid)
    grown = after - before
    print(f"server RSS before {before / 2**20:.1f} MiB, after 12 more 16 MiB requests {after / 2**20:.1f} MiB")
    # Each retained body would add 16 MiB; within a few MB means none was kept.
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 12 requests"


def test_the_batcher_and_the_drift_monitor_let_go_of_request_buffers() -> None:
    """In process: once a request is answered and its inputs noted (not yet folded into the statistics,
    and with the worker idle, waiting for the next batch), its buffer is garbage."""
    monitor = InputMonitor(reference=None, window=100_000)
    noted = threading.Event()

    def observe(rows: int, seconds: float, feeds: Feeds, outputs: list[Feeds]) -> None:
        monitor.observe(feeds["x"])
        noted.set()

    async def scenario() -> bool:
        batcher = Batcher(
            lambda feeds: {"y": feeds["x"] * 2},
            max_batch_size=8,
            max_delay_s=0.0,
            max_queue_size=8,
            observer=observe,
        )
        batcher.start()
        try:
            body = np.zeros(1024 * 1024, dtype=np.uint8)  # stands for a request's body
            released = weakref.ref(body)
            view = body[:256].view(np.float32).reshape(1, 64)
            result = await batcher.infer({"x": view}, 1)
            assert result["y"].shape == (1, 64)
            del body, view, result
            assert await asyncio.to_thread(noted.wait, 10)
            deadline = time.monotonic() + 10
            while released() is not None and time.monotonic() < deadline:
                gc.collect()
                await asyncio.sleep(0.01)
            return released() is None
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()), "something kept after the response still references the request's buffer"
    assert monitor.snapshot().count == 64
