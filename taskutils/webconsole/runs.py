"""What the local dispatcher saw: recent runs, each queued task's last answer, tasks in flight.

The dispatcher of ``serve`` keeps these records, bounded, as ``server.runs``
(documented in ``taskutils.local.dispatch``); this module reads them into one
shape for the pages.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Run:
    """One finished run of a task."""

    at: datetime.datetime
    queue: str
    task_name: str
    url: str
    status: int
    duration: float
    error: str
    retry_count: int | None = None

    @property
    def ok(self) -> bool:
        """True when the answer was a 2xx: the task will not run again."""
        return 200 <= self.status < 300


def _field(record: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = record.get(name) if isinstance(record, dict) else getattr(record, name, None)
        if value is not None:
            return value
    return default


def _when(value: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    return datetime.datetime.fromtimestamp(float(value or 0), datetime.timezone.utc)


def as_run(record: Any) -> Run:
    """A run record of the dispatcher's (object or dict) in the console's shape."""
    status = _field(record, "status", "status_code", default=0)
    if isinstance(status, str):
        status = int(status.split(" ", 1)[0] or 0)
    duration = float(_field(record, "duration", "seconds", default=0.0))
    return Run(
        at=_when(_field(record, "at", "time", "started", default=0)),
        queue=str(_field(record, "queue", "queue_name", default="")),
        task_name=str(_field(record, "task_name", "name", "task", default="")),
        url=str(_field(record, "url", "path", default="")),
        status=int(status),
        duration=duration,
        error=str(_field(record, "error", "error_line", default="") or ""),
        retry_count=_field(record, "retry_count", "retry"),
    )


class RunLog:
    """The console's view of a server's run records."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def _source(self) -> Any:
        """The server's records, ``server.runs`` (see ``taskutils.local.dispatch``); None if it keeps none."""
        records = getattr(self.server, "runs", None)
        return records if records is not None and hasattr(records, "recent") else None

    def recent(self, limit: int = 500) -> list[Run]:
        """The latest runs, newest first."""
        source = self._source()
        if source is None:
            return []
        return [as_run(r) for r in list(source.recent())[-limit:]][::-1]

    def last(self, task_name: str) -> Run | None:
        """The last answer of a queued task, if it has run."""
        source = self._source()
        found = source.last(task_name) if source is not None else None
        return as_run(found) if found is not None else None

    def running(self, queue: str | None = None) -> int:
        """How many tasks are in flight, in one queue or in all."""
        source = self._source()
        if source is None or not hasattr(source, "running"):
            return 0
        flying = source.running()
        if isinstance(flying, int):
            return flying
        if queue is None:
            return len(flying)
        return sum(1 for item in flying if (item[0] if isinstance(item, tuple) else _field(item, "queue")) == queue)
