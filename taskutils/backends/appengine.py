"""The App Engine backend's queue: the taskqueue SDK (App Engine's Task Queue, or Cloud Tasks through it).

``AppEngineQueue`` implements ``taskutils.backends.base.Queue``; what both backends share
when they add tasks is in ``adding``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from google.appengine.api import taskqueue

from ..hooks import on_enqueue
from .adding import announce

log = logging.getLogger("taskutils.task")  # the enqueue path logs as the task function does

MAX_TASKS_PER_ADD = taskqueue.MAX_TASKS_PER_ADD
MAX_TRANSACTIONAL_TASKS_PER_ADD = 5

# Cloud Tasks endpoints ("" for Google's, else the emulator's host:port) that answered a batch
# add with UNIMPLEMENTED: this process adds tasks there one by one from then on.
_no_batch_endpoints: set[str] = set()


_queue_add = taskqueue.Queue.add


class AppEngineQueue(taskqueue.Queue):  # type: ignore[misc]
    """A taskqueue.Queue that tells ``taskutils.hooks.on_enqueue`` what it added.

    Made once per task function: the SDK checks the queue's name here, when decorating.
    """

    backend = "appengine"
    max_tasks_per_add = MAX_TASKS_PER_ADD
    max_transactional_tasks_per_add = MAX_TRANSACTIONAL_TASKS_PER_ADD

    def add(self, task: Any, transactional: bool = False) -> Any:
        added = _queue_add(self, task, transactional)
        if on_enqueue.receivers:
            announce(self.name, added)
        return added

    def add_task(self, task: taskqueue.Task, transactional: bool = False) -> taskqueue.Task:
        """Add one task: the SDK's error when the queue refuses it."""
        return self.add(task, transactional)

    def add_tasks(self, tasks: list[taskqueue.Task], transactional: bool = False) -> list[taskqueue.Task]:
        """Add tasks in one queue RPC, or one by one where Cloud Tasks has no batch add."""
        return _add_batch(self, tasks, transactional)


def _cloud_tasks_endpoint() -> str | None:
    """Where the SDK sends push tasks when it uses Cloud Tasks; None on the App Engine Task Queue."""
    if os.environ.get("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", "").lower() != "true":
        return None
    return os.environ.get("CLOUD_TASKS_EMULATOR_HOST", "")


def _is_unimplemented(error: taskqueue.Error) -> bool:
    """True when the SDK's error wraps gRPC UNIMPLEMENTED / HTTP 501: the backend has no batch RPC."""
    try:
        from google.api_core.exceptions import MethodNotImplemented
    except ImportError:
        return False
    return isinstance(error.__cause__, MethodNotImplemented)


def _add_batch(queue: taskqueue.Queue, batch: list[taskqueue.Task], transactional: bool) -> list[taskqueue.Task]:
    """Add tasks in one queue RPC, or one by one where Cloud Tasks has no batch add."""
    endpoint = None if transactional or len(batch) == 1 else _cloud_tasks_endpoint()
    if endpoint is None or endpoint not in _no_batch_endpoints:
        try:
            return queue.add(batch, transactional=transactional)
        except taskqueue.Error as e:
            if endpoint is None or not _is_unimplemented(e):
                raise
            _no_batch_endpoints.add(endpoint)
            log.warning(
                "Cloud Tasks at %s has no BatchCreateTasks (%s): adding tasks one by one from now on",
                endpoint or "its default endpoint",
                e,
            )
    return [t if t.was_enqueued else queue.add(t) for t in batch]
