"""The App Engine backend's queue: the taskqueue SDK (App Engine's Task Queue, or Cloud Tasks through it).

``AppEngineQueue`` implements ``taskutils.backends.base.Queue``. Beside it, what the
code adding tasks shares about this SDK: its error when no App Engine API is reachable,
and cleanup of spilled payloads whose task the queue refused.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from google.appengine.api import taskqueue
from google.appengine.runtime import apiproxy_errors

from .. import codec
from ..config import settings
from ..exc import NoApiProxyError
from ..hooks import TaskEvent, on_enqueue
from ..tracing import current_trace

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


def announce(queue: str, added: taskqueue.Task | list[taskqueue.Task]) -> None:
    """Tell ``taskutils.hooks.on_enqueue``'s receivers what a queue added (one event per add)."""
    tasks = added if isinstance(added, list) else [added]
    if not tasks:
        return
    url, route = tasks[0].url.partition("?")[0], settings.route
    trace = current_trace()
    event = TaskEvent(
        "enqueue",
        url[len(route) + 1 :] if url.startswith(route + "/") else url,
        queue,
        task_name=tasks[0].name if len(tasks) == 1 else None,
        count=len(tasks),
        trace_id=trace.trace_id if trace is not None else None,
    )
    on_enqueue.send(event)


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


def discard_spills(built: list[taskqueue.Task], transactional: bool, error: BaseException | None = None) -> None:
    """Delete the spilled payloads of built tasks the queue surely did not take (see spill.discard_unadded)."""
    if any(t.payload and t.payload[0] & codec.POINTER for t in built):
        from .. import spill

        spill.discard_unadded(built, error, transactional=transactional)


NO_API_ERRORS = (AssertionError, apiproxy_errors.RPCFailedError)


def no_api_proxy(error: BaseException) -> NoApiProxyError | None:
    """NoApiProxyError when the SDK's error says no App Engine API is reachable here; None for any other.

    That is the SDK's ``No api proxy found`` (no stubs at all: a plain script), or, off App
    Engine, a call with no security ticket (``wrap_wsgi_app`` under ``flask run``).
    """
    message = str(error).lower()
    if isinstance(error, AssertionError):
        if "api proxy" not in message:
            return None
    elif not isinstance(error, apiproxy_errors.RPCFailedError) or "security ticket" not in message:
        return None
    elif os.environ.get("GAE_ENV") == "standard":
        return None  # on App Engine: a call outside a request, not a missing server
    return NoApiProxyError(
        "no App Engine API here to add the task to (the SDK says: "
        f"{error}). Outside App Engine, run the app with `python -m taskutils serve MODULE:APP`, "
        "or use the `task_testbed` pytest fixture in tests"
    )
