"""Signals on enqueue, start, success, retry and failure, for metrics.

::

    from collections import Counter
    from taskutils import hooks

    counts = Counter()

    @hooks.on_failure.connect
    def count_failure(event: hooks.TaskEvent) -> None:
        counts[event.function, "failure"] += 1

A receiver is called in the thread that enqueues or runs the task, with one
``TaskEvent``; whatever it raises is logged and dropped, so a failing hook never
breaks a task or a call. Keep receivers quick: they run on every task.

- ``on_enqueue``: after tasks were added to a queue (``count`` of them in one queue RPC).
- ``on_start``: the handler decoded a task and is about to run its call.
- ``on_success``: the call returned; the handler answers 200.
- ``on_retry``: the call raised (or its code is not deployed yet) and the queue will
  send the task again.
- ``on_failure``: the task is dropped for good: it raised ``PermanentTaskFailure``, its
  payload was corrupt or lost, or it failed on the last attempt its handle allows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger("taskutils.hooks")


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """What happened to a task: which function, on which queue, and how it went."""

    signal: str  # "enqueue", "start", "success", "retry" or "failure"
    function: str  # the task's URL path after the route, e.g. "reports/rebuild"
    queue: str
    task_name: str | None = None  # None for an enqueue of several tasks
    retry_count: int = 0
    handle_id: str | None = None
    count: int = 1  # tasks added (enqueue); 1 otherwise
    duration: float | None = None  # seconds from the request's arrival to its answer (success, retry, failure)
    error: BaseException | None = None  # what the run raised (retry, failure)
    trace_id: str | None = None


Receiver = Callable[[TaskEvent], object]
R = TypeVar("R", bound=Receiver)


class Signal:
    """A list of receivers called with each event; ``connect`` works as a decorator."""

    __slots__ = ("name", "receivers", "_lock")

    def __init__(self, name: str) -> None:
        self.name = name
        self.receivers: tuple[Receiver, ...] = ()  # replaced, never changed in place: safe to read unlocked
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Signal {self.name}: {len(self.receivers)} receivers>"

    def connect(self, receiver: R) -> R:
        """Call receiver(event) on every event from now on (once, however often connected)."""
        with self._lock:
            if receiver not in self.receivers:
                self.receivers = (*self.receivers, receiver)
        return receiver

    def disconnect(self, receiver: Receiver) -> None:
        """Stop calling receiver; nothing happens if it was not connected."""
        with self._lock:
            self.receivers = tuple(r for r in self.receivers if r != receiver)

    def send(self, event: TaskEvent) -> None:
        """Call every receiver with event; an exception a receiver raises is logged, never raised."""
        for receiver in self.receivers:
            try:
                receiver(event)
            except Exception:
                log.exception("hook %r on %s raised; the task goes on", receiver, self.name)


on_enqueue = Signal("on_enqueue")
on_start = Signal("on_start")
on_success = Signal("on_success")
on_retry = Signal("on_retry")
on_failure = Signal("on_failure")
