"""An app for tests/test_local.py, served by ``python -m taskutils serve local_app:app``.

``POST /enqueue/<kind>?key=K&...`` enqueues one task inside the server process and
answers JSON (``{"name": ..., "at": ...}``, or ``{"error": ...}`` with 400/409);
``GET /ran`` answers every attempt of every task, in order: ``key``, ``what``,
``outcome`` ("ok", "retry", "raised", "slow", "exit", "interrupt"), ``queue``, ``retry_count``, ``task_name``,
``at``, plus what the task saw; ``GET /count?prefix=P`` counts successful runs whose key
starts with P. ``POST /put?key=K&value=V`` and ``GET /get?key=K``
write and read a Datastore entity; ``GET /info`` tells the project and how many
spilled payload entities remain.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from google.appengine.api import taskqueue
from google.appengine.ext import deferred, ndb

import taskutils
from taskutils import task
from taskutils.spill import TaskPayloadChunk

from wsgi_json import query as query_of
from wsgi_json import respond

_lock = threading.Lock()
_ran: list[dict[str, Any]] = []


def _record(what: str, key: str, outcome: str = "ok", **seen: Any) -> None:
    info = taskutils.current_task()
    entry = {
        "what": what,
        "key": key,
        "outcome": outcome,
        "queue": info.queue_name if info else None,
        "retry_count": info.retry_count if info else None,
        "task_name": info.task_name if info else None,
        "at": time.time(),
        **seen,
    }
    with _lock:
        _ran.append(entry)


@task
def record(key: str) -> None:
    _record("record", key)


@task
def flaky(key: str, failures: int, how: str) -> None:
    """Fails its first ``failures`` attempts (RetryTaskException or RuntimeError), then succeeds."""
    info = taskutils.current_task()
    assert info is not None
    if info.retry_count < failures:
        if how == "retry":
            _record("flaky", key, "retry")
            raise taskutils.RetryTaskException("not yet")
        _record("flaky", key, "raised")
        raise RuntimeError(f"attempt {info.retry_count} fails on purpose")
    _record("flaky", key)


@task
def nap(key: str, seconds: float) -> None:
    """Sleeps, then records: I/O-bound work."""
    time.sleep(seconds)
    _record("nap", key)


@task
def nap_item(item: tuple[str, float]) -> None:
    """nap for .map: item is (key, seconds)."""
    key, seconds = item
    time.sleep(seconds)
    _record("nap", key)


@task(includeheaders=True)
def slow_first(key: str, seconds: float, headers: Any) -> None:
    """Its first attempt sleeps for seconds (past a short deadline); later attempts return at once."""
    info = taskutils.current_task()
    assert info is not None
    if info.retry_count == 0:
        _record("slow_first", key, "slow")
        time.sleep(seconds)
        return
    _record("slow_first", key, retry_reason=headers.get("X-AppEngine-TaskRetryReason"))


@task(includeheaders=True)
def headers_seen(key: str, failures: int, headers: Any) -> None:
    """Records the headers App Engine adds beside the task's own; fails its first ``failures`` attempts."""
    info = taskutils.current_task()
    assert info is not None
    seen = {
        name: headers.get(name)
        for name in (
            "User-Agent",
            "X-AppEngine-TaskRetryReason",
            "X-AppEngine-TaskPreviousResponse",
            "X-AppEngine-FailFast",
        )
    }
    if info.retry_count < failures:
        _record("headers_seen", key, "raised", headers=seen)
        raise RuntimeError(f"attempt {info.retry_count} fails on purpose")
    _record("headers_seen", key, headers=seen)


@task
def exits(key: str, how: str) -> None:
    """Its first attempt raises SystemExit or KeyboardInterrupt; the next one succeeds."""
    info = taskutils.current_task()
    assert info is not None
    if info.retry_count == 0:
        _record("exits", key, how)
        raise SystemExit(3) if how == "exit" else KeyboardInterrupt()
    _record("exits", key)


@task
def blob(key: str, data: bytes) -> None:
    _record("blob", key, size=len(data), sha256=hashlib.sha256(data).hexdigest())


class Note(ndb.Model):
    value = ndb.StringProperty()


def _enqueue(kind: str, key: str, query: dict[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "queue" in query:
        options["queue"] = query["queue"]
    if "name" in query:
        options["name"] = query["name"]
    if "countdown" in query:
        options["countdown"] = float(query["countdown"])
    if "deadline" in query:
        options["dispatch_deadline_usec"] = int(float(query["deadline"]) * 1_000_000)
    own_headers = {}
    if "agent" in query:
        own_headers["User-Agent"] = query["agent"]
    if "failfast" in query:
        own_headers["X-AppEngine-FailFast"] = query["failfast"]
    if own_headers:
        options["headers"] = own_headers
    extra: dict[str, Any] = {}
    if kind == "record":
        added = record.options(**options)(key)
    elif kind == "flaky":
        added = flaky.options(**options)(key, int(query.get("failures", "1")), query.get("how", "retry"))
    elif kind == "nap":
        if "n" in query:
            seconds = float(query.get("seconds", "0.2"))
            added = nap_item.options(**options).map([(f"{key}-{i}", seconds) for i in range(int(query["n"]))])
            return {"names": [t.name for t in added], "at": time.time()}
        added = nap.options(**options)(key, float(query.get("seconds", "0.2")))
    elif kind == "slow_first":
        added = slow_first.options(**options)(key, float(query.get("seconds", "3")))
    elif kind == "headers_seen":
        added = headers_seen.options(**options)(key, int(query.get("failures", "0")))
    elif kind == "exits":
        added = exits.options(**options)(key, query.get("how", "exit"))
    elif kind == "blob":
        data = os.urandom(int(query.get("size", "200000")))
        extra["sha256"] = hashlib.sha256(data).hexdigest()
        added = blob.options(**options)(key, data)
    elif kind == "deferred":  # deferred's own task, at deferred's URL
        added = deferred.defer(_record, "deferred", key)
    elif kind == "closure":
        greeting = query.get("greeting", "hello")
        added = task(lambda: _record("closure", key, greeting=greeting), **options)()
    else:
        raise LookupError(kind)
    return {"name": added.name, "at": time.time(), **extra}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The app's own endpoints; ``serve`` mounts it beside ``taskutils.app``."""
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD")
    query = query_of(environ)
    if path == "/ran" and method == "GET":
        with _lock:
            return respond(start_response, "200 OK", list(_ran))
    if path == "/count" and method == "GET":
        prefix = query.get("prefix", "")
        with _lock:
            return respond(
                start_response, "200 OK", sum(r["key"].startswith(prefix) and r["outcome"] == "ok" for r in _ran)
            )
    if path.startswith("/enqueue/") and method == "POST":
        try:
            return respond(start_response, "200 OK", _enqueue(path[len("/enqueue/") :], query.get("key", ""), query))
        except (taskqueue.TaskAlreadyExistsError, taskqueue.TombstonedTaskError) as e:
            return respond(start_response, "409 Conflict", {"error": type(e).__name__})
        except taskqueue.Error as e:
            return respond(start_response, "400 Bad Request", {"error": type(e).__name__})
    if path == "/put" and method == "POST":
        Note(id=query["key"], value=query["value"]).put()
        return respond(start_response, "200 OK", {})
    if path == "/get" and method == "GET":
        note = Note.get_by_id(query["key"])
        return respond(start_response, "200 OK", {"value": note.value if note else None})
    if path == "/info" and method == "GET":
        return respond(
            start_response,
            "200 OK",
            {
                "project": os.environ.get("GOOGLE_CLOUD_PROJECT"),
                "key_app": ndb.Key("Note", "x").app(),
                "spilled": TaskPayloadChunk.query().count(),
            },
        )
    return respond(start_response, "404 Not Found", {"error": f"no {method} {path}"})
