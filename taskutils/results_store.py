"""Where task handles live in Datastore: the entities, their signed records, and the fan-in tree.

See ``taskutils.results`` for the design. Kinds (all root entities, bundled ``ndb``,
never cached in memcache or the context cache):

- ``_TaskutilsHandle`` (key name: the handle id): one submitted run or one ``then``
  callback. ``status``, ``created`` and ``finished`` are indexed; ``state`` holds the
  signed record.
- ``_TaskutilsGroup`` (key name: the group id): a ``submit_map``. ``total``, ``leaves``,
  ``fan``, ``queue``; ``state`` holds which tree nodes completed, the failed child and
  the callbacks.
- ``_TaskutilsLeaf`` (key name ``<group>.<leaf>``): the records of the children
  ``i`` with ``i % leaves == leaf``, in slot ``i // leaves``; ``cancelled`` once the
  group is cancelled.
- ``_TaskutilsNode`` (key name ``<group>.<level>.<index>``): which nodes of the level
  below have completed.
- ``_TaskutilsResult`` / ``_TaskutilsResultChunk``: a result too big to keep inline,
  in chunks under one parent named after the handle id.

A record is a dict: ``s`` status, ``a`` attempts, ``p`` progress ``(done, total)``,
``r`` the pickled result (or ``R``: chunk count and SHA-256 when stored apart), ``e``
the pickled exception, ``l`` its one-line ``Type: message``, ``t`` its traceback text,
``cb`` callbacks ``[(handle id, pickled task function)]``, ``src`` the handle a
callback waits on. Records are pickled and framed by ``taskutils.codec``: signed
when keys are configured, and checked before anything is unpickled.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import uuid
from collections.abc import Iterable
from typing import Any

from google.appengine.ext import ndb

from . import codec
from .config import get_keyring
from .exc import ResultError

log = logging.getLogger("taskutils.results")

PENDING, RUNNING, RETRYING = "pending", "running", "retrying"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINAL = frozenset((SUCCEEDED, FAILED, CANCELLED))

HANDLE_KIND = "_TaskutilsHandle"
GROUP_KIND = "_TaskutilsGroup"
LEAF_KIND = "_TaskutilsLeaf"
NODE_KIND = "_TaskutilsNode"
RESULT_KIND = "_TaskutilsResult"
CHUNK_KIND = "_TaskutilsResultChunk"

SLOTS = 32  # children per leaf, at most
MIN_LEAVES = 16  # a small group is still spread over this many leaves
FAN = 16  # tree nodes above the leaves collect this many nodes each
INLINE_RESULT = 500_000  # bytes of pickled result kept in a handle's own entity
INLINE_CHILD_RESULT = 8_000  # ... in a leaf, which holds up to SLOTS of them
CHUNK_SIZE = 1_000_000
MAX_RESULT = 9 * 1024 * 1024  # written inside one transaction, which commits at most 10 MiB
MAX_CALLBACKS = 4  # transactional tasks per transaction: 5, one kept for the fan-in


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex


class _Model(ndb.Model):
    _use_cache = False
    _use_memcache = False


class HandleEntity(_Model):
    """One submitted run, or one callback."""

    status = ndb.StringProperty(default=PENDING)
    created = ndb.DateTimeProperty()
    finished = ndb.DateTimeProperty()
    state = ndb.BlobProperty()

    @classmethod
    def _get_kind(cls) -> str:
        return HANDLE_KIND


class GroupEntity(_Model):
    """One submit_map: its size, its tree's shape, and how far its fan-in got."""

    status = ndb.StringProperty(default=PENDING)
    created = ndb.DateTimeProperty()
    finished = ndb.DateTimeProperty()
    total = ndb.IntegerProperty(indexed=False)
    leaves = ndb.IntegerProperty(indexed=False)
    fan = ndb.IntegerProperty(indexed=False)
    queue = ndb.StringProperty(indexed=False)
    state = ndb.BlobProperty()

    @classmethod
    def _get_kind(cls) -> str:
        return GROUP_KIND


class LeafEntity(_Model):
    """The records of up to SLOTS children of a group."""

    state = ndb.BlobProperty()
    cancelled = ndb.BooleanProperty(default=False, indexed=False)

    @classmethod
    def _get_kind(cls) -> str:
        return LEAF_KIND


class NodeEntity(_Model):
    """Which nodes of the level below completed."""

    done = ndb.JsonProperty(default=[])

    @classmethod
    def _get_kind(cls) -> str:
        return NODE_KIND


class ResultChunk(_Model):
    """A piece of a result too big to keep inline."""

    data = ndb.BlobProperty()

    @classmethod
    def _get_kind(cls) -> str:
        return CHUNK_KIND


def handle_key(handle_id: str) -> ndb.Key:
    return ndb.Key(HANDLE_KIND, handle_id)


def group_key(group_id: str) -> ndb.Key:
    return ndb.Key(GROUP_KIND, group_id)


def leaf_key(group_id: str, leaf: int) -> ndb.Key:
    return ndb.Key(LEAF_KIND, f"{group_id}.{leaf}")


def node_key(group_id: str, level: int, index: int) -> ndb.Key:
    return ndb.Key(NODE_KIND, f"{group_id}.{level}.{index}")


# -- the shape of a group ---------------------------------------------------


def leaves_for(total: int) -> int:
    """How many leaves a group of total children spreads over."""
    return min(total, max(MIN_LEAVES, -(-total // SLOTS)))


def leaf_size(total: int, leaves: int, leaf: int) -> int:
    """How many children leaf holds: those i < total with i % leaves == leaf."""
    return (total - leaf + leaves - 1) // leaves


def levels(leaves: int, fan: int) -> list[int]:
    """Nodes per level: the leaves, then nodes of fan each, up to a level of at most fan nodes.

    The group entity collects the nodes of the last level.
    """
    sizes = [leaves]
    while sizes[-1] > fan:
        sizes.append(math.ceil(sizes[-1] / fan))
    return sizes


# -- records ----------------------------------------------------------------


def new_record() -> dict[str, Any]:
    return {"s": PENDING, "a": 0, "p": None, "cb": []}


def seal(where: str, obj: object) -> bytes:
    """Pickle obj and frame it for ``where`` (signed when keys are configured)."""
    return codec.frame("/_taskutils/" + where, codec.dumps(obj), 0, get_keyring())


def unseal(where: str, blob: bytes) -> Any:
    """The object seal() framed for ``where``; SignatureError when it was not this app's."""
    _, data = codec.unframe("/_taskutils/" + where, blob, get_keyring())
    return codec.loads(data)


def dump_result(task_name: str, value: object) -> bytes:
    """The pickled return value; ResultError when it cannot be pickled or kept."""
    try:
        data = codec.dumps(value)
    except Exception as e:
        raise ResultError(
            f"task {task_name} returned a {type(value).__name__} that cannot be pickled, so its handle "
            f"cannot keep it: {type(e).__name__}: {e}"
        ) from e
    if len(data) > MAX_RESULT:
        raise ResultError(
            f"task {task_name} returned {len(data)} bytes pickled; a handle keeps at most {MAX_RESULT}: "
            "store big results yourself and return a key"
        )
    return data


def keep_result(record: dict[str, Any], owner_id: str, data: bytes, inline: int) -> list[ndb.Model]:
    """Put the pickled result in record, or in chunks apart; return the chunk entities to write."""
    if len(data) <= inline:
        record["r"] = data
        return []
    parent = ndb.Key(RESULT_KIND, owner_id)
    pieces = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
    record["R"] = (len(pieces), hashlib.sha256(data).hexdigest())
    return [ResultChunk(key=ndb.Key(CHUNK_KIND, n + 1, parent=parent), data=p) for n, p in enumerate(pieces)]


def chunk_keys(owner_id: str, count: int) -> list[ndb.Key]:
    parent = ndb.Key(RESULT_KIND, owner_id)
    return [ndb.Key(CHUNK_KIND, n + 1, parent=parent) for n in range(count)]


def load_result(record: dict[str, Any], owner_id: str) -> Any:
    """The result a record holds (reading its chunks when kept apart)."""
    if "R" in record:
        count, digest = record["R"]
        chunks = ndb.get_multi(chunk_keys(owner_id, count), use_cache=False, use_memcache=False)
        if any(c is None for c in chunks):
            raise ResultError(f"the result of handle {owner_id} is gone from Datastore")
        data = b"".join(c.data for c in chunks)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ResultError(f"the result of handle {owner_id} does not match its digest")
        return codec.loads(data)
    return codec.loads(record["r"]) if record.get("r") is not None else None


def dump_exception(error: BaseException) -> bytes | None:
    """The pickled exception, or None when it does not survive a round trip."""
    try:
        data = codec.dumps(error)
        codec.loads(data)
    except Exception:
        return None
    return data


def record_error(record: dict[str, Any], error: BaseException, trace: str) -> None:
    line = f"{type(error).__name__}: {error}".replace("\r", "\\r").replace("\n", "\\n")
    record["e"] = dump_exception(error)
    record["l"] = line[:500]
    record["t"] = trace[-8000:]


# -- entities to records ------------------------------------------------------


def handle_record(entity: HandleEntity | None, handle_id: str) -> dict[str, Any] | None:
    if entity is None:
        return None
    record: dict[str, Any] = unseal(f"handle/{handle_id}", entity.state)
    return record


def put_handle(entity: HandleEntity | None, handle_id: str, record: dict[str, Any]) -> HandleEntity:
    """The handle entity holding record, made or updated (not yet written)."""
    if entity is None:
        entity = HandleEntity(key=handle_key(handle_id), created=now())
    entity.status = record["s"]
    if record["s"] in FINAL and entity.finished is None:
        entity.finished = now()
    entity.state = seal(f"handle/{handle_id}", record)
    return entity


def leaf_records(entity: LeafEntity | None, group_id: str, leaf: int) -> dict[int, dict[str, Any]]:
    if entity is None or entity.state is None:
        return {}
    records: dict[int, dict[str, Any]] = unseal(f"leaf/{group_id}.{leaf}", entity.state)
    return records


def put_leaf(entity: LeafEntity | None, group_id: str, leaf: int, records: dict[int, dict[str, Any]]) -> LeafEntity:
    if entity is None:
        entity = LeafEntity(key=leaf_key(group_id, leaf))
    entity.state = seal(f"leaf/{group_id}.{leaf}", records)
    return entity


def group_state(entity: GroupEntity) -> dict[str, Any]:
    state: dict[str, Any] = unseal(f"group/{entity.key.id()}", entity.state)
    return state


def put_group_state(entity: GroupEntity, state: dict[str, Any]) -> GroupEntity:
    if entity.status in FINAL and entity.finished is None:
        entity.finished = now()
    entity.state = seal(f"group/{entity.key.id()}", state)
    return entity


# -- sweep --------------------------------------------------------------------


def sweep(older_than: datetime.timedelta | datetime.datetime) -> int:
    """Delete finished handles and groups that finished before older_than; return how many entities went."""
    cutoff = older_than if isinstance(older_than, datetime.datetime) else now() - older_than
    if cutoff.tzinfo is not None:
        cutoff = cutoff.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    deleted = 0
    for key in HandleEntity.query(HandleEntity.finished < cutoff).iter(keys_only=True, batch_size=500):
        entity = key.get()
        doomed = [key]
        if entity is not None and entity.state is not None:
            record = handle_record(entity, key.id()) or {}
            if "R" in record:
                doomed += chunk_keys(key.id(), record["R"][0])
        ndb.delete_multi(doomed)
        deleted += len(doomed)
    for group in GroupEntity.query(GroupEntity.finished < cutoff).iter(batch_size=50):
        deleted += _delete_group(group)
    return deleted


def _delete_group(group: GroupEntity) -> int:
    gid = group.key.id()
    keys = [leaf_key(gid, n) for n in range(group.leaves or 0)]
    doomed: list[ndb.Key] = [group.key]
    for start in range(0, len(keys), 500):
        part = keys[start : start + 500]
        for leaf_no, leaf in zip(range(start, start + len(part)), ndb.get_multi(part), strict=True):
            if leaf is None:
                continue
            doomed.append(leaf.key)
            for slot, record in leaf_records(leaf, gid, leaf_no).items():
                if "R" in record:
                    doomed += chunk_keys(f"{gid}.{slot * group.leaves + leaf_no}", record["R"][0])
    for level, size in enumerate(levels(group.leaves or 0, group.fan or FAN)[1:], start=1):
        doomed += [node_key(gid, level, n) for n in range(size)]
    for start in range(0, len(doomed), 500):
        ndb.delete_multi(doomed[start : start + 500])
    return len(doomed)


def chunked(keys: Iterable[ndb.Key], size: int = 500) -> Iterable[list[ndb.Key]]:
    batch: list[ndb.Key] = []
    for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
