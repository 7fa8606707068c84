"""Sending a queued task to the local server: one real HTTP request per attempt.

:class:`HTTPDispatcher` is the ``request_info.Dispatcher`` Google's taskqueue
stub posts tasks through. It writes each request in one send on a kept-alive
connection per thread and logs one line per run.
"""

from __future__ import annotations

import http.client
import logging
import re
import socket
import threading
import time

from google.appengine.api import request_info

log = logging.getLogger("taskutils.local")

DISPATCH_TIMEOUT = 600.0  # App Engine gives a push task 10 minutes
STOP_GRACE = 10.0  # how long stop() lets a running task finish

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_URL = re.compile(r"[\x00-\x20\x7f]")


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


class HTTPDispatcher(request_info.Dispatcher):
    """Sends each task the stub's scheduler runs to the local server as an HTTP request.

    One kept-alive connection per calling thread (the scheduler has one), and
    each request written in one send. A task the server cannot be reached for
    answers 502, so the queue retries it.
    """

    def __init__(self, host: str, port: int, timeout: float = DISPATCH_TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._local = threading.local()
        self._busy = threading.Lock()
        self._closed = False

    def _connection(self) -> tuple[socket.socket, bool]:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            return sock, True
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._local.sock = sock
        return sock, False

    def _drop_connection(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            sock.close()

    def _send(self, request: bytes, method: str) -> tuple[str, list[tuple[str, str]], bytes]:
        for attempt in (1, 2):
            sock, reused = self._connection()
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
        with self._busy:
            if self._closed:
                # Ends the stub's scheduler thread quietly (threads ignore SystemExit);
                # the task stays in its queue, unrun, as it would on a stopped instance.
                raise SystemExit
            data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
            sent = [(k, v) for k, v in headers if v is not None]
            found = {k.lower(): v for k, v in sent}
            if "host" not in found:
                sent.append(("Host", f"{self.host}:{self.port}"))
            if "content-length" not in found:
                sent.append(("Content-Length", str(len(data))))
            started = time.perf_counter()
            try:
                status, response_headers, content = self._send(_request(method, relative_url, sent, data), method)
            except (OSError, ValueError, http.client.HTTPException) as e:
                if self._closed:
                    raise SystemExit from e
                status, response_headers, content = "502 Bad Gateway", [], b""
                log.warning(
                    "%s %s queue=%s task=%s retry=%s -> no answer from the server: %s: %s",
                    method,
                    relative_url,
                    found.get("x-appengine-queuename"),
                    found.get("x-appengine-taskname"),
                    found.get("x-appengine-taskretrycount"),
                    type(e).__name__,
                    e,
                )
                return request_info.ResponseTuple(status, response_headers, content)
            code = int(status.split(" ", 1)[0])
            log.log(
                logging.INFO if 200 <= code < 300 else logging.WARNING,
                "%s %s queue=%s task=%s retry=%s -> %s (%.1f ms)",
                method,
                relative_url,
                found.get("x-appengine-queuename"),
                found.get("x-appengine-taskname"),
                found.get("x-appengine-taskretrycount"),
                status,
                (time.perf_counter() - started) * 1000,
            )
            return request_info.ResponseTuple(status, response_headers, content)

    def close(self, grace: float = STOP_GRACE) -> bool:
        """Send no more tasks; wait up to grace seconds for the one running. True if it finished."""
        self._closed = True
        finished = self._busy.acquire(timeout=grace)
        if finished:
            self._busy.release()
        return finished
