"""The task a request is running: what the queue said about it, for the task's code to read."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from .tracing import scope


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What the queue said about the task being run."""

    task_name: str
    queue_name: str
    retry_count: int
    execution_count: int
    eta: datetime.datetime | None
    tag: str | None = None


def current_task() -> TaskInfo | None:
    """The running task's name, queue, retry count, execution count and ETA; None outside a task."""
    current = scope.get()  # a _Run while a task runs (taskutils.tracing.Scope otherwise)
    return None if current is None else current.info  # type: ignore[no-any-return]
