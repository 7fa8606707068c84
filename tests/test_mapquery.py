"""``taskutils.map_query``: sharded, resumable walks over a Datastore query, in the test fixture."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from google.appengine.api import datastore, datastore_types
from google.appengine.ext import ndb

import taskutils
from taskutils import mapquery
from taskutils.exc import MapQueryError


class Account(ndb.Model):
    active = ndb.BooleanProperty(default=True)
    age = ndb.IntegerProperty(default=0)
    touched = ndb.IntegerProperty(default=0)

    @classmethod
    def _get_kind(cls) -> str:
        return "MapQueryAccount"  # ndb maps a kind to one class: other test modules have an Account too


reports: list[list[int]] = []
calls: dict[Any, int] = {}
fail_once: set[int] = set()
redelivery: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _clear() -> Iterator[None]:
    reports.clear()
    calls.clear()
    fail_once.clear()
    redelivery.clear()
    yield


def report(counts: list[int]) -> None:
    reports.append(counts)


def touch(account: Account) -> None:
    """The usual backfill: change the entity and put it."""
    if account.key.id() in fail_once:
        fail_once.discard(account.key.id())
        raise RuntimeError(f"flaky on {account.key.id()}")
    account.touched += 1
    account.put()


@ndb.transactional(xg=True)
def touch_transactionally(account: Account) -> None:
    touch(account)


def count_call(value: Any) -> None:
    """Counts calls in memory: what a non-transactional side effect sees."""
    key = value if isinstance(value, ndb.Key) else value.key
    calls[key] = calls.get(key, 0) + 1


def always_fails(account: Account) -> None:
    if account.key.id() == 77:
        raise ValueError("bad data")


def make_accounts(n: int, **fields: Any) -> list[ndb.Key]:
    keys: list[ndb.Key] = []
    for start in range(0, n, 500):
        keys += ndb.put_multi(
            [Account(id=i + 1, active=(i % 3 != 0), age=i % 50) for i in range(start, min(n, start + 500))]
        )
    return keys


def touched() -> dict[int, int]:
    return {a.key.id(): a.touched for a in Account.query().fetch(use_cache=False, use_memcache=False)}


def test_every_entity_is_touched_exactly_once_with_transactional_pages(task_testbed):
    make_accounts(3000)
    g = taskutils.map_query(touch, Account.query(), shards=8, page_size=100, transactional_pages=True)
    g.then(report)
    task_testbed.drain()
    assert set(touched().values()) == {1}
    assert g.status == "succeeded"
    assert len(reports) == 1 and len(reports[0]) == 8 and sum(reports[0]) == 3000


def test_a_failing_then_succeeding_function_still_touches_each_entity_once(task_testbed):
    make_accounts(2000)
    fail_once.update({5, 700, 1333, 1999})
    g = taskutils.map_query(touch, Account.query(), shards=4, page_size=50, transactional_pages=True)
    g.then(report)
    task_testbed.drain(retries=2)
    assert not fail_once, "each flaky entity failed once"
    assert set(touched().values()) == {1}
    assert sum(reports[0]) == 2000


def test_ndb_transactional_code_joins_the_page_transaction(task_testbed):
    make_accounts(600)
    g = taskutils.map_query(touch_transactionally, Account.query(), shards=2, page_size=100, transactional_pages=True)
    task_testbed.drain()
    assert set(touched().values()) == {1}
    assert g.results() and sum(g.results()) == 600


def test_many_hand_overs_with_a_tiny_page_size_lose_and_repeat_nothing(task_testbed):
    make_accounts(1000)
    g = taskutils.map_query(touch, Account.query(), shards=4, page_size=5, transactional_pages=True, time_budget=1e-9)
    g.then(report)
    ran = task_testbed.drain()
    assert ran > 200, "one task per page of 5"
    assert set(touched().values()) == {1}
    assert sum(reports[0]) == 1000


def test_a_filtered_query_touches_exactly_the_matching_entities(task_testbed):
    make_accounts(1500)
    g = taskutils.map_query(touch, Account.query(Account.active == True), shards=8, page_size=100)  # noqa: E712
    g.then(report)
    task_testbed.drain()
    by_id = touched()
    assert {i for i, n in by_id.items() if n} == {i + 1 for i in range(1500) if i % 3 != 0}
    assert set(by_id.values()) == {0, 1}
    assert sum(reports[0]) == len([i for i in range(1500) if i % 3 != 0])
    assert len([c for c in reports[0] if c]) >= 4


def test_a_query_with_an_inequality_filter_touches_exactly_the_matching_entities(task_testbed):
    make_accounts(500)
    g = taskutils.map_query(touch, Account.query(Account.age >= 40), shards=4, page_size=30, transactional_pages=True)
    task_testbed.drain()
    by_id = touched()
    assert {i for i, n in by_id.items() if n} == {i + 1 for i in range(500) if i % 50 >= 40}
    assert set(by_id.values()) == {0, 1}
    assert sum(g.results()) == 100


def test_the_callback_runs_once_with_counts_that_add_up(task_testbed):
    make_accounts(1200)
    g = taskutils.map_query(count_call, Account.query(), shards=6, page_size=64)
    g.then(report)
    task_testbed.drain()
    assert len(reports) == 1
    assert len(reports[0]) == 6 and sum(reports[0]) == 1200 == len(calls)
    g.then(report)  # a callback added after the end still fires, once
    task_testbed.drain()
    assert reports[1] == reports[0]


def test_the_stub_scatters_a_sample_of_the_kind_and_several_shards_do_work(task_testbed):
    make_accounts(2000)
    scatter = datastore.Query("MapQueryAccount", keys_only=True)
    scatter.Order(datastore_types.SCATTER_SPECIAL_PROPERTY)
    sampled = len(scatter.Get(5000))
    assert 0 < sampled < 2000, "Datastore sets __scatter__ on a sample of entities, not all"
    g = taskutils.map_query(count_call, Account.query(), shards=8, page_size=100)
    task_testbed.drain()
    counts = g.results()
    assert sum(counts) == 2000
    assert len([c for c in counts if c]) == 8
    assert max(counts) < 2000 / 8 * 3, f"shards are roughly even: {counts}"


def test_keys_only_passes_keys(task_testbed):
    keys = make_accounts(300)
    g = taskutils.map_query(count_call, Account.query(), shards=3, keys_only=True)
    task_testbed.drain()
    assert set(calls) == set(keys)
    assert sum(g.results()) == 300


def test_a_redelivered_walker_after_a_hand_over_does_nothing(task_testbed):
    make_accounts(100)
    g = taskutils.map_query(count_call, Account.query(), shards=1, page_size=10, time_budget=1e-9)
    (first,) = task_testbed.tasks()
    assert task_testbed.post(first)[0] == 200
    assert task_testbed.post(first)[0] == 200  # delivered again: generation 0 has handed over
    assert len(calls) == 10 and set(calls.values()) == {1}
    task_testbed.drain()
    assert set(calls.values()) == {1} and len(calls) == 100
    assert g.results() == [100]


def deliver_again(value: Any) -> None:
    """Delivers the walker running this function a second time, once, from inside it."""
    if "answer" not in redelivery:
        redelivery["answer"] = redelivery["testbed"].post(redelivery["walker"])[0]
    count_call(value)


def test_a_second_delivery_while_the_first_walks_is_refused_and_walks_nothing(task_testbed):
    make_accounts(50)
    g = taskutils.map_query(deliver_again, Account.query(), shards=1, page_size=10)
    (walker,) = task_testbed.tasks()
    redelivery.update(testbed=task_testbed, walker=walker)
    task_testbed.taskqueue.DeleteTask("default", walker.name)
    assert task_testbed.post(walker)[0] == 200
    assert not 200 <= redelivery["answer"] < 300, "the duplicate is told to retry later"
    assert redelivery["answer"] not in (429, 503)
    assert set(calls.values()) == {1} and len(calls) == 50
    task_testbed.drain()
    assert g.results() == [50]


def test_a_function_that_keeps_failing_fails_its_group_naming_the_entity(task_testbed):
    make_accounts(200)
    g = taskutils.map_query(always_fails, Account.query(), shards=2, page_size=20, attempts=2)
    g.then(report)
    task_testbed.drain(retries=1)
    assert g.status == "failed"
    with pytest.raises(MapQueryError, match=r"Key\('MapQueryAccount', 77\).*ValueError: bad data"):
        g.results()
    assert reports == []


def test_cancel_stops_every_shard(task_testbed):
    make_accounts(500)
    g = taskutils.map_query(touch, Account.query(), shards=4, page_size=20)
    g.then(report)
    assert g.cancel()
    task_testbed.drain()
    assert set(touched().values()) == {0}
    assert g.status == "cancelled" and reports == []


def test_progress_counts_entities_and_shards_while_it_runs(task_testbed):
    make_accounts(100)
    g = taskutils.map_query(count_call, Account.query(), shards=1, page_size=10, time_budget=1e-9)
    assert g.status == "pending" and g.processed == 0
    (first,) = task_testbed.tasks()
    task_testbed.taskqueue.DeleteTask("default", first.name)
    task_testbed.post(first)
    assert g.processed == 10 and g.status == "running" and g.progress == 0.0
    assert g.counts()["entities"] == 10
    task_testbed.drain()
    assert g.processed == 100 and g.progress == 1.0 and g.status == "succeeded"
    assert isinstance(g, taskutils.GroupHandle)
    assert mapquery.MapQueryHandle.get(g.id).processed == 100  # type: ignore[union-attr]


def test_bad_arguments_are_refused_before_anything_is_written(task_testbed):
    with pytest.raises(TypeError):
        taskutils.map_query(touch, [1, 2, 3])
    with pytest.raises(ValueError):
        taskutils.map_query(touch, Account.query(), shards=0)
    with pytest.raises(ValueError):
        taskutils.map_query(touch, Account.query(), page_size=5000)
    assert task_testbed.tasks() == []


def test_a_map_runs_with_signing_keys_and_its_shards_record_their_counts(task_testbed, signed):
    make_accounts(200)
    g = taskutils.map_query(count_call, Account.query(), shards=4, page_size=30)
    g.then(report)
    task_testbed.drain()
    assert sum(g.results()) == 200 == len(calls)
    assert reports == [g.results()]
    assert taskutils.GroupHandle.get(g.id) is not None


def test_a_sweep_deletes_the_checkpoints_of_a_finished_map_once_they_are_old_enough(task_testbed):
    make_accounts(200)
    g = taskutils.map_query(count_call, Account.query(), shards=4, page_size=50)
    task_testbed.drain()
    assert g.status == "succeeded"
    shards = datastore.Query("_TaskutilsShard", keys_only=True)
    kept = shards.Count()
    assert kept >= 1

    taskutils.sweep(datetime.timedelta(days=7))
    assert shards.Count() == kept, "checkpoints younger than the sweep's age are kept"

    taskutils.sweep(datetime.timedelta(0))
    assert shards.Count() == 0
