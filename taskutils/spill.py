"""Big payloads: spill a pickled call to Datastore and carry a small pointer instead.

The data is split into entities under Datastore's 1 MiB limit, all in one
entity group (under the caller's ``parent`` when given) so that a
transactional write touches one group. The pointer names the group and holds
the SHA-256 of the data, so a worker only unpickles exactly what was written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid

from google.appengine.ext import ndb

from .exc import CorruptPayloadError, PayloadTooLargeError, SpilledPayloadMissingError

log = logging.getLogger("taskutils.spill")

CHUNK_SIZE = 1000 * 1000  # under the 1 MiB entity and API request limits, with room for the key
MAX_PAYLOAD = 64 * 1024 * 1024
MAX_TRANSACTIONAL_PAYLOAD = 9 * 1024 * 1024  # Datastore commits at most 10 MiB in one transaction


class TaskPayloadChunk(ndb.Model):
    """One piece of a spilled task payload."""

    _use_cache = False
    _use_memcache = False

    data = ndb.BlobProperty(required=True)


def _chunk_keys(group: ndb.Key, count: int) -> list[ndb.Key]:
    return [ndb.Key(TaskPayloadChunk, i + 1, parent=group) for i in range(count)]


def store(task_name: str, data: bytes, *, transactional: bool = False, parent: ndb.Key | None = None) -> bytes:
    """Write data to Datastore, in the current transaction when transactional; return the pointer."""
    limit = MAX_TRANSACTIONAL_PAYLOAD if transactional else MAX_PAYLOAD
    if len(data) > limit:
        where = "inside a transaction " if transactional else ""
        raise PayloadTooLargeError(
            f"task {task_name}: payload of {len(data)} bytes is over the {limit} bytes "
            f"taskutils carries {where}"
        )
    if transactional and not ndb.in_transaction():
        raise PayloadTooLargeError(f"task {task_name}: transactional=True needs a running ndb transaction")
    group = ndb.Key("TaskPayload", uuid.uuid4().hex, parent=parent)
    pieces = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
    for key, piece in zip(_chunk_keys(group, len(pieces)), pieces):
        TaskPayloadChunk(key=key, data=piece).put()
    pointer = {"g": group.urlsafe().decode(), "n": len(pieces), "d": hashlib.sha256(data).hexdigest()}
    return json.dumps(pointer, separators=(",", ":")).encode()


def _parse(pointer: bytes) -> tuple[ndb.Key, int, str]:
    try:
        fields = json.loads(pointer)
        return ndb.Key(urlsafe=fields["g"]), int(fields["n"]), str(fields["d"])
    except Exception as e:
        raise CorruptPayloadError(f"bad spill pointer: {e}") from e


def load(pointer: bytes) -> bytes:
    """Read the data a pointer names, checking it against the pointer's digest."""
    group, count, digest = _parse(pointer)
    entities = ndb.get_multi(_chunk_keys(group, count), use_cache=False, use_memcache=False)
    missing = [i for i, e in enumerate(entities) if e is None]
    if missing:
        raise SpilledPayloadMissingError(f"spilled payload {group.id()} lost {len(missing)} of {count} entities")
    data = b"".join(e.data for e in entities)
    if hashlib.sha256(data).hexdigest() != digest:
        raise CorruptPayloadError(f"spilled payload {group.id()} does not match its digest")
    return data


def delete(pointer: bytes) -> None:
    """Delete the entities a pointer names."""
    group, count, _ = _parse(pointer)
    ndb.delete_multi(_chunk_keys(group, count), use_cache=False, use_memcache=False)
