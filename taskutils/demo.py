"""``python -m taskutils demo``: the local server running every kind of task taskutils handles.

The demo starts :class:`~taskutils.local.LocalServer` on a free loopback port
with the small WSGI app below. ``POST /start`` enqueues, from inside the app,
a plain task, a nested function given a function argument, a recursive task,
a closure, a lambda, a task that fails twice before it succeeds, and one whose
payload is over App Engine's 100 KiB limit. Google's taskqueue stub posts each
back over HTTP; ``GET /progress`` tells which have run. Exit status 0 when
every one ran, 1 (naming what is missing) after the timeout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from .current import current_task
from .exc import RetryTaskException
from .local import LocalServer, StubLogFilter
from .results import GroupHandle
from .task import task

KINDS = ("plain", "nested", "recursive", "closure", "lambda", "flaky", "big", "fan-in")
FAN_OUT = 12
BIG_PAYLOAD = 150 * 1024

_lock = threading.Lock()
_done: dict[str, str] = {}
_failed: dict[str, str] = {}
_runs: Counter[str] = Counter()


def _ran(kind: str, message: str | None = None, *, failed: bool = False) -> None:
    """Count one run of a kind of task; with a message, that kind is done (or has failed for good)."""
    info = current_task()
    with _lock:
        _runs[kind] += 1
        if info is not None and info.retry_count > 0:
            _runs["retries"] += 1
        if message is not None:
            (_failed if failed else _done)[kind] = message


# The seed article's examples, with bodies that say what they did.


@task
def myfunction() -> None:
    """A plain module-level function: its URL names it, the payload holds only the arguments."""
    _ran("plain", "myfunction() ran in its own task")


def myouterfunction(mapf: Callable[[Any], Any]) -> None:
    """A task defined inside a function, given another function as its argument."""

    @task
    def myinnerfunction(objects: list[int]) -> None:
        results = [mapf(o) for o in objects]
        _ran("nested", f"myinnerfunction applied {mapf.__name__} to {objects}: {results}")

    myinnerfunction([3, 4, 5])


@task
def countdown(n: int, seen: tuple[int, ...] = ()) -> None:
    """A task that enqueues itself until it reaches zero."""
    seen = (*seen, n)
    if n > 0:
        _ran("recursive")
        countdown(n - 1, seen)
    else:
        _ran("recursive", f"counted down {' > '.join(map(str, seen))}, one task per step")


def greet_later(greeting: str) -> None:
    """A closure: the task carries the greeting it closed over."""

    @task
    def greet(name: str) -> None:
        _ran("closure", f"{greeting}, {name} (the greeting came from the enclosing call)")

    greet("world")


@task
def flaky() -> None:
    """Fails its first two attempts; the queue retries it with backoff."""
    info = current_task()
    retry = info.retry_count if info else 0
    if retry < 2:
        _ran("flaky")
        raise RetryTaskException(f"attempt {retry + 1} fails on purpose")
    _ran("flaky", f"failed twice (retried with backoff), then succeeded on retry {retry}")


@task
def checksum(data: bytes, expected: str) -> None:
    """A payload over 100 KiB: it travels through Datastore, and the task gets every byte."""
    if hashlib.sha256(data).hexdigest() != expected:
        _ran("big", f"{len(data):,} bytes arrived, but not the bytes that were sent", failed=True)
    else:
        _ran("big", f"{len(data):,} bytes went through Datastore, every byte as sent (SHA-256)")


_group: dict[str, str] = {}


@task
def square(n: int) -> int:
    """A child of a group (``submit_map``): its return value is kept on its handle."""
    time.sleep(0.05)
    return n * n


@task
def report_squares(squares: list[int]) -> None:
    """The group's ``then`` callback: runs once, after every child succeeded, with their results in order."""
    _ran("fan-in", f"{len(squares)} children ran side by side, then one callback got their results: {squares}")


def enqueue_all() -> None:
    """Enqueue one task of every kind."""
    myfunction()
    myouterfunction(math.factorial)
    countdown(3)
    greet_later("hello")
    task(lambda x: _ran("lambda", f"a lambda doubled {x} to {x * 2}"))(21)
    flaky()
    data = os.urandom(BIG_PAYLOAD)
    checksum(data, hashlib.sha256(data).hexdigest())
    group = square.submit_map(range(FAN_OUT))
    group.then(report_squares)
    _group["id"] = group.id


def _json(start_response: Callable[..., Any], body: Any, status: str = "200 OK") -> Iterable[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The demo app: ``POST /start`` enqueues the tasks, ``GET /progress`` reports on them."""
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD")
    if path == "/start" and method == "POST":
        enqueue_all()
        return _json(start_response, {"enqueued": list(KINDS)})
    if path == "/progress":
        with _lock:
            body: dict[str, Any] = {"done": dict(_done), "failed": dict(_failed), "runs": dict(_runs)}
        if "id" in _group:  # the fan-out's progress, as its GroupHandle reports it
            counts = GroupHandle(_group["id"]).counts()
            body["group"] = f"{counts['finished']}/{counts['total']}"
        return _json(start_response, body)
    return _json(start_response, {"error": f"no {method} {path}"}, "404 Not Found")


class _Short(logging.Formatter):
    """``  server   POST /_ah/task/... -> 200 OK``: a short tag for who is talking."""

    TAGS = {"taskutils.local": "server", "taskqueue_stub": "queue"}

    def format(self, record: logging.LogRecord) -> str:
        tag = self.TAGS.get(record.name, record.name.rsplit(".", 1)[-1])
        return f"  {tag:<8} {record.getMessage()}"


class _Console:
    """The demo's output: its own lines and the server's log lines, one whole line at a time."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.handler = logging.StreamHandler(out)
        self.handler.setFormatter(_Short())
        self.handler.addFilter(StubLogFilter())
        self._local, self._root = logging.getLogger("taskutils.local"), logging.getLogger()
        self._saved = self._local.level, self._root.level

    def __enter__(self) -> _Console:
        self._local.setLevel(logging.INFO)
        self._root.setLevel(logging.WARNING)
        self._root.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self._root.removeHandler(self.handler)
        self._local.setLevel(self._saved[0])
        self._root.setLevel(self._saved[1])

    def say(self, line: str) -> None:
        with self.handler.lock:  # type: ignore[union-attr]
            self.out.write(line + "\n")
            self.out.flush()


def _get(url: str, data: bytes | None = None) -> Any:
    with urllib.request.urlopen(url, data=data, timeout=10) as resp:
        return json.load(resp)


def main(timeout: float = 60.0, out: TextIO = sys.stdout) -> int:
    """Run the demo; 0 when every kind of task ran, 1 after the timeout."""
    server = LocalServer(app, port=0)
    with _Console(out) as console:
        try:
            return _run(server, console, timeout)
        except KeyboardInterrupt:
            console.say("interrupted")
            return 130
        finally:
            summary = server.stop()
            for line in summary.lines() if summary is not None else ():
                console.say(f"  server   {line}")


def _run(server: LocalServer, console: _Console, timeout: float) -> int:
    console.say("taskutils demo: App Engine push tasks, run locally by Google's own taskqueue stub")
    server.start()
    console.say(f"enqueueing {len(KINDS)} kinds of task from inside the app: {', '.join(KINDS)}")
    began = time.monotonic()
    _get(server.url + "/start", data=b"")
    shown: set[str] = set()
    progress: dict[str, Any] = {"done": {}, "failed": {}, "runs": {}}
    group = ""
    while time.monotonic() - began < timeout and not progress["failed"]:
        progress = _get(server.url + "/progress")
        if progress.get("group", group) != group and "fan-in" not in shown:
            group = progress["group"]
            console.say(f"  ...      {'fan-in':<10} {group} children done")
        for kind in KINDS:
            if kind in progress["done"] and kind not in shown:
                shown.add(kind)
                console.say(f"  ok       {kind:<10} {progress['done'][kind]}")
        if len(shown) == len(KINDS):
            break
        time.sleep(0.05)
    took = time.monotonic() - began
    retries = progress["runs"].pop("retries", 0)
    runs = sum(progress["runs"].values())
    for kind, why in progress["failed"].items():
        console.say(f"  FAILED   {kind:<10} {why}")
    missing = [kind for kind in KINDS if kind not in shown]
    if missing:
        waited = "" if progress["failed"] else f"after {timeout:g}s, "
        console.say(
            f"FAILED: {waited}{len(shown)} of {len(KINDS)} kinds of task ran ({runs} task runs); "
            f"missing: {', '.join(missing)}"
        )
        return 1
    console.say(
        f"all {len(KINDS)} kinds of task ran in {took:.1f}s, {retries} of their runs retries "
        "(the server's count below includes the fan-out's children and fan-in steps)"
    )
    return 0
