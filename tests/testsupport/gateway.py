"""Requests through a real Gateway (Envoy Gateway + Envoy) to real serving pods, and where they went.

Where a request went is told twice, independently: by the answer (the two tracks serve models that give
different numbers) and by the serving pods' own request counters on their /metrics.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from testsupport.realpods import NAME, REQUEST, Serving, close

# z for a two-sided 99.9% interval of a normal approximation to the binomial.
Z_999 = 3.2905
COUNTER = re.compile(r'^modeldeploy_requests_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$', re.M)


def binomial_bounds(n: int, p: float) -> tuple[float, float]:
    """The 99.9% interval of successes in n trials of probability p (exact at p 0 and 1)."""
    spread = Z_999 * math.sqrt(n * p * (1 - p))
    return n * p - spread - 1, n * p + spread + 1


def served_per_track(s: Serving) -> dict[str, int]:
    """Successful inferences each track's pods have answered so far, from their own /metrics."""
    totals: Counter[str] = Counter()
    for pod in s.harness.get("pods", "-l", f"modeldeploy.dev/name={NAME}")["items"]:
        ip, track = pod["status"].get("podIP"), pod["metadata"]["labels"]["modeldeploy.dev/track"]
        if not ip or pod["metadata"].get("deletionTimestamp"):
            continue
        with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=10) as response:
            text = response.read().decode()
        for match in COUNTER.finditer(text):
            if 'outcome="ok"' in match["labels"] or 'outcome="success"' in match["labels"]:
                totals[track] += int(float(match["value"]))
    return {"stable": totals["stable"], "canary": totals["canary"]}


@dataclass
class Client:
    """Posts the sample request through the gateway on kept-alive connections, one per thread."""

    base_url: str
    answers: Mapping[str, list[float]]  # track -> the numbers its model gives for REQUEST

    def __post_init__(self) -> None:
        self._local = threading.local()
        parsed = urllib.parse.urlsplit(self.base_url)
        self._host, self._port = parsed.hostname or "", parsed.port or 80
        self._body = json.dumps(REQUEST).encode()

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=15)
            self._local.connection = connection
        return connection

    def track_of(self, data: list[float]) -> str:
        for track, expected in self.answers.items():
            if close(data, expected):
                return track
        raise AssertionError(f"an answer from neither model: {data[:4]}")

    def send(self, headers: Mapping[str, str] | None = None) -> str:
        """One inference; returns the track whose model answered (a failure raises)."""
        connection = self._connection()
        try:
            connection.request("POST", f"/v2/models/{NAME}/infer", body=self._body,
                               headers={"Content-Type": "application/json", **(headers or {})})
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            self._local.connection = None
            raise
        if response.status != 200:
            raise AssertionError(f"gateway answered {response.status}: {payload[:300]!r}")
        return self.track_of([float(x) for x in json.loads(payload)["outputs"][0]["data"]])

    def send_many(self, count: int, headers: Mapping[str, str] | None = None, threads: int = 4) -> Counter[str]:
        """`count` requests over `threads` connections; how many each track's model answered."""
        seen: Counter[str] = Counter()
        lock = threading.Lock()
        errors: list[BaseException] = []

        def worker(share: int) -> None:
            local: Counter[str] = Counter()
            try:
                for _ in range(share):
                    local[self.send(headers)] += 1
            except BaseException as error:
                errors.append(error)
            with lock:
                seen.update(local)

        shares = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
        workers = [threading.Thread(target=worker, args=(share,)) for share in shares]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        if errors:
            raise errors[0]
        return seen

    def until(self, done: Callable[[str], bool], timeout: float = 60.0) -> float:
        """Send requests until one answer satisfies `done`; seconds it took (raises after `timeout`)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                if done(self.send()):
                    return time.monotonic() - started
            except (OSError, http.client.HTTPException, AssertionError):
                time.sleep(0.05)  # the route may be briefly unknown to the proxy while it changes
        raise AssertionError(f"no answer satisfied the condition within {timeout}s")

    def settled_on(self, track: str, in_a_row: int = 50, timeout: float = 60.0) -> None:
        """Wait until `in_a_row` consecutive answers all come from `track`."""
        deadline = time.monotonic() + timeout
        streak = 0
        while streak < in_a_row:
            if time.monotonic() > deadline:
                raise AssertionError(f"answers did not settle on {track} within {timeout}s")
            try:
                streak = streak + 1 if self.send() == track else 0
            except (OSError, http.client.HTTPException, AssertionError):
                streak = 0
