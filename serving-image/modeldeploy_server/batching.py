"""Dynamic batching: concurrent requests are coalesced into one onnxruntime run in a worker thread.

Scheduling happens on the event loop and costs no waiting when there is nothing to wait for:

* A request arriving while a worker is idle and no run is in flight is dispatched in the same loop
  iteration (requests parsed in that iteration join it) - no ``max_delay`` at concurrency 1.
* While every worker is busy, requests queue up; a worker that frees up takes the queue's head and every
  compatible request behind it (same dtypes and non-batch dimensions) up to ``max_batch_size`` rows.
* With several workers, an idle worker waits up to ``max_delay`` for a batch to fill while another
  run is in flight (more requests are then likely on their way).

Results are split back by row ranges, so each caller gets exactly the rows it sent. If a coalesced run
fails, its requests are re-run one by one so one bad request cannot fail its neighbours. A request
whose caller gives up while it waits (a cancelled task: a gRPC call cancelled or past its deadline)
leaves the queue at once and never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

from modeldeploy_server.errors import (
    InferenceFailedError,
    InvalidInputError,
    QueueFullError,
    ServerError,
    ShuttingDownError,
)

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
Runner = Callable[[Feeds], Feeds]
# rows, seconds, the batch's inputs, and the outputs of the requests it answered (the whole batch's
# outputs at once when the run succeeded; each request's own when its batch was re-run one by one)
BatchObserver = Callable[[int, float, Feeds, list[Feeds]], None]
WaitObserver = Callable[[float], None]  # seconds one request waited in the queue for a worker


class _Job:
    __slots__ = ("enqueued", "feeds", "future", "key", "rows")

    def __init__(self, feeds: Feeds, rows: int, future: asyncio.Future[Feeds], enqueued: float) -> None:
        self.feeds = feeds
        self.rows = rows
        self.future = future
        self.enqueued = enqueued
        self.key = tuple((name, array.dtype.str, array.shape[1:]) for name, array in feeds.items())


# onnxruntime turns each failed run's status code into its own exception class: INVALID_ARGUMENT into
# ``InvalidArgument`` (wrong input type or rank, a dimension the graph fixes, an index out of range),
# FAIL into ``Fail``, RUNTIME_EXCEPTION into ``RuntimeException`` and so on.
_SHAPE_WORDS = ("shape", "dimension", "broadcast")


def classify_failure(exc: BaseException, feeds: Feeds) -> ServerError:
    """Whose fault a failed run is: a 400 naming the tensors for the client's, a 500 for the server's.

    ``InvalidArgument`` is onnxruntime saying the input is wrong (a value out of range, a type or a
    dimension the graph fixes): the client's, by class alone. A node refusing input shapes the model's
    metadata left open (the warm-up ran, these shapes do not) is the client's too, but onnxruntime
    reports it as ``Fail``, the catch-all code of every failed internal check - the same class as an
    allocation failure or a kernel bug. Its message is the only signal that tells them apart:
    onnxruntime prefixes a node's failure with "while running <op> node" and the broadcast and shape
    checks of its kernels name a shape, dimension or broadcast. Every other class (``RuntimeException``,
    ``EPFail``, ...) and every other ``Fail`` is the server's.
    """
    if isinstance(exc, ServerError):
        return exc
    message = str(exc)
    if isinstance(exc, InvalidArgument):
        return InvalidInputError(f"the model rejected the input: {message}")
    if isinstance(exc, Fail) and "while running" in message and any(word in message.lower() for word in _SHAPE_WORDS):
        shapes = ", ".join(f"{name!r} {list(array.shape)}" for name, array in feeds.items())
        return InvalidInputError(f"the model cannot take input tensors {shapes}: {message}")
    return InferenceFailedError(f"inference failed: {message}")


class Batcher:
    """Bounded queue + worker threads; ``infer`` is awaited on the event loop."""

    def __init__(
        self,
        run: Runner,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_size: int,
        workers: int = 1,
        batchable: bool = True,
        retry_after_seconds: int = 1,
        observer: BatchObserver | None = None,
        wait_observer: WaitObserver | None = None,
    ) -> None:
        self._run = run
        self._max_rows = max_batch_size if batchable else 1
        self._max_delay = max_delay_s
        self._max_queue = max_queue_size
        self._workers = workers
        self._retry_after = retry_after_seconds
        self._observer = observer
        self._wait_observer = wait_observer
        self._pending: deque[_Job] = deque()
        self._pending_rows = 0
        self._busy = 0
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._work: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Start the worker threads; call from the event loop that will await ``infer``."""
        self._loop = asyncio.get_running_loop()
        for index in range(self._workers):
            thread = threading.Thread(target=self._worker, name=f"inference-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def infer(self, feeds: Feeds, rows: int) -> Feeds:
        """Queue one request (``rows`` along dimension 0) and wait for its own output rows."""
        loop = self._loop
        if loop is None or self._closed:
            raise ShuttingDownError(self._retry_after)
        if len(self._pending) >= self._max_queue:
            raise QueueFullError(self._max_queue, self._retry_after)
        future: asyncio.Future[Feeds] = loop.create_future()
        job = _Job(feeds, rows, future, loop.time())
        self._pending.append(job)
        self._pending_rows += rows
        self._idle.clear()
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        try:
            return await future
        except asyncio.CancelledError:
            self._withdraw(job)
            raise

    def _withdraw(self, job: _Job) -> None:
        """A caller that gave up (a cancelled or expired call) leaves the queue at once, so it never
        runs and no longer counts against the queue's size; a run already under way cannot be
        stopped, and its answer for this caller is dropped."""
        try:
            self._pending.remove(job)
        except ValueError:
            return  # already taken by a worker
        self._pending_rows -= job.rows
        if not self._pending and not self._busy:
            self._idle.set()

    async def stop(self) -> None:
        """Refuse new work, finish what was accepted, then end the worker threads."""
        self._closed = True
        await self._idle.wait()
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads.clear()

    # --- event-loop side -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        assert self._loop is not None
        while self._busy < self._workers and self._pending:
            if self._busy and self._max_delay > 0 and self._pending_rows < self._max_rows:
                deadline = self._pending[0].enqueued + self._max_delay
                if deadline > self._loop.time():
                    self._timer = self._loop.call_at(deadline, self._dispatch)
                    return
            jobs = self._take()
            if jobs:
                self._observe_waits(jobs)
                self._busy += 1
                self._work.put(jobs)
        if not self._pending and not self._busy:
            self._idle.set()

    def _observe_waits(self, jobs: list[_Job]) -> None:
        """Queue time is what a request spends before a worker takes it: the autoscaling signal of a
        saturated server whose CPU may still look calm (one batched run hides many waiting callers)."""
        if self._wait_observer is None:
            return
        assert self._loop is not None
        now = self._loop.time()
        for job in jobs:
            self._wait_observer(now - job.enqueued)

    def _take(self) -> list[_Job]:
        """The queue's head and the compatible requests right behind it, up to the row limit."""
        jobs: list[_Job] = []
        rows = 0
        while self._pending:
            job = self._pending[0]
            if job.future.done():  # caller gave up while waiting
                self._pending.popleft()
                self._pending_rows -= job.rows
                continue
            if jobs and (rows + job.rows > self._max_rows or job.key != jobs[0].key):
                break
            self._pending.popleft()
            self._pending_rows -= job.rows
            jobs.append(job)
            rows += job.rows
        return jobs

    def _finish(self, jobs: list[_Job], results: list[Feeds | ServerError]) -> None:
        self._busy -= 1
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, ServerError):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        self._dispatch()

    # --- worker-thread side ------------------------------------------------------------------------

    def _worker(self) -> None:
        while self._handle_next():
            pass

    def _handle_next(self) -> bool:
        """Run one batch; False when told to stop. A call per batch, so that nothing of a batch (its
        requests' buffers) stays referenced from this thread while it waits for the next one."""
        jobs = self._work.get()
        if jobs is None:
            return False
        try:
            feeds, rows, results, outputs, seconds = self._execute(jobs)
        except BaseException as exc:  # never lose a batch: every caller gets an answer
            log.exception("inference worker failed")
            self._reply(jobs, [InferenceFailedError(f"inference failed: {exc}")] * len(jobs))
            return True
        self._reply(jobs, results)
        if self._observer is not None:
            try:
                self._observer(rows, seconds, feeds, outputs)
            except Exception:
                log.exception("batch observer failed")
        return True

    def _reply(self, jobs: list[_Job], results: list[Feeds | ServerError]) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop already closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._finish, jobs, results)

    def _execute(self, jobs: list[_Job]) -> tuple[Feeds, int, list[Feeds | ServerError], list[Feeds], float]:
        """Inputs, rows, one result per job, the outputs worth observing, and the run's seconds."""
        if len(jobs) == 1:
            feeds = jobs[0].feeds
        else:
            feeds = {name: np.concatenate([job.feeds[name] for job in jobs]) for name in jobs[0].feeds}
        rows = sum(job.rows for job in jobs)
        started = time.perf_counter()
        try:
            outputs = self._run(feeds)
        except Exception as exc:
            seconds = time.perf_counter() - started
            if len(jobs) == 1:
                return feeds, rows, [classify_failure(exc, feeds)], [], seconds
            alone = [self._run_alone(job) for job in jobs]
            return feeds, rows, alone, [result for result in alone if not isinstance(result, ServerError)], seconds
        seconds = time.perf_counter() - started
        if len(jobs) == 1:
            return feeds, rows, [outputs], [outputs], seconds
        split = _split(outputs, jobs, rows)
        answered = [] if isinstance(split[0], ServerError) else [outputs]
        return feeds, rows, split, answered, seconds

    def _run_alone(self, job: _Job) -> Feeds | ServerError:
        try:
            return self._run(job.feeds)
        except Exception as exc:
            return classify_failure(exc, job.feeds)


def _split(outputs: Feeds, jobs: list[_Job], rows: int) -> list[Feeds | ServerError]:
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            error = InferenceFailedError(
                f"output {name!r} has shape {list(array.shape)} for a batch of {rows} rows; "
                "the model does not keep rows independent - set MAX_BATCH_SIZE=1"
            )
            return [error] * len(jobs)
    results: list[Feeds | ServerError] = []
    start = 0
    for job in jobs:
        stop = start + job.rows
        results.append({name: array[start:stop] for name, array in outputs.items()})
        start = stop
    return results
