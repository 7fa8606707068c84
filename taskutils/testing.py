"""Run tasks in tests: Google's testbed stubs, and a drain that posts each task as the queue would."""

from __future__ import annotations

import contextvars
import io
import os
from collections.abc import Callable, Iterable
from typing import Any

from google.appengine.api import namespace_manager
from google.appengine.api.taskqueue import taskqueue_stub
from google.appengine.datastore import datastore_stub_util
from google.appengine.ext import ndb, testbed

from . import taskheaders
from .defer import DEFERRED_URL, run_deferred
from .exc import TaskFailedError
from .handler import EXC_INFO_KEY, TASKQUEUE_SOURCE
from .handler import app as task_app

MAX_ROUNDS = 1000

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Headers the queue sets itself: a task's own copies are replaced, as the stub's dispatcher does.
_QUEUE_HEADERS = taskqueue_stub.BUILT_IN_HEADERS | {"host", "content-type", "user-agent"}


class TaskTestbed:
    """Google's testbed with the taskqueue, datastore and memcache stubs, and a task drain.

    ``queue_yaml`` points the taskqueue stub at a queue.yaml; without one,
    every queue name is accepted.
    """

    def __init__(self, queue_yaml: str | os.PathLike[str] | None = None) -> None:
        self.queue_yaml = queue_yaml
        self.testbed = testbed.Testbed()
        self.taskqueue: taskqueue_stub.TaskQueueServiceStub

    def activate(self) -> TaskTestbed:
        self.testbed.activate()
        self.testbed.init_datastore_v3_stub(
            consistency_policy=datastore_stub_util.PseudoRandomHRConsistencyPolicy(probability=1)
        )
        self.testbed.init_memcache_stub()
        if self.queue_yaml is None:
            self.testbed.init_taskqueue_stub(_all_queues_valid=True)
        else:
            self.testbed.init_taskqueue_stub(queue_config_path=os.fspath(self.queue_yaml))
        self.taskqueue = self.testbed.get_stub(testbed.TASKQUEUE_SERVICE_NAME)
        ndb.get_context().clear_cache()
        return self

    def deactivate(self) -> None:
        self.testbed.deactivate()

    def __enter__(self) -> TaskTestbed:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def queue_names(self) -> list[str]:
        """The names of the queues the stub knows."""
        return [q["name"] for q in self.taskqueue.GetQueues()]

    def tasks(self, queue: str | None = None) -> list[Any]:
        """The taskqueue.Task records waiting, in one queue or in all, each with its queue_name set."""
        waiting = []
        for name in [queue] if queue is not None else self.queue_names():
            for task in self.taskqueue.get_filtered_tasks(queue_names=[name]):
                task._Task__queue_name = name
                waiting.append(task)
        return waiting

    def post(
        self,
        task: Any,
        app: WSGIApp | None = None,
        *,
        retry_count: int | None = None,
        previous_response: int | None = None,
        **environ: Any,
    ) -> tuple[int, dict[str, Any]]:
        """Post one task record as the queue would; return the status and the request's environ.

        The request carries every header the queue sends (the task's own, the
        namespace it was enqueued from included, then queue name, task name,
        retry and execution counts, ETA, App Engine's User-Agent, and with
        ``previous_response`` the retry reason) and runs in a context of its own in
        that namespace, as ``wrap_wsgi_app`` runs a request. ``app`` is the WSGI
        app that receives it: by default ``taskutils.app``, and deferred's own
        handler for the tasks ``deferred.defer`` enqueued. An exception that escapes the app
        answers 500, as a server would, and is kept in the environ.
        """
        retries = task.retry_count if retry_count is None else retry_count
        env = _environ(task, retries, previous_response)
        env.update(environ)
        namespace = env.get("HTTP_X_APPENGINE_CURRENT_NAMESPACE")
        status = contextvars.copy_context().run(_call, app or _both_kinds, env, namespace)
        return status, env

    def drain(self, queue: str | None = None, *, retries: int = 0, app: WSGIApp | None = None) -> int:
        """Run queued tasks, and tasks they enqueue, until none is left; return how many requests ran.

        A task that does not answer 2xx is posted again, up to ``retries`` more
        times, after the other waiting tasks and with its retry count raised,
        as the queue retries it. Then its failure is raised (its exception, or
        TaskFailedError when it raised none), so a failing task fails the test.
        ``app`` receives every task (e.g. your ``wrap_wsgi_app(mount(...))``
        app); by default ``taskutils.app``.
        """
        if retries < 0:
            raise ValueError(f"retries must not be negative, got {retries}")
        ran = 0
        again: list[tuple[Any, int, int]] = []
        for _ in range(MAX_ROUNDS):
            waiting = [(task, 0, 0) for task in self.tasks(queue)] + again
            if not waiting:
                return ran
            again = []
            for task, attempt, previous in waiting:
                if attempt == 0:
                    self.taskqueue.DeleteTask(task.queue_name, task.name)
                status, env = self.post(
                    task, app, retry_count=task.retry_count + attempt, previous_response=previous or None
                )
                ran += 1
                if 200 <= status < 300:
                    continue
                if attempt < retries:
                    again.append((task, attempt + 1, status))
                    continue
                error = env.get(EXC_INFO_KEY)
                if error is not None:
                    raise error
                tried = f" after {attempt + 1} attempts" if attempt else ""
                hint = "; drain(app=your_app) sends tasks through your own app" if status == 404 and not app else ""
                raise TaskFailedError(f"task {task.url} answered {status}{tried}{hint}")
        raise TaskFailedError(f"tasks still enqueue tasks after {MAX_ROUNDS} rounds")


def _both_kinds(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """What a task is posted to by default: deferred's handler for deferred's tasks, else ``taskutils.app``."""
    if environ.get("PATH_INFO") == DEFERRED_URL:
        return run_deferred(environ, start_response)
    return task_app(environ, start_response)


def _environ(task: Any, retry_count: int, previous_response: int | None) -> dict[str, Any]:
    """The WSGI environ of a task request, with the headers the stub's dispatcher sends."""
    body = task.payload or b""
    own = {name.lower(): value for name, value in task.headers.items()}
    headers = [(name, value) for name, value in task.headers.items() if name.lower() not in _QUEUE_HEADERS]
    headers += [
        ("X-AppEngine-QueueName", task.queue_name or "default"),
        ("X-AppEngine-TaskName", task.name),
        ("X-AppEngine-TaskRetryCount", str(retry_count)),
        ("X-AppEngine-TaskExecutionCount", str(retry_count)),
        ("X-AppEngine-TaskETA", own.get("x-appengine-tasketa") or str(task.eta_posix)),
        ("X-AppEngine-Fake-Is-Admin", "1"),
    ]
    headers.append(("User-Agent", taskheaders.user_agent(own.get("user-agent"))))
    if previous_response is not None:
        headers.append(("X-AppEngine-TaskPreviousResponse", str(previous_response)))
        headers.append((taskheaders.RETRY_REASON, taskheaders.answered(previous_response)))
    if "host" in own:
        headers.append(("Host", own["host"]))
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": task.url.partition("?")[0],
        "QUERY_STRING": task.url.partition("?")[2],
        "SCRIPT_NAME": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": os.environ.get("SERVER_SOFTWARE", testbed.DEFAULT_SERVER_SOFTWARE),
        "REMOTE_ADDR": TASKQUEUE_SOURCE,
        "CONTENT_TYPE": own.get("content-type", "application/octet-stream"),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


def _call(wsgi_app: WSGIApp, env: dict[str, Any], namespace: str | None) -> int:
    """Run one request through a WSGI app in the task's namespace; return its status."""
    if namespace is not None:
        namespace_manager.set_namespace(namespace)
    status: list[str] = []

    def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        status[:] = [line]
        return lambda data: None

    try:
        body = wsgi_app(env, start_response)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
    except Exception as e:
        env[EXC_INFO_KEY] = e
        return 500
    return int(status[0].split(" ", 1)[0]) if status else 500
