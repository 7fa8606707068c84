"""Where controls keep their state in Datastore: the one module that talks to it.

Kinds, all root entities named after a key (``taskutils.controls.keys``):

- ``_TaskutilsUnique``: the run a ``unique`` key has pending or running.
- ``_TaskutilsDebounce``: a ``debounce`` key's pending run, running run and last call.
- ``_TaskutilsLease``: who holds an ``exclusive`` / ``concurrency`` key, until when.
- ``_TaskutilsRate``: a ``rate`` key's token bucket (its theoretical arrival time).
- ``_TaskutilsPeriodic``: a periodic job's last slot added.

Everything goes through the low-level ``google.appengine.api.datastore`` API, in
cross-group transactions; ``state`` properties are JSON, unindexed.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from google.appengine.api import datastore, datastore_errors, datastore_types
from google.appengine.api.datastore import Entity
from google.appengine.datastore import datastore_rpc

from .. import codec
from ..config import get_keyring

T = TypeVar("T")

UNIQUE_KIND = "_TaskutilsUnique"
DEBOUNCE_KIND = "_TaskutilsDebounce"
LEASE_KIND = "_TaskutilsLease"
RATE_KIND = "_TaskutilsRate"
PERIODIC_KIND = "_TaskutilsPeriodic"

Contended = datastore_errors.TransactionFailedError  # a transaction that kept colliding with others

_TXN = datastore.CreateTransactionOptions(xg=True, retries=10)


class State:
    """One entity's state as a dict, read and written inside a transaction."""

    def __init__(self, kind: str, name: str, connection: datastore_rpc.BaseConnection | None = None) -> None:
        self.key = datastore_types.Key.from_path(kind, name)
        self._connection = connection
        self.entity: Entity | None = None
        self.state: dict[str, Any] = {}

    def read(self) -> dict[str, Any]:
        if self._connection is not None:
            found = self._connection.get([self.key])[0]
        else:
            try:
                found = datastore.Get(self.key)
            except datastore_errors.EntityNotFoundError:
                found = None
        self.entity = found
        self.state = json.loads(found["state"]) if found is not None else {}
        return self.state

    @property
    def exists(self) -> bool:
        return self.entity is not None

    def write(self, readable: str | None = None) -> None:
        entity = Entity(self.key.kind(), name=self.key.name())
        entity["state"] = datastore_types.Text(json.dumps(self.state, separators=(",", ":")))
        entity["updated"] = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        previous = self.entity.get("key") if self.entity is not None else None
        if readable is not None or previous is not None:
            entity["key"] = datastore_types.Text(readable if readable is not None else previous)
        if self._connection is not None:
            self._connection.put([entity])
        else:
            datastore.Put(entity)
        self.entity = entity

    def delete(self) -> None:
        if self.entity is None:
            return
        if self._connection is not None:
            self._connection.delete([self.key])
        else:
            datastore.Delete(self.key)
        self.entity = None


def transaction(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a transaction of its own (even inside the caller's ndb transaction), retried on contention."""
    current = datastore._GetConnection()
    if not isinstance(current, datastore_rpc.TransactionalConnection):
        return datastore.RunInTransactionOptions(_TXN, fn, *args)  # type: ignore[no-any-return]
    # Inside ndb.transactional: set the caller's transaction aside for the time of ours.
    outside = datastore_rpc.Connection(
        adapter=datastore._adapter, config=current.config, _api_version=current._api_version
    )
    datastore._SetConnection(outside)
    try:
        return datastore.RunInTransactionOptions(_TXN, fn, *args)  # type: ignore[no-any-return]
    finally:
        datastore._SetConnection(current)


def in_callers_transaction(fn: Callable[[datastore_rpc.BaseConnection], T]) -> T:
    """fn(connection) with the caller's ndb transaction's connection: its writes commit or roll back with it."""
    current = datastore._GetConnection()
    if not isinstance(current, datastore_rpc.TransactionalConnection):
        raise datastore_errors.BadRequestError("transactional=True with unique= or debounce= needs a transaction")
    connection = datastore_rpc.TransactionalConnection(
        adapter=datastore._adapter,
        config=current.config,
        transaction=current.transaction,
        _api_version=current._api_version,
    )
    return fn(connection)


def seal(where: str, obj: object) -> str:
    """obj pickled and framed (signed when keys are configured), as text a JSON state can hold."""
    return codec.frame("/_taskutils/controls/" + where, codec.dumps(obj), 0, get_keyring()).hex()


def unseal(where: str, text: str) -> Any:
    """What seal() kept; SignatureError when it is not this app's."""
    _, data = codec.unframe("/_taskutils/controls/" + where, bytes.fromhex(text), get_keyring())
    return codec.loads(data)


def now() -> float:
    return time.time()


def all_of(kind: str, limit: int = 200) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(key name, readable key, state) of the entities of a kind, for the console."""
    query = datastore.Query(kind)
    return [(e.key().name(), e.get("key"), json.loads(e["state"])) for e in query.Get(limit)]
