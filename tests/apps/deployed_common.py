"""What the three deployed-style apps share: a Datastore-touching task, and endpoints to drive it.

``POST /start?key=K&n=N`` enqueues ``N`` tasks with ``.map()``; each writes one
``Item`` entity (a transaction that reads, then puts) and counts its run.
``GET /stats?key=K`` answers how many times each item ran and how many ``Item``
entities exist for K.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from google.appengine.ext import ndb

from taskutils import task

_lock = threading.Lock()
_runs: Counter[str] = Counter()


class Item(ndb.Model):
    key_prefix = ndb.StringProperty()
    writes = ndb.IntegerProperty(default=0)


@task
def store(item_id: str) -> None:
    """Count the run, then write the item in a transaction: Datastore on whatever thread runs it."""
    with _lock:
        _runs[item_id] += 1

    @ndb.transactional()
    def write() -> None:
        item = Item.get_by_id(item_id) or Item(id=item_id, key_prefix=item_id.rsplit("-", 1)[0])
        item.writes += 1
        item.put()

    write()


def start(key: str, n: int) -> dict[str, Any]:
    added = store.map(f"{key}-{i}" for i in range(n))
    return {"added": len(added)}


def stats(key: str) -> dict[str, Any]:
    with _lock:
        runs = {k: v for k, v in _runs.items() if k.rsplit("-", 1)[0] == key}
    entities = Item.query(Item.key_prefix == key).fetch()
    return {"runs": runs, "entities": len(entities), "writes": sum(e.writes for e in entities)}
