"""The Datastore emulator of the Google Cloud CLI, run as a process of its own on loopback.

:class:`DatastoreEmulatorProcess` starts the Java emulator that ships with the CLI
(the ``cloud_datastore_emulator`` script under its ``platform/cloud-datastore-emulator``,
or ``gcloud beta emulators datastore start`` when only ``gcloud`` is found) on
127.0.0.1 and a free port, waits until its health check answers, and stops its
whole process group. A small watcher started with it stops the emulator when the
process that started it dies, so a killed test run or ``serve`` leaves no Java behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from types import TracebackType

from ..exc import EmulatorMissingError

log = logging.getLogger("taskutils.local")

EMULATOR_HOST_ENV = "DATASTORE_EMULATOR_HOST"
SCRIPT = "cloud_datastore_emulator"
INSTALL_HINT = (
    "the Datastore emulator of the Google Cloud CLI is needed: install the Google Cloud CLI "
    "(https://cloud.google.com/sdk/docs/install) with its component 'cloud-datastore-emulator' "
    "(`gcloud components install cloud-datastore-emulator`, or the Debian/RPM package "
    "'google-cloud-cli-datastore-emulator') and Java 11 or later, or point DATASTORE_EMULATOR_HOST "
    "at a running emulator"
)
# Where the CLI's installers put it, beyond the folder `gcloud` on PATH lives in.
CLI_ROOTS = (
    "/usr/lib/google-cloud-sdk",
    "/usr/share/google-cloud-sdk",
    "/opt/google-cloud-sdk",
    "/opt/homebrew/share/google-cloud-sdk",
    "/usr/local/share/google-cloud-sdk",
    "~/google-cloud-sdk",
)

# The emulator runs as this watcher's child, in its process group: when the
# process that started the watcher dies, the watcher stops the group.
_WATCHER = """
import os, signal, subprocess, sys, time
parent = os.getppid()
child = subprocess.Popen(sys.argv[1:])
while child.poll() is None:
    if os.getppid() != parent:
        os.killpg(0, signal.SIGTERM)
    time.sleep(0.5)
sys.exit(child.returncode)
"""


def cli_roots() -> list[str]:
    """Folders that may hold the Google Cloud CLI: ``$CLOUDSDK_ROOT_DIR``, ``gcloud``'s on PATH, the usual ones."""
    roots = [os.environ.get("CLOUDSDK_ROOT_DIR", "")]
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(gcloud))))
    roots += [os.path.expanduser(root) for root in CLI_ROOTS]
    return [root for root in dict.fromkeys(roots) if root and os.path.isdir(root)]


def find_emulator() -> list[str]:
    """The command that runs the emulator: its script under the CLI, else ``gcloud``.

    Raises EmulatorMissingError, naming what to install, when neither is found.
    """
    for root in cli_roots():
        script = os.path.join(root, "platform", "cloud-datastore-emulator", SCRIPT)
        if os.path.isfile(script) and os.access(script, os.X_OK):
            if shutil.which(os.environ.get("JAVA", "java")) is None:
                raise EmulatorMissingError(f"found {script} but no Java to run it: {INSTALL_HINT}")
            return [script]
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        for root in cli_roots():
            candidate = os.path.join(root, "bin", "gcloud")
            if os.path.isfile(candidate):
                gcloud = candidate
                break
    if gcloud is not None:
        return [gcloud, "beta", "emulators", "datastore"]
    raise EmulatorMissingError(f"neither gcloud nor {SCRIPT} was found: {INSTALL_HINT}")


def free_port(host: str) -> int:
    """A port on host that nothing listens on now (the emulator takes no port 0)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class DatastoreEmulatorProcess:
    """The Google Cloud CLI's Datastore emulator on ``host`` and a free port.

    In memory by default; with ``data_dir`` the emulator keeps its entities in
    that folder (``WEB-INF/appengine-generated/local_db.bin``), written when it
    stops on SIGTERM, so a later emulator on the same folder finds them.
    ``consistency`` 1.0 makes every query see every write at once, as tests want.
    The emulator's output goes to ``log_path``, a temporary file by default.
    """

    def __init__(
        self,
        project: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | os.PathLike[str] | None = None,
        consistency: float = 1.0,
        log_path: str | None = None,
        startup_timeout: float = 60.0,
        command: list[str] | None = None,
    ) -> None:
        if not 0.0 <= consistency <= 1.0:
            raise ValueError(f"consistency must be from 0.0 to 1.0, not {consistency}")
        self.project = project
        self.host, self.port = host, port
        self.data_dir = os.fspath(data_dir) if data_dir is not None else None
        self.consistency = consistency
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.command = command
        self._proc: subprocess.Popen[bytes] | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the running emulator, for ``DATASTORE_EMULATOR_HOST``."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int | None:
        """The process id of the emulator's watcher, which leads its process group, while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _args(self, command: list[str], directory: str) -> list[str]:
        on_disk = self.data_dir is not None
        if os.path.basename(command[0]) == SCRIPT:
            return [
                *command,
                "start",
                f"--host={self.host}",
                f"--port={self.port}",
                f"--store_on_disk={'true' if on_disk else 'false'}",
                f"--consistency={self.consistency}",
                directory,
            ]
        return [
            *command,
            "start",
            f"--host-port={self.address}",
            f"--project={self.project}",
            f"--data-dir={directory}",
            "--store-on-disk" if on_disk else "--no-store-on-disk",
            f"--consistency={self.consistency}",
        ]

    def start(self) -> DatastoreEmulatorProcess:
        """Start the emulator and wait until its health check answers; raise with the log's path if it does not."""
        if self._proc is not None:
            return self
        command = self.command or find_emulator()
        if self.data_dir is not None:
            os.makedirs(self.data_dir, exist_ok=True)
            directory = self.data_dir
        else:
            self._scratch = tempfile.TemporaryDirectory(prefix="taskutils-datastore-")
            directory = self._scratch.name
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="datastore-emulator-", suffix=".log")
            os.close(fd)
        if os.path.basename(command[0]) == SCRIPT and not os.path.isdir(os.path.join(directory, "WEB-INF")):
            with open(self.log_path, "ab") as out:
                subprocess.run(
                    [*command, "create", f"--project_id={self.project}", directory],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                    timeout=self.startup_timeout,
                )
        chosen = self.port
        for _ in range(3):  # a free port may be taken between choosing it and the emulator binding it
            self.port = chosen or free_port(self.host)
            try:
                self._launch(self._args(command, directory))
                break
            except _PortTaken:
                if chosen:
                    raise OSError(f"the Datastore emulator cannot bind port {chosen}; see {self.log_path}") from None
        else:
            raise OSError(f"cannot find a free port for the Datastore emulator; see {self.log_path}")
        log.info("Datastore emulator pid %s at %s (%s)", self.pid, self.address, self._kept())
        return self

    def _kept(self) -> str:
        return f"data in {self.data_dir}" if self.data_dir is not None else "in memory"

    def _launch(self, args: list[str]) -> None:
        assert self.log_path is not None
        offset = os.path.getsize(self.log_path)
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _WATCHER, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        try:
            while not self._healthy():
                if self._proc.poll() is not None:
                    with open(self.log_path, "rb") as f:
                        f.seek(offset)
                        output = f.read().decode("utf-8", "replace")
                    self._proc = None
                    if "BindException" in output or "Address already in use" in output:
                        raise _PortTaken()
                    raise RuntimeError(f"the Datastore emulator exited at start; see {self.log_path}")
                if time.monotonic() > deadline:
                    waited = f"{self.startup_timeout:g} s"
                    raise TimeoutError(f"the Datastore emulator was not ready after {waited}; see {self.log_path}")
                time.sleep(0.1)
        except _PortTaken:
            raise
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def reset(self) -> None:
        """Remove every entity (``POST /reset``), for a fresh start between tests; in memory only."""
        if self.data_dir is not None:
            raise RuntimeError("the Datastore emulator resets only when it keeps its data in memory")
        request = urllib.request.Request(self.url + "/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the emulator's process group: SIGTERM (it writes its data then), SIGKILL after timeout seconds."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop_group(proc, timeout)
            log.info("Datastore emulator at %s stopped", self.address)
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> DatastoreEmulatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM to the process group the process leads, then SIGKILL to what is left after timeout seconds."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        ends = time.monotonic() + wait
        while time.monotonic() < ends:
            proc.poll()  # reap the watcher, so the group can empty
            if not _group_alive(pgid):
                break
            time.sleep(0.05)
        else:
            continue
        break
    try:
        proc.wait(1.0)
    except subprocess.TimeoutExpired:
        pass
