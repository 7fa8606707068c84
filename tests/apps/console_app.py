"""An app for tests/test_console*.py, served by ``python -m taskutils serve console_app:app``.

``POST /enqueue/<kind>?key=K[&queue=Q][&countdown=S]`` adds one task (``record`` succeeds,
``fail`` always raises ``RuntimeError: boom K``, ``nap`` sleeps 5 s then succeeds; ``canaries``
holds arguments that create the files ``&loaded=`` and ``&shown=`` name if they are ever
unpickled or shown) and answers ``{"name": ...}``;
``POST /group?key=K&n=N`` submits a group of N children that record K-0 ... K-(N-1)
(children whose index is listed in ``&fail=1,2`` fail for good), answering ``{"id": ...}``;
``POST /handle?key=K`` submits one child (a key ending in ``!`` fails for good) with a ``then``
callback, answering ``{"id": ..., "then": ...}``;
``GET /ran`` answers how many times each key ran.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from taskutils import PermanentTaskFailure, task

from wsgi_json import query as query_of
from wsgi_json import respond

NAP = 5.0  # seconds a nap task runs: long enough to look at it running
_lock = threading.Lock()
_ran: Counter[str] = Counter()


def _count(key: str) -> None:
    with _lock:
        _ran[key] += 1


@task
def record(key: str) -> None:
    _count(key)


@task
def fail(key: str) -> None:
    _count(key)
    raise RuntimeError(f"boom {key}")


@task
def child(item: str) -> str:
    _count(item.rstrip("!"))
    if item.endswith("!"):
        raise PermanentTaskFailure(f"child {item} fails")
    return item.upper()


@task
def nap(key: str) -> None:
    time.sleep(NAP)
    _count(key)


@task
def hold(key: str, *things: Any) -> None:
    _count(key)


class OpensWhenLoaded:
    """An argument whose unpickling creates a file: what a hostile payload would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


class OpensWhenShown:
    """An argument whose repr creates a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        open(self.path, "w").close()
        return "OpensWhenShown()"


@task
def note(value: str) -> None:
    _count(f"noted-{value}")


def _handle(query: dict[str, str]) -> dict[str, Any]:
    handle = child.submit(query["key"])
    return {"id": handle.id, "then": handle.then(note).id}


def _enqueue(kind: str, query: dict[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "queue" in query:
        options["queue"] = query["queue"]
    if "countdown" in query:
        options["countdown"] = float(query["countdown"])
    if kind == "canaries":  # arguments that create files if the console ever loads or shows them
        loaded, shown = OpensWhenLoaded(query["loaded"]), OpensWhenShown(query["shown"])
        added = hold.options(**options)(query["key"], loaded, shown, 42, "plain")
        return {"name": added.name}
    func = {"record": record, "fail": fail, "nap": nap}[kind]
    added = func.options(**options)(query["key"])
    return {"name": added.name}


def _group(query: dict[str, str]) -> dict[str, Any]:
    failing = query.get("fail", "").split(",")
    items = [f"{query['key']}-{i}" + ("!" if str(i) in failing else "") for i in range(int(query.get("n", "3")))]
    options: dict[str, Any] = {"countdown": float(query["countdown"])} if "countdown" in query else {}
    handle = child.options(**options).submit_map(items)  # type: ignore[attr-defined]
    return {"id": handle.id}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The app's own endpoints; ``serve`` mounts it beside ``taskutils.app`` and the console."""
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD")
    query = query_of(environ)
    if path == "/ran" and method == "GET":
        with _lock:
            return respond(start_response, "200 OK", dict(_ran))
    if path.startswith("/enqueue/") and method == "POST":
        return respond(start_response, "200 OK", _enqueue(path[len("/enqueue/") :], query))
    if path == "/handle" and method == "POST":
        return respond(start_response, "200 OK", _handle(query))
    if path == "/group" and method == "POST":
        return respond(start_response, "200 OK", _group(query))
    return respond(start_response, "404 Not Found", {"error": f"no {method} {path}"})
