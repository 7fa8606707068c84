"""The local queues as the console sees them: the taskqueue stub's own RPCs through apiproxy.

Every read and every action is one of the service's RPCs (``FetchQueues``,
``FetchQueueStats``, ``QueryTasks``, ``ForceRun``, ``Delete``, ``PurgeQueue``),
made without an app id, as the SDK's own calls are, so the stub answers them
for the app it serves and never with its simulated random failures.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

from google.appengine.api import apiproxy_stub_map, queueinfo
from google.appengine.api.taskqueue import taskqueue_service_bytes_pb2 as pb
from google.appengine.runtime import apiproxy_errors

log = logging.getLogger("taskutils.webconsole")

MAX_TASKS = 200  # tasks listed on a queue's page
_Errors = pb.TaskQueueServiceError


@dataclass(frozen=True)
class QueueInfo:
    """One queue: its queue.yaml settings and how many tasks wait in it."""

    name: str
    rate: str
    bucket_size: int
    max_concurrent_requests: int | None
    retry: dict[str, str]
    paused: bool
    waiting: int
    next_eta: datetime.datetime | None


@dataclass(frozen=True)
class TaskRow:
    """One queued task, as ``QueryTasks`` returns it."""

    name: str
    queue: str
    url: str
    method: str
    eta: datetime.datetime
    retry_count: int
    execution_count: int
    headers: list[tuple[str, str]]
    body: bytes
    created: datetime.datetime | None
    tag: str | None
    deadline_seconds: float | None


def _utc(usec: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(usec / 1e6, datetime.timezone.utc)


def _eta(usec: int) -> datetime.datetime:
    """A task's ETA; the stub's ``ForceRun`` (Run now) sets it to 0, which means due now, not 1970."""
    return _utc(usec) if usec > 0 else datetime.datetime.now(datetime.timezone.utc)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _call(method: str, request: Any, response: Any) -> Any:
    apiproxy_stub_map.MakeSyncCall("taskqueue", method, request, response)
    return response


def _retry(params: Any) -> dict[str, str]:
    found = {}
    for field, label, unit in (
        ("retry_limit", "task_retry_limit", ""),
        ("age_limit_sec", "task_age_limit", " s"),
        ("min_backoff_sec", "min_backoff_seconds", " s"),
        ("max_backoff_sec", "max_backoff_seconds", " s"),
        ("max_doublings", "max_doublings", ""),
    ):
        if params.HasField(field):
            value = getattr(params, field)
            found[label] = f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"
    return found


def _concurrency_limits(queue_yaml: str | None) -> dict[str, int]:
    """max_concurrent_requests per queue as queue.yaml sets it (the stub does not keep it)."""
    if not queue_yaml:
        return {}
    try:
        with open(queue_yaml, encoding="utf-8") as f:
            parsed = queueinfo.LoadSingleQueue(f)
    except (OSError, Exception):  # noqa: BLE001 - serve has parsed it already; a page never fails on it
        return {}
    return {q.name: int(q.max_concurrent_requests) for q in parsed.queue or [] if q.max_concurrent_requests}


def queues(queue_yaml: str | None = None) -> list[QueueInfo]:
    """Every queue the stub knows, in name order, with its settings (and queue.yaml's) and backlog."""
    fetched = _call("FetchQueues", pb.TaskQueueFetchQueuesRequest(max_rows=1000), pb.TaskQueueFetchQueuesResponse())
    names = [_text(q.queue_name) for q in fetched.queue]
    if not names:
        return []
    stats_request = pb.TaskQueueFetchQueueStatsRequest(queue_name=[n.encode() for n in names])
    stats = _call("FetchQueueStats", stats_request, pb.TaskQueueFetchQueueStatsResponse()).queuestats
    limits = _concurrency_limits(queue_yaml)
    found = []
    for queue, stat in zip(fetched.queue, stats, strict=True):
        found.append(
            QueueInfo(
                name=_text(queue.queue_name),
                rate=_text(queue.user_specified_rate)
                if queue.HasField("user_specified_rate")
                else f"{queue.bucket_refill_per_second:g}/s",
                bucket_size=int(queue.bucket_capacity),
                max_concurrent_requests=queue.max_concurrent_requests
                if queue.HasField("max_concurrent_requests")
                else limits.get(_text(queue.queue_name)),
                retry=_retry(queue.retry_parameters) if queue.HasField("retry_parameters") else {},
                paused=queue.paused,
                waiting=stat.num_tasks,
                next_eta=_eta(stat.oldest_eta_usec) if stat.num_tasks and stat.oldest_eta_usec >= 0 else None,
            )
        )
    return found


def queue(name: str, queue_yaml: str | None = None) -> QueueInfo | None:
    """One queue by name; None when the stub does not know it."""
    return next((q for q in queues(queue_yaml) if q.name == name), None)


def _row(queue_name: str, task: Any) -> TaskRow:
    return TaskRow(
        name=_text(task.task_name),
        queue=queue_name,
        url=_text(task.url),
        method=pb.TaskQueueQueryTasksResponse.Task.RequestMethod.Name(task.method),
        eta=_eta(task.eta_usec),
        retry_count=task.retry_count,
        execution_count=task.execution_count,
        headers=[(_text(h.key), _text(h.value)) for h in task.header],
        body=bytes(task.body),
        created=_utc(task.creation_time_usec) if task.HasField("creation_time_usec") else None,
        tag=_text(task.tag) if task.HasField("tag") else None,
        deadline_seconds=task.dispatch_deadline_usec / 1e6 if task.HasField("dispatch_deadline_usec") else None,
    )


def tasks(queue_name: str, limit: int = MAX_TASKS) -> list[TaskRow]:
    """The queue's tasks in ETA order, at most limit of them; [] for an unknown queue."""
    request = pb.TaskQueueQueryTasksRequest(
        queue_name=queue_name.encode(), start_task_name=b"", start_eta_usec=0, max_rows=limit
    )
    try:
        response = _call("QueryTasks", request, pb.TaskQueueQueryTasksResponse())
    except apiproxy_errors.ApplicationError:
        return []
    return [_row(queue_name, t) for t in response.task]


def task(queue_name: str, task_name: str) -> TaskRow | None:
    """One queued task by name; None once it has run, been deleted, or never was."""
    request = pb.TaskQueueQueryTasksRequest(
        queue_name=queue_name.encode(), start_task_name=task_name.encode(), max_rows=1
    )
    try:
        response = _call("QueryTasks", request, pb.TaskQueueQueryTasksResponse())
    except apiproxy_errors.ApplicationError:
        return None
    found = [t for t in response.task if _text(t.task_name) == task_name]
    return _row(queue_name, found[0]) if found else None


def run_now(queue_name: str, task_name: str) -> bool:
    """Make the task due now (``ForceRun``); its retry count is kept. False if it is gone."""
    request = pb.TaskQueueForceRunRequest(queue_name=queue_name.encode(), task_name=task_name.encode())
    try:
        response = _call("ForceRun", request, pb.TaskQueueForceRunResponse())
    except apiproxy_errors.ApplicationError:
        return False
    return bool(response.result == _Errors.OK)


def delete(queue_name: str, task_name: str) -> bool:
    """Delete the task (``Delete``): it never runs. False if it was already gone."""
    request = pb.TaskQueueDeleteRequest(queue_name=queue_name.encode(), task_name=[task_name.encode()])
    try:
        response = _call("Delete", request, pb.TaskQueueDeleteResponse())
    except apiproxy_errors.ApplicationError:
        return False
    return list(response.result) == [_Errors.OK]


def purge(queue_name: str) -> bool:
    """Delete every task of the queue (``PurgeQueue``). False for an unknown queue."""
    try:
        _call(
            "PurgeQueue",
            pb.TaskQueuePurgeQueueRequest(queue_name=queue_name.encode()),
            pb.TaskQueuePurgeQueueResponse(),
        )
    except apiproxy_errors.ApplicationError:
        return False
    return True
