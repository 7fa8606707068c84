"""The queues as the console sees them on the cloud backend: Cloud Tasks (or its emulator) through its client.

The same reads and actions as :mod:`.queues` (the taskqueue stub's), made with
``CloudTasksClient``: ``ListQueues``, ``ListTasks`` and ``GetTask`` with the FULL view
(bodies included, which Cloud Tasks gives to principals with
``cloudtasks.tasks.fullView``), ``RunTask``, ``DeleteTask`` and ``PurgeQueue``. Queues
are those of the configured project and location; names shown are the short ones.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any
from urllib.parse import urlsplit

from ..backends import cloud_requests
from ..config import settings
from .queues import MAX_TASKS, QueueInfo, TaskRow

log = logging.getLogger("taskutils.webconsole")

MAX_COUNTED = 1000  # tasks counted per queue on the queue list (one page of ListTasks)
RUN_TIMEOUT = 5.0  # seconds RunTask may take; the emulator answers only once the task has run


def service() -> str:
    """Where the queues live, as the pages say it."""
    where = cloud_requests.endpoint()
    return f"the Cloud Tasks emulator at {where}" if where else "Cloud Tasks"


def _api() -> Any:
    from google.api_core import exceptions
    from google.cloud import tasks_v2

    return tasks_v2, exceptions


def _location() -> str:
    cloud = settings.cloud
    return f"projects/{cloud.resolved_project()}/locations/{cloud.resolved_location()}"


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _moment(stamp: Any) -> datetime.datetime | None:
    """A protobuf Timestamp as an aware datetime; None when unset."""
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    return datetime.datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, datetime.timezone.utc)


def _seconds(duration: Any) -> float:
    return float(duration.seconds + duration.nanos / 1e9)


def _retry(config: Any) -> dict[str, str]:
    """A queue's RetryConfig, named as queue.yaml names the same settings."""
    found: dict[str, str] = {}
    if config.max_attempts > 0:
        found["task_retry_limit"] = str(config.max_attempts - 1)
    for field, label in (
        ("max_retry_duration", "task_age_limit"),
        ("min_backoff", "min_backoff_seconds"),
        ("max_backoff", "max_backoff_seconds"),
    ):
        if config.HasField(field) and _seconds(getattr(config, field)):
            found[label] = f"{_seconds(getattr(config, field)):g} s"
    if config.max_doublings:
        found["max_doublings"] = str(config.max_doublings)
    return found


def _listed(parent: str, limit: int, full: bool = True) -> list[Any]:
    """Up to limit tasks of the queue at parent, as protobufs (with their bodies when full); [] for an unknown queue."""
    tasks_v2, exceptions = _api()
    view = tasks_v2.Task.View.FULL if full else tasks_v2.Task.View.BASIC
    request = tasks_v2.ListTasksRequest(parent=parent, response_view=view, page_size=limit)
    found: list[Any] = []
    try:
        for task in cloud_requests.client().list_tasks(request=request):
            found.append(tasks_v2.Task.pb(task))
            if len(found) >= limit:
                break
    except exceptions.NotFound:
        return []
    return found


def _info(queue: Any, listed: list[Any]) -> QueueInfo:
    limits = queue.rate_limits
    etas = [_eta(t) for t in listed]
    return QueueInfo(
        name=_short(queue.name),
        rate=f"{limits.max_dispatches_per_second:g}/s" if limits.max_dispatches_per_second else "not set",
        bucket_size=int(limits.max_burst_size),
        max_concurrent_requests=int(limits.max_concurrent_dispatches) or None,
        retry=_retry(queue.retry_config) if queue.HasField("retry_config") else {},
        paused=queue.state == queue.State.PAUSED,
        waiting=len(listed),
        next_eta=min(etas) if etas else None,
    )


def queues(queue_yaml: str | None = None) -> list[QueueInfo]:
    """Every queue of the project and location, in name order, with its settings and backlog.

    queue_yaml is not read: the settings shown are the queues' own in Cloud Tasks.
    """
    tasks_v2, _ = _api()
    found = [tasks_v2.Queue.pb(q) for q in cloud_requests.client().list_queues(parent=_location())]
    found.sort(key=lambda q: _short(q.name))
    return [_info(q, _listed(q.name, MAX_COUNTED, full=False)) for q in found]


def queue(name: str, queue_yaml: str | None = None) -> QueueInfo | None:
    """One queue by short name; None when Cloud Tasks does not know it."""
    tasks_v2, exceptions = _api()
    path = cloud_requests.queue_path(name)
    try:
        found = tasks_v2.Queue.pb(cloud_requests.client().get_queue(name=path))
    except (exceptions.NotFound, exceptions.InvalidArgument):
        return None
    return _info(found, _listed(path, MAX_COUNTED, full=False))


def _eta(task: Any) -> datetime.datetime:
    """When the task is due: its schedule time, or now when it has none (due at once)."""
    return _moment(task.schedule_time) or datetime.datetime.now(datetime.timezone.utc)


def _row(task: Any) -> TaskRow:
    """A ``tasks_v2.Task`` protobuf as a row: the path and query of an HTTP task's URL, as a queued task's URL."""
    tasks_v2, _ = _api()
    if task.HasField("http_request"):
        request = task.http_request
        target = settings.cloud.target or ""
        if target and request.url.startswith(target + "/"):
            url = request.url[len(target) :]
        else:
            parts = urlsplit(request.url)
            url = parts.path + (f"?{parts.query}" if parts.query else "")
    else:
        request = task.app_engine_http_request
        url = request.relative_uri
    deadline = _seconds(task.dispatch_deadline) if task.HasField("dispatch_deadline") else 0.0
    return TaskRow(
        name=_short(task.name),
        queue=task.name.split("/")[5],  # projects/P/locations/L/queues/Q/tasks/T
        url=url,
        method=tasks_v2.HttpMethod(request.http_method or tasks_v2.HttpMethod.POST).name,
        eta=_eta(task),
        retry_count=int(task.dispatch_count),  # a waiting task was dispatched only by attempts that failed
        execution_count=int(task.dispatch_count),
        headers=sorted(request.headers.items()),
        body=bytes(request.body),
        created=_moment(task.create_time),
        tag=None,
        deadline_seconds=deadline or None,
    )


def tasks(queue_name: str, limit: int = MAX_TASKS) -> list[TaskRow]:
    """The queue's tasks in ETA order, at most limit of them; [] for an unknown queue."""
    rows = [_row(t) for t in _listed(cloud_requests.queue_path(queue_name), limit)]
    return sorted(rows, key=lambda r: r.eta)


def _task_path(queue_name: str, task_name: str) -> str:
    return f"{cloud_requests.queue_path(queue_name)}/tasks/{task_name}"


def task(queue_name: str, task_name: str) -> TaskRow | None:
    """One queued task by name (``GetTask``); None once it has run, been deleted, or never was."""
    tasks_v2, exceptions = _api()
    request = tasks_v2.GetTaskRequest(name=_task_path(queue_name, task_name), response_view=tasks_v2.Task.View.FULL)
    try:
        found = cloud_requests.client().get_task(request=request)
    except (exceptions.NotFound, exceptions.InvalidArgument):
        return None
    except exceptions.MethodNotImplemented:  # an emulator without GetTask: look through the queue's list
        return next((row for row in tasks(queue_name, MAX_COUNTED) if row.name == task_name), None)
    return _row(tasks_v2.Task.pb(found))


def run_now(queue_name: str, task_name: str) -> bool:
    """Dispatch the task now (``RunTask``), even in a paused queue or before its ETA. False if it is gone.

    Cloud Tasks answers at once; the emulator only once the task has run, so past ``RUN_TIMEOUT``
    the task is taken to be running.
    """
    _, exceptions = _api()
    try:
        cloud_requests.client().run_task(name=_task_path(queue_name, task_name), timeout=RUN_TIMEOUT)
    except (exceptions.NotFound, exceptions.InvalidArgument):
        return False
    except exceptions.DeadlineExceeded:
        log.info("RunTask of %s/%s still running after %g s", queue_name, task_name, RUN_TIMEOUT)
    return True


def delete(queue_name: str, task_name: str) -> bool:
    """Delete the task (``DeleteTask``): it never runs. False if it was already gone.

    NotImplementedError where the endpoint has no DeleteTask (an emulator not started by taskutils).
    """
    _, exceptions = _api()
    try:
        cloud_requests.client().delete_task(name=_task_path(queue_name, task_name))
    except (exceptions.NotFound, exceptions.InvalidArgument):
        return False
    except exceptions.MethodNotImplemented as e:
        raise NotImplementedError(f"{service()} cannot delete one task: {e.message}") from e
    return True


def purge(queue_name: str) -> bool:
    """Delete every task of the queue (``PurgeQueue``). False for an unknown queue."""
    _, exceptions = _api()
    try:
        cloud_requests.client().purge_queue(name=cloud_requests.queue_path(queue_name))
    except (exceptions.NotFound, exceptions.InvalidArgument):
        return False
    return True
