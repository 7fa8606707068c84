"""The cloud backend's queue: Cloud Tasks through ``google-cloud-tasks``' ``CloudTasksClient``.

``CloudQueue`` implements ``taskutils.backends.base.Queue``. It adds the tasks taskutils
builds (``taskqueue.Task``) as Cloud Tasks tasks (``cloud_requests``), batched with
``BatchCreateTasks`` where the endpoint has it and one by one where it does not (the
emulator); ``transactional=True`` stages them in the Cloud NDB transaction's outbox
(``cloud_outbox``) instead.
"""

from __future__ import annotations

import logging
import re

from .._sdk import taskqueue
from ..config import settings
from ..hooks import on_enqueue
from . import cloud_requests
from .adding import announce
from .cloud_requests import MAX_TASKS_PER_ADD

log = logging.getLogger("taskutils.task")  # the enqueue path logs as the task function does

MAX_TRANSACTIONAL_TASKS_PER_ADD = 5  # as on App Engine: each staged task is its own entity group
_QUEUE_NAME = re.compile(r"[a-zA-Z0-9-]{1,100}")

# Endpoints ("" for Google's, else the emulator's host:port) that answered BatchCreateTasks with
# UNIMPLEMENTED: this process adds tasks there one by one from then on.
_no_batch_endpoints: set[str] = set()


class _NoHostWarning(logging.Filter):
    """Drops the taskqueue SDK's warning that HTTP_HOST is not set, made for every task built on the cloud backend.

    The SDK reads HTTP_HOST to route a task to the version that added it; off App Engine's
    bundled services nothing sets it, and the cloud backend routes from ``GAE_VERSION``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "root"
            and isinstance(record.msg, str)
            and record.msg.startswith(_SDK_HOST_WARNING)
            and settings.backend == "cloud"
        )


_SDK_HOST_WARNING = "The HTTP_HOST environment variable was not set"
if not any(isinstance(f, _NoHostWarning) for f in logging.getLogger().filters):
    logging.getLogger().addFilter(_NoHostWarning())


class CloudQueue:
    """A Cloud Tasks queue, named as on App Engine; its project and location come from ``configure``.

    Made once per task function; the project and location are read when a task is added.
    """

    backend = "cloud"
    max_tasks_per_add = MAX_TASKS_PER_ADD
    max_transactional_tasks_per_add = MAX_TRANSACTIONAL_TASKS_PER_ADD

    def __init__(self, name: str = "default") -> None:
        if not _QUEUE_NAME.fullmatch(name):
            raise taskqueue.InvalidQueueNameError(
                f"queue name {name!r}: Cloud Tasks queue names are 1-100 letters, digits and hyphens"
            )
        self.name = name

    def __repr__(self) -> str:
        return f"<CloudQueue {self.name}>"

    def add_task(self, task: taskqueue.Task, transactional: bool = False) -> taskqueue.Task:
        """Add one task: taskqueue's TaskAlreadyExistsError for a name taken (Cloud Tasks keeps names about an hour)."""
        parent = cloud_requests.queue_path(self.name)
        if transactional:
            from . import cloud_outbox

            cloud_outbox.stage(task, self.name, parent)
        else:
            if task.was_enqueued:
                raise taskqueue.BadTaskStateError("The task has already been enqueued.")
            name = cloud_requests.create(parent, cloud_requests.build(task, parent))
            cloud_requests.mark_added(task, self.name, name)
        if on_enqueue.receivers:
            announce(self.name, task)
        return task

    def add_tasks(self, tasks: list[taskqueue.Task], transactional: bool = False) -> list[taskqueue.Task]:
        """Add tasks in one BatchCreateTasks, or one by one where the endpoint has none; the tasks, in order.

        On an error some tasks may have been added: their ``was_enqueued`` says which.
        """
        limit = MAX_TRANSACTIONAL_TASKS_PER_ADD if transactional else MAX_TASKS_PER_ADD
        if len(tasks) > limit:
            raise taskqueue.TooManyTasksError(f"no more than {limit} tasks can be added in one call")
        if transactional or len(tasks) < 2:
            return [self.add_task(t, transactional) for t in tasks]
        parent = cloud_requests.queue_path(self.name)
        requests = [cloud_requests.build(t, parent) for t in tasks]
        where = cloud_requests.endpoint()
        if where not in _no_batch_endpoints and _batch_create(parent, tasks, requests, self.name):
            if on_enqueue.receivers:
                announce(self.name, tasks)
            return tasks
        for task, request in zip(tasks, requests, strict=True):
            cloud_requests.mark_added(task, self.name, cloud_requests.create(parent, request))
        if on_enqueue.receivers:
            announce(self.name, tasks)
        return tasks


def _batch_create(parent: str, tasks: list[taskqueue.Task], requests: list[object], queue_name: str) -> bool:
    """Add the tasks with one BatchCreateTasks; False (and remembered) where the endpoint has none."""
    from google.api_core import exceptions as api
    from google.cloud import tasks_v2

    client = cloud_requests.client()
    batch = [tasks_v2.CreateTaskRequest(parent=parent, task=tasks_v2.Task.wrap(r)) for r in requests]
    try:
        response = client.batch_create_tasks(parent=parent, requests=batch).result()
    except api.MethodNotImplemented as e:
        where = cloud_requests.endpoint()
        _no_batch_endpoints.add(where)
        log.warning(
            "Cloud Tasks at %s has no BatchCreateTasks (%s): adding tasks one by one from now on",
            where or "its default endpoint",
            e,
        )
        return False
    except Exception as e:
        raise cloud_requests.translate(e) from e
    if len(response.tasks) != len(tasks):
        raise taskqueue.InternalError(f"BatchCreateTasks created {len(response.tasks)} of {len(tasks)} tasks")
    for task, created in zip(tasks, response.tasks, strict=True):
        cloud_requests.mark_added(task, queue_name, created.name)
    return True
