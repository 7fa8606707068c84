"""The memory test's app: enqueue tasks in batches over HTTP, count what ran, and nothing more.

``POST /enqueue?count=N`` enqueues N tasks with ``.map()``; ``GET /stats`` answers
how many ran and how many are still queued. The app keeps counts only, so any
growth of the process is the server's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from google.appengine.api import taskqueue

from taskutils import task

from wsgi_json import query, respond

_lock = threading.Lock()
_ran = 0


@task
def work(i: int) -> None:
    global _ran
    with _lock:
        _ran += 1


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/enqueue" and environ["REQUEST_METHOD"] == "POST":
        added = work.map(range(int(query(environ)["count"])))
        return respond(start_response, "200 OK", {"added": len(added)})
    if path == "/stats":
        with _lock:
            ran = _ran
        return respond(start_response, "200 OK", {"ran": ran, "queued": taskqueue.Queue().fetch_statistics().tasks})
    return respond(start_response, "404 Not Found", {"error": path})
