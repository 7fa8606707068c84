"""Where ``map_query`` meets Cloud Datastore (Cloud NDB): split points, pages, checkpoints, transactions.

The cloud backend's stand-in for ``taskutils.mapquery_store``, with the same functions, so
``taskutils.mapquery`` walks a ``google.cloud.ndb`` query as it walks a bundled ndb one.

- **Split points** as appengine-mapreduce took them, and as ``mapquery_store`` does:
  ``shards * 32`` keys of the kind ordered by ``__scatter__`` (Cloud Datastore samples it
  as App Engine's Datastore does), sorted in Datastore's key order, every ``32``-th kept.
  A range is JSON: its start and end keys (URL-safe, None for open), start included,
  end excluded.
- **Checkpoints** are ``_TaskutilsShard`` root entities (key name ``<group>.<shard>``)
  written through the store port (``taskutils.backends.store()``), so they join the
  transaction a walker commits in, and skip Cloud NDB's caches.
- **Transactions** are the store's: Cloud NDB cross-group transactions, in which the
  function (with ``transactional_pages``) runs and ``@ndb.transactional`` code joins, and
  in which a transactional task is staged in the outbox and sent after the commit.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.cloud import ndb

from ..mapquery_checkpoints import OVERSAMPLING, SHARD_KIND, Checkpoint, Item
from . import cloud_store
from .current import store

__all__ = [
    "Checkpoint",
    "Item",
    "check_query",
    "describe_key",
    "fetch",
    "get_checkpoint",
    "get_checkpoints",
    "get_fresh",
    "group_of",
    "now",
    "put_checkpoint",
    "split",
    "sweep",
    "transaction",
]

_INEQUALITIES = frozenset(("<", "<=", ">", ">=", "!=", "in", "not_in"))
_UNINDEXED = ("key_range", "cursor", "error")
_FIELDS = tuple(f.name for f in dataclasses.fields(Checkpoint) if f.name not in ("group_id", "shard"))
DELETE_BATCH = 500


# -- checkpoints, through the store port -------------------------------------------------------


def _shard_key(group_id: str, shard: int) -> Any:
    return store().key(SHARD_KIND, f"{group_id}.{shard}")


def _checkpoint(group_id: str, shard: int, entity: Any) -> Checkpoint:
    return Checkpoint(group_id, shard, **{name: entity.get(name) for name in _FIELDS})


def get_checkpoint(group_id: str, shard: int) -> Checkpoint | None:
    entity = store().get([_shard_key(group_id, shard)])[0]
    return None if entity is None else _checkpoint(group_id, shard, entity)


def get_checkpoints(group_id: str, shards: int) -> list[Checkpoint | None]:
    entities = store().get([_shard_key(group_id, n) for n in range(shards)])
    return [None if e is None else _checkpoint(group_id, n, e) for n, e in enumerate(entities)]


def put_checkpoint(checkpoint: Checkpoint) -> None:
    port = store()
    entity = port.entity(_shard_key(checkpoint.group_id, checkpoint.shard), _UNINDEXED)
    for name in _FIELDS:
        entity[name] = getattr(checkpoint, name)
    entity["updated"] = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # for sweep
    port.put([entity])


def sweep(before: datetime.datetime) -> int:
    """Delete checkpoints last written before then (naive UTC), in every namespace; return how many."""
    port = store()
    deleted = 0
    for namespace in port.namespaces():
        with port.in_namespace(namespace):
            keys = list(port.query(SHARD_KIND, where=("updated", "<", before), keys_only=True))
        for start in range(0, len(keys), DELETE_BATCH):
            port.delete(keys[start : start + DELETE_BATCH])
        deleted += len(keys)
    return deleted


def transaction(fn: Callable[[], Any]) -> Any:
    """Run fn in a cross-group Cloud NDB transaction (joined by ``@ndb.transactional`` code), retried on contention."""
    return store().transaction(fn, retries=3)


def now() -> float:
    return time.time()


# -- queries ----------------------------------------------------------------------------------


def check_query(query: Any) -> str:
    """The query's kind; TypeError when it is not a Cloud NDB query over one kind."""
    if not isinstance(query, ndb.Query):
        raise TypeError(
            "map_query() on the cloud backend takes a google.cloud.ndb query (Model.query(...) of a Cloud NDB "
            f"model), not {type(query).__module__}.{type(query).__name__}"
        )
    if not query.kind:
        raise TypeError("map_query() needs a query over one kind: a kindless query has no key ranges to split")
    if _has_or(query.filters):
        raise TypeError(
            f"map_query() cannot walk {query.filters!r}: Cloud NDB runs an OR or IN filter as several queries, "
            "which have no cursor to resume from; start one map per value, or map the kind and test in the function"
        )
    return str(query.kind)


def _has_or(node: Any) -> bool:
    if isinstance(node, ndb.DisjunctionNode):
        return True
    return isinstance(node, ndb.ConjunctionNode) and any(_has_or(child) for child in node)


def splittable(query: ndb.Query) -> bool:
    """True when key ranges can restrict the query: no sort order, ancestor, or inequality filter of its own."""
    if query.order_by or query.ancestor is not None:
        return False
    return not any(op in _INEQUALITIES for op in _operators(query.filters))


def _operators(node: Any) -> list[str]:
    if node is None:
        return []
    if isinstance(node, ndb.FilterNode):
        return [str(node._opsymbol)]  # Cloud NDB keeps the operator here; no public accessor
    if isinstance(node, ndb.ConjunctionNode):
        return [op for child in node for op in _operators(child)]
    if isinstance(node, ndb.DisjunctionNode):
        return ["in", *(op for child in node for op in _operators(child))]
    return ["?"]  # a post-filter or anything else: not cut on keys


def _order(key: ndb.Key) -> tuple[Any, ...]:
    """Datastore's order of keys in one namespace: path element by element, kind, then ids before names."""
    return tuple((kind, 0, ident, "") if isinstance(ident, int) else (kind, 1, 0, ident) for kind, ident in key.pairs())


def _key_json(key: ndb.Key | None) -> str | None:
    return None if key is None else key.urlsafe().decode("ascii")


def split(query: ndb.Query, shards: int) -> list[str | None]:
    """``shards`` key ranges (as JSON) that cover the query's kind; None for a shard with nothing to walk."""
    if shards == 1 or not splittable(query):
        return [""] + [None] * (shards - 1)
    with cloud_store.context():
        scatter = ndb.Query(kind=query.kind, namespace=query.namespace, project=query.project)
        scatter = scatter.order(ndb.GenericProperty("__scatter__"))
        keys = scatter.fetch(shards * OVERSAMPLING, keys_only=True, use_cache=False, use_global_cache=False)
        database = ndb.get_context().client.database
    keys = sorted(keys, key=_order)
    if not keys:
        return [""] + [None] * (shards - 1)
    if len(keys) >= shards:
        stride = len(keys) / float(shards)
        keys = [keys[int(round(stride * i))] for i in range(1, shards)]
    points: list[ndb.Key | None] = [None, *keys, None]
    ranges: list[str | None] = [
        json.dumps({"start": _key_json(points[n]), "end": _key_json(points[n + 1]), "database": database})
        for n in range(len(points) - 1)
    ]
    return ranges + [None] * (shards - len(ranges))


def _restricted(query: ndb.Query, key_range: str) -> ndb.Query:
    if not key_range:
        return query
    span = json.loads(key_range)
    if span["start"] is not None:
        start = ndb.Key(urlsafe=span["start"].encode("ascii"), database=span["database"])
        query = query.filter(ndb.FilterNode("__key__", ">=", start))
    if span["end"] is not None:
        end = ndb.Key(urlsafe=span["end"].encode("ascii"), database=span["database"])
        query = query.filter(ndb.FilterNode("__key__", "<", end))
    return query


def fetch(
    query: ndb.Query, key_range: str, cursor: bytes | None, limit: int, keys_only: bool, every_cursor: bool
) -> tuple[list[Item], bool]:
    """Up to ``limit`` results of the query within the range, from the cursor on; and whether more may follow.

    Each item carries the cursor just after it when ``every_cursor``; otherwise only the last one does.
    Entities are read past Cloud NDB's caches: a walker's context lives as long as its task.
    """
    start = ndb.Cursor(cursor=cursor) if cursor else None
    options = {"keys_only": keys_only, "use_cache": False, "use_global_cache": False}
    with cloud_store.context():
        restricted = _restricted(query, key_range)
        if not every_cursor:
            page, after, more = restricted.fetch_page(limit, start_cursor=start, **options)
            items = [Item(value, value if keys_only else value.key, None) for value in page]
            if items:
                items[-1].cursor = after.cursor
            return items, bool(more and items)
        # No batch_size: Cloud NDB sizes its batches itself (and refuses the option).
        it = restricted.iter(start_cursor=start, limit=limit + 1, produce_cursors=True, **options)
        items = []
        for value in it:
            if len(items) == limit:
                return items, True
            items.append(Item(value, value if keys_only else value.key, it.cursor_after().cursor))
        return items, False


def group_of(key: ndb.Key) -> ndb.Key:
    """The entity group a key belongs to (its root key)."""
    return ndb.Key(pairs=key.pairs()[:1], project=key.project(), namespace=key.namespace(), database=key.database())


def get_fresh(keys: Sequence[Any]) -> list[Any]:
    """The entities as they are now (None where deleted): inside a transaction, read in it."""
    with cloud_store.context():
        return list(ndb.get_multi(list(keys), use_cache=False, use_global_cache=False))


def describe_key(key: Any) -> str:
    return repr(key)
