"""Bounded closed-loop load for the autoscaling tests and benchmark, and a timeline of what happened.

The load goes to the local cluster's own addresses (a Service's ClusterIP, pod IPs) and stops by itself
after `LOAD_LIMIT_S` whatever happens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from testsupport.realpods import HEAVY_REQUEST, post_infer

LOAD_LIMIT_S = 240.0


@dataclass
class Load:
    """Bounded closed-loop load: `clients` threads, each one request at a time, until stopped."""

    urls: Callable[[], list[str]]
    name: str
    clients: int
    body: dict[str, Any] = field(default_factory=lambda: HEAVY_REQUEST)
    gap: float = 0.0  # seconds each client waits between two requests: a steady trickle instead of a flood
    limit: float = LOAD_LIMIT_S  # it stops by itself after this many seconds
    statuses: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        deadline = time.monotonic() + self.limit
        for index in range(self.clients):
            def client(index: int = index) -> None:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    targets = self.urls()
                    status = post_infer(targets[index % len(targets)], self.name, self.body)
                    with self._lock:
                        self.statuses[status] = self.statuses.get(status, 0) + 1
                    self._stop.wait(self.gap if status == 200 else max(self.gap, 0.2))
            thread = threading.Thread(target=client, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str]] = field(default_factory=list)

    def note(self, what: str) -> float:
        at = round(time.monotonic() - self.started, 1)
        self.events.append((at, what))
        print(f"[timeline] t={at:6.1f}s {what}")
        return at

    def __str__(self) -> str:
        return "\n".join(f"t={at:6.1f}s {what}" for at, what in self.events)
