"""Where controls keep their state in Datastore: the one module that talks to it.

Kinds, all root entities named after a key (``taskutils.controls.keys``):

- ``_TaskutilsUnique``: the run a ``unique`` key has pending or running.
- ``_TaskutilsDebounce``: a ``debounce`` key's pending run, running run and last call.
- ``_TaskutilsLease``: who holds an ``exclusive`` / ``concurrency`` key, until when.
- ``_TaskutilsRate``: a ``rate`` key's token bucket (its theoretical arrival time).
- ``_TaskutilsPeriodic``: a periodic job's last slot added.

Everything goes through the store of the backend in use (``taskutils.backends.store``:
bundled Datastore's low-level API on App Engine, Cloud Datastore on the cloud backend),
in cross-group transactions; ``state`` properties are JSON, unindexed.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .. import codec
from .._sdk import taskqueue
from ..backends.current import store as current_store
from ..config import get_keyring

T = TypeVar("T")

UNIQUE_KIND = "_TaskutilsUnique"
DEBOUNCE_KIND = "_TaskutilsDebounce"
LEASE_KIND = "_TaskutilsLease"
RATE_KIND = "_TaskutilsRate"
PERIODIC_KIND = "_TaskutilsPeriodic"

RETRIES = 10


def contended() -> tuple[type[BaseException], ...]:
    """What the store in use raises when a transaction kept colliding with others (``except store.contended()``)."""
    return current_store().Contended


class State:
    """One entity's state as a dict, read and written inside a transaction.

    ``joined``: read and write in the caller's transaction (``in_callers_transaction``),
    else in the one running (the store's own, from ``transaction``).
    """

    def __init__(self, kind: str, name: str, joined: bool | None = None) -> None:
        self._store = current_store()
        self.key = self._store.key(kind, name)
        self._transactional = True if joined else None
        self.entity: Any = None
        self.state: dict[str, Any] = {}

    def read(self) -> dict[str, Any]:
        found = self._store.get([self.key], transactional=self._transactional)[0]
        self.entity = found
        self.state = json.loads(found["state"]) if found is not None else {}
        return self.state

    @property
    def exists(self) -> bool:
        return self.entity is not None

    def write(self, readable: str | None = None) -> None:
        entity = self._store.entity(self.key, ("state", "key"))
        entity["state"] = self._store.text(json.dumps(self.state, separators=(",", ":")))
        entity["updated"] = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        previous = self.entity.get("key") if self.entity is not None else None
        if readable is not None or previous is not None:
            entity["key"] = self._store.text(readable if readable is not None else str(previous))
        self._store.put([entity], transactional=self._transactional)
        self.entity = entity

    def delete(self) -> None:
        if self.entity is None:
            return
        self._store.delete([self.key], transactional=self._transactional)
        self.entity = None


def transaction(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a transaction of its own (even inside the caller's ndb transaction), retried on contention."""
    return current_store().transaction(fn, *args, retries=RETRIES)


def in_callers_transaction(fn: Callable[[bool], T]) -> T:
    """fn(True) in the caller's ndb (or Cloud NDB) transaction: a State made joined commits or rolls back with it."""
    if not current_store().in_transaction():
        raise taskqueue.BadTransactionStateError(
            "transactional=True with unique= or debounce= needs a running ndb (or Cloud NDB) transaction"
        )
    return fn(True)


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
    found = current_store().query(kind, limit=limit)
    return [(e.key().name(), e.get("key"), json.loads(e["state"])) for e in found]
