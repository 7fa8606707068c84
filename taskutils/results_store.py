"""Where task handles live in Datastore: the entities, their signed records, and a group's shape.

See ``taskutils.results`` for the design. Everything goes through the store of the
backend in use (``taskutils.backends.store``): on App Engine the low-level
``google.appengine.api.datastore`` API (ndb's tasklets cost several times more per
transaction), on the cloud backend Cloud Datastore. Kinds, all root entities:

- ``_TaskutilsHandle`` (key name: the handle id): one submitted run or one ``then``
  callback. ``status``, ``created`` and ``finished`` are indexed; ``state`` holds the record.
- ``_TaskutilsGroup`` (key name: the group id): a ``submit_map``. ``status``, ``created``,
  ``finished``; ``total``, ``leaves``, ``fan``; ``state`` holds the nodes of the tree's top
  level that completed, the failed child and the callbacks.
- ``_TaskutilsLeaf`` (key name ``<group>.<leaf>``): the records of the children ``i`` with
  ``i % leaves == leaf``, in slot ``i // leaves``; ``cancelled`` once the group is cancelled.
- ``_TaskutilsNode`` (key name ``<group>.<level>.<index>``): which nodes of the level below
  completed.
- ``_TaskutilsResult`` / ``_TaskutilsResultChunk``: a result too big to keep inline, in
  chunks under one parent named after the handle id.
- ``_TaskutilsSwept`` (key name ``last``), one per namespace: the cutoff of the last sweep.

A record is a dict: ``s`` status, ``a`` attempts, ``p`` progress ``(done, total)``, ``r`` the
pickled result (or ``R``: chunk count and SHA-256 when kept apart), ``e`` the pickled
exception, ``l`` its line ``Type: message``, ``t`` its traceback, ``cb`` callbacks, ``src``
the handle or group a callback waits on; ``u`` the task's URL, ``st`` and ``ft`` when its last
attempt started and ended (seconds since the epoch), for the console. Records are pickled and framed by
``taskutils.codec``: signed when keys are configured, checked before anything is unpickled.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

from . import codec, results_ids
from .backends.current import store as current_store
from .config import get_keyring
from .exc import ResultError

PENDING, RUNNING, RETRYING = "pending", "running", "retrying"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINAL = frozenset((SUCCEEDED, FAILED, CANCELLED))

HANDLE_KIND = "_TaskutilsHandle"
GROUP_KIND = "_TaskutilsGroup"
LEAF_KIND = "_TaskutilsLeaf"
NODE_KIND = "_TaskutilsNode"
RESULT_KIND = "_TaskutilsResult"
CHUNK_KIND = "_TaskutilsResultChunk"
SWEPT_KIND = "_TaskutilsSwept"

SLOTS = 32  # children per leaf, at most
MIN_LEAVES = 8  # a small group is still spread over this many leaves
FAN = 16  # a node above the leaves collects this many nodes of the level below
INLINE_RESULT = 500_000  # bytes of pickled result kept in a handle's own entity
INLINE_CHILD_RESULT = 8_000  # ... in a leaf, which holds up to SLOTS of them
CHUNK_SIZE = 1_000_000
MAX_RESULT = 9 * 1024 * 1024  # written in one transaction, which commits at most 10 MiB
MAX_CALLBACKS = 4  # transactional tasks per transaction: 5, one kept for the fan-in
MAX_CALLBACK = 4_000  # bytes of one pickled callback kept in a record
MAX_ERROR = 8_000  # bytes of a pickled exception kept in a record; a bigger one is kept as its line only
MAX_TRACE = 8_000  # bytes of traceback kept (its end)
MAX_LINE = 500  # bytes of ``Type: message`` kept
LEAF_BUDGET = 900_000  # bytes of a leaf's sealed records, under Datastore's 1 MiB entity limit

Entity = Any  # a dict with key(): datastore.Entity on App Engine, CloudEntity on the cloud backend
Key = Any


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    """A new id for a handle recorded at once (a ``then`` callback's)."""
    return results_ids.new_handle_id(time.time())


def is_group(source_id: str) -> bool:
    """True when a callback's source is a group (else a handle)."""
    found = results_ids.parse(source_id)
    if found.group is not None:
        return False
    if not found.legacy:
        return source_id.startswith("g")
    return get(handle_key(source_id)) is None


def transaction(fn: Any, *args: Any) -> Any:
    """Run fn(*args) in a cross-group transaction, retried on contention."""
    return current_store().transaction(fn, *args, retries=5)


def get(key: Key) -> Entity | None:
    return current_store().get([key])[0]


def get_many(keys: list[Key]) -> list[Entity | None]:
    return current_store().get(keys)


def put(entities: Entity | list[Entity], *, transactional: bool | None = None) -> None:
    current_store().put(entities if isinstance(entities, list) else [entities], transactional=transactional)


def delete(keys: list[Key]) -> None:
    current_store().delete(keys)


def handle_key(handle_id: str) -> Key:
    return current_store().key(HANDLE_KIND, handle_id)


def group_key(group_id: str) -> Key:
    return current_store().key(GROUP_KIND, group_id)


def leaf_key(group_id: str, leaf: int) -> Key:
    return current_store().key(LEAF_KIND, f"{group_id}.{leaf}")


def node_key(group_id: str, level: int, index: int) -> Key:
    return current_store().key(NODE_KIND, f"{group_id}.{level}.{index}")


def new_entity(key: Key, unindexed: tuple[str, ...]) -> Entity:
    return current_store().entity(key, unindexed)


def recent(kind: str, limit: int, *, keys_only: bool = False) -> list[Any]:
    """The entities (or keys) of kind created last, newest first."""
    return list(current_store().query(kind, newest_first="created", keys_only=keys_only, limit=limit))


def chunk_keys(owner_id: str, count: int) -> list[Key]:
    key = current_store().key
    parent = key(RESULT_KIND, owner_id)
    return [key(CHUNK_KIND, n + 1, parent=parent) for n in range(count)]


# -- the shape of a group ---------------------------------------------------------


def leaves_for(total: int) -> int:
    """How many leaves a group of total children spreads over."""
    return min(total, max(MIN_LEAVES, -(-total // SLOTS)))


def leaf_size(total: int, leaves: int, leaf: int) -> int:
    """How many children leaf holds: those i < total with i % leaves == leaf."""
    return (total - leaf + leaves - 1) // leaves


def levels(leaves: int, fan: int) -> list[int]:
    """Nodes per level: the leaves, then nodes of fan each, up to a level of at most fan (the group's)."""
    sizes = [leaves]
    while sizes[-1] > fan:
        sizes.append(math.ceil(sizes[-1] / fan))
    return sizes


# -- records ----------------------------------------------------------------------


def new_record() -> dict[str, Any]:
    return {"s": PENDING, "a": 0, "p": None, "cb": []}


def seal(where: str, obj: object) -> Any:
    """Pickle obj and frame it for ``where`` (signed when keys are configured), as a blob value."""
    return current_store().blob(codec.frame("/_taskutils/" + where, codec.dumps(obj), 0, get_keyring()))


def unseal(where: str, blob: bytes) -> Any:
    """The object seal() framed for ``where``; SignatureError when it is not this app's."""
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
            "store big results yourself and return their key"
        )
    return data


def keep_result(record: dict[str, Any], owner_id: str, data: bytes, inline: int) -> list[Entity]:
    """Put the pickled result in record, or in chunks apart; return the chunk entities to write."""
    if len(data) <= inline:
        record["r"] = data
        return []
    pieces = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
    record["R"] = (len(pieces), hashlib.sha256(data).hexdigest())
    chunks = []
    store = current_store()
    for key, piece in zip(chunk_keys(owner_id, len(pieces)), pieces, strict=True):
        chunk = store.entity(key, ("data",))
        chunk["data"] = store.blob(piece)
        chunks.append(chunk)
    return chunks


def load_result(record: dict[str, Any], owner_id: str) -> Any:
    """The result a record holds (reading its chunks when kept apart)."""
    if "R" in record:
        count, digest = record["R"]
        chunks = get_many(chunk_keys(owner_id, count))
        if any(c is None for c in chunks):
            raise ResultError(f"the result of task handle {owner_id} is gone from Datastore")
        data = b"".join(c["data"] for c in chunks if c is not None)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ResultError(f"the result of task handle {owner_id} does not match its digest")
        return _loads_result(data, owner_id)
    return _loads_result(record["r"], owner_id) if record.get("r") is not None else None


def _loads_result(data: bytes, owner_id: str) -> Any:
    """Unpickle a kept result; ResultError (a permanent failure) naming the handle when it cannot be."""
    try:
        return codec.loads(data)
    except Exception as e:
        raise ResultError(f"the result of task handle {owner_id} cannot be unpickled here: {safe_text(e)}") from e


def safe_text(error: BaseException) -> str:
    """``Type: message`` of an exception, even one whose ``__str__`` raises."""
    try:
        message = str(error)
    except Exception as e:
        message = f"<str() of the exception raised {type(e).__name__}>"
    return f"{type(error).__name__}: {message}"


def _clip(text: str, limit: int, *, end: bool = False) -> str:
    """At most limit bytes of text as UTF-8: its start, or its end."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return (data[-limit:] if end else data[:limit]).decode("utf-8", "ignore")


def record_error(record: dict[str, Any], error: BaseException, trace: str) -> None:
    """Keep the exception (pickled, when it survives a round trip and is small), its line and its traceback.

    Sizes are bounded, so that a record always fits its entity, a leaf holding many;
    an exception too big to keep is raised again from its line, as TaskRunError.
    """
    data: bytes | None
    try:
        data = codec.dumps(error)
        codec.loads(data)
    except Exception:
        data = None
    record["e"] = data if data is not None and len(data) <= MAX_ERROR else None
    record["l"] = _clip(safe_text(error).replace("\r", "\\r").replace("\n", "\\n"), MAX_LINE)
    record["t"] = _clip(trace, MAX_TRACE, end=True)


# -- entities -----------------------------------------------------------------------


def new_handle_entity(handle_id: str) -> Entity:
    entity = current_store().entity(handle_key(handle_id), ("state",))
    entity["created"] = now()  # "finished" is set once final: an unfinished one is in no sweep's index
    return entity


def write_handle(entity: Entity | None, handle_id: str, record: dict[str, Any]) -> Entity:
    """The handle entity holding record, made or updated (not written yet)."""
    if entity is None:
        entity = new_handle_entity(handle_id)
    entity["status"] = record["s"]
    if record["s"] in FINAL and entity.get("finished") is None:
        entity["finished"] = now()
    entity["state"] = seal(f"handle/{handle_id}", record)
    return entity


def read_handle(entity: Entity | None, handle_id: str) -> dict[str, Any] | None:
    return None if entity is None else unseal(f"handle/{handle_id}", entity["state"])  # type: ignore[no-any-return]


def read_leaf(entity: Entity | None, group_id: str, leaf: int) -> dict[int, dict[str, Any]]:
    if entity is None or entity.get("state") is None:
        return {}
    return unseal(f"leaf/{group_id}.{leaf}", entity["state"])  # type: ignore[no-any-return]


def write_leaf(entity: Entity | None, group_id: str, leaf: int, records: dict[int, dict[str, Any]]) -> Entity:
    """The leaf entity holding records, made or updated (not written yet).

    Should its children's errors make it too big for one entity, their tracebacks, then
    their pickled exceptions, are left out: results, statuses and error lines stay.
    """
    if entity is None:
        entity = current_store().entity(leaf_key(group_id, leaf), ("state", "cancelled"))
        entity["cancelled"] = False
    where = f"leaf/{group_id}.{leaf}"
    state = seal(where, records)
    for field in ("t", "e"):
        if len(state) <= LEAF_BUDGET:
            break
        for record in records.values():
            record.pop(field, None)
        state = seal(where, records)
    entity["state"] = state
    return entity


def new_group_entity(group_id: str, total: int, leaves: int, queue: str) -> Entity:
    entity = current_store().entity(group_key(group_id), ("state", "total", "leaves", "fan", "queue"))
    entity.update({"created": now(), "total": total, "leaves": leaves, "fan": FAN, "queue": queue})
    entity["status"] = SUCCEEDED if total == 0 else PENDING
    return write_group(entity, {"done": [], "failed": None, "cb": []})


def read_group(entity: Entity) -> dict[str, Any]:
    return unseal(f"group/{entity.key().name()}", entity["state"])  # type: ignore[no-any-return]


def write_group(entity: Entity, state: dict[str, Any], status: str | None = None) -> Entity:
    if status is not None:
        entity["status"] = status
    if entity["status"] in FINAL and entity.get("finished") is None:
        entity["finished"] = now()
    entity["state"] = seal(f"group/{entity.key().name()}", state)
    return entity


# -- where one handle's record lives -----------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A handle's record: its own entity, or slot ``index // leaves`` of leaf ``index % leaves``."""

    handle_id: str
    group_id: str | None = None
    index: int = 0
    total: int = 0
    leaves: int = 0

    @property
    def key(self) -> Key:
        if self.group_id is None:
            return handle_key(self.handle_id)
        return leaf_key(self.group_id, self.leaf)

    @property
    def leaf(self) -> int:
        return self.index % self.leaves

    @property
    def slot(self) -> int:
        return self.index // self.leaves

    def read(self, entity: Entity | None) -> dict[str, Any] | None:
        """The record in entity (None if there is none); a child not started in a cancelled group is cancelled."""
        if self.group_id is None:
            return read_handle(entity, self.handle_id)
        record = read_leaf(entity, self.group_id, self.leaf).get(self.slot)
        if entity is not None and entity.get("cancelled") and (record is None or record["s"] == PENDING):
            record = {**(record or new_record()), "s": CANCELLED}
        return record

    def write(self, entity: Entity | None, record: dict[str, Any]) -> tuple[Entity, bool]:
        """The entity to put so that it holds record; and, for a child, whether its leaf is now complete."""
        if self.group_id is None:
            return write_handle(entity, self.handle_id, record), False
        records = read_leaf(entity, self.group_id, self.leaf)
        records[self.slot] = record
        complete = sum(1 for r in records.values() if r["s"] == SUCCEEDED) == leaf_size(
            self.total, self.leaves, self.leaf
        )
        return write_leaf(entity, self.group_id, self.leaf, records), complete


def ref_of(handle_id: str, *, read_group: bool = False) -> Ref | None:
    """Where a handle id's record lives; None for an id this app did not issue, or a child of a group that is gone.

    A child's shape comes from its id, or from its group entity (read when asked, and
    for a 0.2 id, which does not carry it); never from a request header. TypeError for
    an id that is not a str, ValueError for a malformed one.
    """
    found = results_ids.parse(handle_id)
    if not results_ids.issued(found):
        return None
    if found.group is None:
        return Ref(handle_id)
    total, leaves = found.total, found.leaves
    if read_group or total is None or leaves is None:
        group = get(group_key(found.group))
        if group is None or found.index >= group["total"]:
            return None
        total, leaves = group["total"], group["leaves"]
    return Ref(handle_id, found.group, found.index, total, leaves)


# -- sweep --------------------------------------------------------------------------------


def sweep(older_than: datetime.timedelta | datetime.datetime) -> int:
    """Delete handles and groups that finished before older_than (an age or a time); return how many."""
    if isinstance(older_than, datetime.datetime):
        cutoff = older_than
        if cutoff.tzinfo is not None:
            cutoff = cutoff.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    else:
        cutoff = now() - older_than
    store, deleted = current_store(), 0
    for namespace in sorted({"", *store.namespaces()}):  # "": its sweep marker, even while it is empty
        with store.in_namespace(namespace):  # the keys made below are in it
            deleted += _sweep_namespace(cutoff)
    return deleted


def _sweep_namespace(cutoff: datetime.datetime) -> int:
    deleted = 0
    store = current_store()
    for entity in store.query(HANDLE_KIND, where=("finished", "<", cutoff), batch_size=500):
        doomed = [entity.key()]
        record = read_handle(entity, entity.key().name()) or {}
        if record.get("s") == SUCCEEDED and not _callbacks_done(record.get("cb", ())):
            continue  # a callback still has to read its result
        if "R" in record:
            doomed += chunk_keys(entity.key().name(), record["R"][0])
        store.delete(doomed)
        deleted += 1
    for group in store.query(GROUP_KIND, where=("finished", "<", cutoff), batch_size=50):
        deleted += _delete_group(group)
    _mark_swept(cutoff)
    return deleted


def _callbacks_done(callbacks: Any) -> bool:
    """True when none of these callbacks (``(handle id, sealed)`` pairs) can still run: each is finished or gone."""
    keys = [handle_key(handle_id) for handle_id, _ in callbacks]
    return all(e is None or e.get("status") in FINAL for e in get_many(keys))


def _mark_swept(cutoff: datetime.datetime) -> None:
    """Remember, in this namespace, that a run due before cutoff and not recorded by now is gone."""
    posix = cutoff.replace(tzinfo=datetime.timezone.utc).timestamp()

    def txn() -> None:
        marker = get(swept_key())
        if marker is not None and marker["cutoff"] >= posix:
            return
        marker = current_store().entity(swept_key(), ("cutoff",))
        marker["cutoff"] = posix
        put(marker)

    transaction(txn)


def swept_key() -> Key:
    return current_store().key(SWEPT_KIND, "last")


def may_be_pending(handle_id: str, marker: Entity | None) -> bool:
    """For an issued id with no record: False once a sweep ran whose cutoff is after the run was due.

    Such a run finished and was swept, or its task never arrived in all that time (a
    sweep deletes its spilled payload too): either way it will not run.
    """
    found = results_ids.parse(handle_id)
    if found.due is None:
        return False  # a 0.2 id is known by its record only
    return marker is None or found.due + 1 > marker["cutoff"] * 1000


def _delete_group(group: Entity) -> int:
    """Delete a finished group with its leaves, nodes and results; 0 (and nothing deleted) while a callback
    of the group or of one of its children still has to read them."""
    gid, leaves = group.key().name(), group["leaves"] or 0
    if group["status"] == SUCCEEDED and not _callbacks_done(read_group(group)["cb"]):
        return 0
    keys = [leaf_key(gid, n) for n in range(leaves)]
    doomed: list[Key] = []
    waiting: list[tuple[str, Any]] = []
    for leaf_no, leaf in enumerate(get_many(keys)):
        if leaf is None:
            continue
        doomed.append(leaf.key())
        for slot, record in read_leaf(leaf, gid, leaf_no).items():
            if "R" in record:
                doomed += chunk_keys(f"{gid}.{slot * leaves + leaf_no}", record["R"][0])
            if record["s"] == SUCCEEDED:
                waiting += record.get("cb", ())
    if not _callbacks_done(waiting):
        return 0
    for level, size in enumerate(levels(leaves, group["fan"] or FAN)[1:], start=1):
        doomed += [node_key(gid, level, n) for n in range(size)]
    doomed.append(group.key())
    for start in range(0, len(doomed), 500):
        current_store().delete(doomed[start : start + 500])
    return 1
