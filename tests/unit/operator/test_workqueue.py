"""The work queue's controller semantics, exercised with real threads."""

from __future__ import annotations

import threading

from modeldeploy_operator.workqueue import WorkQueue


def test_coalesces_waiting_keys() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert queue.get(timeout=0.1) == "a"
    assert queue.get(timeout=0.1) == "b"
    assert queue.get(timeout=0.01) is None


def test_key_in_progress_is_not_handed_out_twice_but_requeued_after() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert queue.get(timeout=0.1) == "a"
    queue.add("a")  # changed while being reconciled
    assert queue.get(timeout=0.01) is None
    queue.done("a")
    assert queue.get(timeout=0.1) == "a"


def test_retry_backs_off_exponentially_and_forget_resets() -> None:
    queue: WorkQueue[str] = WorkQueue(base_delay=0.01, max_delay=0.04)
    delays = [queue.retry("a") for _ in range(4)]
    assert delays == [0.01, 0.02, 0.04, 0.04]
    queue.forget("a")
    assert queue.retry("a") == 0.01


def test_delayed_key_arrives_later() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 1.0)  # long enough that a loaded machine cannot pass it between these two lines
    assert queue.get(timeout=0.001) is None
    assert queue.get(timeout=10.0) == "a"


def test_shutdown_wakes_blocked_workers() -> None:
    queue: WorkQueue[str] = WorkQueue()
    results: list[str | None] = []
    worker = threading.Thread(target=lambda: results.append(queue.get()))
    worker.start()
    queue.shutdown()
    worker.join(timeout=5)
    assert results == [None]


def test_a_timer_scheduled_ahead_jumps_the_keys_queued_by_events() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key in ("event-1", "event-2", "due-analysis"):
        queue.add(key)  # the due key was also queued by an event, behind the others
    queue.add_after("due-analysis", 0.0, ahead=True)
    queue.add_after("retry", 0.0)  # a plain timer keeps its place at the back
    assert [queue.get(timeout=0.1) for _ in range(4)] == ["due-analysis", "event-1", "event-2", "retry"]
    assert queue.get(timeout=0.01) is None
