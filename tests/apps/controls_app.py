"""An app for tests/test_controls_serve.py: controlled tasks that record when they ran.

``POST /call?fn=NAME&args=JSON`` calls the task function NAME with those positional
arguments (``&submit=1``: submits it, answering the handle's id); every run appends one
JSON line ``{"fn", "arg", "start", "end"}`` to the file ``$CONTROLS_LOG`` (a ``"start"``
line first, for runs that take a while). ``tick`` is a periodic job, every minute.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from taskutils import periodic, task

from wsgi_json import query as query_of
from wsgi_json import respond

_lock = threading.Lock()


def _write(line: dict[str, Any]) -> None:
    with _lock, open(os.environ["CONTROLS_LOG"], "a") as out:
        out.write(json.dumps(line) + "\n")


def _ran(fn: str, arg: Any, seconds: float) -> None:
    start = time.time()
    _write({"fn": fn, "arg": arg, "start": start, "event": "start"})
    time.sleep(seconds)
    _write({"fn": fn, "arg": arg, "start": start, "end": time.time()})


@task(unique=True)
def once(key: str) -> None:
    _ran("once", key, 0.5)


@task(exclusive=lambda key, i: key)
def guarded(key: str, i: int) -> None:
    _ran("guarded", [key, i], 0.05 if key == "a" else 0.3)


@task(concurrency=2)
def pair(i: int) -> None:
    _ran("pair", i, 0.3)


@task(rate="4/s")
def paced(i: int) -> None:
    _ran("paced", i, 0)


@task(debounce=1, key=lambda v: "feed")
def coalesced(v: int) -> None:
    _ran("coalesced", v, 1.5)


@task(exclusive=lambda i: "stuck", dispatch_deadline_usec=15_000_000)
def stuck(i: int) -> None:
    # With $CONTROLS_HOLD set, the first holds its key until serve is killed (its retry, after, does not).
    _ran("stuck", i, 600 if i == 0 and os.environ.get("CONTROLS_HOLD") else 0.2)


@periodic("every 1 minutes")
def tick() -> None:
    _ran("tick", None, 0)


FUNCTIONS = {"once": once, "guarded": guarded, "pair": pair, "paced": paced, "coalesced": coalesced, "stuck": stuck}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = query_of(environ)
    if environ.get("PATH_INFO") == "/call" and environ.get("REQUEST_METHOD") == "POST":
        function = FUNCTIONS[query["fn"]]
        args = json.loads(query.get("args", "[]"))
        if query.get("submit"):
            return respond(start_response, "200 OK", {"handle": function.submit(*args).id})
        added = function(*args)
        return respond(start_response, "200 OK", {"added": added is not None})
    return respond(start_response, "200 OK", {"ok": True})
