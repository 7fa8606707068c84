"""An app for tests/test_tracing.py, served by ``python -m taskutils serve trace_app:app``.

``POST /fan-out?key=K`` submits a group of 3 children with a ``then`` callback; every run
records its request's ``traceparent`` and the trace its log records carry, as Cloud
Logging's JSON would name it. ``GET /seen?key=K`` answers what the runs of K recorded.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import taskutils
from taskutils import task

from wsgi_json import query as query_of
from wsgi_json import respond

_lock = threading.Lock()
_seen: dict[str, list[dict[str, Any]]] = {}
_formatter = taskutils.CloudLoggingFormatter(project="serve-project")


class _Keep(logging.Handler):
    """Keeps the Cloud Logging entry of each record a run logs."""

    def emit(self, record: logging.LogRecord) -> None:
        entry = json.loads(_formatter.format(record))
        key = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
        with _lock:
            _seen.setdefault(key, []).append({"log_trace": entry.get("logging.googleapis.com/trace")})


log = logging.getLogger("trace_app")
log.addHandler(_Keep())
log.setLevel(logging.INFO)
log.propagate = False


def _ran(key: str, kind: str, headers: Any) -> None:
    with _lock:
        _seen.setdefault(key, []).append({"kind": kind, "traceparent": headers.get("traceparent")})
    log.info("%s ran %s", key, kind)


@task(includeheaders=True)
def child(key: str, headers: Any = None) -> str:
    _ran(key, "child", headers)
    return key


@task(includeheaders=True)
def collect(keys: list[str], headers: Any = None) -> None:
    _ran(keys[0], "callback", headers)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path, query = environ.get("PATH_INFO", ""), query_of(environ)
    if path == "/fan-out" and environ.get("REQUEST_METHOD") == "POST":
        group = child.submit_map([query["key"]] * 3)
        group.then(collect)
        return respond(start_response, "200 OK", {"id": group.id})
    if path == "/seen":
        with _lock:
            return respond(start_response, "200 OK", list(_seen.get(query.get("key", ""), [])))
    return respond(start_response, "404 Not Found", {})
