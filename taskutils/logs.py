"""Log records that say which task and trace they belong to, and Cloud Logging's structured JSON.

While a task runs, every record logged (by any logger) carries:

==============================  ===================================================
``taskutils_task_name``          the task's name, as the queue gave it
``taskutils_queue``              its queue
``taskutils_retry_count``        how many times it was retried before this run
``taskutils_handle_id``          the handle it records on (``submit``), else None
``taskutils_trace_id``           the trace it joins (32 hex digits)
``taskutils_span_id``            the span its work hangs under (16 hex digits)
``taskutils_trace_sampled``      whether that trace is sampled
==============================  ===================================================

The three trace fields are set in a web request that ``mount()`` answers too. A
record logged elsewhere has none of them: a format string that names them needs
``logging.Formatter(fmt, defaults=taskutils.logs.DEFAULTS)``. The fields are added by
a log record factory, installed once when the handler first runs or ``mount()`` is
called, chained to the factory in place then.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from typing import Any

from .tracing import current_trace, scope

TASK_NAME, QUEUE, RETRY_COUNT, HANDLE_ID = (
    "taskutils_task_name",
    "taskutils_queue",
    "taskutils_retry_count",
    "taskutils_handle_id",
)
TRACE_ID, SPAN_ID, TRACE_SAMPLED = "taskutils_trace_id", "taskutils_span_id", "taskutils_trace_sampled"
DEFAULTS: dict[str, Any] = dict.fromkeys((TASK_NAME, QUEUE, RETRY_COUNT, HANDLE_ID, TRACE_ID, SPAN_ID, TRACE_SAMPLED))

installed = False
_lock = threading.Lock()


def annotate(record: logging.LogRecord) -> None:
    """Set the task's and the trace's fields on a record made now, where there are any."""
    current = scope.get()
    if current is not None:
        info = current.info
        if info is not None:
            record.taskutils_task_name = info.task_name
            record.taskutils_queue = info.queue_name
            record.taskutils_retry_count = info.retry_count
            record.taskutils_handle_id = current.handle_id
    trace = current_trace()
    if trace is not None:
        record.taskutils_trace_id = trace.trace_id
        record.taskutils_span_id = trace.span_id
        record.taskutils_trace_sampled = trace.sampled


def install() -> None:
    """Chain a log record factory that annotates every record; once per process."""
    global installed
    with _lock:
        if installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            annotate(record)
            return record

        logging.setLogRecordFactory(factory)
        installed = True


def _severity(level: int) -> str:
    for floor, name in ((50, "CRITICAL"), (40, "ERROR"), (30, "WARNING"), (20, "INFO"), (10, "DEBUG")):
        if level >= floor:
            return name
    return "DEFAULT"


def _project() -> str | None:
    project = os.environ.get("GOOGLE_CLOUD_PROJECT")
    if project:
        return project
    application = os.environ.get("GAE_APPLICATION", "")  # "s~my-project" on App Engine
    return application.partition("~")[2] or application or None


class CloudLoggingFormatter(logging.Formatter):
    """Each record as one line of JSON that Cloud Logging reads as a structured entry.

    App Engine, Cloud Run and GKE parse such lines written to stdout or stderr:
    ``severity``, ``message`` (with the traceback, which Error Reporting reads),
    ``time``, ``logging.googleapis.com/trace`` (``projects/PROJECT/traces/TRACE``),
    ``logging.googleapis.com/spanId``, ``logging.googleapis.com/trace_sampled`` and
    ``logging.googleapis.com/sourceLocation``; ``logger``, and ``task`` (name, queue,
    retry count, handle id) while a task runs. ``project`` defaults to
    ``GOOGLE_CLOUD_PROJECT`` (set on App Engine; set it yourself on Cloud Run)::

        handler = logging.StreamHandler(); handler.setFormatter(taskutils.CloudLoggingFormatter())
        logging.basicConfig(level=logging.INFO, handlers=[handler])
    """

    def __init__(self, project: str | None = None, fmt: str | None = None) -> None:
        super().__init__(fmt or "%(message)s", defaults=DEFAULTS)
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        entry: dict[str, Any] = {
            "severity": _severity(record.levelno),
            "message": message,
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "logger": record.name,
            "logging.googleapis.com/sourceLocation": {
                "file": record.pathname,
                "line": str(record.lineno),
                "function": record.funcName,
            },
        }
        trace_id = getattr(record, TRACE_ID, None)
        if trace_id:
            project = self.project or _project()
            entry["logging.googleapis.com/trace"] = f"projects/{project}/traces/{trace_id}" if project else trace_id
            entry["logging.googleapis.com/spanId"] = getattr(record, SPAN_ID, None)
            entry["logging.googleapis.com/trace_sampled"] = bool(getattr(record, TRACE_SAMPLED, False))
        task_name = getattr(record, TASK_NAME, None)
        if task_name is not None:
            entry["task"] = {
                "name": task_name,
                "queue": getattr(record, QUEUE, None),
                "retry_count": getattr(record, RETRY_COUNT, None),
                "handle_id": getattr(record, HANDLE_ID, None),
            }
        return json.dumps(entry, default=str)
