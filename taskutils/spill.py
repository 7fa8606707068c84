"""Big payloads: spill a pickled call to Datastore and carry a small pointer instead.

The data is split into entities under Datastore's 1 MiB entity and API request
limits, all in one entity group (under the caller's ``parent`` when given), so
that a transactional write touches one group. The pointer names the group and
holds the SHA-256 of the data, so a worker only unpickles exactly what was written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
import weakref

from google.appengine.api import datastore_errors, taskqueue
from google.appengine.ext import ndb

from .codec import MAX_PAYLOAD, MAX_TRANSACTIONAL_PAYLOAD, POINTER, SIGNED, SIGNED_PREFIX
from .exc import CorruptPayloadError, PayloadError, PayloadTooLargeError, SpilledPayloadMissingError

log = logging.getLogger("taskutils.spill")

# One entity per API call: the chunk plus its key and framing must stay under the
# 1 MiB request limit (apiproxy_stub.MAX_REQUEST_SIZE) and the 1,048,572-byte entity limit.
CHUNK_SIZE = 1000 * 1000
MAX_CHUNKS = -(-MAX_PAYLOAD // CHUNK_SIZE)
GROUP_KIND = "_TaskutilsPayload"
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")

# Bytes spilled so far in each running transaction, to keep the sum under Datastore's limit.
_spilled_in: weakref.WeakKeyDictionary[ndb.Context, int] = weakref.WeakKeyDictionary()


class TaskPayloadChunk(ndb.Model):
    """One piece of a spilled task payload."""

    _use_cache = False
    _use_memcache = False

    data = ndb.BlobProperty(required=True)

    @classmethod
    def _get_kind(cls) -> str:
        return "_TaskutilsPayloadChunk"

    def __repr__(self) -> str:
        # ndb names every batched put after its entity: never render a megabyte.
        return f"TaskPayloadChunk(key={self._key!r}, {len(self.data or b'')} bytes)"


def _chunk_keys(group: ndb.Key, count: int) -> list[ndb.Key]:
    return [ndb.Key(TaskPayloadChunk, i + 1, parent=group) for i in range(count)]


def _write(data: bytes, parent: ndb.Key | None) -> bytes:
    group = ndb.Key(GROUP_KIND, uuid.uuid4().hex, parent=parent)
    pieces = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)] or [b""]
    chunks = [TaskPayloadChunk(key=k, data=p) for k, p in zip(_chunk_keys(group, len(pieces)), pieces, strict=True)]
    ndb.put_multi(chunks, use_cache=False, use_memcache=False)
    pointer = {"g": group.urlsafe().decode(), "n": len(pieces), "d": hashlib.sha256(data).hexdigest()}
    return json.dumps(pointer, separators=(",", ":")).encode()


_write_outside_transaction = ndb.non_transactional(_write)


def store(task_name: str, data: bytes, *, transactional: bool = False, parent: ndb.Key | None = None) -> bytes:
    """Write data to Datastore and return the pointer a task carries instead.

    With transactional=True the entities are written in the caller's ndb
    transaction, so they exist only if it commits; otherwise they are written
    at once, even when called inside a transaction.
    """
    if not transactional:
        return _write_outside_transaction(data, None)  # codec.dumps_call has held data to MAX_PAYLOAD
    if not ndb.in_transaction():
        raise taskqueue.BadTransactionStateError(
            f"task {task_name}: transactional=True needs a running ndb transaction"
        )
    context = ndb.get_context()
    earlier = _spilled_in.get(context, 0)
    if earlier + len(data) > MAX_TRANSACTIONAL_PAYLOAD:
        also = f" on top of {earlier} bytes spilled earlier in it" if earlier else ""
        raise PayloadTooLargeError(
            f"task {task_name}: payload of {len(data)} bytes{also} is over the "
            f"{MAX_TRANSACTIONAL_PAYLOAD} bytes taskutils carries inside a transaction"
        )
    try:
        pointer = _write(data, parent)
    except datastore_errors.BadRequestError as e:
        if parent is None and "cross-group" in str(e):
            raise PayloadError(
                f"task {task_name}: its payload is spilled to Datastore in a new entity group, which this "
                "transaction cannot join: give the task parent=<a key in the transaction's entity group>, "
                "or use ndb.transactional(xg=True)"
            ) from e
        raise
    _spilled_in[context] = earlier + len(data)
    return pointer


def _parse(pointer: bytes) -> tuple[ndb.Key, int, str]:
    try:
        fields = json.loads(pointer)
        group, count, digest = ndb.Key(urlsafe=fields["g"]), fields["n"], fields["d"]
    except Exception as e:
        raise CorruptPayloadError(f"bad spill pointer: {type(e).__name__}: {e}") from e
    if group.kind() != GROUP_KIND or type(count) is not int or not 0 < count <= MAX_CHUNKS:
        raise CorruptPayloadError("bad spill pointer: not a taskutils payload")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise CorruptPayloadError("bad spill pointer: bad digest")
    return group, count, digest


def load(pointer: bytes) -> bytes:
    """Read the data a pointer names, checking it against the pointer's digest.

    Raises SpilledPayloadMissingError when entities are gone, CorruptPayloadError
    when the data is not what was written.
    """
    group, count, digest = _parse(pointer)
    entities = ndb.get_multi(_chunk_keys(group, count), use_cache=False, use_memcache=False)
    missing = [i + 1 for i, e in enumerate(entities) if e is None]
    if missing:
        raise SpilledPayloadMissingError(
            f"spilled payload {group.id()} lost {len(missing)} of its {count} entities (first: {missing[0]})"
        )
    data = b"".join(e.data for e in entities)
    if hashlib.sha256(data).hexdigest() != digest:
        raise CorruptPayloadError(f"spilled payload {group.id()} does not match its digest")
    return data


def delete(pointer: bytes) -> None:
    """Delete the entities a pointer names; a failure is logged, never raised.

    The task has finished by then: failing it over its clean-up would run it again.
    """
    try:
        group, count, _ = _parse(pointer)
    except CorruptPayloadError:
        return
    try:
        ndb.delete_multi(_chunk_keys(group, count), use_cache=False, use_memcache=False)
    except Exception:
        log.error(
            "could not delete spilled payload %s: its %d entities are left behind", group.id(), count, exc_info=True
        )


def discard(body: bytes) -> None:
    """Delete the spill behind a body taskutils framed itself, if it has one.

    For a task that was built but could not be added (a named task that
    already exists, a queue that does not), so its entities are not orphaned.
    """
    if body and body[0] & POINTER:
        delete(body[SIGNED_PREFIX if body[0] & SIGNED else 1 :])
