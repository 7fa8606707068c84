"""The local server: Google's App Engine stubs behind a real WSGI server (waitress) on loopback.

:class:`LocalServer` sets the App Engine environment, registers Google's
taskqueue, datastore and memcache stubs, loads the app, mounts ``taskutils.app``
beside it and serves both with waitress. The taskqueue stub's background
scheduler runs queued tasks with App Engine's retry and backoff rules, each sent
to this server over HTTP by :class:`~taskutils.local.dispatch.HTTPDispatcher`.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Iterable
from typing import Any

from google.appengine.api import apiproxy_stub_map, datastore_file_stub
from google.appengine.api.memcache import memcache_stub
from google.appengine.api.taskqueue import taskqueue_stub
from google.appengine.datastore import datastore_stub_util
from google.appengine.ext import ndb

from .. import config
from ..handler import mount
from .dispatch import STOP_GRACE, HTTPDispatcher
from .stubs import _RequestInfo, _Serialized
from .wsgi import StartResponse, WSGIApp, _not_found, load_app

log = logging.getLogger("taskutils.local")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_PROJECT = "taskutils-local"
DEFAULT_THREADS = 4


def cloudtasks_mode() -> bool:
    """True when the SDK sends push tasks to Cloud Tasks rather than to the taskqueue service."""
    return os.environ.get("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", "").lower() == "true"


class LocalServer:
    """An app and ``taskutils.app`` on waitress, with Google's stubs running their tasks.

    ``app`` is a WSGI application or a ``"module:attr"`` string, imported once
    the stubs are in place (so the module may enqueue tasks when imported).
    ``port=0`` picks a free port; ``queue_yaml`` configures queues (without one,
    every queue name is accepted); ``datastore_path`` keeps the datastore in a
    file between runs. Signing is always on: a per-process random key unless
    keys are configured. The stubs and ``os.environ`` are process-wide, so run
    one server per process.
    """

    def __init__(
        self,
        app: WSGIApp | str | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        queue_yaml: str | os.PathLike[str] | None = None,
        datastore_path: str | os.PathLike[str] | None = None,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        self.app_spec = app
        self.host = host
        self.requested_port = port
        self.queue_yaml = os.fspath(queue_yaml) if queue_yaml is not None else None
        self.datastore_path = os.fspath(datastore_path) if datastore_path is not None else None
        self.threads = threads
        self.project = ""
        self.port = port
        self.app: WSGIApp = _not_found
        self.taskqueue: taskqueue_stub.TaskQueueServiceStub | None = None
        self.datastore: datastore_file_stub.DatastoreFileStub | None = None
        self.dispatcher: HTTPDispatcher | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._saved_env: dict[str, str | None] = {}
        self._saved_apiproxy: Any = None
        self._own_keyring: config.KeyRing | None = None
        self._stopped = threading.Event()
        self._scheduler_crashed = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the server serves requests and its scheduler runs tasks."""
        return self._thread is not None and self._thread.is_alive() and not self._scheduler_crashed.is_set()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # Every request gets a fresh ndb context, as on App Engine: no cache shared between requests.
        ndb.set_context(ndb.make_default_context())
        return self.app(environ, start_response)

    def start(self) -> LocalServer:
        """Bind, register the stubs, load the app, then serve in a background thread."""
        import waitress.server

        if self._server is not None:
            raise RuntimeError(f"{self.url} is already started")
        self._server = waitress.server.create_server(
            self,
            host=self.host,
            port=self.requested_port,
            threads=self.threads,
            ident="taskutils",
            clear_untrusted_proxy_headers=False,
        )
        self.port = int(self._server.effective_port)
        try:
            self._set_environment()
            self._register_stubs()
            if cloudtasks_mode():
                from .. import cloudtasks

                cloudtasks.use_emulator_from_env()
                log.info("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE is on: tasks go to Cloud Tasks, which posts them here")
            self._ensure_signing()
            user_app = load_app(self.app_spec) if isinstance(self.app_spec, str) else self.app_spec
            self._ensure_signing()
            from ..webconsole import mount_console  # the console at /_ah/taskutils/

            self.app = mount_console(self, mount(user_app or _not_found))
        except BaseException:
            self._close_sockets()
            self._restore()
            raise
        self.taskqueue.StartBackgroundExecution()  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._serve, name=f"taskutils-serve-{self.port}", daemon=True)
        self._thread.start()
        log.info(
            "serving %s on %s (project %s, %s, signing key id %s)",
            self._describe_app(),
            self.url,
            self.project,
            f"queues from {self.queue_yaml}" if self.queue_yaml else "every queue name accepted",
            config.get_keyring().keys[0].key_id.hex(),
        )
        return self

    def _describe_app(self) -> str:
        if isinstance(self.app_spec, str):
            return self.app_spec
        if self.app_spec is None:
            return "taskutils.app"
        name = getattr(self.app_spec, "__qualname__", None) or type(self.app_spec).__qualname__
        return f"{getattr(self.app_spec, '__module__', '?')}:{name}"

    def _serve(self) -> None:
        try:
            self._server.run()
        finally:
            self._stopped.set()

    def _set_environment(self) -> None:
        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT
        self.project = project
        host = f"{self.host}:{self.port}"
        values = {
            "GOOGLE_CLOUD_PROJECT": project,
            "GAE_APPLICATION": project,
            "APPLICATION_ID": project,
            # Tasks are added with this Host header, and their target is worked out from it.
            "HTTP_HOST": host,
            "DEFAULT_VERSION_HOSTNAME": host,
            "CURRENT_MODULE_ID": "default",
        }
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        if os.environ.get("GAE_ENV") == "standard":
            # The handler would then insist on App Engine's source address, which no local request has.
            log.warning("ignoring GAE_ENV=standard: this is the local server, not App Engine")
            self._saved_env.setdefault("GAE_ENV", os.environ.pop("GAE_ENV"))

    def _register_stubs(self) -> None:
        self.dispatcher = HTTPDispatcher(self.host, self.port)
        stubs = apiproxy_stub_map.APIProxyStubMap()
        lock = threading.RLock()
        if self.queue_yaml is not None and not os.path.isfile(self.queue_yaml):
            raise FileNotFoundError(f"queue.yaml not found: {self.queue_yaml}")
        self.taskqueue = taskqueue_stub.TaskQueueServiceStub(
            queue_config_path=self.queue_yaml,
            auto_task_running=True,
            _all_queues_valid=self.queue_yaml is None,
            default_http_server=f"{self.host}:{self.port}",
            request_data=_RequestInfo(self.dispatcher),
        )
        if self.queue_yaml is not None:
            self.taskqueue.GetQueues()  # parse queue.yaml now: a broken file fails at start, not at enqueue
        self._guard_scheduler(lock)
        self.datastore = datastore_file_stub.DatastoreFileStub(
            self.project,
            self.datastore_path,
            save_changes=self.datastore_path is not None,
            use_atexit=False,
            consistency_policy=datastore_stub_util.PseudoRandomHRConsistencyPolicy(probability=1),
        )
        stubs.RegisterStub("taskqueue", _Serialized(self.taskqueue, lock))
        stubs.RegisterStub("datastore_v3", _Serialized(self.datastore, lock))
        stubs.RegisterStub("memcache", memcache_stub.MemcacheServiceStub())
        self._saved_apiproxy = apiproxy_stub_map.apiproxy
        apiproxy_stub_map.apiproxy = stubs

    def _guard_scheduler(self, lock: threading.RLock) -> None:
        """Make the stub's scheduler thread safe to run beside request threads, and its death visible."""
        assert self.taskqueue is not None
        # The scheduler walks the queue dict while an add may create a queue in it; "dictionary
        # changed size during iteration" would end the scheduler. It walks it under the stub lock.
        group = self.taskqueue._GetGroup()
        find_next = group.GetNextPushTask

        def next_push_task() -> Any:
            with lock:
                return find_next()

        group.GetNextPushTask = next_push_task
        scheduler = self.taskqueue._task_scheduler
        main_loop = scheduler.MainLoop

        def run_scheduler() -> None:
            try:
                main_loop()
            except SystemExit:
                pass  # the dispatcher ends the scheduler this way when the server stops
            except BaseException:
                self._scheduler_crashed.set()
                log.critical("the task scheduler crashed: no task will run any more", exc_info=True)

        scheduler.MainLoop = run_scheduler  # read when StartBackgroundExecution starts its thread

    def _ensure_signing(self) -> None:
        if not config.get_keyring():
            if self._own_keyring is not None:
                log.warning("signing cannot be turned off under the local server: keeping a per-process key")
            config.configure(secret_keys=[secrets.token_bytes(32)])
            self._own_keyring = config.get_keyring()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; True if it has."""
        return self._stopped.wait(timeout)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop running tasks (letting the one in flight finish), stop serving, save the datastore."""
        with self._stop_lock:
            if self._server is None:
                return
            if self.dispatcher is not None and not self.dispatcher.close(grace):
                log.warning("stopping while a task is still running")
            if self.taskqueue is not None:
                self.taskqueue.Shutdown()
            if self._thread is not None and self._thread.is_alive():
                self._server.trigger.pull_trigger(self._close_sockets)  # run by the server's own thread
                self._stopped.wait(grace)
            else:
                self._close_sockets()
            self._server.task_dispatcher.shutdown(timeout=grace)
            self._server = None
            if self.datastore is not None and self.datastore_path is not None:
                self.datastore.Write()
                log.info("datastore saved to %s", self.datastore_path)
            self._restore()
            log.info("stopped %s", self.url)

    def _close_sockets(self) -> None:
        server = self._server
        if server is None:
            return
        for channel in list(server._map.values()):  # the listening socket, the trigger, every connection
            channel.close()

    def _restore(self) -> None:
        if self._saved_apiproxy is not None:
            apiproxy_stub_map.apiproxy = self._saved_apiproxy
            self._saved_apiproxy = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}
        if self._own_keyring is not None and config.get_keyring() is self._own_keyring:
            config.configure(secret_keys=None)
        self._own_keyring = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
