"""Big payloads: spill a pickled call to Datastore and carry a small pointer instead.

The data is split into entities under Datastore's 1 MiB entity and API request
limits, all in one entity group (under the caller's ``parent`` when given), so
that a transactional write touches one group. The pointer names the group. When
payloads are signed, it also holds the SHA-256 of the data, so that a worker only
unpickles exactly what the signer wrote: whoever can write to Datastore cannot
swap the data under a signed pointer. Unsigned, nothing is authenticated (a
forged request needs no spill), so no digest is made: hashing costs as much as
the rest of the call.

The entities are written, read and deleted through the store of the backend in use
(``taskutils.backends.store``): on App Engine, Datastore's low-level API, as ndb's
tasklets cost more than the payload; on the cloud backend, Cloud Datastore. Every
chunk records when its task is first due, so that ``taskutils.sweep`` can find
payloads whose task can no longer run.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
import uuid
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from ._sdk import HAS_SDK, taskqueue
from .backends.current import store as current_store
from .codec import MAX_PAYLOAD, MAX_TRANSACTIONAL_PAYLOAD, POINTER, SIGNED, SIGNED_PREFIX
from .exc import (
    CorruptPayloadError,
    PayloadError,
    PayloadTooLargeError,
    QueueUnavailableError,
    SpilledPayloadMissingError,
)

log = logging.getLogger("taskutils.spill")

# One entity per API call: the chunk plus its key and framing must stay under the
# 1 MiB request limit (apiproxy_stub.MAX_REQUEST_SIZE) and the 1,048,572-byte entity limit.
CHUNK_SIZE = 1000 * 1000
MAX_CHUNKS = -(-MAX_PAYLOAD // CHUNK_SIZE)
GROUP_KIND = "_TaskutilsPayload"
CHUNK_KIND = "_TaskutilsPayloadChunk"
SWEEP_BATCH = 500  # keys per Delete call, Datastore's limit
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")

# Bytes spilled so far in each running transaction, to keep the sum under Datastore's limit.
_spilled_in: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()


if HAS_SDK:  # bundled Datastore; the cloud store writes the same kind through Cloud NDB
    from google.appengine.api import datastore_errors
    from google.appengine.ext import ndb

    _CROSS_GROUP_ERRORS: tuple[type[BaseException], ...] = (datastore_errors.BadRequestError,)

    class TaskPayloadChunk(ndb.Model):
        """The shape of one piece of a spilled task payload, for queries; taskutils writes it with the low-level API."""

        _use_cache = False
        _use_memcache = False

        data = ndb.BlobProperty(required=True)
        due = ndb.DateTimeProperty()  # when its task is first due to run (UTC): what sweep looks at

        @classmethod
        def _get_kind(cls) -> str:
            return CHUNK_KIND

        def __repr__(self) -> str:
            # ndb names every batched put after its entity: never render a megabyte.
            return f"TaskPayloadChunk(key={self._key!r}, {len(self.data or b'')} bytes)"
else:
    _CROSS_GROUP_ERRORS = ()


def _chunk_keys(group: Any, count: int) -> list[Any]:
    key = current_store().key
    return [key(CHUNK_KIND, i + 1, parent=group) for i in range(count)]


def _utc(when: datetime.datetime) -> datetime.datetime:
    """A naive UTC datetime, as Datastore stores them; a naive one is local time, as taskqueue takes it."""
    return when.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def _due(task_kwargs: Mapping[str, Any]) -> datetime.datetime:
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    if task_kwargs.get("eta") is not None:
        return max(now, _utc(task_kwargs["eta"]))
    return now + datetime.timedelta(seconds=task_kwargs.get("countdown") or 0)


def _retry_limit(task_kwargs: Mapping[str, Any]) -> int | None:
    """The task's last attempt's retry count, when the task alone decides it (a retry limit, no age limit)."""
    options = task_kwargs.get("retry_options")
    if options is None or options.task_retry_limit is None or options.task_age_limit is not None:
        return None
    return int(options.task_retry_limit)


def _write(data: bytes, parent: Any, task_kwargs: Mapping[str, Any], transactional: bool, digest: bool) -> bytes:
    """Put the chunks; if a Put outside a transaction fails, delete every chunk it may have written, then raise."""
    store = current_store()
    group = store.key(GROUP_KIND, uuid.uuid4().hex, parent=None if parent is None else store.adopt_key(parent))
    pieces = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)] or [b""]
    due = _due(task_kwargs)
    entities = []
    for i, piece in enumerate(pieces):
        entity = store.entity(store.key(CHUNK_KIND, i + 1, parent=group), unindexed=("data",))
        entity["data"] = store.blob(piece)
        entity["due"] = due
        entities.append(entity)
    try:
        store.put(entities, transactional=transactional)  # one RPC per chunk, all in flight at once
    except BaseException:
        if not transactional:  # in a transaction, the error rolls it back, and the chunks with it
            _delete_keys(group, [e.key() for e in entities], False)
        raise
    pointer: dict[str, Any] = {"g": store.key_to_str(group), "n": len(pieces)}
    if digest:
        pointer["d"] = hashlib.sha256(data).hexdigest()
    limit = _retry_limit(task_kwargs)
    if limit is not None:
        pointer["r"] = limit
    return json.dumps(pointer, separators=(",", ":")).encode()


def store(
    task_name: str,
    data: bytes,
    *,
    transactional: bool = False,
    parent: Any = None,
    task_kwargs: Mapping[str, Any] | None = None,
    digest: bool = True,
) -> bytes:
    """Write data to Datastore and return the pointer a task carries instead.

    With transactional=True the entities are written in the caller's ndb (or, on
    the cloud backend, Cloud NDB) transaction, so they exist only if it commits; otherwise they are written
    at once, even when called inside a transaction. A write that fails leaves
    nothing behind. ``task_kwargs`` (countdown, eta, retry_options) tell when
    the task is first due and whether it can say which attempt is its last.
    ``digest=False`` leaves the SHA-256 out, for a pointer that is not signed.
    """
    task_kwargs = task_kwargs or {}
    if not transactional:
        return _write(data, None, task_kwargs, False, digest)  # codec.dumps_call has held data to MAX_PAYLOAD
    context = current_store().transaction_scope()
    if context is None:
        raise taskqueue.BadTransactionStateError(
            f"task {task_name}: transactional=True needs a running ndb transaction"
        )
    earlier = _spilled_in.get(context, 0)
    if earlier + len(data) > MAX_TRANSACTIONAL_PAYLOAD:
        also = f" on top of {earlier} bytes spilled earlier in it" if earlier else ""
        raise PayloadTooLargeError(
            f"task {task_name}: payload of {len(data)} bytes{also} is over the "
            f"{MAX_TRANSACTIONAL_PAYLOAD} bytes taskutils carries inside a transaction"
        )
    try:
        pointer = _write(data, parent, task_kwargs, True, digest)
    except _CROSS_GROUP_ERRORS as e:
        if parent is None and "cross-group" in str(e):
            raise PayloadError(
                f"task {task_name}: its payload is spilled to Datastore in a new entity group, which this "
                "transaction cannot join: give the task parent=<a key in the transaction's entity group>, "
                "or use ndb.transactional(xg=True)"
            ) from e
        raise
    _spilled_in[context] = earlier + len(data)
    return pointer


def _parse(pointer: bytes, *, signed: bool = False) -> dict[str, Any]:
    """The pointer's fields; a signed one must hold a digest, and a digest must be well formed."""
    try:
        fields = json.loads(pointer)
        group, count, digest = current_store().key_from_str(fields["g"]), fields["n"], fields.get("d")
    except Exception as e:
        raise CorruptPayloadError(f"bad spill pointer: {type(e).__name__}: {e}") from e
    if group.kind() != GROUP_KIND or type(count) is not int or not 0 < count <= MAX_CHUNKS:
        raise CorruptPayloadError("bad spill pointer: not a taskutils payload")
    if (digest is not None or signed) and not (isinstance(digest, str) and _DIGEST_RE.fullmatch(digest)):
        raise CorruptPayloadError(
            "bad spill pointer: bad digest" if digest is not None else "bad spill pointer: no digest"
        )
    fields["g"] = group
    return fields


def load(pointer: bytes, *, signed: bool = True) -> bytes:
    """Read the data a pointer names, checking it against the pointer's digest.

    A signed pointer must hold a digest; an unsigned one is checked against its
    digest when it has one. Raises SpilledPayloadMissingError when entities are
    gone, CorruptPayloadError when the data is not what was written.
    """
    fields = _parse(pointer, signed=signed)
    group, count = fields["g"], fields["n"]
    entities = current_store().get(_chunk_keys(group, count), transactional=False)
    missing = [i + 1 for i, e in enumerate(entities) if e is None]
    if missing:
        raise SpilledPayloadMissingError(
            f"spilled payload {group.name()} lost {len(missing)} of its {count} entities (first: {missing[0]})"
        )
    data = b"".join(e["data"] for e in entities)
    if fields.get("d") is not None and hashlib.sha256(data).hexdigest() != fields["d"]:
        raise CorruptPayloadError(f"spilled payload {group.name()} does not match its digest")
    return data


def last_attempt(pointer: bytes, retry_count: int) -> bool:
    """True when the task whose pointer this is will not be retried after this attempt.

    Only a task whose own retry_options set a task_retry_limit and no
    task_age_limit can tell; for any other, this is False (sweep finds its spill).
    """
    try:
        limit = _parse(pointer).get("r")
    except CorruptPayloadError:
        return False
    return type(limit) is int and retry_count >= limit


def _delete_keys(group: Any, keys: list[Any], transactional: bool) -> bool:
    try:
        current_store().delete(keys, transactional=transactional)
    except Exception:
        log.error(
            "could not delete spilled payload %s: its %d entities are left behind for taskutils.sweep",
            group.name(),
            len(keys),
            exc_info=True,
        )
        return False
    return True


def delete(pointer: bytes, *, transactional: bool = False) -> None:
    """Delete the entities a pointer names; a failure is logged, never raised.

    The task has finished by then: failing it over its clean-up would run it again.
    With transactional=True the delete joins the caller's transaction.
    """
    try:
        fields = _parse(pointer)
    except CorruptPayloadError:
        return
    _delete_keys(fields["g"], _chunk_keys(fields["g"], fields["n"]), transactional)


def discard(body: bytes, *, transactional: bool = False) -> None:
    """Delete the spill behind a body taskutils framed itself, if it has one.

    For a task that was built but surely not added (a named task that already
    exists, a queue that does not), so its entities are not orphaned.
    """
    if body and body[0] & POINTER:
        delete(body[SIGNED_PREFIX if body[0] & SIGNED else 1 :], transactional=transactional)


def _orphans(before: datetime.datetime) -> Iterator[list[Any]]:
    """Keys of chunks whose task was due before then, in batches, namespace by namespace."""
    store = current_store()
    for namespace in store.namespaces():
        with store.in_namespace(namespace):
            found = store.query(CHUNK_KIND, where=("due", "<", before), keys_only=True, batch_size=SWEEP_BATCH)
        batch: list[Any] = []
        for key in found:
            batch.append(key)
            if len(batch) == SWEEP_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


def sweep(before: datetime.datetime) -> int:
    """Delete spilled payloads whose task was first due before then (naive UTC); return how many."""
    store = current_store()
    deleted = 0
    last_group = None
    for keys in _orphans(before):
        store.delete(keys, transactional=False)
        for key in keys:  # a payload's chunks share one due time, so they come one after another
            group = key.parent()
            if group != last_group:
                deleted += 1
                last_group = group
    if deleted:
        log.info("swept %d spilled payloads whose task was due before %s UTC", deleted, before.isoformat())
    return deleted


# Errors that say the queue refused the add: the task does not exist, so its spill can go.
# Any other error (TransientError, InternalError, a deadline, an interrupt) may come after
# the queue took the task: its spill is kept for it, or for taskutils.sweep.
NOT_ADDED: tuple[type[BaseException], ...] = (
    taskqueue.InvalidTaskError,  # TaskAlreadyExistsError, TombstonedTaskError, TaskTooLargeError, bad name/URL/ETA
    taskqueue.InvalidQueueError,
    taskqueue.UnknownQueueError,
    taskqueue.BadTaskStateError,
    taskqueue.DuplicateTaskNameError,
    taskqueue.TooManyTasksError,
    taskqueue.BadTransactionStateError,
    taskqueue.PermissionDeniedError,
    taskqueue.InvalidQueueModeError,
    taskqueue.InvalidTaskRetryOptionsError,
    taskqueue.InvalidTagError,
    taskqueue.InvalidDispatchDeadlineError,
    taskqueue.QueuePausedError,
    QueueUnavailableError,  # the cloud backend could not reach Cloud Tasks at all
)


def discard_unadded(built: list[taskqueue.Task], error: BaseException | None, *, transactional: bool = False) -> None:
    """Delete the spills of built tasks the queue surely did not take; keep the rest.

    ``error`` is what the add raised, None when the tasks were never sent. A
    task marked as enqueued keeps its spill; the others lose theirs only when
    the error is one of NOT_ADDED. With transactional=True the deletes join the
    caller's transaction.
    """
    left = [t for t in built if not t.was_enqueued and t.payload and t.payload[0] & POINTER]
    if error is not None and not isinstance(error, NOT_ADDED):
        if left:
            log.warning(
                "adding %d task(s) with spilled payloads failed with %s, which does not say whether the "
                "queue took them: their payloads are kept, for the tasks or for taskutils.sweep",
                len(left),
                type(error).__name__,
            )
        return
    for t in left:
        discard(t.payload, transactional=transactional)
