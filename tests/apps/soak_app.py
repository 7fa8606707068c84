"""The soak test's app: enqueue tasks in batches over HTTP, count what ran.

``POST /enqueue?start=S&count=N`` enqueues ``work(i)`` for i in [S, S+N) with
``.map()`` (100 tasks per queue RPC) on the "soak" queue. Every fifth task fails
its first attempt: half of those raise RetryTaskException (408), half raise
RuntimeError (500). ``GET /stats`` answers how many attempts ran, how many
succeeded, the items that did not succeed exactly once, and the queue's depth.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from google.appengine.api import taskqueue

import taskutils
from taskutils import task

from wsgi_json import query as query_of
from wsgi_json import respond

_lock = threading.Lock()
_attempts: Counter[int] = Counter()
_successes: Counter[int] = Counter()


def fails_first(i: int) -> bool:
    return i % 5 == 0


@task(queue="soak")
def work(i: int) -> None:
    with _lock:
        _attempts[i] += 1
        first = _attempts[i] == 1
    if first and fails_first(i):
        if i % 10 == 0:
            raise taskutils.RetryTaskException("first attempt")
        raise RuntimeError(f"first attempt of {i} fails on purpose")
    with _lock:
        _successes[i] += 1


def _stats(expected: int) -> dict[str, Any]:
    with _lock:
        attempts = sum(_attempts.values())
        succeeded = len(_successes)
        wrong = {i: n for i, n in _successes.items() if n != 1}
        missing = [i for i in range(expected) if i not in _successes][:20]
        failures = sum(n - 1 for n in _attempts.values())
    stats = taskqueue.Queue("soak").fetch_statistics()
    return {
        "attempts": attempts,
        "retries": failures,
        "succeeded": succeeded,
        "not_exactly_once": wrong,
        "missing_sample": missing,
        "queued": stats.tasks,
    }


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    query = query_of(environ)
    if path == "/enqueue" and environ["REQUEST_METHOD"] == "POST":
        start, count = int(query["start"]), int(query["count"])
        added = work.map(range(start, start + count))
        return respond(start_response, "200 OK", {"added": len(added)})
    if path == "/stats":
        return respond(start_response, "200 OK", _stats(int(query.get("expected", "0"))))
    return respond(start_response, "404 Not Found", {"error": path})
