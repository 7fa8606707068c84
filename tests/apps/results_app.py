"""An app for tests/test_results_serve.py: a fan-out and fan-in with progress, driven over HTTP.

Served by ``python -m taskutils serve results_app:app``, on the taskqueue stub or in
Cloud Tasks mode. ``POST /fanout?n=N`` submits N children of ``square`` with
``submit_map`` and a ``summarize`` callback, and answers ``{"group": id, "summary": id}``;
``GET /group?id=G`` answers its status, progress and counts; ``GET /handle?id=H`` a
handle's status, attempts and result (once succeeded); ``GET /ran`` the summaries that ran.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import taskutils
from taskutils import GroupHandle, TaskHandle, task

from wsgi_json import query as query_of
from wsgi_json import respond

_lock = threading.Lock()
_summaries: list[dict[str, Any]] = []


@task
def square(n: int) -> int:
    taskutils.set_progress(0, 1)
    time.sleep(0.01)
    taskutils.set_progress(1, 1)
    return n * n


@task
def summarize(results: list[int]) -> int:
    with _lock:
        _summaries.append({"count": len(results), "total": sum(results), "at": time.time()})
    return sum(results)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The app's own endpoints; ``serve`` mounts it beside ``taskutils.app``."""
    path, method, query = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD"), query_of(environ)
    if path == "/fanout" and method == "POST":
        group = square.submit_map(range(int(query.get("n", "10"))))
        summary = group.then(summarize)
        return respond(start_response, "200 OK", {"group": group.id, "summary": summary.id})
    if path == "/group" and method == "GET":
        found = GroupHandle.get(query["id"])
        if found is None:
            return respond(start_response, "404 Not Found", {"error": "no such group"})
        body = {"status": found.status, "progress": found.progress, "counts": found.counts()}
        return respond(start_response, "200 OK", body)
    if path == "/handle" and method == "GET":
        handle = TaskHandle.get(query["id"])
        if handle is None:
            return respond(start_response, "404 Not Found", {"error": "no such handle"})
        body = {"status": handle.status, "attempts": handle.attempts}
        if body["status"] == "succeeded":
            body["result"] = handle.result()
        return respond(start_response, "200 OK", body)
    if path == "/ran" and method == "GET":
        with _lock:
            return respond(start_response, "200 OK", list(_summaries))
    return respond(start_response, "404 Not Found", {"error": f"no {method} {path}"})
