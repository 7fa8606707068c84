"""Run tasks in tests: Google's testbed stubs, or the cloud backend's emulators, and a drain that posts each task
as the queue would."""

from __future__ import annotations

import contextvars
import io
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import config, taskheaders
from ._sdk import require_sdk
from .defer import DEFERRED_URL, run_deferred
from .exc import TaskFailedError
from .handler import EXC_INFO_KEY, TASKQUEUE_SOURCE
from .handler import app as task_app

if TYPE_CHECKING:
    from google.appengine.api.taskqueue import taskqueue_stub

    from .local.cloud import CloudEmulators

MAX_ROUNDS = 1000

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Headers the queue sets itself: a task's own copies are replaced, as the stub's dispatcher does
# (its BUILT_IN_HEADERS, and Host, Content-Type and User-Agent).
_QUEUE_HEADERS = frozenset(
    {
        "content-length",
        "x-appengine-development-payload",
        "x-appengine-queuename",
        "x-appengine-tasketa",
        "x-appengine-taskexecutioncount",
        "x-appengine-taskname",
        "x-appengine-taskpreviousresponse",
        "x-appengine-taskretrycount",
        "host",
        "content-type",
        "user-agent",
    }
)


class TaskTestbed:
    """Google's testbed with the taskqueue, datastore and memcache stubs, and a task drain.

    ``queue_yaml`` points the taskqueue stub at a queue.yaml; without one,
    every queue name is accepted.
    """

    def __init__(self, queue_yaml: str | os.PathLike[str] | None = None) -> None:
        require_sdk("task_testbed (Google's testbed)")
        from google.appengine.ext import testbed

        self.queue_yaml = queue_yaml
        self.testbed = testbed.Testbed()
        self.taskqueue: taskqueue_stub.TaskQueueServiceStub

    def activate(self) -> TaskTestbed:
        from google.appengine.datastore import datastore_stub_util
        from google.appengine.ext import ndb, testbed

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
        "SERVER_SOFTWARE": os.environ.get("SERVER_SOFTWARE", "Development/1.0 (testbed)"),  # the testbed's default
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
    if namespace is not None:  # a task_testbed task: the App Engine SDK is there
        from google.appengine.api import namespace_manager

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


class CloudTaskTestbed:
    """The cloud backend against the emulators, with the same ``tasks()``, ``post()`` and ``drain()`` as TaskTestbed.

    ``emulators`` run for the whole session (:class:`taskutils.local.cloud.CloudEmulators`,
    started with ``paused=True``: the Cloud Tasks emulator holds tasks and posts none).
    ``activate()`` points the process at them (``GOOGLE_CLOUD_PROJECT``, ``LOCATION_ID``,
    ``DATASTORE_EMULATOR_HOST``, ``CLOUD_TASKS_EMULATOR_HOST``) and calls
    ``configure(backend="cloud", project=..., location=..., target=None)``: tasks use
    App Engine routing, as the emulator has no OIDC token to attach. It starts with an empty
    Datastore and empty queues; ``deactivate()`` puts the settings and environment back.
    """

    def __init__(self, emulators: CloudEmulators) -> None:
        self.emulators = emulators
        self.project, self.location = emulators.project, emulators.location
        self._saved_env: dict[str, str | None] = {}
        self._saved_settings: tuple[str, config.CloudSettings] | None = None

    def activate(self) -> CloudTaskTestbed:
        import dataclasses

        for key, value in self.emulators.environment().items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        self._saved_settings = (config.get_backend(), dataclasses.replace(config.settings.cloud))
        config.configure(backend="cloud", project=self.project, location=self.location, target=None)
        _forget_cloud_clients()
        self.reset()
        return self

    def deactivate(self) -> None:
        try:
            self.purge()
        finally:
            if self._saved_settings is not None:
                config.settings.backend, config.settings.cloud = self._saved_settings
                self._saved_settings = None
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            self._saved_env = {}
            _forget_cloud_clients()

    def __enter__(self) -> CloudTaskTestbed:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def reset(self) -> None:
        """Fresh queues and, when the emulators were started for the tests, an empty Datastore.

        The queues are deleted and made again: their tasks are gone, and so are the task names
        they remembered, as a new ``task_testbed`` starts with fresh queues.
        """
        self.emulators.renew_queues()
        if self.emulators.datastore is not None:
            self.emulators.datastore.reset()

    def purge(self) -> None:
        """Drop every task waiting in the queues."""
        for name in self.queue_names():
            self.emulators.client.purge_queue(name=self.emulators.queue_path(name))

    def ndb_client(self) -> Any:
        """A ``google.cloud.ndb.Client`` on the Datastore emulator: ``with bed.ndb_client().context(): ...``."""
        from google.cloud import ndb

        return ndb.Client(project=self.project)

    def queue_names(self) -> list[str]:
        """The short names of the queues in the Cloud Tasks emulator."""
        return self.emulators.queue_names()

    def add_queues(self, *names: str) -> None:
        """Create more queues (paused, as the others), e.g. where a queue.yaml set the queues."""
        self.emulators.create_queues(names)

    def tasks(self, queue: str | None = None) -> list[Any]:
        """The ``tasks_v2.Task`` records waiting, in one queue or in all, in the order they were added."""
        waiting: list[Any] = []
        for name in [queue] if queue is not None else self.queue_names():
            waiting += self.emulators.client.list_tasks(parent=self.emulators.queue_path(name))
        return waiting

    def _take(self, queue: str | None) -> list[Any]:
        """The waiting tasks, removed from their queues (the emulator deletes no single task)."""
        taken: list[Any] = []
        for name in [queue] if queue is not None else self.queue_names():
            path = self.emulators.queue_path(name)
            found = list(self.emulators.client.list_tasks(parent=path))
            if found:
                self.emulators.client.purge_queue(name=path)
                taken += found
        return taken

    def post(
        self,
        task: Any,
        app: WSGIApp | None = None,
        *,
        retry_count: int | None = None,
        previous_response: int | None = None,
        **environ: Any,
    ) -> tuple[int, dict[str, Any]]:
        """Post one ``tasks_v2.Task`` as Cloud Tasks would; return the status and the request's environ.

        An App Engine task carries the ``X-AppEngine-*`` headers Cloud Tasks sends (the short
        queue name, task name, retry and execution counts, ETA), an HTTP task the
        ``X-CloudTasks-*`` ones; ``environ`` adds or replaces keys (e.g. ``HTTP_AUTHORIZATION``
        with a token). ``app`` receives it, ``taskutils.app`` by default.
        """
        retries = int(task.dispatch_count) if retry_count is None else retry_count
        env = _cloud_environ(task, retries, previous_response)
        env.update(environ)
        status = contextvars.copy_context().run(_call, app or _both_kinds, env, None)
        return status, env

    def drain(self, queue: str | None = None, *, retries: int = 0, app: WSGIApp | None = None) -> int:
        """Run queued tasks, and tasks they enqueue, until none is left; return how many requests ran.

        The same rules as :meth:`TaskTestbed.drain`: a task that does not answer 2xx is
        posted again up to ``retries`` more times, then its failure is raised.
        """
        if retries < 0:
            raise ValueError(f"retries must not be negative, got {retries}")
        ran = 0
        again: list[tuple[Any, int, int]] = []
        for _ in range(MAX_ROUNDS):
            waiting = [(task, 0, 0) for task in self._take(queue)] + again
            if not waiting:
                return ran
            again = []
            for task, attempt, previous in waiting:
                status, env = self.post(task, app, retry_count=attempt, previous_response=previous or None)
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
                raise TaskFailedError(f"task {env['PATH_INFO']} answered {status}{tried}")
        raise TaskFailedError(f"tasks still enqueue tasks after {MAX_ROUNDS} rounds")


def _forget_cloud_clients() -> None:
    """The cloud store makes its Cloud NDB client once, for the emulator and project of then: make it again."""
    from .backends import cloud_store

    cloud_store.reset_client()


def _cloud_environ(task: Any, retry_count: int, previous_response: int | None) -> dict[str, Any]:
    """The WSGI environ of a Cloud Tasks request for a ``tasks_v2.Task``."""
    import urllib.parse

    short_queue = task.name.split("/queues/", 1)[-1].split("/", 1)[0]
    short_name = task.name.rsplit("/", 1)[-1]
    eta = str(task.schedule_time.timestamp()) if task.schedule_time else ""
    if task.app_engine_http_request.relative_uri:
        request = task.app_engine_http_request
        url = request.relative_uri
        prefix = "X-AppEngine-"
    else:
        request = task.http_request
        parts = urllib.parse.urlsplit(request.url)
        url = parts.path + (f"?{parts.query}" if parts.query else "")
        prefix = "X-CloudTasks-"
    body = bytes(request.body)
    own = {name.lower(): value for name, value in request.headers.items()}
    headers = [(name, value) for name, value in request.headers.items() if name.lower() not in _QUEUE_HEADERS]
    headers += [
        (prefix + "QueueName", short_queue),
        (prefix + "TaskName", short_name),
        (prefix + "TaskRetryCount", str(retry_count)),
        (prefix + "TaskExecutionCount", str(retry_count)),
        (prefix + "TaskETA", eta),
        ("User-Agent", taskheaders.user_agent(own.get("user-agent"))),
    ]
    if previous_response is not None:
        headers.append((prefix + "TaskPreviousResponse", str(previous_response)))
        headers.append((taskheaders.RETRY_REASON, taskheaders.answered(previous_response)))
    path, _, query = url.partition("?")
    env: dict[str, Any] = {
        "REQUEST_METHOD": request.http_method.name if request.http_method else "POST",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SCRIPT_NAME": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
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
