"""An app for tests/test_mapquery_serve.py, served by ``python -m taskutils serve mapquery_app:app``.

``POST /seed?n=N`` writes N ``MqAccount`` entities; ``POST /start?shards=S&page_size=P&budget=B``
starts ``map_query(touch, MqAccount.query(), transactional_pages=True)`` and answers its id;
``GET /status?id=G`` answers its status, entities processed and progress; ``GET /touched``
answers how many accounts were touched how many times. The ``then`` callback appends one
line to the file named by ``MAPQUERY_LOG``, outside the server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from google.appengine.ext import ndb

import taskutils
from taskutils.mapquery import MapQueryHandle

from wsgi_json import query as query_of
from wsgi_json import respond

LOG = os.environ.get("MAPQUERY_LOG", os.devnull)


class MqAccount(ndb.Model):
    touched = ndb.IntegerProperty(default=0)


def touch(account: MqAccount) -> None:
    """Reads the account again, so a second run on it (after a crash) would count 2."""
    fresh = account.key.get(use_cache=False, use_memcache=False)
    fresh.touched += 1
    fresh.put()


def report(counts: list[int]) -> None:
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(counts) + "\n").encode())
    finally:
        os.close(fd)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD")
    query = query_of(environ)
    if path == "/seed" and method == "POST":
        n = int(query["n"])
        for start in range(0, n, 500):
            ndb.put_multi([MqAccount(id=i + 1) for i in range(start, min(n, start + 500))])
        return respond(start_response, "200 OK", n)
    if path == "/start" and method == "POST":
        g = taskutils.map_query(
            touch,
            MqAccount.query(),
            shards=int(query.get("shards", "4")),
            page_size=int(query.get("page_size", "20")),
            transactional_pages=True,
            time_budget=float(query.get("budget", "120")),
        )
        g.then(report)
        return respond(start_response, "200 OK", {"id": g.id})
    if path == "/status" and method == "GET":
        handle = MapQueryHandle.get(query["id"])
        assert handle is not None
        body = {"status": handle.status, "processed": handle.processed, "progress": handle.progress}
        return respond(start_response, "200 OK", body)
    if path == "/touched" and method == "GET":
        seen: dict[str, int] = {}
        for account in MqAccount.query().iter(batch_size=500):
            seen[str(account.touched)] = seen.get(str(account.touched), 0) + 1
        return respond(start_response, "200 OK", seen)
    return respond(start_response, "404 Not Found", {"error": f"no {method} {path}"})
