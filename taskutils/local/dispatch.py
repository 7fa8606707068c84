"""Sending a queued task to the local server: one real HTTP request per attempt, and its record.

:class:`HTTPDispatcher` is the ``request_info.Dispatcher`` through which Google's
taskqueue stub (its ``_TaskExecutor``) posts each task. It writes each request in
one send on a kept-alive connection per calling thread, waits at most the
attempt's deadline for the answer, logs one line per run and records it.

Run records (read by the console) live on the running server as ``server.runs``,
a :class:`RunRecords`:

- ``runs.recent()``: the latest runs, oldest first, at most ``MAX_RUNS`` of them;
  each a :class:`RunRecord` with ``at`` (epoch seconds when the attempt started),
  ``queue``, ``task_name``, ``url``, ``status`` (int: 502 when the server could
  not be reached, 504 when the deadline passed), ``duration`` (seconds),
  ``error`` (the answer's ``X-Taskutils-Error`` line, or why no answer came;
  ``""`` when none), ``retry_count`` and ``reason`` (why the attempt failed, as
  the next attempt's ``X-AppEngine-TaskRetryReason`` tells it; ``""`` after a 2xx).
- ``runs.last(task_name)``: the last run of a task while it is still queued (its
  last answer and error line); ``None`` once it succeeded or was dropped, or if it
  never ran. At most ``MAX_LAST`` task names are kept.
- ``runs.running()``: ``(queue, task_name)`` of every attempt in flight.

All three are safe to call from any thread, and memory stays bounded whatever
the number of tasks run.
"""

from __future__ import annotations

import collections
import http.client
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from google.appengine.api import request_info

from .. import taskheaders

log = logging.getLogger("taskutils.local")

DISPATCH_TIMEOUT = 600.0  # App Engine gives a push task 10 minutes
STOP_GRACE = 10.0  # how long stop() lets running tasks finish
MAX_RUNS = 500  # recent runs kept for the console
MAX_LAST = 10_000  # queued task names whose last answer is kept
ERROR_HEADER = "x-taskutils-error"

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_URL = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One attempt of one task, as the dispatcher saw it."""

    at: float
    queue: str
    task_name: str
    url: str
    status: int
    duration: float
    error: str
    retry_count: int | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True for a 2xx answer: the queue deletes the task."""
        return 200 <= self.status < 300


class RunRecords:
    """Bounded records of recent runs, each queued task's last run, and the runs in flight."""

    def __init__(self, max_runs: int = MAX_RUNS, max_last: int = MAX_LAST) -> None:
        self._lock = threading.Lock()
        self._runs: collections.deque[RunRecord] = collections.deque(maxlen=max_runs)
        self._last: collections.OrderedDict[str, RunRecord] = collections.OrderedDict()
        self._max_last = max_last
        self._running: dict[int, tuple[str, str]] = {}

    def started(self, queue: str, task_name: str) -> int:
        """Note an attempt in flight; returns the token to pass to :meth:`finished`."""
        token = id(object())
        with self._lock:
            while token in self._running:
                token += 1
            self._running[token] = (queue, task_name)
        return token

    def finished(self, token: int, record: RunRecord) -> None:
        """Record the attempt's outcome; it is no longer in flight."""
        with self._lock:
            self._running.pop(token, None)
            self._runs.append(record)
            if record.ok:
                self._last.pop(record.task_name, None)
                return
            self._last[record.task_name] = record
            self._last.move_to_end(record.task_name)
            while len(self._last) > self._max_last:
                self._last.popitem(last=False)

    def forget(self, task_name: str) -> None:
        """The task left its queue (deleted, dropped after its last retry): drop its last run."""
        with self._lock:
            self._last.pop(task_name, None)

    def recent(self) -> list[RunRecord]:
        """The latest runs, oldest first."""
        with self._lock:
            return list(self._runs)

    def last(self, task_name: str) -> RunRecord | None:
        """The last run of a task still queued, if it has run."""
        with self._lock:
            return self._last.get(task_name)

    def running(self) -> list[tuple[str, str]]:
        """``(queue, task_name)`` of every attempt in flight."""
        with self._lock:
            return list(self._running.values())


def _request(method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """One HTTP/1.1 request as bytes: written in one send, headers and body together."""
    if _UNSAFE_URL.search(url) or not url.startswith("/"):
        raise ValueError(f"cannot send a task to URL {url!r}")
    lines = [f"{method} {url} HTTP/1.1"]
    for name, value in headers:
        if _UNSAFE.search(name) or _UNSAFE.search(value) or ":" in name:
            raise ValueError(f"cannot send header {name!r}")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1") + body


class DeadlineExceeded(Exception):
    """No answer came within the attempt's deadline."""


class HTTPDispatcher(request_info.Dispatcher):
    """Sends each task the stub runs to the local server as an HTTP request, within its deadline.

    One kept-alive connection per calling thread, each request written in one
    send. A task the server cannot be reached for answers 502, one that has not
    answered within its deadline 504: either way the queue retries it. Beside
    the stub's headers, each request carries what App Engine adds: its
    User-Agent and, on a retry, ``X-AppEngine-TaskRetryReason``.
    ``on_deadline`` is called (with no arguments) each time an attempt is given
    up on while the server may still be running it. ``headers`` go with every
    request (the server's dispatch secret, see :mod:`.guard`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = DISPATCH_TIMEOUT,
        records: RunRecords | None = None,
        on_deadline: Callable[[], None] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.host = host
        self.headers = list(headers or ())
        self.port = port
        self.timeout = timeout
        self.records = records if records is not None else RunRecords()
        self.on_deadline = on_deadline
        self._local = threading.local()
        self._closed = False

    def set_deadline(self, seconds: float | None) -> None:
        """The deadline of the attempts this thread sends next (None: the dispatcher's timeout)."""
        self._local.deadline = seconds

    def _connection(self, timeout: float) -> tuple[socket.socket, bool]:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.settimeout(timeout)
            return sock, True
        sock = socket.create_connection((self.host, self.port), timeout=min(timeout, 30.0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        self._local.sock = sock
        return sock, False

    def _drop_connection(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            sock.close()

    def _send(self, request: bytes, method: str, timeout: float) -> tuple[str, list[tuple[str, str]], bytes]:
        for attempt in (1, 2):
            sock, reused = self._connection(timeout)
            try:
                sock.sendall(request)
                response = http.client.HTTPResponse(sock, method=method)
                response.begin()
                content = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop_connection()
                if reused and attempt == 1 and not self._closed:
                    continue  # the server closed an idle kept-alive connection: retry on a new one
                raise
            except TimeoutError as e:
                self._drop_connection()
                raise DeadlineExceeded(f"no answer within the deadline of {timeout:g} s") from e
            except BaseException:
                self._drop_connection()
                raise
            if response.will_close:
                self._drop_connection()
            return f"{response.status} {response.reason}", response.getheaders(), content
        raise AssertionError("unreachable")

    def add_request(
        self,
        method: str,
        relative_url: str,
        headers: list[tuple[str, str]],
        body: bytes | str,
        source_ip: str,
        module_name: str | None = None,
        version: str | None = None,
        instance_id: str | None = None,
    ) -> request_info.ResponseTuple:
        """Post one task to the server and return its answer, as the stub's executor expects."""
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        sent = [(k, v) for k, v in headers if v is not None and k.lower() != "user-agent"]
        found = {k.lower(): v for k, v in headers if v is not None}
        sent += self.headers
        if "host" not in found:
            sent.append(("Host", f"{self.host}:{self.port}"))
        if "content-length" not in found:
            sent.append(("Content-Length", str(len(data))))
        sent.append(("User-Agent", taskheaders.user_agent(found.get("user-agent"))))
        queue = found.get("x-appengine-queuename", "")
        name = found.get("x-appengine-taskname", "")
        retry = found.get("x-appengine-taskretrycount")
        if retry and retry != "0":
            reason = self._retry_reason(name, found.get("x-appengine-taskpreviousresponse"))
            if reason:
                sent.append((taskheaders.RETRY_REASON, reason))
        deadline = getattr(self._local, "deadline", None) or self.timeout
        token = self.records.started(queue, name)
        at, started = time.time(), time.perf_counter()
        error = reason = ""
        try:
            status, response_headers, content = self._send(_request(method, relative_url, sent, data), method, deadline)
            error = next((v for k, v in response_headers if k.lower() == ERROR_HEADER), "")
        except DeadlineExceeded as e:
            status, response_headers, content, error = "504 Gateway Timeout", [], b"", f"DeadlineExceeded: {e}"
            reason = taskheaders.deadline_exceeded(deadline)
            if self.on_deadline is not None:
                self.on_deadline()
        except (OSError, ValueError, http.client.HTTPException) as e:
            status, response_headers, content = "502 Bad Gateway", [], b""
            error = f"no answer from the server: {type(e).__name__}: {e}"
            reason = taskheaders.unreachable(e)
        took = time.perf_counter() - started
        code = int(status.split(" ", 1)[0])
        if not reason and not 200 <= code < 300:
            reason = taskheaders.answered(code)
        self.records.finished(
            token,
            RunRecord(
                at,
                queue,
                name,
                relative_url,
                code,
                took,
                error,
                int(retry) if retry and retry.isdigit() else None,
                reason,
            ),
        )
        log.log(
            logging.INFO if 200 <= code < 300 else logging.WARNING,
            "%s %s queue=%s task=%s retry=%s -> %s (%.1f ms)%s",
            method,
            relative_url,
            queue,
            name,
            retry,
            status,
            took * 1000,
            f": {error}" if code in (502, 504) else "",
        )
        return request_info.ResponseTuple(status, response_headers, content)

    def _retry_reason(self, task_name: str, previous_response: str | None) -> str:
        """Why the task's last attempt failed: from its run record, else from the status the queue kept."""
        last = self.records.last(task_name)
        if last is not None and last.reason:
            return last.reason
        if previous_response and previous_response.isdigit():
            return taskheaders.answered(int(previous_response))
        return ""

    def close(self) -> None:
        """Send no more tasks: retries of a dropped connection stop, the caller's connection closes."""
        self._closed = True
        self._drop_connection()
