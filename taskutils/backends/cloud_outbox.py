"""Transactional tasks on the cloud backend: an outbox in Cloud Datastore.

Cloud Tasks cannot join a Datastore transaction, so a task added with ``transactional=True``
inside a Cloud NDB transaction is staged as a ``_TaskutilsOutbox`` entity written by that
transaction, and sent after the commit. A rolled-back transaction writes no entity and sends
nothing. Once sent, the entity is deleted; ``send_lost`` (part of ``taskutils.sweep``) sends
the staged tasks whose send was lost (the process died between commit and send, or Cloud
Tasks refused it then). Every staged task has a name, so a task sent twice is added once:
the second send gets ALREADY_EXISTS and counts as sent (Cloud Tasks remembers a name for
about an hour).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import uuid
from collections.abc import Iterator
from typing import Any

from google.cloud import ndb
from google.cloud.ndb import context as ndb_context
from google.cloud.ndb import metadata

from .._sdk import taskqueue
from . import cloud_requests, cloud_store

log = logging.getLogger("taskutils.backends.cloud")

KIND = "_TaskutilsOutbox"
LOST_AFTER = datetime.timedelta(minutes=1)  # a staged task this old whose send did not delete it: lost
_PAGE = 100


class Outbox(ndb.Model):
    """A task staged by a transaction: the Cloud Tasks request, named, sent after the commit."""

    queue = ndb.TextProperty()  # the queue's full resource name (unindexed)
    request = ndb.BlobProperty()  # a serialized tasks_v2.Task (unindexed, as blobs are)
    created = ndb.DateTimeProperty(auto_now_add=True)

    @classmethod
    def _get_kind(cls) -> str:
        return KIND


def stage(task: taskqueue.Task, queue_name: str, parent: str) -> Any:
    """Write task into the current Cloud NDB transaction's outbox and send it once that commits.

    Returns the Cloud Tasks request staged. Raises taskqueue.BadTransactionStateError
    outside a Cloud NDB transaction, as App Engine does for ``transactional=True``.
    """
    context = ndb_context.get_context(False)
    if context is None or context.transaction is None:
        raise taskqueue.BadTransactionStateError(
            "transactional=True adds the task when a transaction commits, but no Cloud NDB transaction is "
            "active here: call it inside ndb.transaction(...) or an @ndb.transactional function"
        )
    staged_id = uuid.uuid4().hex
    request = cloud_requests.build(task, parent)
    if not request.name:  # the name makes a second send of this task a no-op
        request.name = f"{parent}/tasks/outbox-{staged_id}"
    entity = Outbox(id=staged_id, queue=parent, request=cloud_requests.serialize(request))
    entity.put()  # a complete key: buffered into the commit, nothing sent yet
    context.call_on_commit(functools.partial(_send_after_commit, context, entity.key, parent, request))
    task._Task__name = request.name.rpartition("/")[2]  # the SDK's private attribute, as its Cloud Tasks path sets it
    return request


def _send_after_commit(context: Any, key: ndb.Key, parent: str, request: Any) -> None:
    """The commit's callback: send, then delete the staged entity; a failure leaves it to the sweep."""
    try:
        _send(parent, request)
    except Exception as e:
        log.warning("a transactional task's send after commit failed (the sweep sends it later): %s", e)
        return
    try:
        with _outside_transaction(context):
            key.delete()
    except Exception as e:
        log.warning("a sent transactional task's staged copy was not deleted (the sweep deletes it): %s", e)


def _send(parent: str, request: Any) -> bool:
    """Create the task; True if added now, False if it was added before (ALREADY_EXISTS: sent already)."""
    try:
        cloud_requests.create(parent, request)
    except taskqueue.TaskAlreadyExistsError:
        return False
    return True


@contextlib.contextmanager
def _outside_transaction(context: Any) -> Iterator[None]:
    """The on-commit callbacks run in the committed transaction's context: Datastore calls need a plain one."""
    plain = context.new(
        transaction=None,
        on_commit_callbacks=None,
        transaction_complete_callbacks=None,
        batches=None,
        commit_batches=None,
        cache=None,
        eventloop=type(context.eventloop)(),
    )
    with plain.use():
        yield


def send_lost(older_than: datetime.timedelta = LOST_AFTER) -> int:
    """Send the staged tasks written more than older_than ago (their send was lost); return how many were sent.

    A task whose send did go through gets ALREADY_EXISTS (its name) and counts as sent.
    A task Cloud Tasks refuses (its queue deleted, say) is logged and kept for the next
    sweep, without holding up the others; an unreachable Cloud Tasks stops the sweep with
    QueueUnavailableError. Works with or without a Cloud NDB context open in the caller (the store's client opens one).
    """
    sent: list[ndb.Key] = []
    swept = refused = 0
    with cloud_store.context():
        before = _utcnow() - older_than
        staged = (
            entity
            for namespace in metadata.get_namespaces()  # a task is staged in its transaction's namespace
            for entity in Outbox.query(Outbox.created < before, namespace=namespace or "").iter()
        )
        for entity in staged:
            request = cloud_requests.deserialize(entity.request)
            try:
                added = _send(entity.queue, request)
            except taskqueue.Error as e:
                refused += 1
                log.warning("a lost transactional task %s was refused again, kept: %s", request.name, e)
                continue
            log.info("sent a lost transactional task %s (%s)", request.name, "added" if added else "already there")
            sent.append(entity.key)
            if len(sent) == _PAGE:
                ndb.delete_multi(sent)
                swept, sent = swept + len(sent), []
        if sent:
            ndb.delete_multi(sent)
            swept += len(sent)
    if refused:
        log.warning("%d lost transactional task(s) could not be sent: they stay staged for the next sweep", refused)
    return swept


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
