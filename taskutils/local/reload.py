"""``serve --reload``: restart the app when one of its Python files changes, keeping its queued tasks.

A small supervisor process runs ``python -m taskutils serve`` as a child on a
fixed port and polls the modification times of the ``.py`` files under the
app's folder (no dependency, no inotify). When one changes, the child is stopped
with SIGTERM (it stops dispatching, lets running tasks finish and exits) and a
new child is started. Queued tasks survive the restart through ``--storage``
(a temporary folder when none is given), so a task's retries run the new code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from . import storage

if TYPE_CHECKING:
    from .cloud import CloudEmulators

log = logging.getLogger("taskutils.local.reload")

POLL_INTERVAL = 0.5  # seconds between two looks at the files
SETTLE = 0.2  # an editor may write a file in steps: look again this long after a change
SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "venv", "env", "build", "dist"})

Snapshot = dict[str, tuple[int, int]]


def app_folder(spec: str, cwd: str | os.PathLike[str] | None = None) -> Path:
    """The folder to watch for ``MODULE:ATTR``: its top-level module's folder (a package's own folder).

    The module is found without being imported; the current directory when it
    cannot be found.
    """
    here = Path(cwd or os.getcwd())
    top = spec.partition(":")[0].split(".")[0]
    added = str(here) not in sys.path
    if added:
        sys.path.insert(0, str(here))  # as ``python -m`` has it for the child
    try:
        found = importlib.util.find_spec(top) if top else None
    except (ImportError, ValueError):
        found = None
    finally:
        if added:
            sys.path.remove(str(here))
    if found is None or not found.origin or not os.path.isfile(found.origin):
        return here
    return Path(found.origin).parent  # a package's __init__.py is in its own folder


def snapshot(folder: Path) -> Snapshot:
    """Every ``.py`` file under folder (hidden and virtualenv folders skipped) with its mtime and size."""
    files: Snapshot = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS]
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    stat = os.stat(path)
                    files[path] = (stat.st_mtime_ns, stat.st_size)
    return files


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """The files added, removed or modified between two snapshots, sorted."""
    return sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))


def free_port(host: str) -> int:
    """A port nothing listens on now, kept for every restart of the child."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Supervisor:
    """Runs ``command`` as a child process and restarts it whenever a ``.py`` file under folder changes.

    ``run()`` returns the last child's exit code once SIGINT or SIGTERM arrived
    (the child gets SIGTERM and ``grace`` seconds, plus a margin, to stop), or
    when ``exit_with_parent`` is set and this process's parent exited.
    """

    def __init__(
        self,
        command: Sequence[str],
        folder: Path,
        *,
        grace: float = 10.0,
        interval: float = POLL_INTERVAL,
        exit_with_parent: bool = False,
    ) -> None:
        self.command = list(command)
        self.folder = folder
        self.grace = grace
        self.interval = interval
        self.exit_with_parent = exit_with_parent
        self.restarts = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Stop the child and return from :meth:`run` (a signal handler)."""
        self._stop.set()

    def _start_child(self) -> None:
        # Its own session: a Ctrl-C in the terminal reaches the supervisor, which stops the child once.
        self._child = subprocess.Popen(self.command, start_new_session=True)

    def _stop_child(self) -> int | None:
        child = self._child
        if child is None:
            return None
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(self.grace + 10)
            except subprocess.TimeoutExpired:
                log.warning("the app did not stop within %.0f s: killed (its queued tasks are kept)", self.grace + 10)
                child.kill()
                child.wait()
        self._child = None
        return child.returncode

    def run(self) -> int:
        """Supervise until told to stop; the last child's exit code."""
        parent = os.getppid()
        files = snapshot(self.folder)
        log.info("reloading when a .py file under %s changes (%d files watched)", self.folder, len(files))
        self._start_child()
        reported_exit = False
        try:
            while not self._stop.wait(self.interval):
                if self.exit_with_parent and os.getppid() != parent:
                    log.warning("the parent process exited")
                    break
                child = self._child
                if child is not None and child.poll() is not None and not reported_exit:
                    reported_exit = True
                    log.warning("the app exited with %s: restarting it when a file changes", child.returncode)
                now = snapshot(self.folder)
                changed = changes(files, now)
                if not changed:
                    continue
                time.sleep(SETTLE)
                files = snapshot(self.folder)
                shown = ", ".join(os.path.relpath(p, self.folder) for p in changed[:3])
                log.info("%s changed: restarting the app", shown + (" ..." if len(changed) > 3 else ""))
                self._stop_child()
                self.restarts += 1
                reported_exit = False
                self._start_child()
        finally:
            code = self._stop_child()
        return 0 if code is None else code


def child_command(argv: Sequence[str], port: int, storage_dir: str) -> list[str]:
    """The ``serve`` command line for the child: argv as given, then no reload, a fixed port and storage.

    Later options win in argparse, so appending them overrides what argv said.
    """
    return [
        sys.executable,
        "-m",
        "taskutils",
        *argv,
        "--no-reload",
        "--port",
        str(port),
        "--storage",
        storage_dir,
        "--exit-with-parent",
    ]


def supervise(
    argv: Sequence[str],
    spec: str,
    *,
    host: str,
    port: int,
    storage_dir: str | None,
    grace: float,
    exit_with_parent: bool,
    backend: str = "appengine",
    queue_yaml: str | None = None,
) -> int:
    """Run ``serve`` (argv, the command line after ``python -m taskutils``) under a :class:`Supervisor`.

    A port of 0 is chosen once, so every restart serves the same one; without
    ``storage_dir`` a temporary folder keeps the queued tasks between restarts and
    is removed at the end. On the cloud backend the supervisor runs the emulators
    for every child (they find them through the environment), so queued tasks and
    entities outlive each restart.
    """
    temporary = storage_dir is None
    folder = storage_dir or tempfile.mkdtemp(prefix="taskutils-serve-")
    if port == 0:
        port = free_port(host)
    emulators = _start_cloud(host, port, folder, queue_yaml) if backend == "cloud" else None
    try:
        return _supervise(argv, spec, port=port, folder=folder, grace=grace, exit_with_parent=exit_with_parent)
    finally:
        if emulators is not None:
            emulators.stop()
        if temporary:
            left = storage.queued_in(folder)
            shutil.rmtree(folder, ignore_errors=True)
            if left:
                log.warning(
                    "removed the temporary storage %s: %d queued task(s) dropped (--storage DIR keeps them)",
                    folder,
                    left,
                )


def _start_cloud(host: str, port: int, folder: str, queue_yaml: str | None) -> CloudEmulators:
    """The emulators every child uses, named in this process's environment, which the children inherit."""
    from .cloud import DEFAULT_LOCATION, CloudEmulators, queue_names_in
    from .server import CLOUD_DATASTORE_DIR, DEFAULT_PROJECT

    emulators = CloudEmulators(
        os.environ.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT,
        os.environ.get("LOCATION_ID") or DEFAULT_LOCATION,
        host=host if host not in ("", "0.0.0.0", "::") else "127.0.0.1",
        target_port=port,
        queues=queue_names_in(queue_yaml),
        any_queue=queue_yaml is None,
        data_dir=os.path.join(folder, CLOUD_DATASTORE_DIR),
    ).start()
    os.environ.update(emulators.environment())
    log.info("cloud backend: %s, kept across restarts", emulators.describe())
    return emulators


def _supervise(argv: Sequence[str], spec: str, *, port: int, folder: str, grace: float, exit_with_parent: bool) -> int:
    supervisor = Supervisor(
        child_command(argv, port, folder),
        app_folder(spec),
        grace=grace,
        exit_with_parent=exit_with_parent,
    )
    previous = {sig: signal.signal(sig, supervisor.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
