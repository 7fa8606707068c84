"""Without the App Engine SDK, the cloud backend builds its tasks with ``taskutils._tasklite``: it must
take and refuse what the SDK's ``taskqueue.Task`` and ``TaskRetryOptions`` take and refuse, and
build the same task (payload, URL, headers, size, ETA), or a call would spill, fail or run
differently on Cloud Run than on App Engine. Each case runs through both, side by side.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from google.appengine.api import taskqueue as sdk
from hypothesis import given, settings
from hypothesis import strategies as st

from taskutils import _tasklite as lite

URL = "/_ah/task/reports/build"
NOW = datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(autouse=True)
def _outside_a_request(monkeypatch):
    """As a task is built off App Engine: the SDK adds a Host header from a request's HTTP_HOST (an
    earlier test's testbed leaves one in os.environ), which the cloud backend drops anyway."""
    monkeypatch.delenv("HTTP_HOST", raising=False)


def built(module: Any, payload: Any = b"", **kwargs: Any) -> tuple[str, Any]:
    """("task", its fields) or ("error", the error's class name) for Task(payload, **kwargs) in module."""
    if "retry" in kwargs:
        try:
            kwargs["retry_options"] = module.TaskRetryOptions(**kwargs.pop("retry"))
        except Exception as e:
            return "error", type(e).__name__
    try:
        task = module.Task(payload, **{"url": URL, **kwargs})
    except Exception as e:
        return "error", type(e).__name__
    retry = task.retry_options
    return "task", {
        "payload": task.payload,
        "url": task.url,
        "method": task.method,
        "name": task.name,
        "headers": sorted((k.lower(), v) for k, v in task.headers.items()),
        "size": task.size,
        "eta": round(task.eta_posix),
        "eta_utc": task.eta.astimezone(datetime.timezone.utc).replace(microsecond=0),
        "deadline": task.dispatch_deadline_usec,
        "retry": None if retry is None else vars_of(retry),
        "enqueued": task.was_enqueued,
    }


def vars_of(options: Any) -> dict[str, Any]:
    names = ("min_backoff_seconds", "max_backoff_seconds", "task_age_limit", "max_doublings", "task_retry_limit")
    return {name: getattr(options, name) for name in names}


CASES = {
    "bytes": {"payload": b"\x80pickle"},
    "text": {"payload": "héllo"},
    "no payload": {"payload": None},
    "an empty text": {"payload": ""},
    "a payload neither bytes nor text": {"payload": 12},
    "headers": {"headers": {"X-Taskutils-Version": "1", "content-type": "application/octet-stream"}},
    "a name": {"name": "report-2026_12"},
    "a bad name": {"name": "report 1"},
    "a name too long": {"name": "n" * 501},
    "countdown": {"countdown": 90},
    "a negative countdown": {"countdown": -5},
    "a countdown not a number": {"countdown": "soon"},
    "an aware eta": {"eta": NOW + datetime.timedelta(hours=2)},
    "a naive eta": {"eta": datetime.datetime.now() + datetime.timedelta(hours=2)},
    "an eta too far": {"eta": NOW + datetime.timedelta(days=31)},
    "an eta not a datetime": {"eta": "tomorrow"},
    "countdown and eta": {"countdown": 5, "eta": NOW},
    "retry options": {"retry": {"task_retry_limit": 3, "min_backoff_seconds": 1.5, "task_age_limit": 9.2}},
    "negative retries": {"retry": {"task_retry_limit": -1}},
    "backoffs reversed": {"retry": {"min_backoff_seconds": 10, "max_backoff_seconds": 5}},
    "an unknown retry option": {"retry": {"retries": 3}},
    "a deadline": {"dispatch_deadline_usec": 600 * 1_000_000},
    "a deadline too short": {"dispatch_deadline_usec": 5 * 1_000_000},
    "a deadline too long": {"dispatch_deadline_usec": 25 * 3600 * 1_000_000},
    "a deadline not an int": {"dispatch_deadline_usec": 600.5},
    "a query string": {"url": URL + "?a=1"},
    "a URL not relative": {"url": "reports/build"},
    "a URL too long": {"url": "/" + "u" * 2083},
    "a tag": {"tag": "pull-only"},
    "an unknown option": {"priority": 1},
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_the_light_task_takes_and_refuses_what_the_sdks_does_and_builds_the_same_task(case):
    case = dict(case)
    payload = case.pop("payload", b"\x80pickle")

    assert built(lite, payload, **case) == built(sdk, payload, **case)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=sdk.MAX_PUSH_TASK_SIZE_BYTES - 200, max_value=sdk.MAX_PUSH_TASK_SIZE_BYTES + 50),
    header=st.text(alphabet="abcxyz-", max_size=40),
)
def test_a_payload_at_the_size_limit_fits_or_not_in_both_alike(size, header):
    headers = {"X-Taskutils-Extra": header} if header else {}

    assert built(lite, b"p" * size, headers=headers) == built(sdk, b"p" * size, headers=headers)


def test_the_errors_keep_the_sdks_names_and_hierarchy():
    for name in (
        "TaskAlreadyExistsError",
        "TombstonedTaskError",
        "TaskTooLargeError",
        "InvalidTaskNameError",
        "InvalidUrlError",
        "InvalidEtaError",
        "InvalidQueueNameError",
        "BadTransactionStateError",
        "TransientError",
        "PermissionDeniedError",
        "UnknownQueueError",
    ):
        ours, theirs = getattr(lite, name), getattr(sdk, name)
        assert [c.__name__ for c in ours.__mro__ if c is not object] == [
            c.__name__ for c in theirs.__mro__ if c is not object
        ], name
    assert lite.MAX_PUSH_TASK_SIZE_BYTES == sdk.MAX_PUSH_TASK_SIZE_BYTES
    assert lite.MAX_TASKS_PER_ADD == sdk.MAX_TASKS_PER_ADD


def test_a_task_marked_added_reads_as_added_as_the_sdks_does():
    from taskutils.backends.cloud_requests import mark_added

    for module in (lite, sdk):
        task = module.Task(b"x", url=URL)
        mark_added(task, "reports", "projects/p/locations/l/queues/reports/tasks/t-42")
        assert (task.was_enqueued, task.name, task.queue_name) == (True, "t-42", "reports")
