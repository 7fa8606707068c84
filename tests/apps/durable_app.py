"""An app for tests/test_local_storage.py, served by ``python -m taskutils serve durable_app:app --storage DIR``.

Every attempt of every task appends one JSON line (``key``, ``outcome``,
``retry_count``, ``task_name``) to the file named by ``DURABLE_LOG``: a record
outside the server, so it survives the server being killed.

``POST /map?prefix=P&n=N[&countdown=S]`` enqueues N ``record`` tasks (keys P0..)
with ``.map``; ``POST /enqueue/<kind>?key=K[&name=N][&countdown=S][&succeed_at=R]``
enqueues one ``record`` or ``stubborn`` task (409 with the error's name when the
name is taken); ``GET /stats`` answers how many tasks the default queue holds;
``POST /put?key=K&value=V``, ``POST /delete?key=K``, ``GET /get?key=K`` write,
delete and read a Datastore entity.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from google.appengine.api import taskqueue
from google.appengine.ext import ndb

import taskutils
from taskutils import task

from wsgi_json import query as query_of
from wsgi_json import respond

LOG = os.environ.get("DURABLE_LOG", os.devnull)


def _note(key: str, outcome: str) -> None:
    info = taskutils.current_task()
    line = json.dumps(
        {
            "key": key,
            "outcome": outcome,
            "retry_count": info.retry_count if info else None,
            "task_name": info.task_name if info else None,
        }
    )
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one write: a line is whole even if the process is killed
    finally:
        os.close(fd)


@task
def record(key: str) -> None:
    _note(key, "ok")


@task
def stubborn(key: str, succeed_at: int) -> None:
    """Fails until its retry count reaches succeed_at."""
    info = taskutils.current_task()
    assert info is not None
    if info.retry_count < succeed_at:
        _note(key, "failed")
        raise taskutils.RetryTaskException(f"attempt {info.retry_count} fails on purpose")
    _note(key, "ok")


class Note(ndb.Model):
    value = ndb.StringProperty()


def _enqueue(kind: str, query: dict[str, str]) -> taskqueue.Task:
    options: dict[str, Any] = {}
    if "name" in query:
        options["name"] = query["name"]
    if "countdown" in query:
        options["countdown"] = float(query["countdown"])
    key = query.get("key", "")
    if kind == "record":
        return record.options(**options)(key)
    if kind == "stubborn":
        return stubborn.options(**options)(key, int(query.get("succeed_at", "3")))
    raise LookupError(kind)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The app's own endpoints; ``serve`` mounts it beside ``taskutils.app``."""
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD")
    query = query_of(environ)
    if path == "/map" and method == "POST":
        prefix, n = query.get("prefix", "k"), int(query.get("n", "1"))
        fn = record.options(countdown=float(query["countdown"])) if "countdown" in query else record
        return respond(start_response, "200 OK", len(fn.map(f"{prefix}{i}" for i in range(n))))
    if path.startswith("/enqueue/") and method == "POST":
        try:
            added = _enqueue(path[len("/enqueue/") :], query)
        except (taskqueue.TaskAlreadyExistsError, taskqueue.TombstonedTaskError) as e:
            return respond(start_response, "409 Conflict", {"error": type(e).__name__})
        return respond(start_response, "200 OK", {"name": added.name})
    if path == "/stats" and method == "GET":
        return respond(start_response, "200 OK", {"queued": taskqueue.Queue("default").fetch_statistics().tasks})
    if path == "/put" and method == "POST":
        Note(id=query["key"], value=query["value"]).put()
        return respond(start_response, "200 OK", {})
    if path == "/delete" and method == "POST":
        ndb.Key(Note, query["key"]).delete()
        return respond(start_response, "200 OK", {})
    if path == "/get" and method == "GET":
        note = Note.get_by_id(query["key"])
        return respond(start_response, "200 OK", {"value": note.value if note else None})
    return respond(start_response, "404 Not Found", {"error": f"no {method} {path}"})
