"""Big payloads: spilled to Datastore, carried as a signed pointer, cleaned up after."""

import datetime
import hashlib
import logging
import os
import time

import pytest
from google.appengine.api import namespace_manager, taskqueue
from google.appengine.api.taskqueue import taskqueue_service_bytes_pb2 as taskqueue_pb
from google.appengine.ext import ndb
from google.appengine.runtime import apiproxy_errors

import taskutils
from taskutils import PermanentTaskFailure, spill, task
from taskutils.codec import MAX_TRANSACTIONAL_PAYLOAD
from taskutils.exc import PayloadError, PayloadTooLargeError
from taskutils.spill import CHUNK_SIZE, TaskPayloadChunk

import tasklib

ENTITY_LIMIT = 1_048_572  # Datastore's largest entity, key included
attempts: list[int] = []


@task
def fail_once(blob):
    attempts.append(len(blob))
    if len(attempts) == 1:
        raise RuntimeError("the first attempt fails")


@task
def give_up(blob):
    raise PermanentTaskFailure("not this one")


@task
def always_fail(blob):
    attempts.append(len(blob))
    raise RuntimeError("this task never succeeds")


class Account(ndb.Model):
    balance = ndb.IntegerProperty(default=0)


class Boom(Exception):
    pass


@pytest.fixture(autouse=True)
def _signed_and_fresh(signed):
    attempts.clear()


def every_entity():
    return ndb.Query().fetch(keys_only=True)


def chunks():
    return TaskPayloadChunk.query().fetch()


@pytest.mark.parametrize("size", [200_000, 2_000_000, 32_000_000], ids=["200KB", "2MB", "32MB"])
def test_a_big_payload_round_trips_byte_for_byte_and_leaves_no_entity(task_testbed, size):
    blob = os.urandom(size)

    tasklib.record(blob, name="big")

    (queued,) = task_testbed.tasks()
    assert len(queued.payload) < 1024
    assert len(chunks()) >= size // CHUNK_SIZE
    assert task_testbed.drain() == 1
    assert tasklib.ran == [((blob,), {"name": "big"})]
    assert every_entity() == []


def test_spilled_entities_stay_under_the_datastore_entity_limit_even_under_a_long_parent_key(task_testbed):
    parent = ndb.Key(Account, "a" * 500, Account, "b" * 500, Account, "c" * 499)
    blob = os.urandom(2_500_000)

    @ndb.transactional
    def enqueue():
        tasklib.record.options(transactional=True, parent=parent)(blob)

    enqueue()

    stored = chunks()
    assert [c.key.parent().parent() for c in stored] == [parent] * 3
    assert max(c._to_pb().ByteSize() for c in stored) < ENTITY_LIMIT
    task_testbed.drain()
    assert tasklib.ran == [((blob,), {})]
    assert every_entity() == []


def test_a_committed_transactional_spill_runs_and_is_deleted_after(task_testbed):
    blob = os.urandom(2_000_000)

    @ndb.transactional
    def enqueue():
        tasklib.record.options(transactional=True)(blob)

    enqueue()

    assert len(task_testbed.tasks()) == 1
    assert len(chunks()) >= 2
    task_testbed.drain()
    assert tasklib.ran == [((blob,), {})]
    assert every_entity() == []


def test_a_rolled_back_transactional_spill_leaves_neither_task_nor_entity(task_testbed):
    @ndb.transactional
    def enqueue_then_fail():
        tasklib.record.options(transactional=True)(os.urandom(2_000_000))
        raise Boom

    with pytest.raises(Boom):
        enqueue_then_fail()

    assert task_testbed.tasks() == []
    assert every_entity() == []


def test_parent_puts_the_spill_in_the_callers_entity_group(task_testbed):
    account = Account().put()
    blob = os.urandom(2_000_000)

    @ndb.transactional  # one entity group: not cross-group
    def pay():
        entity = account.get()
        entity.balance += 10
        entity.put()
        tasklib.record.options(transactional=True, parent=account)(blob)

    pay()

    assert {c.key.parent().parent() for c in chunks()} == {account}
    task_testbed.drain()
    assert tasklib.ran == [((blob,), {})]
    assert every_entity() == [account]
    assert account.get().balance == 10


def test_a_rolled_back_spill_under_a_parent_leaves_the_group_as_it_was(task_testbed):
    account = Account().put()

    @ndb.transactional
    def pay_then_fail():
        entity = account.get()
        entity.balance += 10
        entity.put()
        tasklib.record.options(transactional=True, parent=account)(os.urandom(2_000_000))
        raise Boom

    with pytest.raises(Boom):
        pay_then_fail()

    assert task_testbed.tasks() == []
    assert every_entity() == [account]
    assert account.get().balance == 0


def test_a_spill_that_cannot_join_a_single_group_transaction_says_to_give_parent(task_testbed):
    account = Account().put()

    @ndb.transactional
    def pay():
        entity = account.get()
        entity.balance += 10
        entity.put()
        tasklib.record.options(transactional=True)(os.urandom(2_000_000))

    with pytest.raises(PayloadError, match=r"tasklib/record: .*parent=.*xg=True"):
        pay()

    assert task_testbed.tasks() == []
    assert every_entity() == [account]
    assert account.get().balance == 0


def test_over_the_transaction_limit_raises_at_the_call_site_before_anything_is_written(task_testbed):
    @ndb.transactional
    def enqueue():
        with pytest.raises(PayloadTooLargeError, match=r"tasklib/record: .*inside a transaction.*argument 0"):
            tasklib.record.options(transactional=True)(os.urandom(MAX_TRANSACTIONAL_PAYLOAD + 1))
        Account(balance=1).put()

    enqueue()

    assert task_testbed.tasks() == []
    assert [k.kind() for k in every_entity()] == ["Account"]


def test_spills_in_one_transaction_are_capped_together(task_testbed):
    first, second = os.urandom(5_000_000), os.urandom(5_000_000)

    @ndb.transactional
    def enqueue():
        tasklib.record.options(transactional=True)(first)
        with pytest.raises(PayloadTooLargeError, match="on top of"):
            tasklib.record.options(transactional=True)(second)

    enqueue()

    task_testbed.drain()
    assert tasklib.ran == [((first,), {})]
    assert every_entity() == []


def test_a_plain_task_spilled_inside_a_rolled_back_transaction_still_runs(task_testbed):
    blob = os.urandom(300_000)

    @ndb.transactional
    def enqueue_then_fail():
        tasklib.record(blob)  # not transactional: added now, whatever the transaction does
        raise Boom

    with pytest.raises(Boom):
        enqueue_then_fail()

    task_testbed.drain()
    assert tasklib.ran == [((blob,), {})]
    assert every_entity() == []


@pytest.mark.parametrize("size", [10, 300_000], ids=["small", "spilled"])
def test_a_transactional_task_outside_a_transaction_is_refused_whatever_its_size(task_testbed, size):
    with pytest.raises(taskqueue.BadTransactionStateError):
        tasklib.record.options(transactional=True)(b"x" * size)

    assert task_testbed.tasks() == []
    assert every_entity() == []


def test_a_spill_written_in_a_namespace_is_found_by_the_worker(task_testbed):
    blob = os.urandom(300_000)
    namespace_manager.set_namespace("tenant-7")
    try:
        tasklib.record(blob)
    finally:
        namespace_manager.set_namespace("")

    task_testbed.drain()
    assert tasklib.ran == [((blob,), {})]
    assert TaskPayloadChunk.query(namespace="tenant-7").fetch() == []


def test_a_missing_entity_is_an_error_and_the_task_is_dropped_not_run(task_testbed, caplog):
    caplog.set_level(logging.INFO, logger="taskutils")
    tasklib.record(os.urandom(2_500_000))
    chunks()[1].key.delete()

    (queued,) = task_testbed.tasks()
    status, _ = task_testbed.post(queued)

    assert 200 <= status < 300
    assert tasklib.ran == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("lost 1 of its 3 entities" in m for m in errors)
    assert every_entity() == []


def test_a_spill_that_does_not_match_its_digest_is_dropped_not_run(task_testbed, caplog):
    caplog.set_level(logging.INFO, logger="taskutils")
    tasklib.record(os.urandom(2_500_000))
    chunk = chunks()[0]
    chunk.data = chunk.data[:-1] + bytes([chunk.data[-1] ^ 1])
    chunk.put()

    (queued,) = task_testbed.tasks()
    status, _ = task_testbed.post(queued)

    assert 200 <= status < 300
    assert tasklib.ran == []
    assert any("does not match its digest" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert every_entity() == []


def test_unsigned_a_big_payload_carries_no_digest_and_still_round_trips(task_testbed):
    # Without keys nothing is authenticated, so the SHA-256 (as costly as the rest of the call) is not made.
    taskutils.configure(secret_keys=[])
    blob = os.urandom(1_500_000)
    tasklib.record(blob)
    (queued,) = task_testbed.tasks()
    assert b'"d"' not in queued.payload

    task_testbed.drain()

    assert tasklib.ran == [((blob,), {})]
    assert every_entity() == []


def test_a_signed_big_payload_carries_the_digest_of_its_data(task_testbed):
    blob = os.urandom(150_000)
    tasklib.record(blob)
    (queued,) = task_testbed.tasks()
    (chunk,) = chunks()
    assert hashlib.sha256(chunk.data).hexdigest().encode() in queued.payload


def test_a_failed_attempt_keeps_the_spill_for_the_retry(task_testbed):
    blob = os.urandom(1_500_000)
    fail_once(blob)
    (queued,) = task_testbed.tasks()

    first, _ = task_testbed.post(queued)
    assert first == 500
    assert chunks()

    second, _ = task_testbed.post(queued)
    assert second == 200
    assert attempts == [len(blob), len(blob)]
    assert every_entity() == []


def test_a_permanent_failure_deletes_the_spill(task_testbed):
    give_up(os.urandom(1_500_000))

    task_testbed.drain()

    assert every_entity() == []


def test_a_failed_clean_up_is_logged_and_the_finished_task_is_not_run_again(task_testbed, caplog):
    caplog.set_level(logging.INFO, logger="taskutils")
    blob = os.urandom(300_000)
    tasklib.record(blob)
    datastore = task_testbed.testbed.get_stub("datastore_v3")
    datastore.SetError(apiproxy_errors.ApplicationError(5, "timeout"), "Delete")  # 5: datastore TIMEOUT

    task_testbed.drain()

    assert tasklib.ran == [((blob,), {})]
    assert any("left behind" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_discarding_a_task_that_could_not_be_added_deletes_its_spill(task_testbed):
    small = tasklib.record._build(("small",), {})
    big = tasklib.record._build((os.urandom(300_000),), {})
    assert chunks()

    spill.discard(small.payload)
    spill.discard(big.payload)

    assert every_entity() == []


def test_a_named_big_task_that_already_exists_leaves_only_the_first_spill(task_testbed):
    named = tasklib.record.options(name="only-once")
    named(os.urandom(300_000))
    first = {c.key for c in chunks()}
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        named(os.urandom(300_000))
    assert {c.key for c in chunks()} == first
    task_testbed.drain()
    assert every_entity() == []


def test_big_tasks_mapped_to_a_queue_that_refuses_them_leave_no_spill(tmp_path):
    from taskutils.testing import TaskTestbed

    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text("queue:\n- name: reports\n  rate: 5/s\n")
    with TaskTestbed(queue_yaml):
        with pytest.raises(taskqueue.UnknownQueueError):
            tasklib.record.options(queue="nowhere").map([os.urandom(300_000), os.urandom(300_000)])
        assert every_entity() == []


# Spills are never left behind by a failed write or add, and never deleted while their task may run.


def fail_the_nth(monkeypatch, stub, call, n, error, after=False):
    """Make the nth RPC `call` to a real stub raise error: before it runs, or after it has run (committed)."""
    real = stub.MakeSyncCall
    seen = []

    def make_sync_call(service, method, request, response, *args):
        if method == call:
            seen.append(method)
            if len(seen) == n and not after:
                raise error
            real(service, method, request, response, *args)
            if len(seen) == n:
                raise error
            return None
        return real(service, method, request, response, *args)

    monkeypatch.setattr(stub, "MakeSyncCall", make_sync_call)
    return seen


def test_a_put_that_fails_on_the_second_of_three_chunks_leaves_no_chunk_behind(task_testbed, monkeypatch):
    datastore = task_testbed.testbed.get_stub("datastore_v3")
    puts = fail_the_nth(monkeypatch, datastore, "Put", 2, apiproxy_errors.ApplicationError(5, "timeout"))

    with pytest.raises(Exception, match="timeout"):
        tasklib.record(os.urandom(2_500_000))

    assert len(puts) == 3  # chunks 1 and 3 were written
    monkeypatch.undo()
    assert every_entity() == []
    assert task_testbed.tasks() == []


def test_a_failure_after_the_spill_is_written_but_before_the_task_is_built_deletes_the_spill(task_testbed, monkeypatch):
    from taskutils import codec

    def broken_frame(*args):
        raise MemoryError

    monkeypatch.setattr(codec, "frame", broken_frame)

    with pytest.raises(MemoryError):
        tasklib.record(os.urandom(300_000))

    assert every_entity() == []


def transient():
    return apiproxy_errors.ApplicationError(taskqueue_pb.TaskQueueServiceError.TRANSIENT_ERROR)


def test_an_add_that_commits_and_then_raises_keeps_the_spill_its_task_will_read(task_testbed, monkeypatch, caplog):
    blob = os.urandom(300_000)
    fail_the_nth(monkeypatch, task_testbed.taskqueue, "BulkAdd", 1, transient(), after=True)

    with pytest.raises(taskqueue.TransientError):
        tasklib.record(blob)

    assert len(task_testbed.tasks()) == 1  # the queue took it after all
    assert any("taskutils.sweep" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    task_testbed.drain()
    assert tasklib.ran == [((blob,), {})]
    assert every_entity() == []


def test_retrying_a_named_call_whose_add_committed_then_raised_runs_the_first_payload_and_leaves_nothing(
    task_testbed, monkeypatch
):
    named = tasklib.record.options(name="nightly-2026-12-02")
    first, second = os.urandom(300_000), os.urandom(300_000)
    fail_the_nth(monkeypatch, task_testbed.taskqueue, "BulkAdd", 1, transient(), after=True)
    with pytest.raises(taskqueue.TransientError):
        named(first)  # the queue took it, but the caller cannot know

    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        named(second)  # the retry: its own spill goes, the first task keeps its own

    task_testbed.drain()
    assert tasklib.ran == [((first,), {})]
    assert every_entity() == []


def test_a_map_whose_add_commits_and_then_raises_keeps_the_spills_its_tasks_will_read(task_testbed, monkeypatch):
    blobs = [os.urandom(300_000), os.urandom(300_000)]
    fail_the_nth(monkeypatch, task_testbed.taskqueue, "BulkAdd", 1, transient(), after=True)

    with pytest.raises(taskqueue.TransientError):
        tasklib.record.map(blobs)

    task_testbed.drain()
    assert sorted(tasklib.ran) == sorted(((blob,), {}) for blob in blobs)
    assert every_entity() == []


def test_an_add_the_queue_refused_outright_deletes_the_spill(task_testbed, monkeypatch):
    refused = apiproxy_errors.ApplicationError(taskqueue_pb.TaskQueueServiceError.UNKNOWN_QUEUE)
    fail_the_nth(monkeypatch, task_testbed.taskqueue, "BulkAdd", 1, refused)

    with pytest.raises(taskqueue.UnknownQueueError):
        tasklib.record(os.urandom(300_000))

    assert every_entity() == []


LIMIT_2 = taskqueue.TaskRetryOptions(task_retry_limit=2)


def test_a_task_that_fails_its_last_allowed_attempt_deletes_its_spill(task_testbed):
    always_fail.options(retry_options=LIMIT_2)(os.urandom(300_000))
    (queued,) = task_testbed.tasks()

    for retry_count in (0, 1):
        status, _ = task_testbed.post(queued, HTTP_X_APPENGINE_TASKRETRYCOUNT=str(retry_count))
        assert status == 500
        assert chunks()  # the queue will try again: keep it
    status, _ = task_testbed.post(queued, HTTP_X_APPENGINE_TASKRETRYCOUNT="2")

    assert status == 500
    assert attempts == [300_000] * 3
    assert every_entity() == []


def test_a_task_exhausting_its_retries_in_the_drain_leaves_no_spill(task_testbed):
    always_fail.options(retry_options=LIMIT_2)(os.urandom(300_000))

    with pytest.raises(RuntimeError, match="never succeeds"):
        task_testbed.drain(retries=2)

    assert len(attempts) == 3
    assert every_entity() == []


@pytest.mark.parametrize(
    "retry_options",
    [
        None,
        taskqueue.TaskRetryOptions(task_age_limit=60),
        taskqueue.TaskRetryOptions(task_retry_limit=2, task_age_limit=60),
    ],
    ids=["no-limit", "age-limit", "retry-and-age-limit"],
)
def test_a_failing_task_that_cannot_tell_its_last_attempt_keeps_its_spill_for_the_sweep(task_testbed, retry_options):
    always_fail.options(retry_options=retry_options)(os.urandom(300_000))
    (queued,) = task_testbed.tasks()

    for retry_count in range(10):
        status, _ = task_testbed.post(queued, HTTP_X_APPENGINE_TASKRETRYCOUNT=str(retry_count))
        assert status == 500
    assert len(chunks()) == 1  # the queue may still send it: only sweep, later, deletes it

    assert taskutils.sweep(datetime.timedelta(days=7)) == 0
    assert len(chunks()) == 1


def test_a_retry_limit_in_a_pointer_cannot_be_forged(task_testbed):
    always_fail.options(retry_options=LIMIT_2)(os.urandom(300_000))
    (queued,) = task_testbed.tasks()
    body = queued.payload
    forged = body.replace(b'"r":2', b'"r":0')
    assert forged != body
    queued._Task__payload = forged

    status, _ = task_testbed.post(queued)

    assert status == 403
    assert len(chunks()) == 1


@pytest.mark.parametrize("fail", [False, True], ids=["commits", "rolls-back"])
def test_a_spill_in_a_cross_group_transaction_commits_or_rolls_back_with_the_callers_writes(task_testbed, fail):
    blob = os.urandom(2_000_000)

    @ndb.transactional(xg=True)
    def pay():
        Account(balance=10).put()
        tasklib.record.options(transactional=True)(blob)
        if fail:
            raise Boom

    if fail:
        with pytest.raises(Boom):
            pay()
        assert task_testbed.tasks() == []
        assert every_entity() == []
    else:
        pay()
        assert len(chunks()) == 3  # 2,000,000 bytes and the pickle around them
        task_testbed.drain()
        assert tasklib.ran == [((blob,), {})]
        assert [k.kind() for k in every_entity()] == ["Account"]


def test_a_pointer_written_before_the_low_level_api_still_loads(task_testbed):
    # Tasks queued by an earlier release carry ndb's urlsafe group key: they still run after a deploy.
    data = os.urandom(1_500_000)
    group = ndb.Key(spill.GROUP_KIND, "queued-before-the-deploy")
    ndb.put_multi(
        [
            TaskPayloadChunk(
                key=ndb.Key(TaskPayloadChunk, i + 1, parent=group), data=data[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]
            )
            for i in range(2)
        ]
    )
    pointer = b'{"g":"%s","n":2,"d":"%s"}' % (group.urlsafe(), hashlib.sha256(data).hexdigest().encode())

    assert spill.load(pointer) == data
    spill.delete(pointer)
    assert every_entity() == []


def test_serve_retrying_a_failing_spilled_task_to_its_retry_limit_leaves_no_entity():
    """Google's own taskqueue stub decides the retries, over HTTP, as App Engine would."""
    from taskutils.local import LocalServer

    server = LocalServer(port=0).start()
    try:
        retry = taskqueue.TaskRetryOptions(task_retry_limit=2, min_backoff_seconds=0.1, max_backoff_seconds=0.2)
        always_fail.options(retry_options=retry)(os.urandom(300_000))
        deadline = time.monotonic() + 60

        # Only the spill's entities: the server also fires the periodic jobs that other test
        # modules of this process declared, and those keep records of their own.
        def spilled():
            return [key for key in every_entity() if key.kind().startswith("_TaskutilsPayload")]

        while time.monotonic() < deadline and (len(attempts) < 3 or spilled()):
            time.sleep(0.1)
        time.sleep(1)  # long past the backoff: a fourth attempt would have come

        assert attempts == [300_000] * 3
        assert spilled() == []
    finally:
        server.stop()
