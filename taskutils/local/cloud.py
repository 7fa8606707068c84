"""The emulators the cloud backend runs against locally: Cloud Datastore and Cloud Tasks, each a process on loopback.

:class:`CloudEmulators` starts the Google Cloud CLI's Datastore emulator
(:mod:`.datastore_emulator`) and the ``gcloud-tasks-emulator``
(:class:`taskutils.cloudtasks.EmulatorProcess`), or uses the ones that
``DATASTORE_EMULATOR_HOST`` and ``CLOUD_TASKS_EMULATOR_HOST`` point at, creates the
queues, and gives the environment an app needs to reach them. ``serve --backend cloud``
and the ``cloud_task_testbed`` fixture are built on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from ..cloudtasks import EMULATOR_HOST_ENV as TASKS_HOST_ENV
from ..cloudtasks import EmulatorProcess, emulator_client
from .datastore_emulator import EMULATOR_HOST_ENV as DATASTORE_HOST_ENV
from .datastore_emulator import DatastoreEmulatorProcess

log = logging.getLogger("taskutils.local")

DEFAULT_LOCATION = "us-central1"
DEFAULT_QUEUE = "default"
VENV_ENV = "TASKUTILS_EMULATOR_VENV"


def emulator_venv() -> str:
    """Where the Cloud Tasks emulator's own virtualenv lives: ``$TASKUTILS_EMULATOR_VENV``, else the user's cache."""
    chosen = os.environ.get(VENV_ENV, "").strip()
    if chosen:
        return chosen
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "taskutils", "cloudtasks-emulator-venv")


def queue_names_in(queue_yaml: str | os.PathLike[str] | None) -> list[str]:
    """The push queues a queue.yaml declares, ``default`` first (it always exists)."""
    names = [DEFAULT_QUEUE]
    if queue_yaml is not None:
        from google.appengine.api import queueinfo

        with open(queue_yaml) as f:
            info = queueinfo.LoadSingleQueue(f)
        for entry in info.queue or ():
            if entry.mode != "pull" and entry.name not in names:
                names.append(entry.name)
    return names


class CloudEmulators:
    """The Datastore and Cloud Tasks emulators for ``project`` and ``location``.

    Each is started on ``host`` and a free port unless its environment variable
    already names a running one. The Cloud Tasks emulator posts App Engine tasks
    to ``http://{host}:{target_port}``; ``queues`` are created at start (short
    names), ``any_queue`` makes any other queue a task names (in an emulator started
    here), and ``paused`` keeps them from posting anything (a test drains them
    itself). ``data_dir`` keeps the Datastore emulator's entities in that folder;
    the Cloud Tasks emulator keeps its tasks in memory only.
    """

    def __init__(
        self,
        project: str,
        location: str = DEFAULT_LOCATION,
        *,
        target_port: int,
        host: str = "127.0.0.1",
        queues: Iterable[str] = (DEFAULT_QUEUE,),
        data_dir: str | os.PathLike[str] | None = None,
        paused: bool = False,
        any_queue: bool = False,
        venv_dir: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.project, self.location = project, location
        self.host, self.target_port = host, target_port
        self.queues = list(dict.fromkeys(queues))
        self.data_dir = os.fspath(data_dir) if data_dir is not None else None
        self.paused = paused
        self.any_queue = any_queue
        self.venv_dir = venv_dir or emulator_venv()
        env = os.environ if environ is None else environ
        self.datastore_host = env.get(DATASTORE_HOST_ENV, "").strip()
        self.tasks_host = env.get(TASKS_HOST_ENV, "").strip()
        self.datastore: DatastoreEmulatorProcess | None = None
        self.tasks: EmulatorProcess | None = None
        self._client: Any = None
        self._started_tasks = False

    @property
    def started_datastore(self) -> bool:
        """True when this object started the Datastore emulator (and so may reset it)."""
        return self.datastore is not None

    @property
    def started_tasks(self) -> bool:
        """True when this object started the Cloud Tasks emulator (it stops with this object)."""
        return self._started_tasks

    def start(self) -> CloudEmulators:
        """Start what no environment variable points at, side by side, then create the queues."""
        paused_queues = self.paused
        try:
            if not self.tasks_host:
                self.tasks = EmulatorProcess(
                    self.venv_dir,
                    host=self.host,
                    target_host=self.host,
                    target_port=self.target_port,
                    project=self.project,
                    location=self.location,
                    new_queues=("paused" if paused_queues else "running") if self.any_queue else None,
                    delete_forgets=self.paused,  # the fixture's fresh queues for each test
                )
                self.tasks.ensure_venv()
            if not self.datastore_host:
                self.datastore = DatastoreEmulatorProcess(self.project, host=self.host, data_dir=self.data_dir)
                self.datastore.start()
                self.datastore_host = self.datastore.address
            else:
                log.info("using the Datastore emulator at %s", self.datastore_host)
            if self.tasks is not None:
                self.tasks.start()
                self._started_tasks = True
                self.tasks_host = self.tasks.address
            else:
                log.info("using the Cloud Tasks emulator at %s", self.tasks_host)
            self.create_queues(self.queues)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def client(self) -> Any:
        """A ``tasks_v2.CloudTasksClient`` on the Cloud Tasks emulator."""
        if self._client is None:
            self._client = emulator_client(self.tasks_host)
        return self._client

    def queue_path(self, name: str) -> str:
        if name.startswith("projects/"):
            return name
        return f"projects/{self.project}/locations/{self.location}/queues/{name}"

    def queue_names(self) -> list[str]:
        """The short names of every queue of the project and location in the Cloud Tasks emulator."""
        parent = f"projects/{self.project}/locations/{self.location}"
        return [queue.name.rsplit("/", 1)[-1] for queue in self.client.list_queues(parent=parent)]

    def renew_queues(self) -> None:
        """Delete every queue and make the configured ones again: no task, and (in an emulator started
        here for tests) no task name remembered."""
        for name in self.queue_names():
            self.client.delete_queue(name=self.queue_path(name))
        self.create_queues(list(self.queues))

    def create_queues(self, names: Iterable[str]) -> None:
        """Create the queues (the emulator keeps a queue that exists), paused when ``paused``."""
        for name in names:
            path = self.queue_path(name)
            self.client.create_queue(parent=path.rsplit("/queues/", 1)[0], queue={"name": path})
            if self.paused:
                self.client.pause_queue(name=path)
            if name not in self.queues:
                self.queues.append(name)

    def environment(self) -> dict[str, str]:
        """What the app's process needs: the project, the location and both emulators' addresses."""
        return {
            "GOOGLE_CLOUD_PROJECT": self.project,  # not DATASTORE_PROJECT_ID: the App Engine SDK reads it too
            "LOCATION_ID": self.location,
            DATASTORE_HOST_ENV: self.datastore_host,
            TASKS_HOST_ENV: self.tasks_host,
        }

    def describe(self) -> str:
        """One line: where each emulator is and where the Datastore's data is kept."""
        if self.datastore is not None:
            kept = f"pid {self.datastore.pid}, " + (f"data in {self.data_dir}" if self.data_dir else "in memory")
        else:
            kept = "started elsewhere"
        started = f"pid {self.tasks.pid}" if self.tasks is not None else "started elsewhere"
        return (
            f"Datastore emulator at {self.datastore_host} ({kept}), "
            f"Cloud Tasks emulator at {self.tasks_host} ({started})"
        )

    def stop_tasks(self) -> None:
        """Stop the Cloud Tasks emulator (if started here): no task is posted after this."""
        tasks, self.tasks = self.tasks, None
        self._client = None
        if tasks is not None:
            tasks.stop()

    def stop(self) -> None:
        """Stop both emulators this object started; the ones it was pointed at keep running."""
        try:
            self.stop_tasks()
        finally:
            datastore, self.datastore = self.datastore, None
            if datastore is not None:
                datastore.stop()

    def __enter__(self) -> CloudEmulators:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
