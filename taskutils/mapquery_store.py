"""Where ``map_query`` meets Datastore (bundled ndb): split points, pages, checkpoints, transactions.

Everything ``taskutils.mapquery`` asks of Datastore goes through this module, so that
another backend (Cloud NDB) can stand in for it with the same functions. Ranges and
cursors leave it as plain strings and bytes.

- **Split points** are taken as appengine-mapreduce took them: ``shards * 32`` keys of the
  kind ordered by ``__scatter__`` (a pseudo-random property Datastore sets on a sample of
  entities: about 1 in 512 in production, 1 in 2 in the SDK's stub), sorted, and every
  ``32``-th kept. Each shard walks one ``google.appengine.ext.key_range.KeyRange``.
- **Checkpoints** are ``_TaskutilsShard`` root entities, key name ``<group>.<shard>``,
  outside ndb's caches, so a transaction always reads what was committed.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.appengine.api import datastore, datastore_types
from google.appengine.datastore import datastore_query
from google.appengine.ext import ndb
from google.appengine.ext.key_range import KeyRange
from google.appengine.ext.ndb import metadata

from .mapquery_checkpoints import OVERSAMPLING, SHARD_KIND, Checkpoint, Item

_INEQUALITIES = frozenset(("<", "<=", ">", ">=", "!="))


class _Shard(ndb.Model):
    """One shard's checkpoint: its key range, where it got to, and who walks it."""

    _use_cache = False
    _use_memcache = False

    key_range = ndb.TextProperty()  # KeyRange.to_json(), or "" for the whole query
    cursor = ndb.BlobProperty()  # after the last entity done; None before the first
    count = ndb.IntegerProperty(default=0)  # entities done (committed with the cursor)
    generation = ndb.IntegerProperty(default=0)  # bumped at each hand-over to a new task
    owner = ndb.StringProperty()  # the delivery walking it now, None when nobody
    lease = ndb.FloatProperty(default=0.0)  # until when (time.time()) the owner holds it
    status = ndb.StringProperty(default="walking")  # walking | done | failed | cancelled
    failures = ndb.IntegerProperty(default=0)  # failed attempts at the current cursor
    error = ndb.TextProperty()
    updated = ndb.DateTimeProperty(auto_now=True)  # for sweep: a walking shard writes it at every page

    @classmethod
    def _get_kind(cls) -> str:
        return SHARD_KIND


def _shard_key(group_id: str, shard: int) -> ndb.Key:
    return ndb.Key(SHARD_KIND, f"{group_id}.{shard}")


def get_checkpoint(group_id: str, shard: int) -> Checkpoint | None:
    entity = _shard_key(group_id, shard).get()
    return None if entity is None else _checkpoint(group_id, shard, entity)


def get_checkpoints(group_id: str, shards: int) -> list[Checkpoint | None]:
    entities = ndb.get_multi([_shard_key(group_id, n) for n in range(shards)])
    return [None if e is None else _checkpoint(group_id, n, e) for n, e in enumerate(entities)]


def put_checkpoint(checkpoint: Checkpoint) -> None:
    fields = {f.name: getattr(checkpoint, f.name) for f in dataclasses.fields(Checkpoint)}
    del fields["group_id"], fields["shard"]
    _Shard(key=_shard_key(checkpoint.group_id, checkpoint.shard), **fields).put()


def _checkpoint(group_id: str, shard: int, entity: _Shard) -> Checkpoint:
    fields = {
        f.name: getattr(entity, f.name) for f in dataclasses.fields(Checkpoint) if f.name not in ("group_id", "shard")
    }
    return Checkpoint(group_id, shard, **fields)


def sweep(before: datetime.datetime) -> int:
    """Delete checkpoints last written before then (naive UTC), in every namespace; return how many.

    A shard writes its checkpoint at every page, so one untouched since before the sweep's
    cutoff belongs to a map that ended, or whose tasks can no longer run.
    """
    deleted = 0
    for namespace in metadata.get_namespaces():
        query = _Shard.query(_Shard.updated < before, namespace=namespace)
        keys = query.fetch(keys_only=True, batch_size=500)
        for start in range(0, len(keys), 500):
            ndb.delete_multi(keys[start : start + 500])
        deleted += len(keys)
    return deleted


def transaction(fn: Callable[[], Any]) -> Any:
    """Run fn in a cross-group ndb transaction (joined by ``@ndb.transactional`` code), retried on contention."""
    return ndb.transaction(fn, xg=True, retries=3)


def now() -> float:
    return time.time()


# -- queries --------------------------------------------------------------------------------


def check_query(query: Any) -> str:
    """The query's kind; TypeError when it is not an ndb query over one kind."""
    if not isinstance(query, ndb.Query):
        raise TypeError(f"map_query() takes an ndb query (Model.query(...)), not {type(query).__name__}")
    if not query.kind:
        raise TypeError("map_query() needs a query over one kind: a kindless query has no key ranges to split")
    return str(query.kind)


def splittable(query: ndb.Query) -> bool:
    """True when key ranges can restrict the query: no sort order and no inequality filter of its own.

    Datastore allows inequality filters on one property only, so a query that has one
    cannot also be cut on ``__key__``; it runs as one shard, paged by cursor.
    """
    if query.orders is not None or query.ancestor is not None:
        return False
    return not any(op in _INEQUALITIES or op == "in" for op in _operators(query.filters))


def _operators(node: Any) -> list[str]:
    if node is None:
        return []
    if isinstance(node, ndb.FilterNode):
        return [node._FilterNode__opsymbol]
    if isinstance(node, (ndb.ConjunctionNode, ndb.DisjunctionNode)):
        ops = [op for child in node for op in _operators(child)]
        return ops + (["in"] if isinstance(node, ndb.DisjunctionNode) else [])
    return ["?"]  # a post-filter or anything else: not cut on keys


def split(query: ndb.Query, shards: int) -> list[str | None]:
    """``shards`` key ranges (as JSON) that cover the query's kind; None for a shard with nothing to walk."""
    namespace = query.namespace or None
    app = query.app or None
    if shards == 1 or not splittable(query):
        return [""] + [None] * (shards - 1)
    scatter = datastore.Query(kind=query.kind, keys_only=True, namespace=namespace, _app=app)
    scatter.Order(datastore_types.SCATTER_SPECIAL_PROPERTY)
    keys = sorted(scatter.Get(shards * OVERSAMPLING))
    if not keys:
        return [""] + [None] * (shards - 1)
    if len(keys) >= shards:
        stride = len(keys) / float(shards)
        keys = [keys[int(round(stride * i))] for i in range(1, shards)]
    points: list[Any] = [None, *keys, None]
    ranges: list[str | None] = [
        KeyRange(
            key_start=points[n],
            key_end=points[n + 1],
            direction=KeyRange.ASC,
            include_start=points[n] is not None,
            include_end=False,
            namespace=namespace,
            _app=app,
        ).to_json()
        for n in range(len(points) - 1)
    ]
    return ranges + [None] * (shards - len(ranges))


def _restricted(query: ndb.Query, key_range: str) -> ndb.Query:
    if not key_range:
        return query
    span = KeyRange.from_json(key_range)
    if span.key_start is not None:
        op = ">=" if span.include_start else ">"
        query = query.filter(ndb.FilterNode("__key__", op, ndb.Key.from_old_key(span.key_start)))
    if span.key_end is not None:
        op = "<=" if span.include_end else "<"
        query = query.filter(ndb.FilterNode("__key__", op, ndb.Key.from_old_key(span.key_end)))
    return query


def fetch(
    query: ndb.Query, key_range: str, cursor: bytes | None, limit: int, keys_only: bool, every_cursor: bool
) -> tuple[list[Item], bool]:
    """Up to ``limit`` results of the query within the range, from the cursor on; and whether more may follow.

    Each item carries the cursor just after it when ``every_cursor``; otherwise only the last one does.
    """
    start = datastore_query.Cursor.from_bytes(cursor) if cursor else None
    if not every_cursor:
        page, after, more = _restricted(query, key_range).fetch_page(limit, start_cursor=start, keys_only=keys_only)
        items = [Item(value, value if keys_only else value.key, None) for value in page]
        if items:
            items[-1].cursor = after.to_bytes()
        return items, bool(more and items)
    it = _restricted(query, key_range).iter(
        start_cursor=start, limit=limit + 1, batch_size=limit + 1, produce_cursors=True, keys_only=keys_only
    )
    items = []
    for value in it:
        if len(items) == limit:
            return items, True
        items.append(Item(value, value if keys_only else value.key, it.cursor_after().to_bytes()))
    return items, False


def group_of(key: Any) -> Any:
    """The entity group a key belongs to (its root key)."""
    return ndb.Key(pairs=key.pairs()[:1], app=key.app(), namespace=key.namespace())


def get_fresh(keys: Sequence[Any]) -> list[Any]:
    """The entities as they are now (None where deleted): inside a transaction, read in it."""
    return list(ndb.get_multi(list(keys), use_cache=False, use_memcache=False))


def describe_key(key: Any) -> str:
    return repr(key)
