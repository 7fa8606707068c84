"""``map_query`` on the cloud backend: a Cloud NDB query walked in shards, against the real emulators.

``cloud_task_testbed`` (the pytest plugin's fixture) runs the Google Cloud CLI's Datastore
emulator, which holds the entities and the checkpoints, and the Cloud Tasks emulator
(paused), which holds the walkers; ``drain`` posts them to ``taskutils.app`` in process, as
Cloud Tasks would, posting a failed one again as the queue's retry.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from google.appengine.ext import ndb as bundled_ndb
from google.cloud import ndb

import taskutils
from taskutils import mapquery
from taskutils.exc import MapQueryError
from taskutils.mapquery_store import SHARD_KIND
from taskutils.testing import CloudTaskTestbed

ENTITIES = 500


class CloudAccount(ndb.Model):
    active = ndb.BooleanProperty(default=True)
    age = ndb.IntegerProperty(default=0)
    touched = ndb.IntegerProperty(default=0)

    @classmethod
    def _get_kind(cls) -> str:
        return "MapQueryCloudAccount"


class BundledAccount(bundled_ndb.Model):
    pass


reports: list[list[int]] = []
calls: dict[Any, int] = {}
fail_once: set[int] = set()


@pytest.fixture(autouse=True)
def _clear() -> Iterator[None]:
    reports.clear()
    calls.clear()
    fail_once.clear()
    passed.clear()
    redelivery.clear()
    yield


def report(counts: list[int]) -> None:
    reports.append(counts)


def count_call(value: Any) -> None:
    """Counts calls in memory: what a side effect outside Datastore sees."""
    key = value if isinstance(value, ndb.Key) else value.key
    calls[key] = calls.get(key, 0) + 1


passed: list[type] = []


def count_type(value: Any) -> None:
    """count_call, noting the type of what it was passed."""
    if type(value) not in passed:
        passed.append(type(value))
    count_call(value)


def touch(account: CloudAccount) -> None:
    """A backfill on Cloud NDB that fails once on the entities in fail_once."""
    if account.key.id() in fail_once:
        fail_once.discard(account.key.id())
        raise RuntimeError(f"flaky on {account.key.id()}")
    account.touched += 1
    account.put()


def make_accounts(bed: CloudTaskTestbed, n: int = ENTITIES) -> list[ndb.Key]:
    with bed.ndb_client().context():
        return list(ndb.put_multi([CloudAccount(id=i + 1, active=(i % 3 != 0), age=i % 50) for i in range(n)]))


def touched(bed: CloudTaskTestbed) -> dict[int, int]:
    with bed.ndb_client().context():
        return {a.key.id(): a.touched for a in CloudAccount.query().fetch(use_cache=False, use_global_cache=False)}


def count(bed: CloudTaskTestbed, kind: str) -> int:
    """How many entities of kind the Datastore emulator holds."""
    with bed.ndb_client().context():
        return len(ndb.Query(kind=kind).fetch(keys_only=True))


def test_every_entity_of_a_cloud_ndb_query_is_processed_once_across_shards(cloud_task_testbed):
    keys = make_accounts(cloud_task_testbed)
    with cloud_task_testbed.ndb_client().context():
        g = taskutils.map_query(count_call, CloudAccount.query(), shards=4, page_size=50)
    g.then(report)
    cloud_task_testbed.drain()

    assert set(calls) == set(keys) and set(calls.values()) == {1}
    assert reports == [g.results()]
    assert len(reports[0]) == 4 and sum(reports[0]) == ENTITIES
    assert len([c for c in reports[0] if c]) >= 2, f"the kind is split on __scatter__: {reports[0]}"
    assert (g.status, g.progress, g.processed) == ("succeeded", 1.0, ENTITIES)
    assert g.counts()["entities"] == ENTITIES


def test_progress_counts_entities_while_it_runs_and_a_resumed_shard_does_not_reprocess(cloud_task_testbed):
    make_accounts(cloud_task_testbed)
    with cloud_task_testbed.ndb_client().context():
        g = taskutils.map_query(count_call, CloudAccount.query(), shards=1, page_size=50, time_budget=1e-9)
    assert (g.status, g.processed) == ("pending", 0)

    (first,) = cloud_task_testbed.tasks()
    cloud_task_testbed.purge()
    assert cloud_task_testbed.post(first)[0] == 200  # one page, then it hands over to the next generation
    assert (g.processed, g.status, g.progress) == (50, "running", 0.0)
    assert cloud_task_testbed.post(first)[0] == 200  # delivered again: its generation has handed over: nothing
    assert len(calls) == 50

    ran = cloud_task_testbed.drain()
    assert ran >= ENTITIES // 50, "one walker per page"
    assert len(calls) == ENTITIES and set(calls.values()) == {1}, "each generation went on from the cursor"
    assert g.results() == [ENTITIES]
    assert mapquery.MapQueryHandle.get(g.id).processed == ENTITIES  # type: ignore[union-attr]


redelivery: dict[str, Any] = {}


def deliver_again(value: Any) -> None:
    """Delivers the walker running this function a second time, once, from inside it."""
    if "answer" not in redelivery:
        redelivery["answer"] = redelivery["testbed"].post(redelivery["walker"])[0]
    count_call(value)


def test_a_second_delivery_while_the_first_walks_is_refused_and_walks_nothing(cloud_task_testbed):
    make_accounts(cloud_task_testbed, 50)
    with cloud_task_testbed.ndb_client().context():
        g = taskutils.map_query(deliver_again, CloudAccount.query(), shards=1, page_size=10)
    (walker,) = cloud_task_testbed.tasks()
    cloud_task_testbed.purge()
    redelivery.update(testbed=cloud_task_testbed, walker=walker)
    assert cloud_task_testbed.post(walker)[0] == 200

    assert not 200 <= redelivery["answer"] < 300, "the duplicate is told to retry later"
    assert redelivery["answer"] not in (429, 503)
    assert len(calls) == 50 and set(calls.values()) == {1}
    cloud_task_testbed.drain()
    assert g.results() == [50]


def test_a_retried_shard_goes_on_from_its_checkpoint_and_writes_each_entity_once(cloud_task_testbed):
    make_accounts(cloud_task_testbed)
    fail_once.update({7, 260, 499})
    with cloud_task_testbed.ndb_client().context():
        g = taskutils.map_query(touch, CloudAccount.query(), shards=3, page_size=40, transactional_pages=True)
    cloud_task_testbed.drain(retries=2)

    assert not fail_once, "each flaky entity failed once"
    assert set(touched(cloud_task_testbed).values()) == {1}
    assert sum(g.results()) == ENTITIES


def test_a_filtered_query_processes_only_the_matching_entities(cloud_task_testbed):
    make_accounts(cloud_task_testbed)
    with cloud_task_testbed.ndb_client().context():
        query = CloudAccount.query(CloudAccount.active == True)  # noqa: E712
        g = taskutils.map_query(touch, query, shards=4, page_size=50)
    cloud_task_testbed.drain()

    by_id = touched(cloud_task_testbed)
    assert {i for i, n in by_id.items() if n} == {i + 1 for i in range(ENTITIES) if i % 3 != 0}
    assert set(by_id.values()) == {0, 1}
    assert sum(g.results()) == len([i for i in range(ENTITIES) if i % 3 != 0])


def test_an_inequality_filter_runs_as_one_shard_over_exactly_the_matching_entities(cloud_task_testbed):
    make_accounts(cloud_task_testbed)
    with cloud_task_testbed.ndb_client().context():
        g = taskutils.map_query(touch, CloudAccount.query(CloudAccount.age >= 40), shards=4, page_size=30)
    cloud_task_testbed.drain()

    by_id = touched(cloud_task_testbed)
    assert {i for i, n in by_id.items() if n} == {i + 1 for i in range(ENTITIES) if i % 50 >= 40}
    assert g.results() == [100, 0, 0, 0]


def test_keys_only_passes_cloud_ndb_keys(cloud_task_testbed):
    keys = make_accounts(cloud_task_testbed, 120)
    with cloud_task_testbed.ndb_client().context():
        g = taskutils.map_query(count_type, CloudAccount.query(), shards=2, page_size=50, keys_only=True)
    cloud_task_testbed.drain()

    assert set(calls) == set(keys)
    assert passed == [ndb.Key], "the function got keys, not entities"
    assert sum(g.results()) == 120


def always_fails(account: CloudAccount) -> None:
    if account.key.id() == 77:
        raise ValueError("bad data")


def test_a_function_that_keeps_failing_fails_its_group_naming_the_entity(cloud_task_testbed):
    make_accounts(cloud_task_testbed, 200)
    with cloud_task_testbed.ndb_client().context():
        g = taskutils.map_query(always_fails, CloudAccount.query(), shards=2, page_size=20, attempts=2)
    g.then(report)
    cloud_task_testbed.drain(retries=1)

    assert g.status == "failed"
    with pytest.raises(MapQueryError, match=r"Key\('MapQueryCloudAccount', 77\).*ValueError: bad data"):
        g.results()
    assert reports == []


def test_cancel_stops_every_shard(cloud_task_testbed):
    make_accounts(cloud_task_testbed)
    with cloud_task_testbed.ndb_client().context():
        g = taskutils.map_query(touch, CloudAccount.query(), shards=4, page_size=20)
    g.then(report)
    assert g.cancel()
    cloud_task_testbed.drain()

    assert set(touched(cloud_task_testbed).values()) == {0}
    assert g.status == "cancelled" and reports == []


def test_a_sweep_deletes_the_checkpoints_of_a_finished_map_from_cloud_datastore(cloud_task_testbed):
    make_accounts(cloud_task_testbed, 100)
    with cloud_task_testbed.ndb_client().context():
        g = taskutils.map_query(count_call, CloudAccount.query(), shards=4, page_size=50)
    cloud_task_testbed.drain()
    assert g.status == "succeeded"
    kept = count(cloud_task_testbed, SHARD_KIND)
    assert kept == 4

    taskutils.sweep(datetime.timedelta(days=7))
    assert count(cloud_task_testbed, SHARD_KIND) == kept, "checkpoints younger than the sweep's age are kept"

    taskutils.sweep(datetime.timedelta(0))
    assert count(cloud_task_testbed, SHARD_KIND) == 0


def test_a_bundled_ndb_query_on_the_cloud_backend_is_refused_at_the_call_and_adds_nothing(cloud_task_testbed):
    with pytest.raises(TypeError, match="google.cloud.ndb query"):
        taskutils.map_query(count_call, BundledAccount.query())
    assert cloud_task_testbed.tasks() == [] and count(cloud_task_testbed, SHARD_KIND) == 0


def test_an_or_or_in_query_is_refused_at_the_call_and_adds_nothing(cloud_task_testbed):
    with cloud_task_testbed.ndb_client().context():
        for query in (
            CloudAccount.query(CloudAccount.age.IN([1, 2])),
            CloudAccount.query(CloudAccount.active == True, ndb.OR(CloudAccount.age == 1, CloudAccount.age == 2)),  # noqa: E712
        ):
            with pytest.raises(TypeError, match="OR or IN"):
                taskutils.map_query(count_call, query)
    assert cloud_task_testbed.tasks() == [] and count(cloud_task_testbed, SHARD_KIND) == 0


def test_a_map_started_in_a_namespace_walks_that_namespaces_entities_and_keeps_its_records_there(cloud_task_testbed):
    make_accounts(cloud_task_testbed, 30)  # the default namespace's: not mapped
    client = cloud_task_testbed.ndb_client()
    with client.context(namespace="tenant1"):
        ndb.put_multi([CloudAccount(id=i + 1, active=True, age=i) for i in range(120)])
        g = taskutils.map_query(touch, CloudAccount.query(), shards=3, page_size=25)

    cloud_task_testbed.drain()

    with client.context(namespace="tenant1"):
        mapped = CloudAccount.query().fetch(use_cache=False, use_global_cache=False)
        assert sorted(a.touched for a in mapped) == [1] * 120
        assert (g.status, g.processed) == ("succeeded", 120)
    assert set(touched(cloud_task_testbed).values()) == {0}
