"""An app for the Cloud Tasks integration test: HTTP endpoints that enqueue tasks, and a report.

Serve it with ``python -m taskutils serve cloudtasks_app:app`` (``tests/apps`` on
``sys.path``). Each ``POST /enqueue/<kind>?id=<id>`` enqueues one task (``/enqueue/map``
enqueues ``n`` with ``.map()``) and answers JSON; ``GET /ran`` answers the tasks that ran
in this process, in order, each as a dict with ``what``, ``id``, ``queue``,
``retry_count``, ``task_name``, ``at`` (epoch seconds) and ``outcome``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from google.appengine.ext import ndb

import taskutils
from taskutils import task

from wsgi_json import query as query_of
from wsgi_json import respond

_lock = threading.Lock()
_ran: list[dict[str, Any]] = []


def _record(what: str, item_id: str, outcome: str = "ok") -> None:
    info = taskutils.current_task()
    entry = {
        "what": what,
        "id": item_id,
        "queue": info.queue_name if info else None,
        "retry_count": info.retry_count if info else None,
        "task_name": info.task_name if info else None,
        "at": time.time(),
        "outcome": outcome,
    }
    with _lock:
        _ran.append(entry)


@task
def plain(item_id: str) -> None:
    _record("plain", item_id)


@task(countdown=2)
def later(item_id: str) -> None:
    _record("later", item_id)


@task(queue="flaky")
def fails_once(item_id: str) -> None:
    """Raises on its first attempt, so the queue retries it; succeeds on the second."""
    info = taskutils.current_task()
    if info is not None and info.retry_count == 0:
        _record("fails_once", item_id, outcome="raised")
        raise RuntimeError("first attempt fails on purpose")
    _record("fails_once", item_id)


@task(transactional=True)
def after_commit(item_id: str) -> None:
    _record("after_commit", item_id)


class Marker(ndb.Model):
    """Written in the same transaction as a transactional task."""


def _enqueue_transactional(item_id: str) -> Any:
    def txn() -> Any:
        Marker(id=item_id).put()
        return after_commit(item_id)

    return ndb.transaction(txn, xg=True)


_ENQUEUE: dict[str, Callable[[str], Any]] = {
    "plain": plain,
    "later": later,
    "fails_once": fails_once,
    "transactional": _enqueue_transactional,
}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The app's own endpoints; ``serve`` mounts it beside ``taskutils.app``."""
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD")
    query = query_of(environ)
    if path == "/ran" and method == "GET":
        with _lock:
            return respond(start_response, "200 OK", list(_ran))
    if path.startswith("/enqueue/") and method == "POST":
        kind = path[len("/enqueue/") :]
        item_id = query.get("id", "")
        if kind == "map":
            added = plain.map(f"{item_id}-{i}" for i in range(int(query.get("n", "3"))))
            return respond(start_response, "200 OK", {"enqueued": [t.name for t in added]})
        enqueue = _ENQUEUE.get(kind)
        if enqueue is not None:
            added = enqueue(item_id)
            return respond(start_response, "200 OK", {"enqueued": [added.name], "at": time.time()})
    return respond(start_response, "404 Not Found", {"error": f"no {method} {path}"})
