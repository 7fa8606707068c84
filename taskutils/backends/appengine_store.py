"""The App Engine backend's store: bundled Datastore through its low-level API (``google.appengine.api.datastore``).

``AppEngineStore`` implements ``taskutils.backends.base.Store`` with the calls taskutils
made before the port existed, one RPC for one RPC: ndb's tasklets cost several times
more per call. Writes join the caller's ndb transaction through a sibling of its
connection (the low-level adapter, the same transaction handle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from google.appengine.api import datastore, datastore_errors, datastore_types, namespace_manager
from google.appengine.datastore import datastore_rpc

T = TypeVar("T")

_OPTIONS: dict[int, Any] = {}


def connection_for(transactional: bool) -> datastore_rpc.BaseConnection:
    """The connection to use: the caller's ndb transaction's when transactional, else one outside any.

    Inside ``ndb.transactional`` the low-level API's current connection is that
    transaction's, but with ndb's adapter; a sibling with the low-level adapter
    and the same transaction handle writes into the same transaction.
    """
    current = datastore._GetConnection()
    if not isinstance(current, datastore_rpc.TransactionalConnection):
        return current
    version = current._api_version
    if transactional:
        return datastore_rpc.TransactionalConnection(
            adapter=datastore._adapter, config=current.config, transaction=current.transaction, _api_version=version
        )
    return datastore_rpc.Connection(adapter=datastore._adapter, config=current.config, _api_version=version)


class AppEngineStore:
    """Bundled Datastore; keys are ``datastore_types.Key``, entities ``datastore.Entity``."""

    Contended: tuple[type[BaseException], ...] = (datastore_errors.TransactionFailedError,)

    def key(self, kind: str, name_or_id: str | int, parent: Any = None) -> datastore_types.Key:
        return datastore_types.Key.from_path(kind, name_or_id, parent=parent)

    def adopt_key(self, key: Any) -> datastore_types.Key:
        return key if isinstance(key, datastore_types.Key) else key.to_old_key()

    def key_to_str(self, key: datastore_types.Key) -> str:
        return str(key)

    def key_from_str(self, text: str) -> datastore_types.Key:
        return datastore_types.Key(text)

    def entity(self, key: datastore_types.Key, unindexed: tuple[str, ...] = ()) -> datastore.Entity:
        name = key.name()
        return datastore.Entity(
            key.kind(),
            parent=key.parent(),
            name=name,
            id=None if name is not None else key.id(),
            unindexed_properties=unindexed,
        )

    def blob(self, data: bytes) -> datastore_types.Blob:
        return datastore_types.Blob(data)

    def text(self, value: str) -> datastore_types.Text:
        return datastore_types.Text(value)

    def get(self, keys: list[Any], *, transactional: bool | None = None) -> list[Any]:
        if transactional is None:
            found: list[Any] = []
            for start in range(0, len(keys), 1000):
                found += datastore.Get(keys[start : start + 1000])
            return found
        return connection_for(transactional).async_get(None, keys).get_result()  # type: ignore[no-any-return]

    def put(self, entities: list[Any], *, transactional: bool | None = None) -> None:
        if transactional is None:
            datastore.Put(entities)
            return
        rpc = None
        try:
            rpc = connection_for(transactional).async_put(None, entities)  # one RPC per MiB, all in flight
            rpc.get_result()
        except BaseException:
            if rpc is not None:
                rpc.wait()  # get_result raises at the first failed RPC: let the others land first
            raise

    def delete(self, keys: list[Any], *, transactional: bool | None = None) -> None:
        if transactional is None:
            datastore.Delete(keys)
        else:
            connection_for(transactional).async_delete(None, keys).get_result()

    def transaction(self, fn: Callable[..., T], *args: Any, retries: int = 5) -> T:
        options = _OPTIONS.get(retries)
        if options is None:
            options = _OPTIONS[retries] = datastore.CreateTransactionOptions(xg=True, retries=retries)
        current = datastore._GetConnection()
        if not isinstance(current, datastore_rpc.TransactionalConnection):
            return datastore.RunInTransactionOptions(options, fn, *args)  # type: ignore[no-any-return]
        # Inside ndb.transactional: set the caller's transaction aside for the time of ours.
        outside = datastore_rpc.Connection(
            adapter=datastore._adapter, config=current.config, _api_version=current._api_version
        )
        datastore._SetConnection(outside)
        try:
            return datastore.RunInTransactionOptions(options, fn, *args)  # type: ignore[no-any-return]
        finally:
            datastore._SetConnection(current)

    def in_transaction(self) -> bool:
        return isinstance(datastore._GetConnection(), datastore_rpc.TransactionalConnection)

    def transaction_scope(self) -> object | None:
        from google.appengine.ext import ndb

        return ndb.get_context() if ndb.in_transaction() else None

    def query(
        self,
        kind: str,
        *,
        where: tuple[str, str, Any] | None = None,
        newest_first: str | None = None,
        keys_only: bool = False,
        limit: int | None = None,
        batch_size: int = 500,
    ) -> Iterator[Any]:
        filters = {} if where is None else {f"{where[0]} {where[1]}": where[2]}
        query = datastore.Query(kind, filters, keys_only=keys_only)
        if newest_first is not None:
            query.Order((newest_first, datastore.Query.DESCENDING))
        if limit is not None:
            return iter(query.Get(limit))
        return iter(query.Run(batch_size=batch_size))

    def namespaces(self) -> list[str]:
        from google.appengine.ext.ndb import metadata

        return list(metadata.get_namespaces())

    @contextmanager
    def in_namespace(self, namespace: str) -> Iterator[None]:
        current = namespace_manager.get_namespace()
        namespace_manager.set_namespace(namespace)
        try:
            yield
        finally:
            namespace_manager.set_namespace(current)
