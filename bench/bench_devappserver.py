"""``serve`` beside Google's ``dev_appserver.py`` on one app: tasks/s and memory.

Run from the repository root with the installed package:

    python bench/bench_devappserver.py            # 5 rounds
    python bench/bench_devappserver.py --quick    # 2 rounds, a smoke run

Both servers run the same app, written to a temporary folder (``main.py``,
``app.yaml``, ``requirements.txt``), as subprocesses on free loopback ports with
the same signing key: ``python -m taskutils serve main:app`` (one process, up
to 8 tasks at once), and ``dev_appserver.py app.yaml`` from the Google Cloud
CLI, run with the CLI's own Python (one instance: gunicorn, one worker, 8
threads, in the virtualenv dev_appserver builds from ``requirements.txt``).
In alternating rounds each is sent ``POST /enqueue/<kind>/<n>`` (one ``.map``
of n tasks) and polled until every task ran:

- io: tasks sleeping 10 ms;
- ndb: tasks writing one ndb entity each.

Memory is the resident memory of every process of each server (dev_appserver,
its API server and its gunicorn; serve's one process) after the rounds. Where
the Google Cloud CLI is not installed, the rows are skipped and the reason is
printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NUMBER = 200
ROUNDS = 5
START_TIMEOUT = 300.0  # dev_appserver builds a virtualenv with pip before it answers
ROUND_TIMEOUT = 120.0
KEY = "bench-devappserver-key"
REPO = Path(__file__).resolve().parents[1]

MAIN = '''\
"""The app both servers run: enqueue n tasks with one .map, count the tasks that ran."""

import threading
import time

from google.appengine.api import wrap_wsgi_app
from google.appengine.ext import ndb

import taskutils
from taskutils import task

_lock = threading.Lock()
_done = [0]


class Mark(ndb.Model):
    n = ndb.IntegerProperty()


def _ran():
    with _lock:
        _done[0] += 1


@task
def io_bound(n):
    time.sleep(0.010)
    _ran()


@task
def ndb_write(n):
    Mark(n=n).put()
    _ran()


def web(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/done":
        body = str(_done[0]).encode()
    elif path.startswith("/enqueue/") and environ.get("REQUEST_METHOD") == "POST":
        kind, _, n = path[len("/enqueue/"):].partition("/")
        with _lock:
            _done[0] = 0
        (io_bound if kind == "io" else ndb_write).map(range(int(n)))
        body = b"queued"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = wrap_wsgi_app(taskutils.mount(web))
'''

APP_YAML = """\
runtime: python3{minor}
app_engine_apis: true
entrypoint: gunicorn -b :$PORT -w 1 --threads 8 main:app
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sdk_root() -> tuple[Path | None, str]:
    """The Google Cloud CLI's root, or None and why not."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None, "the Google Cloud CLI (gcloud) is not installed"
    try:
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"gcloud info failed: {e}"
    root = Path(out)
    if not (root / "platform/google_appengine/dev_appserver.py").is_file():
        return None, f"{root} has no platform/google_appengine/dev_appserver.py"
    if not (root / "platform/bundledpythonunix/bin/python3").is_file():
        return None, f"{root} has no platform/bundledpythonunix/bin/python3"
    return root, ""


def resident_mb(leader: int) -> float:
    """Resident memory of every process in the leader's process group, in MB."""
    total_kb = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            pgid = int(stat.rsplit(")", 1)[1].split()[2])
            if pgid != leader:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total_kb / 1024


class Server:
    """One server as a subprocess in a process group of its own, answering on base."""

    def __init__(self, name: str, argv: list[str], port: int, cwd: Path, log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()
        self.ready_after = 0.0

    def request(self, method: str, path: str) -> str:
        req = urllib.request.Request(self.base + path, data=b"" if method == "POST" else None, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read().decode()

    def wait_ready(self) -> Server:
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: see {self.log}")
            try:
                self.request("GET", "/done")
                self.ready_after = time.monotonic() - self.started
                return self
            except OSError:
                if time.monotonic() - self.started > START_TIMEOUT:
                    raise TimeoutError(f"{self.name} did not answer in {START_TIMEOUT:g} s: see {self.log}") from None
                time.sleep(0.2)

    def run(self, kind: str, number: int) -> float:
        """Seconds from n tasks queued (by one request) to all of them run."""
        self.request("POST", f"/enqueue/{kind}/{number}")
        queued = time.perf_counter()
        while int(self.request("GET", "/done")) < number:
            if time.perf_counter() - queued > ROUND_TIMEOUT:
                raise TimeoutError(f"{self.name} did not run {number} {kind} tasks in {ROUND_TIMEOUT:g} s")
            time.sleep(0.02)
        return time.perf_counter() - queued

    def stop(self) -> None:
        """SIGINT to the whole group, then SIGKILL to whatever is left (dev_appserver leaves gunicorn behind)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(20)


@contextlib.contextmanager
def servers(root: Path, folder: Path) -> Iterator[tuple[Server, Server]]:
    """serve and dev_appserver on the same app in folder, both ready."""
    app = folder / "app"
    app.mkdir()
    (app / "main.py").write_text(MAIN)
    (app / "app.yaml").write_text(APP_YAML.format(minor=sys.version_info.minor))
    (app / "requirements.txt").write_text(f"{REPO}[appengine]\ngunicorn\n")
    env = {**os.environ, "TASKUTILS_SECRET_KEYS": KEY, "PYTHONPATH": str(app)}
    for name in ("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", "GAE_ENV"):
        env.pop(name, None)
    started: list[Server] = []
    try:
        port = free_port()
        serve = Server(
            "serve",
            [sys.executable, "-m", "taskutils", "serve", "main:app", "--port", str(port), "--exit-with-parent"],
            port,
            app,
            folder / "serve.log",
            env,
        )
        started.append(serve)
        port = free_port()
        runtime_python = getattr(sys, "_base_executable", sys.executable)
        dev = Server(
            "dev_appserver.py",
            [
                str(root / "platform/bundledpythonunix/bin/python3"),
                str(root / "platform/google_appengine/dev_appserver.py"),
                "--host=127.0.0.1",
                f"--port={port}",
                f"--admin_port={free_port()}",
                f"--api_port={free_port()}",
                "--max_module_instances=1",
                f"--runtime_python_path={runtime_python}",
                f"--python_virtualenv_path={folder / 'venv'}",
                f"--storage_path={folder / 'storage'}",
                "--skip_sdk_update_check",
                f"--env_var=TASKUTILS_SECRET_KEYS={KEY}",
                str(app / "app.yaml"),
            ],
            port,
            folder,
            folder / "dev_appserver.log",
            {k: v for k, v in env.items() if k != "PYTHONPATH"},
        )
        started.append(dev)
        yield serve.wait_ready(), dev.wait_ready()
    finally:
        for server in started:
            server.stop()


def rows(rounds: int) -> tuple[list[tuple[Any, ...]], list[str]]:
    """The comparison rows, as ``(name, ratio, target, met, a, b, a unit, b unit)``, and notes."""
    root, why = sdk_root()
    if root is None:
        return [], [f"dev_appserver.py rows skipped: {why}"]
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="taskutils-bench-") as tmp, servers(root, Path(tmp)) as (serve, dev):
        pair = {"serve": serve, "dev": dev}
        for kind in ("io", "ndb"):
            for server in pair.values():  # warm up, untimed
                server.run(kind, NUMBER // 10)
            for n in range(rounds):
                for name in ("serve", "dev") if n % 2 == 0 else ("dev", "serve"):
                    times.setdefault((kind, name), []).append(pair[name].run(kind, NUMBER))
        memory = {name: resident_mb(server.proc.pid) for name, server in pair.items()}
        notes = [
            f"dev_appserver.py ({root}) first answered {dev.ready_after:.1f} s after it started "
            f"(building its virtualenv with pip included); serve after {serve.ready_after:.1f} s"
        ]
    found: list[tuple[Any, ...]] = []
    for kind, what in (("io", "tasks sleeping 10 ms"), ("ndb", "tasks writing one ndb entity")):
        serve_rate = NUMBER / statistics.median(times[(kind, "serve")])
        dev_rate = NUMBER / statistics.median(times[(kind, "dev")])
        found.append(
            (
                f"`serve` / `dev_appserver.py`, one app: {what}, {NUMBER} per `.map`",
                serve_rate / dev_rate,
                "(information)",
                None,
                serve_rate,
                dev_rate,
                "tasks/s",
                "tasks/s",
            )
        )
    found.append(
        (
            "`serve` / `dev_appserver.py`, one app: resident memory of every process after the rounds",
            memory["serve"] / memory["dev"],
            "(information)",
            None,
            memory["serve"],
            memory["dev"],
            "MB",
            "MB",
        )
    )
    return found, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds (default {ROUNDS})")
    parser.add_argument("--quick", action="store_true", help="2 rounds: a smoke run, not figures to quote")
    args = parser.parse_args(argv)
    found, notes = rows(2 if args.quick else args.rounds)
    for name, ratio, _, _, a, b, a_unit, b_unit in found:
        print(f"{name}: {ratio:.2f} (serve {a:.0f} {a_unit}, dev_appserver.py {b:.0f} {b_unit})")
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
