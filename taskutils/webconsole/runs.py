"""What the local dispatcher saw: recent runs, each queued task's last answer, tasks in flight.

The dispatcher of ``serve`` keeps these records; this module reads them into
one shape for the pages. Where a server keeps none, :class:`RunRecorder`
records them itself at the dispatcher's ``add_request``, bounded like the
dispatcher's own records.
"""

from __future__ import annotations

import collections
import datetime
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ERROR_HEADER = "x-taskutils-error"
MAX_RUNS = 500  # recent runs kept
MAX_LAST = 10_000  # task names whose last answer is kept


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


class RunRecorder:
    """Records each run at the dispatcher's ``add_request``: the fallback when the server keeps none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: collections.deque[Run] = collections.deque(maxlen=MAX_RUNS)
        self._last: collections.OrderedDict[str, Run] = collections.OrderedDict()
        self._running: dict[int, tuple[str, str]] = {}

    def wrap(self, add_request: Callable[..., Any]) -> Callable[..., Any]:
        """add_request, recording each answer."""

        def recorded(method: str, relative_url: str, headers: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
            found = {str(k).lower(): v for k, v in headers if v is not None}
            queue, name = found.get("x-appengine-queuename", ""), found.get("x-appengine-taskname", "")
            token = id(object())
            started = time.perf_counter()
            with self._lock:
                self._running[token] = (queue, name)
            status, error = 502, ""
            try:
                answer = add_request(method, relative_url, headers, body, *args, **kwargs)
                status = int(str(answer.status).split(" ", 1)[0])
                error = next((v for k, v in answer.headers if k.lower() == ERROR_HEADER), "")
                return answer
            finally:
                retry = found.get("x-appengine-taskretrycount")
                self.add(
                    Run(
                        at=datetime.datetime.now(datetime.timezone.utc),
                        queue=queue,
                        task_name=name,
                        url=relative_url,
                        status=status,
                        duration=time.perf_counter() - started,
                        error=error,
                        retry_count=int(retry) if retry and retry.isdigit() else None,
                    )
                )
                with self._lock:
                    self._running.pop(token, None)

        return recorded

    def add(self, run: Run) -> None:
        with self._lock:
            self._runs.append(run)
            self._last[run.task_name] = run
            self._last.move_to_end(run.task_name)
            while len(self._last) > MAX_LAST:
                self._last.popitem(last=False)

    def recent(self) -> list[Any]:
        with self._lock:
            return list(self._runs)

    def last(self, task_name: str) -> Any:
        with self._lock:
            return self._last.get(task_name)

    def running(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._running.values())


class RunLog:
    """The console's view of a server's run records, whichever keeps them."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self._own: RunRecorder | None = None
        source = self._source()
        if source is None:
            dispatcher = getattr(server, "dispatcher", None)
            if dispatcher is not None and hasattr(dispatcher, "add_request"):
                self._own = RunRecorder()
                dispatcher.add_request = self._own.wrap(dispatcher.add_request)

    def _source(self) -> Any:
        """The server's own records: ``server.runs`` (or its dispatcher's), if it keeps them."""
        for owner in (self.server, getattr(self.server, "dispatcher", None)):
            records = getattr(owner, "runs", None)
            if records is not None and hasattr(records, "recent"):
                return records
        return None

    def recent(self, limit: int = 200) -> list[Run]:
        """The latest runs, newest first."""
        source = self._source() or self._own
        if source is None:
            return []
        return [as_run(r) for r in list(source.recent())[-limit:]][::-1]

    def last(self, task_name: str) -> Run | None:
        """The last answer of a queued task, if it has run."""
        source = self._source() or self._own
        found = source.last(task_name) if source is not None else None
        return as_run(found) if found is not None else None

    def running(self, queue: str | None = None) -> int:
        """How many tasks are in flight, in one queue or in all."""
        source = self._source() or self._own
        if source is None or not hasattr(source, "running"):
            return 0
        flying = source.running()
        if isinstance(flying, int):
            return flying
        if queue is None:
            return len(flying)
        return sum(1 for item in flying if (item[0] if isinstance(item, tuple) else _field(item, "queue")) == queue)
