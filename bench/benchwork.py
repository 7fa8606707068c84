"""The work both sides of the benchmark enqueue and run: one module-level function."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from taskutils import task


def work(account_id: int, day: str, *, limit: float = 1.0) -> int:
    """A small, importable task body: what deferred can pickle by reference."""
    return account_id + len(day) + int(limit)


def item(n: int) -> int:
    """The body .map fans out: one item, one task."""
    return n + 1


work_task = task(work)
item_task = task(item)


class Countdown:
    """Counts tasks run on the server's threads; ``done`` is set when the expected number ran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._left = 0
        self.done = threading.Event()

    def expect(self, count: int) -> None:
        with self._lock:
            self._left = count
            self.done.clear()

    def tick(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left == 0:
                self.done.set()


countdown = Countdown()


@task
def served(n: int) -> None:
    """The body run through the local server: count one more task done."""
    countdown.tick()


def bare_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The smallest WSGI app that reads a POSTed body and answers 200, for the server baseline."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"OK\n"]


# -- map_query (bench/bench_mapquery.py) ---------------------------------------------------

from google.appengine.ext import ndb  # noqa: E402


class Row(ndb.Model):
    value = ndb.IntegerProperty()


class BenchDone(ndb.Model):
    done = ndb.BooleanProperty(default=False)


def visit(row: Any) -> int:
    """The function both sides run on each entity: reads it, writes nothing."""
    return int(row.value or 0) + 1


def visit_slowly(row: Any) -> int:
    """As a real backfill: 2 ms of waiting (an RPC) per entity."""
    import time

    time.sleep(0.002)
    return visit(row)


def _mark_done(_: Any = None) -> None:
    BenchDone(id="run", done=True).put()


@task
def slow_cursor_loop(page_size: int) -> None:
    """The hand-written way under serve: one task, fetch_page with a cursor, then mark the run done."""
    cursor, more = None, True
    while more:
        page, cursor, more = Row.query().fetch_page(page_size, start_cursor=cursor)
        for row in page:
            visit_slowly(row)
    _mark_done()


def mapquery_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """``serve benchwork:mapquery_app``: /seed?n=N, /loop?page_size=P, /map?shards=S&page_size=P, /done."""
    import json
    from urllib.parse import parse_qs

    import taskutils

    path = environ.get("PATH_INFO", "")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    body: Any = {}
    if path == "/seed":
        n = int(query["n"])
        for start in range(0, n, 500):
            ndb.put_multi([Row(id=i + 1, value=i) for i in range(start, min(n, start + 500))])
    elif path == "/loop":
        BenchDone(id="run", done=False).put()
        slow_cursor_loop(int(query["page_size"]))
    elif path == "/map":
        BenchDone(id="run", done=False).put()
        g = taskutils.map_query(
            visit_slowly, Row.query(), shards=int(query["shards"]), page_size=int(query["page_size"])
        )
        g.then(_mark_done)
    elif path == "/done":
        found = BenchDone.get_by_id("run", use_cache=False, use_memcache=False)
        body = {"done": bool(found and found.done)}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
