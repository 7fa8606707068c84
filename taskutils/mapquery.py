"""``map_query``: run a function on every entity of a Datastore query, in shards, with fan-in.

How it works (see docs/map_query.md for the user's view):

- **Shards.** ``map_query`` cuts the kind into key ranges on the ``__scatter__`` property
  (``taskutils.mapquery_store.split`` for a bundled ndb query on the appengine backend,
  ``taskutils.backends.cloud_mapquery.split`` for a Cloud NDB query on the cloud backend),
  writes one checkpoint per shard and adds one walker task per shard, five shards per
  transaction (a transaction adds at most five tasks). It
  returns a ``GroupHandle`` of ``shards`` children, written as ``submit_map`` writes one.
- **Walking.** A walker reads its range in pages from the checkpoint's cursor, runs the
  function on each entity, and commits the cursor after the page (with
  ``transactional_pages``, after each piece of the page, in the transaction the function
  ran in). When its time budget is spent it bumps the checkpoint's generation and adds the
  walker of the next generation in the same transaction: a hand-over.
- **One walker per range.** The checkpoint names the delivery that walks it (a lease with
  an expiry twice the time budget away, renewed at each commit) and its generation. A walker of an older generation
  stops at once; a second delivery of the current one answers "retry later"
  (``RetryTaskException``) while the lease runs, and takes over when it has lapsed (the
  first one died). Every commit checks the lease and the cursor in its transaction, so a
  walker that lost its lease commits nothing more.
- **Fan-in.** A shard that reaches the end of its range adds, with its last checkpoint, the
  task of its child in the group (``shard_done``), which records the count as the child's
  result; the group's tree does the rest, and ``then`` gets the counts. A shard whose
  function fails ``attempts`` times at one cursor, or raises ``PermanentTaskFailure``,
  adds the child's task with the failure instead: the group fails, naming the entity.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

from . import codec
from . import results_store as store
from .config import settings
from .exc import MapQueryError, PermanentTaskFailure, RetryTaskException, UnpicklableArgumentError
from .mapquery_checkpoints import Checkpoint, Item
from .results import GroupHandle
from .results_ids import new_group_id
from .results_run import cancel_group, enqueue
from .task import TaskFunction, task

__all__ = ["MapQueryHandle", "map_query"]

log = logging.getLogger("taskutils.mapquery")

TIME_BUDGET = 120.0  # seconds a walker works before it hands over: well under the 10-minute task deadline
MIN_LEASE = 1.0  # seconds: a lease lasts twice the time budget past the last commit, and at least this
ATTEMPTS = 5  # failures of the function at one cursor before the shard fails
PIECE_GROUPS = 24  # entity groups of entities per transaction, beside the checkpoint's: Datastore allows 25
MAX_PAGE_SIZE = 1000
SHARDS_PER_TRANSACTION = 5  # a transaction adds at most five tasks

WALKING, DONE, FAILED, CANCELLED = "walking", "done", "failed", "cancelled"


@dataclasses.dataclass(frozen=True)
class Job:
    """What every walker of one ``map_query`` carries in its payload."""

    fn: Callable[[Any], Any]
    query: Any
    page_size: int
    transactional_pages: bool
    keys_only: bool
    queue: str
    time_budget: float
    attempts: int
    group_id: str
    shards: int
    leaves: int


def _ds() -> ModuleType:
    """Where map_query meets Datastore on the backend in use: bundled ndb, or Cloud NDB (``backend="cloud"``).

    Both modules have the same functions and share ``Checkpoint`` and ``Item``.
    """
    if settings.backend == "cloud":
        from .backends import cloud_mapquery  # the [cloud] extra's packages load on first use

        return cloud_mapquery
    from . import mapquery_store  # bundled ndb: the App Engine SDK

    return mapquery_store


class MapQueryHandle(GroupHandle):
    """The ``GroupHandle`` of a ``map_query``: its children are the shards; it also counts entities."""

    def checkpoints(self) -> list[Checkpoint | None]:
        """Each shard's checkpoint, in shard order (one batched get)."""
        return _ds().get_checkpoints(self.id, self.total)

    @property
    def processed(self) -> int:
        """Entities processed so far, over all shards (as committed with their checkpoints)."""
        return sum(c.count for c in self.checkpoints() if c is not None)

    @property
    def status(self) -> str:
        """As a group's, and "running" as soon as a shard has started walking."""
        status = super().status
        if status == store.PENDING and any(c is not None and (c.count or c.owner) for c in self.checkpoints()):
            return store.RUNNING
        return status

    def counts(self) -> dict[str, int]:
        """A group's counts of shards, plus "entities": entities processed so far."""
        return {**super().counts(), "entities": self.processed}

    @classmethod
    def get(cls, group_id: str) -> MapQueryHandle | None:
        """The handle of the map with this id (``g.id``); None when there is none."""
        group = GroupHandle.get(group_id)
        return None if group is None else cls(group.id, group.total)


def map_query(
    fn: Callable[[Any], Any],
    query: Any,
    shards: int = 8,
    page_size: int = 100,
    transactional_pages: bool = False,
    keys_only: bool = False,
    *,
    queue: str = "default",
    time_budget: float = TIME_BUDGET,
    attempts: int = ATTEMPTS,
) -> MapQueryHandle:
    """Run fn(entity) (fn(key) with ``keys_only``) on every entity the query matches, in tasks.

    query is a bundled ndb query on the appengine backend, a ``google.cloud.ndb`` one on the
    cloud backend. The kind is cut into ``shards`` key ranges; each is walked ``page_size`` entities at a
    time by a task that hands over to a new one after ``time_budget`` seconds. Returns a
    ``GroupHandle`` whose children are the shards, each with the count it processed.
    With ``transactional_pages`` fn runs in the transaction that commits the checkpoint, so
    its Datastore writes happen exactly once; otherwise at least once.
    """
    if not callable(fn):
        raise TypeError(f"map_query() needs a callable, not {type(fn).__name__}")
    for name, value, low, high in (("shards", shards, 1, 1000), ("page_size", page_size, 1, MAX_PAGE_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"map_query(): {name} must be an int from {low} to {high}, got {value!r}")
    if not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"map_query(): attempts must be an int of at least 1, got {attempts!r}")
    if not time_budget > 0:
        raise ValueError(f"map_query(): time_budget must be positive, got {time_budget!r}")
    _ds().check_query(query)
    func = fn.__wrapped__ if isinstance(fn, TaskFunction) else fn
    leaves = store.leaves_for(shards)
    group_id = new_group_id(time.time(), shards, leaves)
    job = Job(
        func, query, page_size, bool(transactional_pages), bool(keys_only), queue, float(time_budget), attempts,
        group_id, shards, leaves,
    )  # fmt: skip
    try:
        codec.dumps(job)
    except Exception as e:
        raise UnpicklableArgumentError(f"map_query({fn!r}): the function or the query cannot be pickled: {e}") from e
    ranges = _ds().split(query, shards)
    store.put(store.new_group_entity(group_id, shards, leaves, queue))
    try:
        for first in range(0, shards, SHARDS_PER_TRANSACTION):
            _ds().transaction(functools.partial(_start_shards, job, ranges, first))
    except BaseException:
        cancel_group(group_id)  # the shards started so far stop at their next page
        raise
    log.info("map_query %s: %d shards over %s", group_id, shards, _ds().check_query(query))  # the kind
    return MapQueryHandle(group_id, shards, leaves)


def _start_shards(job: Job, ranges: list[str | None], first: int) -> None:
    for shard in range(first, min(first + SHARDS_PER_TRANSACTION, job.shards)):
        if _ds().get_checkpoint(job.group_id, shard) is not None:
            continue
        key_range = ranges[shard]
        if key_range is None:
            _ds().put_checkpoint(Checkpoint(job.group_id, shard, "", status=DONE))
            _finish(job, shard, 0, None)
        else:
            _ds().put_checkpoint(Checkpoint(job.group_id, shard, key_range))
            _walker(job)(job, shard, 0)


def _walker(job: Job) -> TaskFunction[Any, Any]:
    return walk.options(queue=job.queue, transactional=True)


def _finish(job: Job, shard: int, count: int, failure: str | None) -> None:
    """Inside the transaction that ends the shard: add the task of its child in the group."""
    child = shard_done.options(queue=job.queue, transactional=True)
    enqueue(child, (count, failure), {}, f"{job.group_id}.{shard}")


@task
def shard_done(count: int, failure: str | None = None) -> int:
    """A shard's child in its group: its result is the count, or its failure raised for good."""
    if failure is not None:
        raise MapQueryError(failure)
    return count


@task
def walk(job: Job, shard: int, generation: int) -> None:
    """Walk one shard's range from its checkpoint, until its end or its time budget."""
    _Walker(job, shard, generation).run()


class _Leased(Exception):
    """Another delivery holds the shard's lease."""


class _LeaseLost(Exception):
    """The shard moved on without this walker: a newer generation, or another delivery took it over."""


class _Moved(Exception):
    """The checkpoint's cursor is not where this walker left it (a commit it saw fail went through)."""


_ANYWHERE = object()


class _Walker:
    def __init__(self, job: Job, shard: int, generation: int) -> None:
        self.job, self.shard, self.generation = job, shard, generation
        self.token = uuid.uuid4().hex
        self.started = time.monotonic()
        self.name = f"map_query {job.group_id} shard {shard}"

    def run(self) -> None:
        try:
            checkpoint = _ds().transaction(self._claim)
        except _Leased as e:
            raise RetryTaskException(f"{self.name} is walked by another delivery: {e}") from None
        if checkpoint is None:
            return
        try:
            self._walk(checkpoint)
        except _LeaseLost:
            log.warning("%s lost its lease: another walker goes on from its checkpoint", self.name)

    def _walk(self, checkpoint: Checkpoint) -> None:
        group = GroupHandle(self.job.group_id, self.job.shards, self.job.leaves)
        while True:
            if group.done():  # cancelled, or another shard failed
                _ds().transaction(lambda: self._settle(CANCELLED, None))
                log.info("%s stops: its group is %s", self.name, group.status)
                return
            job = self.job
            items, more = _ds().fetch(
                job.query,
                checkpoint.key_range,
                checkpoint.cursor,
                job.page_size,
                job.keys_only,
                job.transactional_pages,
            )
            try:
                checkpoint = self._page(checkpoint, items)
            except _Moved:
                fresh = _ds().get_checkpoint(self.job.group_id, self.shard)
                assert fresh is not None
                checkpoint = fresh
                continue
            except _ItemFailed as failed:
                if _ds().transaction(functools.partial(self._failed, failed)):
                    return
                raise failed.error from None
            if not more:
                _ds().transaction(lambda: self._settle(DONE, None))
                log.info("%s is done: %d entities", self.name, checkpoint.count)
                return
            if time.monotonic() - self.started >= self.job.time_budget:
                _ds().transaction(self._hand_over)
                return

    # -- each step is one transaction on the checkpoint --------------------------------------

    def _claim(self) -> Checkpoint | None:
        checkpoint = _ds().get_checkpoint(self.job.group_id, self.shard)
        if checkpoint is None or checkpoint.generation != self.generation or checkpoint.status != WALKING:
            log.info("%s: generation %d has nothing left to do", self.name, self.generation)
            return None
        if checkpoint.owner not in (None, self.token) and checkpoint.lease > _ds().now():
            raise _Leased(f"its lease runs {checkpoint.lease - _ds().now():.0f} more seconds")
        checkpoint.owner = self.token
        checkpoint.lease = self._lease_end()
        _ds().put_checkpoint(checkpoint)
        return checkpoint

    def _lease_end(self) -> float:
        """Until when a claim or a commit holds the shard: a crashed walker's retry waits this long."""
        return _ds().now() + max(2 * self.job.time_budget, MIN_LEASE)

    def _own(self, cursor: bytes | None | object = _ANYWHERE) -> Checkpoint:
        """Inside a transaction: the checkpoint, if this walker still holds it (where it left it)."""
        checkpoint = _ds().get_checkpoint(self.job.group_id, self.shard)
        if (
            checkpoint is None
            or checkpoint.status != WALKING
            or checkpoint.generation != self.generation
            or checkpoint.owner != self.token
        ):
            raise _LeaseLost()
        if cursor is not _ANYWHERE and checkpoint.cursor != cursor:
            raise _Moved()
        return checkpoint

    def _page(self, checkpoint: Checkpoint, items: list[Item]) -> Checkpoint:
        if not items:
            return checkpoint
        if not self.job.transactional_pages:
            for item in items:
                self._call(item.value, item)
            return _ds().transaction(lambda: self._advance(checkpoint.cursor, items))  # type: ignore[no-any-return]
        for piece in _pieces(items):
            checkpoint = _ds().transaction(functools.partial(self._piece, checkpoint.cursor, piece))
        return checkpoint

    def _piece(self, cursor: bytes | None, piece: list[Item]) -> Checkpoint:
        checkpoint = self._own(cursor)
        keys = [item.key for item in piece]
        values = keys if self.job.keys_only else _ds().get_fresh(keys)
        done = 0
        for item, value in zip(piece, values, strict=True):
            if value is not None:  # deleted since the page was read
                self._call(value, item)
                done += 1
        return self._commit(checkpoint, piece[-1].cursor, done)

    def _advance(self, cursor: bytes | None, items: list[Item]) -> Checkpoint:
        return self._commit(self._own(cursor), items[-1].cursor, len(items))

    def _commit(self, checkpoint: Checkpoint, cursor: bytes | None, done: int) -> Checkpoint:
        checkpoint.cursor = cursor
        checkpoint.count += done
        checkpoint.failures = 0
        checkpoint.lease = self._lease_end()
        _ds().put_checkpoint(checkpoint)
        return checkpoint

    def _call(self, value: Any, item: Item) -> None:
        try:
            self.job.fn(value)
        except Exception as e:
            raise _ItemFailed(item, e) from e

    def _failed(self, failed: _ItemFailed) -> bool:
        """Count a failure at this cursor; True when the shard has failed for good (its child is told)."""
        checkpoint = _ds().get_checkpoint(self.job.group_id, self.shard)
        if checkpoint is None or checkpoint.owner != self.token or checkpoint.generation != self.generation:
            return True  # another walker has the shard now
        checkpoint.failures += 1
        line = f"{type(failed.error).__name__}: {failed.error}"
        message = f"{self.name}: {_name(self.job.fn)} failed on {_ds().describe_key(failed.item.key)}: {line}"
        final = checkpoint.failures >= self.job.attempts or isinstance(failed.error, PermanentTaskFailure)
        if final:
            checkpoint.status, checkpoint.error = FAILED, message
            _finish(self.job, self.shard, checkpoint.count, message)
            log.error("%s (attempt %d, the last)", message, checkpoint.failures)
        else:
            log.warning("%s (attempt %d of %d)", message, checkpoint.failures, self.job.attempts)
        checkpoint.owner, checkpoint.lease = None, 0.0  # the queue's retry takes it at once
        _ds().put_checkpoint(checkpoint)
        return final

    def _settle(self, status: str, failure: str | None) -> None:
        checkpoint = self._own()
        checkpoint.status, checkpoint.owner, checkpoint.lease = status, None, 0.0
        _ds().put_checkpoint(checkpoint)
        if status == DONE:
            _finish(self.job, self.shard, checkpoint.count, failure)

    def _hand_over(self) -> None:
        checkpoint = self._own()
        checkpoint.generation += 1
        checkpoint.owner, checkpoint.lease = None, 0.0
        _ds().put_checkpoint(checkpoint)
        _walker(self.job)(self.job, self.shard, checkpoint.generation)


class _ItemFailed(Exception):
    def __init__(self, item: Item, error: Exception) -> None:
        super().__init__(str(error))
        self.item, self.error = item, error


def _pieces(items: list[Item]) -> list[list[Item]]:
    """The page cut where the next entity would make more than PIECE_GROUPS entity groups."""
    pieces: list[list[Item]] = [[]]
    groups: set[Any] = set()
    for item in items:
        group = _ds().group_of(item.key)
        if group not in groups and len(groups) == PIECE_GROUPS:
            pieces.append([])
            groups = set()
        groups.add(group)
        pieces[-1].append(item)
    return pieces


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
