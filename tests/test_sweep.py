"""taskutils.sweep: spilled payloads whose task can no longer run are deleted, and counted."""

import datetime
import importlib
import os

import pytest
import webtest
from google.appengine.api import namespace_manager
from google.appengine.ext import ndb

import taskutils
from taskutils import spill
from taskutils.spill import TaskPayloadChunk

import tasklib

sweep_module = importlib.import_module("taskutils.sweep")


def every_entity():
    """Every entity but the one a sweep keeps per namespace: when it last swept."""
    return [key for key in ndb.Query().fetch(keys_only=True) if key.kind() != "_TaskutilsSwept"]


def lose_every_queued_task(task_testbed):
    """What a task that exhausted its retries, or was purged, leaves behind: its spill, no task."""
    for name in task_testbed.queue_names():
        task_testbed.taskqueue.FlushQueue(name)


def test_a_sweep_deletes_orphaned_spills_and_counts_payloads_not_entities(task_testbed):
    tasklib.record(os.urandom(2_500_000))  # three entities
    tasklib.record(os.urandom(300_000))  # one
    lose_every_queued_task(task_testbed)
    assert len(every_entity()) == 4

    assert taskutils.sweep(0) == 2

    assert every_entity() == []
    assert taskutils.sweep(0) == 0


def test_a_sweep_leaves_spills_younger_than_asked_and_their_tasks_still_run(task_testbed):
    blob = os.urandom(300_000)
    tasklib.record(blob)

    assert taskutils.sweep(datetime.timedelta(days=7)) == 0
    assert taskutils.sweep(3600) == 0

    task_testbed.drain()
    assert tasklib.ran == [((blob,), {})]
    assert every_entity() == []


@pytest.mark.parametrize(
    "options",
    [{"countdown": 3 * 24 * 3600}, {"eta": datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3)}],
    ids=["countdown", "eta"],
)
def test_a_spill_counts_its_age_from_when_its_task_is_due_not_from_when_it_was_written(task_testbed, options):
    tasklib.record.options(**options)(os.urandom(300_000))

    assert taskutils.sweep(0) == 0
    assert taskutils.sweep(datetime.timedelta(days=1)) == 0
    assert len(every_entity()) == 1

    four_days_on = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(days=4)
    assert spill.sweep(four_days_on) == 1
    assert every_entity() == []


def test_a_sweep_reaches_spills_in_every_namespace(task_testbed):
    for namespace in ("", "tenant-7", "tenant-8"):
        namespace_manager.set_namespace(namespace)
        try:
            tasklib.record(os.urandom(300_000))
        finally:
            namespace_manager.set_namespace("")
    lose_every_queued_task(task_testbed)

    assert taskutils.sweep(0) == 3

    for namespace in ("", "tenant-7", "tenant-8"):
        assert TaskPayloadChunk.query(namespace=namespace).fetch(keys_only=True) == []


def test_a_sweep_deletes_in_batches_and_counts_a_payload_split_across_two_batches_once(task_testbed, monkeypatch):
    monkeypatch.setattr(spill, "SWEEP_BATCH", 2)
    for size in (2_500_000, 300_000, 2_500_000, 300_000):  # 3 + 1 + 3 + 1 entities
        tasklib.record(os.urandom(size))
    lose_every_queued_task(task_testbed)
    deletes = []
    datastore = task_testbed.testbed.get_stub("datastore_v3")
    real_call = datastore.MakeSyncCall

    def counting(service, call, request, response, *args):
        if call == "Delete":
            deletes.append(len(request.key))
        return real_call(service, call, request, response, *args)

    monkeypatch.setattr(datastore, "MakeSyncCall", counting)

    assert taskutils.sweep(0) == 4

    assert every_entity() == []
    assert max(deletes) <= 2 and sum(deletes) == 8


def test_a_sweep_leaves_other_entities_alone(task_testbed):
    class Note(ndb.Model):
        text = ndb.StringProperty()

    note = Note(text="mine").put()
    tasklib.record(os.urandom(300_000))
    lose_every_queued_task(task_testbed)

    assert taskutils.sweep(0) == 1
    assert every_entity() == [note]


def test_sweep_takes_seconds_or_a_timedelta_and_refuses_a_negative_age(task_testbed):
    with pytest.raises(ValueError, match="negative"):
        taskutils.sweep(-1)
    with pytest.raises(ValueError, match="negative"):
        taskutils.sweep(datetime.timedelta(seconds=-1))


def test_the_sweep_app_runs_the_sweep_for_cron_requests_only(task_testbed, monkeypatch):
    monkeypatch.setattr(sweep_module, "DEFAULT_AGE", datetime.timedelta(0))
    tasklib.record(os.urandom(300_000))
    lose_every_queued_task(task_testbed)
    client = webtest.TestApp(taskutils.sweep_app)

    refused = client.get("/cron/taskutils-sweep", expect_errors=True)
    forged = client.get("/cron/taskutils-sweep", headers={"X-Appengine-Cron": "1"}, expect_errors=True)
    assert (refused.status_int, forged.status_int) == (403, 403)
    assert len(every_entity()) == 1

    answer = client.get("/cron/taskutils-sweep", headers={"X-Appengine-Cron": "true"})
    assert answer.status_int == 200
    assert answer.text == "deleted 1\n"
    assert every_entity() == []


def test_the_sweep_app_keeps_a_week_of_spills_by_default(task_testbed):
    tasklib.record(os.urandom(300_000))
    lose_every_queued_task(task_testbed)

    answer = webtest.TestApp(taskutils.sweep_app).get("/", headers={"X-Appengine-Cron": "true"})

    assert answer.text == "deleted 0\n"
    assert len(every_entity()) == 1
