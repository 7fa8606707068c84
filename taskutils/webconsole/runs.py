"""What the local dispatcher saw: recent runs, each queued task's last answer, tasks in flight.

The dispatcher of ``serve`` keeps these records, bounded, as ``server.runs``
(:class:`taskutils.local.dispatch.RunRecords`); this module reads them for the pages.
"""

from __future__ import annotations

import datetime
from typing import Any

from ..local.dispatch import RunRecord


def started_at(run: RunRecord) -> datetime.datetime:
    """When the attempt started, in UTC."""
    return datetime.datetime.fromtimestamp(run.at, datetime.timezone.utc)


class RunLog:
    """The console's view of a server's run records (none when the server keeps none)."""

    def __init__(self, server: Any) -> None:
        self.records = getattr(server, "runs", None)

    def recent(self, limit: int = 500) -> list[RunRecord]:
        """The latest runs, newest first."""
        if self.records is None:
            return []
        return self.records.recent()[-limit:][::-1]

    def last(self, task_name: str) -> RunRecord | None:
        """The last answer of a queued task, if it has run and not succeeded."""
        return self.records.last(task_name) if self.records is not None else None

    def running(self, queue: str | None = None) -> int:
        """How many tasks are in flight, in one queue or in all."""
        if self.records is None:
            return 0
        return sum(1 for name, _ in self.records.running() if queue is None or name == queue)

    def running_names(self, queue: str) -> set[str]:
        """The names of the tasks of one queue in flight."""
        if self.records is None:
            return set()
        return {task for name, task in self.records.running() if name == queue}
