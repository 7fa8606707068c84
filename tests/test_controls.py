"""unique, debounce, exclusive, concurrency and rate, in the task_testbed fixture (Google's stubs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from google.appengine.api import datastore, taskqueue
from google.appengine.ext import ndb
from google.appengine.runtime import request_environment

from taskutils import TaskHandle, task
from taskutils.controls import keys
from taskutils.exc import ControlKeyError, TaskOptionError

import tasklib

CONTROLS_HEADER = "X-Taskutils-Controls"
seen: list[Any] = []
bed: list[Any] = []  # the running test's testbed, for tasks that post other tasks while they run


@pytest.fixture(autouse=True)
def _clean(task_testbed):
    seen.clear()
    bed[:] = [task_testbed]
    yield
    bed.clear()


def queued(tb, queue: str = "default") -> list[Any]:
    return tb.tasks(queue)


def etas(tb, queue: str = "default") -> list[float]:
    """When each queued task is due, in seconds since the epoch, to the microsecond."""
    return sorted(t["eta_usec"] / 1e6 for t in tb.taskqueue.GetTasks(queue))


def post_one(tb, record) -> int:
    """Take one queued task out of its queue and post it now, as the queue would."""
    tb.taskqueue.DeleteTask(record.queue_name, record.name)
    status, _ = tb.post(record)
    return status


def post_new(tb, before: set[str]) -> int:
    """Post the one task added since ``before`` (the names queued then)."""
    (record,) = [t for t in tb.tasks() if t.name not in before]
    return post_one(tb, record)


# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"rate": "4 per second"},
        {"rate": "0/s"},
        {"debounce": 0},
        {"debounce": float("inf")},
        {"debounce": True},
        {"concurrency": 0},
        {"concurrency": 2.5},
        {"unique": "yes"},
        {"exclusive": 1},
        {"key": "account"},
        {"unique": True, "debounce": 5},
        {"exclusive": True, "concurrency": 2},
        {"unique": True, "name": "once"},
        {"debounce": 5, "countdown": 10},
    ],
)
def test_a_bad_control_option_is_refused_when_decorating(options):
    with pytest.raises(TaskOptionError):
        task(**options)(lambda x: x)


def test_control_options_merge_and_check_through_options():
    base = task(lambda x: x, concurrency=2)
    assert base.options(key=lambda x: "k").controls.key is not None
    with pytest.raises(TypeError):
        base.options(exclusive=True)


# -- keys ------------------------------------------------------------------------------------


def test_a_key_is_the_same_in_every_process():
    args = ("café", 1, 2.5, True, None, b"\x00\xff", [1, (2, 3)], {"b": 1, "a": [None]})
    here = keys.key_of("unique", "m/f", True, args, {"z": {3: "x"}})
    code = (
        "from taskutils.controls import keys;"
        "print(keys.key_of('unique', 'm/f', True, ('café', 1, 2.5, True, None, b'\\x00\\xff', [1, (2, 3)],"
        " {'a': [None], 'b': 1}), {'z': {3: 'x'}})[0])"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed}
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == here[0]


def test_keys_tell_apart_values_that_only_look_alike():
    def key(*args):
        return keys.key_of("unique", "m/f", True, args, {})[0]

    assert len({key(1), key(1.0), key(True), key("1"), key(b"1"), key([1]), key(None), key(0)}) == 8
    assert key({"a": 1, "b": 2}) == key({"b": 2, "a": 1})


@task(unique=True)
def unique_job(x: Any) -> None:
    seen.append(("unique", x))


def test_an_argument_without_a_stable_key_is_refused_at_the_call_and_nothing_is_added(task_testbed):
    with pytest.raises(ControlKeyError, match="key function"):
        unique_job(object())
    assert queued(task_testbed) == []


# -- unique -----------------------------------------------------------------------------------


def test_forty_concurrent_submits_of_one_unique_key_give_one_run_and_one_handle(task_testbed):
    handles: list[TaskHandle] = []
    errors: list[BaseException] = []
    start = threading.Barrier(40)
    # Once an app has called wrap_wsgi_app in this process, os.environ is per thread: give each
    # thread the test's App Engine environment, as the SDK gives a request's threads theirs.
    environment = request_environment.current_request.CloneRequestEnvironment()

    def submit() -> None:
        try:
            environment()
            start.wait(10)
            handles.append(unique_job.submit("report-7"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=submit) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len({h.id for h in handles}) == 1
    assert len(queued(task_testbed)) == 1
    task_testbed.drain()
    assert seen == [("unique", "report-7")]
    assert handles[0].status == "succeeded"


def test_a_plain_call_of_a_pending_unique_key_adds_nothing_and_returns_none(task_testbed):
    assert isinstance(unique_job("a"), taskqueue.Task)
    assert unique_job("a") is None
    assert isinstance(unique_job("b"), taskqueue.Task)  # another key
    assert len(queued(task_testbed)) == 2
    handle = unique_job.submit("a")
    task_testbed.drain()
    assert sorted(seen) == [("unique", "a"), ("unique", "b")]
    assert handle.status == "succeeded"


def test_once_a_unique_run_finished_the_next_call_adds_a_new_run(task_testbed):
    first = unique_job.submit("again")
    task_testbed.drain()
    second = unique_job.submit("again")
    assert second.id != first.id
    task_testbed.drain()
    assert seen == [("unique", "again"), ("unique", "again")]


@task(unique=lambda account, **_: f"account-{account}")
def unique_by_account(account: int, note: str = "") -> None:
    seen.append((account, note))


def test_a_unique_key_function_decides_what_counts_as_the_same_run(task_testbed):
    unique_by_account(1, note="first")
    assert unique_by_account(1, note="second") is None
    unique_by_account(2)
    task_testbed.drain()
    assert sorted(seen) == [(1, "first"), (2, "")]


@task(unique=True, retry_options=taskqueue.TaskRetryOptions(task_retry_limit=1))
def unique_flaky(x: str) -> None:
    seen.append(x)
    raise ValueError("not yet")


def test_a_unique_run_waiting_to_retry_still_holds_its_key_and_its_last_failure_frees_it(task_testbed):
    handle = unique_flaky.submit("k")
    (record,) = queued(task_testbed)
    assert post_one(task_testbed, record) == 500
    assert unique_flaky.submit("k") == handle  # retrying: still pending
    status, _ = task_testbed.post(record, retry_count=1)  # its last allowed attempt
    assert status == 500
    assert unique_flaky.submit("k") != handle


class Note(ndb.Model):
    text = ndb.StringProperty()


@task(unique=True, transactional=True)
def unique_in_transaction(x: str) -> None:
    seen.append(x)


def test_a_transactional_unique_call_commits_or_rolls_back_with_the_callers_transaction(task_testbed):
    class Rollback(Exception):
        pass

    def rolled_back() -> None:
        Note(text="no").put()
        unique_in_transaction("t")
        raise Rollback

    with pytest.raises(Rollback):
        ndb.transaction(rolled_back, xg=True)
    assert queued(task_testbed) == []

    def committed() -> Any:
        Note(text="yes").put()
        return unique_in_transaction("t")

    assert ndb.transaction(committed, xg=True) is not None
    assert ndb.transaction(committed, xg=True) is None  # the first one's marker committed with its task
    task_testbed.drain()
    assert seen == ["t"]


def test_a_unique_call_without_transactional_inside_a_transaction_adds_at_once(task_testbed):
    class Rollback(Exception):
        pass

    def rolled_back() -> None:
        Note(text="no").put()
        unique_job("outside")
        raise Rollback

    with pytest.raises(Rollback):
        ndb.transaction(rolled_back)
    assert len(queued(task_testbed)) == 1  # its own transaction committed
    assert unique_job("outside") is None


# -- exclusive and concurrency -------------------------------------------------------------


@task(exclusive=lambda key, then=None: key)
def exclusive_job(key: str, then: str | None = None) -> None:
    seen.append(("start", key))
    if then is not None:  # while holding its key, run another task now
        tb = bed[0]
        before = {t.name for t in tb.tasks()}
        exclusive_job(then)
        seen.append(("inner answered", post_new(tb, before)))
    seen.append(("end", key))


def test_an_exclusive_run_finding_its_key_held_is_put_back_without_failing(task_testbed):
    handle = exclusive_job.submit("a", then="a")
    (record,) = queued(task_testbed)
    assert post_one(task_testbed, record) == 200
    assert seen == [("start", "a"), ("inner answered", 200), ("end", "a")]
    (due,) = etas(task_testbed)  # the inner run, added again for later
    assert due > time.time()
    assert handle.status == "succeeded"
    task_testbed.drain()
    assert seen[-2:] == [("start", "a"), ("end", "a")]


def test_exclusive_runs_of_different_keys_run_side_by_side(task_testbed):
    exclusive_job("a", then="b")
    task_testbed.drain()
    assert seen == [("start", "a"), ("start", "b"), ("end", "b"), ("inner answered", 200), ("end", "a")]


inner: list[TaskHandle] = []


@task(exclusive=lambda *a: "shared")
def holder() -> None:
    tb = bed[0]
    before = {t.name for t in tb.tasks()}
    inner.append(other.submit())
    post_new(tb, before)
    seen.append(inner[-1].status)


@task(exclusive=lambda *a: "shared")
def other() -> None:
    seen.append("other ran")


def test_a_run_put_back_keeps_its_handle_pending_and_runs_later(task_testbed):
    holder()
    task_testbed.drain()
    assert seen == ["pending", "other ran"]
    assert inner[-1].status == "succeeded" and inner[-1].attempts == 1


@task(concurrency=2)
def two_at_once(depth: int) -> None:
    seen.append(("start", depth))
    if depth < 3:
        tb = bed[0]
        before = {t.name for t in tb.tasks()}
        two_at_once(depth + 1)
        post_new(tb, before)
    seen.append(("end", depth))


def test_concurrency_two_lets_two_runs_hold_the_task_and_puts_the_third_back(task_testbed):
    two_at_once(1)
    (record,) = queued(task_testbed)
    post_one(task_testbed, record)
    assert seen == [("start", 1), ("start", 2), ("end", 2), ("end", 1)]  # the third was put back
    assert len(queued(task_testbed)) == 1
    task_testbed.drain()
    assert seen[4:] == [("start", 3), ("end", 3)]


@task(exclusive=lambda *a: "big")
def big_holder() -> None:
    tb = bed[0]
    before = {t.name for t in tb.tasks()}
    takes_big("x" * 200_000)
    post_new(tb, before)


@task(exclusive=lambda *a: "big")
def takes_big(data: str) -> None:
    seen.append(len(data))


@task(concurrency=1, key=lambda account, inner=None: f"account-{account}")
def per_account(account: int, inner: int | None = None) -> None:
    seen.append(("start", account))
    if inner is not None:
        tb = bed[0]
        before = {t.name for t in tb.tasks()}
        per_account(inner)
        post_new(tb, before)
    seen.append(("end", account))


def test_concurrency_with_a_key_function_counts_runs_per_key(task_testbed):
    per_account(1, inner=2)  # another account: runs inside
    per_account(3, inner=3)  # the same account: put back
    for record in queued(task_testbed):
        post_one(task_testbed, record)
    assert seen == [("start", 1), ("start", 2), ("end", 2), ("end", 1), ("start", 3), ("end", 3)]
    assert len(queued(task_testbed)) == 1
    task_testbed.drain()
    assert seen[-2:] == [("start", 3), ("end", 3)]


def test_a_spilled_payload_survives_its_run_being_put_back(task_testbed):
    big_holder()
    task_testbed.drain()
    assert seen == [200_000]


def test_map_adds_tasks_that_carry_their_keys(task_testbed):
    exclusive_job.map(["a", "b"])
    assert all(CONTROLS_HEADER in t.headers for t in queued(task_testbed))
    task_testbed.drain()
    assert sorted(seen) == [("end", "a"), ("end", "b"), ("start", "a"), ("start", "b")]
    with pytest.raises(TypeError, match="once per item"):
        unique_job.map([1, 2])


# -- rate -------------------------------------------------------------------------------------


@task(rate="4/s")
def paced(i: int) -> None:
    seen.append(i)


def test_rate_four_a_second_starts_one_now_and_spreads_the_rest_a_quarter_second_apart(task_testbed):
    for i in range(16):
        paced(i)
    started = time.time()
    for record in queued(task_testbed):
        post_one(task_testbed, record)
    assert len(seen) == 1
    put_back = [eta - started for eta in etas(task_testbed)]
    assert len(put_back) == 15
    gaps = [b - a for a, b in zip(put_back, put_back[1:], strict=False)]
    assert all(0.15 < gap < 0.4 for gap in gaps), gaps  # 0.25 s apart, loaded machine
    assert 3.0 < put_back[-1] < 5.0  # the 16th starts about 3.75 s in: 16 over about 4 s
    task_testbed.drain()
    assert sorted(seen) == list(range(16))


# -- debounce ---------------------------------------------------------------------------------


@task(debounce=30, key=lambda *a, **k: "feed")
def refresh(version: int, then: int | None = None) -> None:
    seen.append(version)
    if then is not None:
        refresh(then)  # a call made while the run runs


def test_a_burst_of_ten_debounced_calls_gives_one_run_with_the_last_calls_arguments(task_testbed):
    called = time.time()
    added = [refresh(v) for v in range(10)]
    assert isinstance(added[0], taskqueue.Task) and added[1:] == [None] * 9
    (due,) = etas(task_testbed)
    assert 25 < due - called < 35  # SECONDS after the burst's first call
    task_testbed.drain()
    assert seen == [9]


def test_a_debounced_call_made_while_its_run_runs_gets_one_more_run(task_testbed):
    refresh(1, then=2)
    refresh(1, then=2)
    task_testbed.drain()
    assert seen == [1, 2]


def test_debounced_submits_answer_the_pending_runs_handle(task_testbed):
    first = refresh.submit(1)
    assert refresh.submit(2) == first
    task_testbed.drain()
    assert first.status == "succeeded"
    assert seen == [2]


@task(debounce=5, key=lambda *a: "flaky")
def flaky(v: int) -> None:
    if not seen:
        seen.append("failed")
        raise ValueError("first attempt fails")
    seen.append(v)


def test_a_failed_debounced_run_is_retried_with_the_latest_arguments(task_testbed):
    flaky(1)
    (record,) = queued(task_testbed)
    assert post_one(task_testbed, record) == 500
    flaky(2)  # while it waits to retry: merged into the retry
    assert len(queued(task_testbed)) == 0
    status, _ = task_testbed.post(record, retry_count=1)
    assert status == 200
    assert seen == ["failed", 2]


@task(debounce=5, key=lambda *a: "paced-feed", rate="1/h")
def paced_feed(v: int) -> None:
    seen.append(v)


def test_a_debounced_run_put_back_by_its_rate_still_runs_with_the_last_arguments(task_testbed):
    paced_feed(1)
    task_testbed.drain()
    paced_feed(2)
    paced_feed(3)
    (record,) = queued(task_testbed)
    assert post_one(task_testbed, record) == 200  # no token for an hour: put back
    assert seen == [1] and len(queued(task_testbed)) == 1
    task_testbed.drain()  # the fixture posts it now, early: its start was reserved
    assert seen == [1, 3]


def test_with_signing_keys_unique_debounced_and_put_back_runs_carry_valid_signatures(task_testbed, signed):
    handle = unique_job.submit("signed")
    refresh(1)
    refresh(2)
    holder()  # puts `other` back once, with the same signed payload and handle headers
    task_testbed.drain()
    assert handle.status == "succeeded"
    assert ("unique", "signed") in seen and 2 in seen and "other ran" in seen
    assert inner[-1].status == "succeeded"


def test_with_signing_keys_a_controls_header_changed_or_removed_is_refused_before_anything_runs(task_testbed, signed):
    exclusive_job("guarded")
    (record,) = queued(task_testbed)
    spec = json.loads(record.headers[CONTROLS_HEADER])
    name, _, lease, readable = spec["l"]
    forged = json.dumps({**spec, "l": [name, 99, lease, readable]})  # let 99 runs hold the key at once
    for header in (None, forged, "not json"):
        status, _ = task_testbed.post(record, HTTP_X_TASKUTILS_CONTROLS=header)
        assert status in (400, 403), header
    assert seen == []
    put_back = json.dumps({**spec, "p": 3})  # what a put-back changes only moves when the run starts
    status, _ = task_testbed.post(record, HTTP_X_TASKUTILS_CONTROLS=put_back)
    assert status == 200 and ("start", "guarded") in seen


def test_a_plain_task_carries_no_controls_and_leaves_no_control_entities(task_testbed):
    tasklib.record(1)
    assert CONTROLS_HEADER not in queued(task_testbed)[0].headers
    task_testbed.drain()
    assert tasklib.ran == [((1,), {})]
    kinds = ("_TaskutilsUnique", "_TaskutilsDebounce", "_TaskutilsLease", "_TaskutilsRate")
    assert [k for k in kinds if datastore.Query(k).Count()] == []


def test_finished_controlled_runs_leave_no_marker_lease_or_debounce_state(task_testbed):
    unique_job("x")
    exclusive_job("y")
    refresh(1)
    task_testbed.drain()
    kinds = ("_TaskutilsUnique", "_TaskutilsDebounce", "_TaskutilsLease")
    assert [k for k in kinds if datastore.Query(k).Count()] == []
