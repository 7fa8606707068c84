"""Log records that say which task and trace they belong to, and the Cloud Logging formatter."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from google.appengine.api import taskqueue

import taskutils
from taskutils import task
from taskutils.logs import DEFAULTS

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"

app_log = logging.getLogger("myapp.work")  # any logger, not taskutils'
records: list[logging.LogRecord] = []


class Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        records.append(record)


@pytest.fixture
def kept() -> Iterator[list[logging.LogRecord]]:
    handler = Keep()
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)
    records.clear()
    yield records
    app_log.removeHandler(handler)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the formatter writes for app_log and taskutils' own loggers."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(taskutils.CloudLoggingFormatter(project="log-project"))
    loggers = [app_log, logging.getLogger("taskutils.handler")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield stream
    for logger in loggers:
        logger.removeHandler(handler)


@task(queue="work")
def logs_a_line(text: str) -> None:
    app_log.info("working on %s", text)


@task(retry_options=taskqueue.TaskRetryOptions(task_retry_limit=0))
def logs_and_fails() -> None:
    try:
        raise KeyError("no such account")
    except KeyError:
        app_log.exception("lookup failed")
        raise


def traced_call(function: Any, *args: Any) -> Any:
    """Call function the way a request carrying TRACEPARENT does, under mount()."""
    result: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        result.append(function(*args))
        start_response("200 OK", [])
        return [b""]

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_TRACEPARENT": TRACEPARENT}
    list(taskutils.mount(app)(environ, lambda *a: None))
    return result[0]


def test_records_logged_while_a_task_runs_carry_its_name_queue_retry_count_handle_and_trace(task_testbed, kept):
    traced_call(logs_a_line.submit, "accounts")
    [added] = task_testbed.tasks("work")
    task_testbed.post(added, retry_count=2)

    [record] = kept
    assert record.getMessage() == "working on accounts"
    assert record.taskutils_task_name == added.name
    assert record.taskutils_queue == "work"
    assert record.taskutils_retry_count == 2
    assert record.taskutils_handle_id and taskutils.TaskHandle.get(record.taskutils_handle_id) is not None
    assert (record.taskutils_trace_id, record.taskutils_span_id, record.taskutils_trace_sampled) == (TRACE, SPAN, True)


def test_records_logged_outside_a_task_carry_no_task_fields(task_testbed, kept):
    app_log.info("outside")
    traced_call(app_log.info, "in a request")
    outside, in_request = kept
    assert not hasattr(outside, "taskutils_task_name") and not hasattr(outside, "taskutils_trace_id")
    assert not hasattr(in_request, "taskutils_task_name")
    assert in_request.taskutils_trace_id == TRACE  # a request under mount() has a trace, not a task


def test_a_format_string_naming_the_fields_works_inside_and_outside_a_task(task_testbed, kept):
    formatter = logging.Formatter("%(taskutils_queue)s %(taskutils_trace_id)s %(message)s", defaults=DEFAULTS)
    traced_call(logs_a_line, "x")
    task_testbed.drain()
    app_log.info("after")
    assert [formatter.format(r) for r in kept] == [f"work {TRACE} working on x", "None None after"]


def test_the_cloud_logging_formatter_writes_one_json_object_per_line_with_the_trace(task_testbed, json_log):
    traced_call(logs_a_line, "json")
    task_testbed.drain()

    lines = json_log.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]  # every line parses
    mine = next(e for e in entries if e["message"] == "working on json")
    assert mine["severity"] == "INFO"
    assert mine["logging.googleapis.com/trace"] == f"projects/log-project/traces/{TRACE}"
    assert mine["logging.googleapis.com/spanId"] == SPAN
    assert mine["logging.googleapis.com/trace_sampled"] is True
    assert mine["logger"] == "myapp.work"
    assert mine["task"]["queue"] == "work" and mine["task"]["retry_count"] == 0
    assert mine["time"].endswith("Z")
    assert mine["logging.googleapis.com/sourceLocation"]["function"] == "logs_a_line"
    # the handler's own line about the run joins the trace too
    outcome = next(e for e in entries if e["logger"] == "taskutils.handler")
    assert outcome["logging.googleapis.com/trace"] == f"projects/log-project/traces/{TRACE}"


def test_a_failing_tasks_traceback_is_in_the_message_at_error_severity(task_testbed, json_log):
    traced_call(logs_and_fails)
    with pytest.raises(KeyError):
        task_testbed.drain()

    entries = [json.loads(line) for line in json_log.getvalue().splitlines()]
    mine = next(e for e in entries if e["message"].startswith("lookup failed"))
    assert mine["severity"] == "ERROR"
    assert "Traceback (most recent call last)" in mine["message"] and "KeyError: 'no such account'" in mine["message"]
    assert "\n" not in json_log.getvalue().splitlines()[0]  # one entry, one line
    failed = next(e for e in entries if e["logger"] == "taskutils.handler")
    assert failed["severity"] == "ERROR" and "KeyError" in failed["message"]


def test_the_formatter_takes_its_project_from_the_environment(monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "careful", None, None)
    record.taskutils_trace_id, record.taskutils_span_id, record.taskutils_trace_sampled = TRACE, SPAN, False
    entry = json.loads(taskutils.CloudLoggingFormatter().format(record))
    assert entry["logging.googleapis.com/trace"] == f"projects/env-project/traces/{TRACE}"
    assert entry["severity"] == "WARNING" and entry["logging.googleapis.com/trace_sampled"] is False
