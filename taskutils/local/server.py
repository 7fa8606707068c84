"""The local server: Google's App Engine stubs behind a real WSGI server (waitress) on loopback.

:class:`LocalServer` binds its port, sets the App Engine environment, registers
Google's taskqueue, datastore and memcache stubs (:mod:`.stubs`), loads the app
(:mod:`.wsgi`), then serves it with waitress while the scheduler
(:mod:`.scheduler`) sends queued tasks back to it over HTTP (:mod:`.dispatch`).
Every thread is started after the app is loaded, because ``wrap_wsgi_app``
reloads ``threading`` when the app calls it.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.appengine.api import apiproxy_stub_map, datastore_file_stub
from google.appengine.api.memcache import memcache_stub
from google.appengine.api.taskqueue import taskqueue_stub

from .. import config
from ..handler import mount
from .cloud import DEFAULT_LOCATION, CloudEmulators, queue_names_in
from .dispatch import DISPATCH_TIMEOUT, STOP_GRACE, HTTPDispatcher, RunRecords
from .guard import DISPATCH_HEADER, RequestGuard, new_secret
from .periodic import PeriodicFiring
from .scheduler import DEFAULT_CONCURRENCY, ConcurrentScheduler
from .storage import Storage
from .stubs import Serialized, make_datastore, make_taskqueue, queue_limits
from .throttle import queue_buckets
from .wsgi import ServedApp, StartResponse, WSGIApp, load_app, not_found, routes_tasks

log = logging.getLogger("taskutils.local")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_PROJECT = "taskutils-local"
CLOUD_DATASTORE_DIR = "cloud-datastore"  # under --storage: the Datastore emulator's data, on the cloud backend
WEB_THREADS = 4  # waitress threads for the app's own requests, beyond one per task in flight
MAX_SPARE_THREADS = 32  # threads added in place of ones held by tasks past their deadline


def cloudtasks_mode() -> bool:
    """True when the SDK sends push tasks to Cloud Tasks rather than to the taskqueue service."""
    return os.environ.get("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", "").lower() == "true"


def _queue_service() -> str | None:
    """Where tasks are queued when not in this server's own queue stub: Cloud Tasks (an emulator, maybe)."""
    if not cloudtasks_mode():
        return None
    emulator = os.environ.get("CLOUD_TASKS_EMULATOR_HOST")
    return f"the Cloud Tasks emulator at {emulator}" if emulator else "Cloud Tasks"


@dataclass(frozen=True)
class StopSummary:
    """What a server did, told when it stops."""

    succeeded: int  # task attempts answered 2xx
    failed: int  # attempts that did not succeed
    retried: int  # failed attempts put back with backoff
    dropped: int  # failed attempts that were their task's last
    queued: int  # tasks still in their queues
    kept: str | None  # where the queued tasks are kept (None: they are gone)
    abandoned: int  # tasks still running when the grace period ended
    queue_service: str | None = None  # where the queue is when it is not the server's own (Cloud Tasks)
    queue_stopped: bool = False  # the queue service was an emulator the server started and stopped

    def lines(self) -> list[str]:
        """The summary as ``serve`` prints it."""
        if self.queue_service is not None:  # the runs and the queue are Cloud Tasks', not this server's
            kept = (
                "it stopped with the server, and the tasks still queued in it are gone"
                if self.queue_stopped
                else "the queue there keeps the tasks still queued"
            )
            sent = f"tasks were queued and sent by {self.queue_service}"
            lines = [f"{sent}: the handler's lines above show each run; {kept}"]
        else:
            kept = f"kept in {self.kept}" if self.kept else "not kept (they are gone; --storage DIR keeps them)"
            lines = [
                f"{_count(self.succeeded, 'task run')} succeeded, {self.failed} failed "
                f"({self.retried} retried, {self.dropped} dropped after their last retry)",
                f"{_count(self.queued, 'task')} still queued, {kept}" if self.queued else "no task left queued",
            ]
        if self.abandoned:
            lines.append(f"{_count(self.abandoned, 'running task')} abandoned after the grace period")
        return lines


def _count(n: int, noun: str) -> str:
    """``1 task``, ``2 tasks``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        hint = " (another process listens there; --port 0 picks a free port)" if e.errno == errno.EADDRINUSE else ""
        raise OSError(e.errno, f"cannot bind {where}: {e.strerror or e}{hint}") from e
    except BaseException:
        sock.close()
        raise
    return sock


def _guard_trigger(trigger: Any) -> None:
    """Make waitress's wake-up pipe safe to pull while, or after, it is closed.

    A worker thread finishing a response pulls it; if the server closed it a
    moment before, ``os.write`` on the closed descriptor raised EBADF (or wrote
    into whatever file reused the number).
    """
    guard = threading.Lock()
    closed = False
    pull, close = trigger._physical_pull, trigger._close

    def guarded_pull() -> None:
        with guard:
            if not closed:
                pull()

    def guarded_close() -> None:
        nonlocal closed
        with guard:
            closed = True
            close()

    trigger._physical_pull, trigger._close = guarded_pull, guarded_close


class LocalServer:
    """An app and ``taskutils.app`` on waitress, with Google's stubs running their tasks.

    ``app`` is a WSGI application or a ``"module:attr"`` string, imported once
    the stubs are in place (so the module may enqueue tasks when imported).
    ``port=0`` picks a free port; ``queue_yaml`` configures queues (without one,
    every queue name is accepted); ``storage`` (a folder) keeps Datastore entities
    and queued tasks across restarts and crashes (:mod:`.storage`); ``datastore_path`` keeps the datastore in a
    file between runs. Up to ``concurrency`` tasks run at once, each within its
    ``dispatch_deadline_usec`` or else ``deadline`` seconds; ``threads`` is
    waitress's thread count (default: one per task in flight plus 4 for the
    app's own requests). Signing is always on: a per-process random key unless
    keys are configured. The stubs and ``os.environ`` are process-wide, so run
    one server per process.

    While it runs: ``runs`` holds the run records (see :mod:`.dispatch`),
    ``scheduler.running()`` the tasks in flight, ``taskqueue`` and ``datastore``
    the stubs. ``kept_in`` says where queued tasks are kept across a stop (None:
    in memory only), and ``stop_hooks`` run after the last task stopped, before
    the stubs go away (to save them).
    """

    def __init__(
        self,
        app: WSGIApp | str | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        queue_yaml: str | os.PathLike[str] | None = None,
        datastore_path: str | os.PathLike[str] | None = None,
        storage: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        deadline: float = DISPATCH_TIMEOUT,
        backend: str | None = None,
    ) -> None:
        if deadline <= 0:
            raise ValueError(f"deadline must be positive, not {deadline}")
        if backend is not None and backend not in config.BACKENDS:
            raise ValueError(f"backend must be one of {config.BACKENDS}, got {backend!r}")
        self.backend = backend or config.get_backend()
        self.cloud: CloudEmulators | None = None  # the cloud backend's emulators, while they run
        self._saved_cloud: tuple[str, config.CloudSettings] | None = None
        self.app_spec = app
        self.host = host
        self.requested_port = port
        self.queue_yaml = os.fspath(queue_yaml) if queue_yaml is not None else None
        self.datastore_path = os.fspath(datastore_path) if datastore_path is not None else None
        self.storage_dir = os.fspath(storage) if storage is not None else None
        self.storage: Storage | None = None
        self.concurrency = concurrency
        self.threads = threads if threads is not None else concurrency + WEB_THREADS
        self.deadline = deadline
        self.project = ""
        self.port = port
        self.app: WSGIApp = not_found
        self.through_app = False  # True when task requests go through the whole user app
        self.runs = RunRecords()
        self.taskqueue: taskqueue_stub.TaskQueueServiceStub | None = None
        self.datastore: datastore_file_stub.DatastoreFileStub | None = None
        self.dispatcher: HTTPDispatcher | None = None
        self.scheduler: ConcurrentScheduler | None = None
        self.kept_in: str | None = None
        self.stop_hooks: list[Callable[[], None]] = []
        self.summary: StopSummary | None = None
        self._socket: socket.socket | None = None
        self._served: ServedApp | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._saved_env: dict[str, str | None] = {}
        self._saved_apiproxy: Any = None
        self._own_keyring: config.KeyRing | None = None
        self._stub_lock = threading.RLock()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._spare_threads = 0
        self._secret = new_secret()  # the dispatcher sends it with every task; nothing else knows it
        # In Cloud Tasks mode and on the cloud backend, Cloud Tasks posts the tasks: it cannot know the secret.
        self.guard = RequestGuard(self._secret, host, trust_loopback=cloudtasks_mode() or self.backend == "cloud")
        self._periodic: PeriodicFiring | None = None  # taskutils.periodic's jobs, fired on schedule

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:8080``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the server serves requests and its scheduler runs tasks."""
        alive = self._thread is not None and self._thread.is_alive()
        return alive and not (self.scheduler is not None and self.scheduler.crashed.is_set())

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        served = self._served
        if served is None:
            return not_found(environ, start_response)
        refused = self.guard.check(environ)
        if refused is not None:
            log.warning("refused %s %r: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", ""), refused)
            body = b"Forbidden: this server does not serve that host\n"
            start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        return served(environ, start_response)

    def start(self) -> LocalServer:
        """Bind, register the stubs, load the app, then serve and run tasks in background threads."""
        if self._socket is not None:
            raise RuntimeError(f"{self.url} is already started")
        self._socket = _bind(self.host, self.requested_port)
        self.port = int(self._socket.getsockname()[1])
        try:
            self._set_environment()
            self._register_stubs()
            if self.backend == "cloud":
                self._start_cloud()
            elif cloudtasks_mode():
                from .. import cloudtasks

                cloudtasks.use_emulator_from_env()
                log.info("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE is on: tasks go to Cloud Tasks, which posts them here")
            self._ensure_signing()
            self.app = self._load_app()
            self._ensure_signing()
            self._served = ServedApp(self.app)
            self._serve_in_background()
            self._periodic = PeriodicFiring(self.url, {DISPATCH_HEADER: self._secret}).start()
        except BaseException:
            self._close_listener()
            self._stop_cloud()
            self._restore()
            raise
        log.info(
            "serving %s on %s, %s (project %s, %s, signing key id %s, up to %d tasks at once)",
            self._describe_app(),
            self.url,
            self._describe_mounting(),
            self.project,
            self._describe_queues(),
            config.get_keyring().keys[0].key_id.hex(),
            self.concurrency,
        )
        return self

    def _start_cloud(self) -> None:
        """Start the Datastore and Cloud Tasks emulators (or use those the environment names); point the app at them."""
        location = os.environ.get("LOCATION_ID") or DEFAULT_LOCATION
        data_dir = os.path.join(self.storage_dir, CLOUD_DATASTORE_DIR) if self.storage_dir is not None else None
        self.cloud = CloudEmulators(
            self.project,
            location,
            host=self.host if self.host not in ("", "0.0.0.0", "::") else DEFAULT_HOST,
            target_port=self.port,
            queues=queue_names_in(self.queue_yaml),
            any_queue=self.queue_yaml is None,  # as on the App Engine backend: every queue name accepted
            data_dir=data_dir,
        )
        self.cloud.start()
        for key, value in self.cloud.environment().items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        self._saved_cloud = (config.get_backend(), dataclasses.replace(config.settings.cloud))
        config.configure(backend="cloud", project=self.project, location=location)
        log.info("cloud backend: %s", self.cloud.describe())

    def _describe_queues(self) -> str:
        if self.cloud is not None and self.queue_yaml is not None:
            return f"queues from {self.queue_yaml} in the Cloud Tasks emulator"
        if self.cloud is not None:
            return "every queue name accepted by the Cloud Tasks emulator"
        return f"queues from {self.queue_yaml}" if self.queue_yaml else "every queue name accepted"

    def _queue_service(self) -> str | None:
        if self.cloud is not None:
            return f"the Cloud Tasks emulator at {self.cloud.tasks_host}"
        return _queue_service()

    def _load_app(self) -> WSGIApp:
        """Import the app and decide how tasks reach the handler: through it, or beside it."""
        user_app = load_app(self.app_spec) if isinstance(self.app_spec, str) else self.app_spec
        # Mounted by the server itself, the handler also runs deferred's tasks: only the server's queue reaches it.
        if user_app is None:
            app = mount(not_found, deferred=True)
        elif routes_tasks(user_app, self.host, self.port):
            self.through_app = True
            app = user_app
        else:
            app = mount(user_app, deferred=True)
        from ..webconsole.local import mount_console  # the console at /_ah/taskutils/

        return mount_console(self, app)

    def _serve_in_background(self) -> None:
        import waitress.server

        assert self._socket is not None and self.scheduler is not None and self.taskqueue is not None
        self._server = waitress.server.create_server(
            self,
            sockets=[self._socket],
            threads=self.threads,
            ident="taskutils",
            clear_untrusted_proxy_headers=False,
        )
        _guard_trigger(self._server.trigger)
        self.scheduler.start_workers()
        self.taskqueue.StartBackgroundExecution()
        self._thread = threading.Thread(target=self._serve, name=f"taskutils-serve-{self.port}", daemon=True)
        self._thread.start()

    def _describe_app(self) -> str:
        if isinstance(self.app_spec, str):
            return self.app_spec
        if self.app_spec is None:
            return "taskutils.app"
        name = getattr(self.app_spec, "__qualname__", None) or type(self.app_spec).__qualname__
        return f"{getattr(self.app_spec, '__module__', '?')}:{name}"

    def _describe_mounting(self) -> str:
        route = config.settings.route
        if self.app_spec is None:
            return f"tasks under {route}"
        if self.through_app:
            return f"which routes {route} itself: tasks go through the whole app"
        return f"which does not route {route}: taskutils.app is mounted beside it for the task URLs"

    def _serve(self) -> None:
        try:
            self._server.run()
        except BaseException:
            if not self._stopped.is_set() and self._socket is not None:
                log.critical("the server loop crashed", exc_info=True)
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
        """Google's stubs in a fresh stub map: the place to keep them elsewhere (storage) or add more."""
        if self.queue_yaml is not None and not os.path.isfile(self.queue_yaml):
            raise FileNotFoundError(f"queue.yaml not found: {self.queue_yaml}")
        self.dispatcher = HTTPDispatcher(
            self.host,
            self.port,
            timeout=self.deadline,
            records=self.runs,
            on_deadline=self._replace_held_thread,
            headers=[(DISPATCH_HEADER, self._secret)],
        )
        self.taskqueue = make_taskqueue(self.queue_yaml, self.host, self.port, self.dispatcher)
        self.scheduler = ConcurrentScheduler(
            self.taskqueue,
            self.dispatcher,
            self._stub_lock,
            concurrency=self.concurrency,
            deadline=self.deadline,
            limits=queue_limits(self.taskqueue),
            buckets=queue_buckets(self.taskqueue),
        )
        if self.storage_dir is not None:
            self.storage = Storage(self.storage_dir)
            self.datastore = self.storage.datastore_stub(self.project)
            self.storage.attach(self.taskqueue)
            self.kept_in = str(self.storage.directory)
            self.stop_hooks.append(self.storage.close)
        else:
            self.datastore = make_datastore(self.project, self.datastore_path)
        stubs = apiproxy_stub_map.APIProxyStubMap()
        stubs.RegisterStub("taskqueue", Serialized(self.taskqueue, self._stub_lock))
        stubs.RegisterStub("datastore_v3", Serialized(self.datastore, self._stub_lock))
        stubs.RegisterStub("memcache", memcache_stub.MemcacheServiceStub())
        self._saved_apiproxy = apiproxy_stub_map.apiproxy
        apiproxy_stub_map.apiproxy = stubs

    def _replace_held_thread(self) -> None:
        """A task past its deadline still holds a waitress thread (Python cannot stop it): add one."""
        server = self._server
        if server is None or self._spare_threads >= MAX_SPARE_THREADS:
            return
        self._spare_threads += 1
        server.task_dispatcher.set_thread_count(self.threads + self._spare_threads)

    def _ensure_signing(self) -> None:
        if not config.get_keyring():
            if self._own_keyring is not None:
                log.warning("signing cannot be turned off under the local server: keeping a per-process key")
            # With storage, the key is kept there: tasks kept across a restart still verify.
            key = self.storage.signing_key() if self.storage is not None else secrets.token_bytes(32)
            config.configure(secret_keys=[key])
            self._own_keyring = config.get_keyring()

    def queued(self) -> int:
        """How many tasks wait in push queues (those in flight included)."""
        if self.taskqueue is None:
            return 0
        with self._stub_lock:
            queues = list(self.taskqueue._GetGroup()._queues.values())
        return sum(q.Count() for q in queues if q.queue_mode != taskqueue_stub.QUEUE_MODE.PULL)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; True if it has."""
        return self._stopped.wait(timeout)

    def stop(self, grace: float = STOP_GRACE) -> StopSummary | None:
        """Stop sending tasks, let those running finish within grace seconds, stop serving.

        Returns what the server did (also kept as ``summary``); None if it was not running.
        """
        with self._stop_lock:
            if self._socket is None:
                return None
            ends = time.monotonic() + grace
            if self._periodic is not None:
                self._periodic.stop()
            if self.cloud is not None:
                self.cloud.stop_tasks()  # no task is posted from now on
            abandoned: list[tuple[str, str]] = []
            scheduler = self.scheduler
            if scheduler is not None:
                scheduler.stop_dispatching()
                abandoned = scheduler.wait_idle(ends - time.monotonic())
                for queue, name in abandoned:
                    log.warning("abandoning task %s of queue %s: still running after %g s", name, queue, grace)
            if self.taskqueue is not None:
                self.taskqueue.Shutdown()
            if self.dispatcher is not None:
                self.dispatcher.close()
            for hook in self.stop_hooks:
                try:
                    hook()
                except Exception:
                    log.exception("a stop hook failed")
            if self.datastore is not None and self.datastore_path is not None:
                self.datastore.Write()
                log.info("datastore saved to %s", self.datastore_path)
            tally = scheduler.tally if scheduler is not None else None
            self.summary = StopSummary(
                succeeded=tally.succeeded if tally else 0,
                failed=tally.failed if tally else 0,
                retried=tally.retried if tally else 0,
                dropped=tally.dropped if tally else 0,
                queued=self.queued(),
                kept=self.kept_in,
                abandoned=len(abandoned),
                queue_service=self._queue_service(),
                queue_stopped=self.cloud is not None and self.cloud.started_tasks,
            )
            self._stop_serving(0.0 if abandoned else max(0.5, ends - time.monotonic()))
            self._stop_cloud()
            self._restore()
            log.info("stopped %s", self.url)
            return self.summary

    def _stop_serving(self, wait: float) -> None:
        server = self._server
        self._server = None
        if server is None:
            self._close_listener()
            return
        if self._thread is not None and self._thread.is_alive():
            # Close every channel from the server's own thread; its loop then ends.
            server.trigger.pull_trigger(lambda: self._close_channels(server))
            self._stopped.wait(max(wait, 2.0))
        if not self._stopped.is_set():
            self._close_channels(server)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=wait)
        self._close_listener()

    @staticmethod
    def _close_channels(server: Any) -> None:
        for channel in list(server._map.values()):  # the listening socket, every connection, the trigger last
            if channel is not server.trigger:
                channel.close()
        server.trigger.close()

    def _close_listener(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
        self._stopped.set()

    def _stop_cloud(self) -> None:
        cloud, self.cloud = self.cloud, None
        if cloud is not None:
            cloud.stop()
        if self._saved_cloud is not None:
            config.settings.backend, config.settings.cloud = self._saved_cloud
            self._saved_cloud = None

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
