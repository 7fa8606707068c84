"""Hooks: signals on enqueue, start, success, retry and failure, for metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from google.appengine.api import taskqueue

import taskutils
from taskutils import PermanentTaskFailure, RetryTaskException, hooks, task

SIGNALS = (hooks.on_enqueue, hooks.on_start, hooks.on_success, hooks.on_retry, hooks.on_failure)


@task
def works(n: int) -> int:
    return n


@task
def asks_for_a_retry() -> None:
    raise RetryTaskException("later")


@task
def gives_up() -> None:
    raise PermanentTaskFailure("never")


@task(retry_options=taskqueue.TaskRetryOptions(task_retry_limit=1))
def breaks() -> None:
    raise ValueError("broken")


@pytest.fixture
def counts() -> Iterator[Counter[tuple[str, str]]]:
    """The README's example: count events per function and signal."""
    counts: Counter[tuple[str, str]] = Counter()

    def count(event: hooks.TaskEvent) -> None:
        counts[event.function.rsplit("/", 1)[-1], event.signal] += event.count

    for signal in SIGNALS:
        signal.connect(count)
    yield counts
    for signal in SIGNALS:
        signal.disconnect(count)


def test_hooks_count_every_enqueue_start_success_retry_and_failure(task_testbed, counts):
    works(1)
    works.map([2, 3, 4])
    asks_for_a_retry()
    gives_up()
    with pytest.raises(RetryTaskException):  # the drain raises it once its one retry is spent
        task_testbed.drain(retries=1)

    assert counts[("works", "enqueue")] == 4
    assert counts[("works", "start")] == 4 and counts[("works", "success")] == 4
    assert counts[("asks_for_a_retry", "retry")] == 2  # its first run and its one retry
    assert counts[("asks_for_a_retry", "failure")] == 0
    assert counts[("gives_up", "failure")] == 1 and counts[("gives_up", "success")] == 0


def test_a_submitted_task_fails_for_good_on_the_last_attempt_its_handle_allows(task_testbed):
    events: list[hooks.TaskEvent] = []
    with connected(hooks.on_retry, events.append), connected(hooks.on_failure, events.append):
        handle = breaks.submit()
        with pytest.raises(ValueError):
            task_testbed.drain(retries=1)

    assert [(e.signal, e.retry_count) for e in events] == [("retry", 0), ("failure", 1)]
    assert all(e.handle_id == handle.id and isinstance(e.error, ValueError) for e in events)
    assert all(e.duration is not None and e.duration >= 0 for e in events)
    assert handle.status == "failed"


def test_an_enqueue_event_names_the_queue_the_task_and_how_many_were_added(task_testbed):
    events: list[hooks.TaskEvent] = []
    with connected(hooks.on_enqueue, events.append):
        added = works.options(queue="q1")(5)
        works.map(range(150))  # two queue RPCs: 100, then 50

    assert (events[0].queue, events[0].function, events[0].task_name, events[0].count) == (
        "q1",
        "test_hooks/works",
        added.name,
        1,
    )
    assert [e.count for e in events[1:]] == [100, 50]
    assert events[1].task_name is None


def test_a_failing_hook_never_breaks_a_task_or_a_call(task_testbed, caplog):
    def broken_hook(event: hooks.TaskEvent) -> None:
        raise RuntimeError("metrics backend down")

    ran: list[str] = []
    with (
        connected(hooks.on_enqueue, broken_hook),
        connected(hooks.on_start, broken_hook),
        connected(hooks.on_success, broken_hook),
        connected(hooks.on_success, lambda event: ran.append(event.signal)),
    ):
        works(7)
        assert task_testbed.drain() == 1

    assert ran == ["success"]  # the receivers after the failing one still ran
    assert "metrics backend down" in caplog.text


def test_a_receiver_is_connected_once_and_can_be_disconnected(task_testbed):
    events: list[hooks.TaskEvent] = []

    @hooks.on_enqueue.connect
    def keep(event: hooks.TaskEvent) -> None:
        events.append(event)

    hooks.on_enqueue.connect(keep)
    works(1)
    hooks.on_enqueue.disconnect(keep)
    works(2)
    assert len(events) == 1
    assert taskutils.hooks is hooks


class connected:
    """Connect a receiver for the length of a with block."""

    def __init__(self, signal: hooks.Signal, receiver: hooks.Receiver) -> None:
        self.signal, self.receiver = signal, receiver

    def __enter__(self) -> None:
        self.signal.connect(self.receiver)

    def __exit__(self, *exc: object) -> None:
        self.signal.disconnect(self.receiver)
