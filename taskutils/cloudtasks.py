"""Point the App Engine taskqueue SDK at a local Cloud Tasks emulator.

With ``APPENGINE_USE_CLOUDTASK_PUSH_QUEUE=true`` the ``appengine-python-standard``
SDK sends push tasks through ``tasks_v2.CloudTasksClient``;
:func:`use_emulator_from_env` sends them to the ``gcloud-tasks-emulator`` at
``$CLOUD_TASKS_EMULATOR_HOST``, and :class:`EmulatorProcess` runs that emulator
from its own virtualenv, bound to loopback. Emulator behaviour and limits:
``docs/cloudtasks-emulator.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

logger = logging.getLogger("taskutils.cloudtasks")

EMULATOR_HOST_ENV = "CLOUD_TASKS_EMULATOR_HOST"
EMULATOR_PACKAGE = "gcloud-tasks-emulator==0.6.2"

_lock = threading.Lock()
_clients: dict[tuple[str, str, int], Any] = {}
_original: dict[str, Callable[[], Any]] = {}
_installed_host: str | None = None


def emulator_client(host_port: str, api_version: str = "v2") -> Any:
    """Return a ``CloudTasksClient`` talking plaintext gRPC to ``host_port``.

    No credentials are looked up: a channel instance passed to the transport
    makes the client ignore credentials. ``api_version`` is ``"v2"`` (returns a
    ``tasks_v2.CloudTasksClient``) or ``"v2beta3"``.
    """
    import importlib

    import grpc

    if api_version not in ("v2", "v2beta3"):
        raise ValueError(f"api_version must be 'v2' or 'v2beta3', got {api_version!r}")
    tasks: Any = importlib.import_module(f"google.cloud.tasks_{api_version}")
    transports: Any = importlib.import_module(f"google.cloud.tasks_{api_version}.services.cloud_tasks.transports")
    channel = grpc.insecure_channel(host_port)
    return tasks.CloudTasksClient(transport=transports.CloudTasksGrpcTransport(channel=channel))


def _cached_client(host_port: str, api_version: str) -> Any:
    # Keyed by pid like the SDK's own cache: a forked worker must not reuse
    # its parent's gRPC channel.
    key = (host_port, api_version, os.getpid())
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = emulator_client(host_port, api_version)
    return client


def use_emulator_from_env() -> bool:
    """Route the SDK's Cloud Tasks calls to ``$CLOUD_TASKS_EMULATOR_HOST``.

    Replaces ``cloudtask._get_client`` (and ``_get_v2beta3_client``) with
    functions returning emulator clients, so this survives
    ``cloudtask._reset_clients()`` and forks. Returns True if the emulator is
    (now) in use, False if the variable is unset; the SDK is then left as it
    is. Idempotent and cheap to call on every request.
    """
    global _installed_host
    host_port = os.environ.get(EMULATOR_HOST_ENV, "").strip()
    if not host_port:
        return False
    if host_port == _installed_host:
        return True
    from google.appengine.api.taskqueue import cloudtask

    with _lock:
        for name, version in (("_get_client", "v2"), ("_get_v2beta3_client", "v2beta3")):
            if name not in _original and hasattr(cloudtask, name):
                _original[name] = getattr(cloudtask, name)
            if name in _original:
                setattr(cloudtask, name, lambda h=host_port, v=version: _cached_client(h, v))
        _installed_host = host_port
    if os.environ.get("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", "").lower() != "true":
        logger.warning(
            "%s is set but APPENGINE_USE_CLOUDTASK_PUSH_QUEUE is not 'true'; taskqueue.add will not use Cloud Tasks",
            EMULATOR_HOST_ENV,
        )
    logger.info("Cloud Tasks calls go to the emulator at %s", host_port)
    return True


def restore_default_client() -> None:
    """Undo :func:`use_emulator_from_env` (for tests)."""
    global _installed_host
    from google.appengine.api.taskqueue import cloudtask

    with _lock:
        for name, func in _original.items():
            setattr(cloudtask, name, func)
        _original.clear()
        _clients.clear()
        _installed_host = None


def base_interpreter() -> str:
    """The interpreter the running one was made from, outside any virtualenv.

    A venv built from a venv's python (as Python 3.10 does for ``-m venv`` run
    in a tox env) breaks when that venv is deleted; a cache must outlive it.
    """
    if sys.prefix == sys.base_prefix:
        return sys.executable
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [
        getattr(sys, "_base_executable", ""),
        os.path.join(sys.base_prefix, "bin", f"python{version}"),
        os.path.join(sys.base_prefix, "bin", "python3"),
        os.path.join(sys.base_prefix, "python.exe"),
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and not _inside(candidate, sys.prefix):
            return candidate
    return sys.executable


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(directory)]) == os.path.abspath(directory)


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on path (POSIX; no lock elsewhere)."""
    with open(path, "a") as f:
        try:
            import fcntl
        except ImportError:  # Windows
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# Runs inside the emulator's venv. gcloud-tasks-emulator 0.6.2 has no bind
# flag: APIThread.run always binds "[::]:PORT" (server.py:387). Rebind to the
# requested host and report the port actually bound (so port 0 works). Also
# exit if our parent dies, so a killed test run leaves no orphan emulator.
_BOOTSTRAP = """
import os, sys, threading, time, grpc
host, port_file = sys.argv[1], sys.argv[2]
def _watch_parent(ppid=os.getppid()):
    while os.getppid() == ppid:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=_watch_parent, daemon=True).start()
_orig_server = grpc.server
def _server(*args, **kwargs):
    srv = _orig_server(*args, **kwargs)
    add = srv.add_insecure_port
    def add_insecure_port(address):
        bound = add("%s:%s" % (host, address.rsplit(":", 1)[1]))
        if not bound:
            raise SystemExit("cannot bind %s" % address)
        with open(port_file + ".tmp", "w") as f:
            f.write(str(bound))
        os.replace(port_file + ".tmp", port_file)
        return bound
    srv.add_insecure_port = add_insecure_port
    return srv
grpc.server = _server
# Cloud Tasks refuses a task name it has seen in about the last hour (ALREADY_EXISTS), so a
# named task is added once; the emulator would add it again: make it refuse as Cloud Tasks does.
from google.api_core.exceptions import AlreadyExists
from gcloud_tasks_emulator import server as _emulator
_seen, _seen_lock, _create_task = {}, threading.Lock(), _emulator.QueueState.create_task
def create_task(self, queue, task):
    with _seen_lock:
        if task.name and time.time() - _seen.get(task.name, -3600.0) < 3600.0:
            raise AlreadyExists("Requested entity already exists: task %s" % task.name)
        created = _create_task(self, queue, task)
        _seen[created.name] = time.time()
        return created
_emulator.QueueState.create_task = create_task
# Where serve and the fixture accept every queue name (no queue.yaml), a task for a queue not
# made yet makes it: running, or paused for a fixture that drains the queues itself.
_new_queues = os.environ.get("TASKUTILS_EMULATOR_NEW_QUEUES", "")
if _new_queues in ("running", "paused"):
    from google.cloud.tasks_v2 import Queue as _Queue
    _create_in_known_queue = _emulator.QueueState.create_task
    def create_task_anywhere(self, queue, task):
        with _seen_lock:
            if queue not in self._queue_tasks:
                self.create_queue(None, _Queue(name=queue))
                if _new_queues == "paused":
                    self.pause_queue(queue)
        return _create_in_known_queue(self, queue, task)
    _emulator.QueueState.create_task = create_task_anywhere
# For tests: a queue deleted and made again forgets the task names it saw, as the fresh queues
# of a new testbed do (Cloud Tasks keeps them, and a deleted queue's name for days).
if os.environ.get("TASKUTILS_EMULATOR_DELETE_FORGETS") == "1":
    _delete_queue = _emulator.QueueState.delete_queue
    def delete_queue(self, name):
        with _seen_lock:
            for task_name in [t for t in _seen if t.startswith(name + "/tasks/")]:
                del _seen[task_name]
        return _delete_queue(self, name)
    _emulator.QueueState.delete_queue = delete_queue
# The emulator has no GetTask and no DeleteTask (UNIMPLEMENTED); Cloud Tasks has both, and the console
# shows a task and deletes it with them.
from google.api_core.exceptions import GoogleAPICallError as _CallError, NotFound as _NotFound
from google.protobuf import empty_pb2 as _empty
def _find_task(state, task_name):
    for task in list(state._queue_tasks.get(task_name.rsplit("/", 2)[0], ())):
        if task.name == task_name:
            return task
    raise _NotFound("Task not found: %s" % task_name)
def GetTask(self, request, context):
    try:
        return _find_task(self._state, request.name)
    except _CallError as err:
        context.abort(err.grpc_status_code, err.message)
def DeleteTask(self, request, context):
    try:
        task = _find_task(self._state, request.name)
        waiting = self._state._queue_tasks[request.name.rsplit("/", 2)[0]]
        for i, other in enumerate(waiting):
            if other is task:
                del waiting[i]
                return _empty.Empty()
        raise _NotFound("Task not found: %s" % request.name)
    except _CallError as err:
        context.abort(err.grpc_status_code, err.message)
_emulator.Greeter.GetTask, _emulator.Greeter.DeleteTask = GetTask, DeleteTask
sys.argv = ["gcloud-tasks-emulator", "start"] + sys.argv[3:]
from gcloud_tasks_emulator.__main__ import main
main()
"""


class EmulatorProcess:
    """Run ``gcloud-tasks-emulator`` as a subprocess, e.g. for integration tests.

    The emulator pins ``protobuf<5``, so it lives in its own virtualenv at
    ``venv_dir``, created on first use. ``queues`` are created at start-up;
    short names become ``projects/{project}/locations/{location}/queues/NAME``
    (project/location default to ``GOOGLE_CLOUD_PROJECT``/``LOCATION_ID``).
    Tasks are POSTed to ``http://{target_host}:{target_port}{relative_uri}``.
    ``max_retries=None`` retries failed tasks forever. ``new_queues`` ``"running"`` (or
    ``"paused"``) makes the queue a task names when it does not exist yet, as the local
    server accepts every queue name without a queue.yaml; None refuses such a task as Cloud
    Tasks does. ``delete_forgets`` makes a deleted queue forget the task names it saw (for
    tests that want fresh queues). It also answers ``GetTask`` and ``DeleteTask``, which
    gcloud-tasks-emulator 0.6.2 lacks (the console shows and deletes one task with them). The venv is built from
    ``base_python`` (default: :func:`base_interpreter`); gcloud-tasks-emulator
    0.6.2 runs on Python 3.10-3.13.
    """

    def __init__(
        self,
        venv_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        queues: Sequence[str] = (),
        target_port: int = 8080,
        target_host: str = "127.0.0.1",
        project: str | None = None,
        location: str | None = None,
        max_retries: int | None = None,
        log_path: str | None = None,
        startup_timeout: float = 30.0,
        package: str = EMULATOR_PACKAGE,
        base_python: str | None = None,
        new_queues: str | None = None,
        delete_forgets: bool = False,
    ) -> None:
        self.venv_dir = os.fspath(venv_dir)
        self.host, self.port = host, port
        self.project = project or os.environ.get("GOOGLE_CLOUD_PROJECT", "test-project")
        self.location = location or os.environ.get("LOCATION_ID", "us-central1")
        self.queues = [self.queue_path(q) for q in queues]
        self.target_host, self.target_port = target_host, target_port
        self.max_retries, self.package = max_retries, package
        self.base_python = base_python or base_interpreter()
        self.startup_timeout = startup_timeout
        self.log_path = log_path
        if new_queues not in (None, "running", "paused"):
            raise ValueError(f"new_queues must be None, 'running' or 'paused', got {new_queues!r}")
        self.new_queues = new_queues
        self.delete_forgets = delete_forgets
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the running emulator, for ``CLOUD_TASKS_EMULATOR_HOST``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The emulator's process id (it leads its process group) while it runs."""
        return self._proc.pid if self._proc is not None else None

    def queue_path(self, name: str) -> str:
        """Full queue name for ``name`` (returned unchanged if already full)."""
        if name.startswith("projects/"):
            return name
        return f"projects/{self.project}/locations/{self.location}/queues/{name}"

    @property
    def python(self) -> str:
        """The emulator venv's interpreter."""
        sub = ("Scripts", "python.exe") if os.name == "nt" else ("bin", "python")
        return os.path.join(self.venv_dir, *sub)

    def ensure_venv(self) -> None:
        """Create the venv and install the emulator unless already done.

        Safe to call from several processes at once (e.g. tox envs sharing one
        cache directory): an exclusive lock file beside the venv serialises
        creation, and the marker is checked again under the lock.
        """
        if self._installed():
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.venv_dir)), exist_ok=True)
        with _file_lock(self.venv_dir + ".lock"):
            if self._installed():
                return
            logger.info("Installing %s into %s", self.package, self.venv_dir)
            started = time.monotonic()
            # --clear: a half-built venv, or one whose base interpreter is gone, is rebuilt.
            subprocess.run([self.base_python, "-m", "venv", "--clear", self.venv_dir], check=True)
            subprocess.run(
                [self.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", self.package],
                check=True,
            )
            with open(self._marker, "w") as f:
                f.write(self.package)
            logger.info("Installed %s in %.1f s", self.package, time.monotonic() - started)

    @property
    def _marker(self) -> str:
        return os.path.join(self.venv_dir, ".taskutils-installed")

    def _installed(self) -> bool:
        try:
            with open(self._marker) as f:
                return f.read().strip() == self.package and os.path.exists(self.python)
        except OSError:
            return False

    def start(self) -> EmulatorProcess:
        """Start the emulator and wait until its port accepts connections."""
        if self._proc is not None:
            return self
        self.ensure_venv()
        fd, port_file = tempfile.mkstemp(prefix="cloudtasks-emulator-", suffix=".port")
        os.close(fd)
        os.unlink(port_file)
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="cloudtasks-emulator-", suffix=".log")
            os.close(fd)
        args = [
            self.python,
            "-u",
            "-c",
            _BOOTSTRAP,
            self.host,
            port_file,
            "--port",
            str(self.port),
            "--target-host",
            self.target_host,
            "--target-port",
            str(self.target_port),
        ]
        for queue in self.queues:
            args += ["--default-queue", queue]
        if self.max_retries is not None:
            args += ["--max-retries", str(self.max_retries)]
        env = {
            **os.environ,
            "TASKUTILS_EMULATOR_NEW_QUEUES": self.new_queues or "",
            "TASKUTILS_EMULATOR_DELETE_FORGETS": "1" if self.delete_forgets else "",
        }
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"emulator exited with {self._proc.returncode}; see {self.log_path}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"emulator not ready after {self.startup_timeout}s; see {self.log_path}")
                if os.path.exists(port_file):
                    with open(port_file) as f:
                        self.port = int(f.read())
                    try:
                        socket.create_connection((self.host, self.port), timeout=1).close()
                        break
                    except OSError:
                        pass
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        finally:
            if os.path.exists(port_file):
                os.unlink(port_file)
        logger.info("Cloud Tasks emulator pid %s at %s", self._proc.pid, self.address)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the emulator's process group (SIGTERM, then SIGKILL)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, getattr(signal, "SIGKILL", signal.SIGTERM)):
            try:
                if hasattr(os, "killpg"):
                    os.killpg(proc.pid, sig)
                else:
                    proc.terminate()
                proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                return

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
