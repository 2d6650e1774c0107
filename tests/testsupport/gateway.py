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


TRAFFIC_LIMIT_S = 600.0


@dataclass
class Traffic:
    """Bounded closed-loop load through the gateway while a rollout runs: each request one of `inputs`
    (rows of FP32 [1, 64]), each answer named by the model whose known outputs it matches
    (`outputs`: model -> one row of answers per input), each failure by its HTTP status.

    Paced (`pause` between a thread's requests) so the shared machine keeps room for the pods and the
    operator; stops by itself after TRAFFIC_LIMIT_S whatever happens."""

    base_url: str
    inputs: list[list[float]]
    outputs: Mapping[str, list[list[float]]]
    threads: int = 4
    pause: float = 0.01

    def __post_init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.recent: list[str] = []  # the last answers, newest last
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        parsed = urllib.parse.urlsplit(self.base_url)
        self._host, self._port = parsed.hostname or "", parsed.port or 80

    def _name(self, index: int, data: list[float]) -> str:
        for model, rows in self.outputs.items():
            if close(data, rows[index]):
                return model
        return "unknown-answer"

    def _one(self, connection: http.client.HTTPConnection, index: int) -> str:
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                       "data": self.inputs[index]}]})
        connection.request("POST", f"/v2/models/{NAME}/infer", body=body,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            return f"http-{response.status}"
        return self._name(index, [float(x) for x in json.loads(payload)["outputs"][0]["data"]])

    def _run(self, offset: int, deadline: float) -> None:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=30)
        index = offset
        while not self._stop.is_set() and time.monotonic() < deadline:
            index = (index + self.threads) % len(self.inputs)
            try:
                what = self._one(connection, index)
            except (OSError, http.client.HTTPException) as error:
                what = f"connection-{type(error).__name__}"
                connection.close()
                connection = http.client.HTTPConnection(self._host, self._port, timeout=30)
            with self._lock:
                self.seen[what] += 1
                self.recent.append(what)
                del self.recent[:-200]
            self._stop.wait(self.pause)
        connection.close()

    def start(self) -> Traffic:
        deadline = time.monotonic() + TRAFFIC_LIMIT_S
        for offset in range(self.threads):
            thread = threading.Thread(target=self._run, args=(offset, deadline), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def stop(self) -> Counter[str]:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=60)
        return self.counts()

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self.seen)

    def last(self, count: int) -> list[str]:
        with self._lock:
            return self.recent[-count:]

    def settled_on(self, model: str, in_a_row: int = 50) -> bool:
        """Whether the last `in_a_row` answers all came from `model`."""
        last = self.last(in_a_row)
        return len(last) == in_a_row and set(last) == {model}


def failures(counts: Mapping[str, int]) -> int:
    """Requests a caller saw fail: an HTTP error or a broken connection."""
    return sum(count for what, count in counts.items() if what.startswith(("http-", "connection-")))
