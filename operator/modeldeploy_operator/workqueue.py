"""A coalescing, rate-limited work queue of resource keys, shared by the reconcile worker threads.

The semantics controllers rely on: a key waiting in the queue is never queued twice (ten events for
one resource cost one reconcile); a key being reconciled is never handed to a second worker at the
same time (if it changes meanwhile it is queued again once the first run ends); failures come back
after an exponential delay instead of a hot retry loop. A key scheduled `ahead` (a timer someone is
waiting on, such as the end of a rollout's analysis window) goes to the front when it comes due, so
bursts of watch events cannot delay it behind them.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, base_delay: float = 0.5, max_delay: float = 60.0) -> None:
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._delayed: list[tuple[float, int, K, bool]] = []  # due time, order, key, ahead
        self._counter = itertools.count()
        self._failures: dict[K, int] = {}
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def add(self, key: K) -> None:
        with self._cond:
            if self._closed or key in self._dirty:
                return
            self._dirty.add(key)
            if key not in self._processing:
                self._queue.append(key)
                self._cond.notify()

    def add_after(self, key: K, delay: float, *, ahead: bool = False) -> None:
        """Queue the key once `delay` has passed; `ahead`: then at the front, before keys queued by events."""
        if delay <= 0 and not ahead:
            self.add(key)
            return
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._delayed, (time.monotonic() + max(0.0, delay), next(self._counter), key, ahead))
            self._cond.notify()

    def retry(self, key: K) -> float:
        """Queue again after a delay that doubles with each consecutive failure of this key."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        delay: float = min(self._max_delay, self._base_delay * float(2**failures))
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key succeeded: its next failure starts the backoff from the beginning."""
        with self._cond:
            self._failures.pop(key, None)

    def _promote_due(self) -> float | None:
        """Move due delayed keys into the queue; return seconds until the next one is due."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key, ahead = heapq.heappop(self._delayed)
            waiting = key in self._dirty and key not in self._processing
            if ahead and waiting:
                self._queue.remove(key)  # already queued behind others: move it up
            if key not in self._dirty or (ahead and waiting):
                self._dirty.add(key)
                if key not in self._processing:
                    (self._queue.appendleft if ahead else self._queue.append)(key)
        return self._delayed[0][0] - now if self._delayed else None

    def get(self, timeout: float | None = None) -> K | None:
        """Block until a key is ready (None on timeout or when the queue is shut down)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                wait_delayed = self._promote_due()
                if self._closed:
                    return None
                if self._queue:
                    key = self._queue.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                waits = [w for w in (wait_delayed,) if w is not None]
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    waits.append(remaining)
                self._cond.wait(min(waits) if waits else None)

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
