"""Groups: ``submit_map``, ``GroupHandle``, fan-in with ``then``, on Google's testbed stubs."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.appengine.api import apiproxy_stub_map, datastore, taskqueue
from google.appengine.ext import ndb

import taskutils
from taskutils import GroupHandle, PermanentTaskFailure, TaskHandle, task
from taskutils.exc import ResultError, TaskCancelledError

import tasklib

HANDLE_HEADER = "X-Taskutils-Handle"


@task
def square(n: int) -> int:
    tasklib.ran.append(("square", n))
    return n * n


@task
def square_but_not_7(n: int) -> int:
    if n == 7:
        raise PermanentTaskFailure("7 is right out")
    return n * n


@task
def summarize(results: list[int]) -> int:
    tasklib.ran.append(("summarize", results))
    return sum(results)


@pytest.fixture
def datastore_writes(task_testbed) -> Iterator[dict[str, Any]]:
    """Datastore RPCs by call name, and how many times each entity was written, counted at the stub."""
    stub = apiproxy_stub_map.apiproxy.GetStub("datastore_v3")
    seen: dict[str, Any] = {"calls": collections.Counter(), "writes": collections.Counter()}
    original = stub.MakeSyncCall

    def counting(service: str, call: str, request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        seen["calls"][call] += 1
        if call == "Put":
            for entity in request.entity:
                seen["writes"][tuple(e.name or e.id for e in entity.key.path.element)] += 1
        return original(service, call, request, response, *args, **kwargs)

    stub.MakeSyncCall = counting
    yield seen
    stub.MakeSyncCall = original


def children_tasks(bed: Any) -> list[Any]:
    return [t for t in bed.tasks("default") if "/square" in t.url]


def test_submit_map_adds_one_child_per_item_and_results_come_back_in_item_order(task_testbed):
    group = square.submit_map(range(40))
    assert group.status == "pending"
    assert group.progress == 0.0
    assert [h.id for h in group.handles] == [f"{group.id}.{i}" for i in range(40)]
    assert sorted(t.headers[HANDLE_HEADER] for t in children_tasks(task_testbed)) == sorted(h.id for h in group.handles)

    task_testbed.drain()

    assert group.status == "succeeded"
    assert group.done()
    assert group.progress == 1.0
    assert group.results() == [n * n for n in range(40)]
    assert group.handles[5].result() == 25
    assert TaskHandle.get(group.handles[5].id).status == "succeeded"
    assert GroupHandle.get(group.id).total == 40
    assert GroupHandle.get("no-such-group") is None


def test_submit_map_writes_one_entity_and_each_child_two_reads_and_two_writes(task_testbed, datastore_writes):
    group = square.submit_map(range(200))
    assert datastore_writes["calls"] == {"Put": 1}
    datastore_writes["calls"].clear()

    for added in children_tasks(task_testbed):
        task_testbed.taskqueue.DeleteTask("default", added.name)
        task_testbed.post(added)

    calls = datastore_writes["calls"]
    assert calls["Get"] == 2 * 200
    assert calls["Put"] == 2 * 200
    assert calls["RunQuery"] == 0
    task_testbed.drain()  # the fan-in: one task per leaf, one per node, then the group
    assert group.results() == [n * n for n in range(200)]


def test_no_entity_is_written_by_every_child(task_testbed, datastore_writes):
    group = square.submit_map(range(600))

    task_testbed.drain()

    assert group.status == "succeeded"
    busiest, writes = datastore_writes["writes"].most_common(1)[0]
    assert writes <= 2 * 32, (busiest, writes)  # a leaf: start and finish of at most 32 children
    assert datastore_writes["writes"][("_TaskutilsGroup", group.id)] <= 1 + 16


def test_then_runs_the_summary_once_after_every_child_succeeded_with_results_in_item_order(task_testbed):
    group = square.submit_map(range(30))
    summary = group.then(summarize)

    for added in children_tasks(task_testbed)[:29]:
        task_testbed.taskqueue.DeleteTask("default", added.name)
        task_testbed.post(added)
    task_testbed.drain()  # the last child, then the fan-in

    assert [r for r in tasklib.ran if r[0] == "summarize"] == [("summarize", [n * n for n in range(30)])]
    assert summary.result() == sum(n * n for n in range(30))


def test_then_on_a_group_that_already_succeeded_still_fires_once(task_testbed):
    group = square.submit_map([1, 2, 3])
    task_testbed.drain()

    summary = group.then(summarize)
    task_testbed.drain()

    assert summary.result() == 14
    assert [r for r in tasklib.ran if r[0] == "summarize"] == [("summarize", [1, 4, 9])]


def test_a_failed_child_fails_the_group_and_its_callback_never_runs(task_testbed):
    group = square_but_not_7.submit_map(range(10))
    summary = group.then(summarize)

    task_testbed.drain()

    assert group.status == "failed"
    assert group.handles[7].status == "failed"
    assert group.handles[6].result() == 36
    with pytest.raises(PermanentTaskFailure, match="7 is right out"):
        group.results()
    assert summary.status == "cancelled"
    assert not [r for r in tasklib.ran if r[0] == "summarize"]


def test_duplicate_deliveries_of_every_child_record_one_result_each_and_one_summary(task_testbed):
    group = square.submit_map(range(20))
    summary = group.then(summarize)
    children = children_tasks(task_testbed)

    for added in children + children:
        task_testbed.post(added)
    for added in children:
        task_testbed.taskqueue.DeleteTask("default", added.name)
    for fan_in in task_testbed.tasks():  # the fan-in tasks, each delivered twice too
        task_testbed.post(fan_in)
    task_testbed.drain()

    assert sorted(r[1] for r in tasklib.ran if r[0] == "square") == list(range(20))
    assert [r for r in tasklib.ran if r[0] == "summarize"] == [("summarize", [n * n for n in range(20)])]
    assert summary.result() == sum(n * n for n in range(20))
    assert all(h.attempts == 1 for h in group.handles)


def test_cancelling_a_group_skips_the_children_that_have_not_started(task_testbed):
    group = square.submit_map(range(10))
    summary = group.then(summarize)
    first = children_tasks(task_testbed)[0]
    task_testbed.taskqueue.DeleteTask("default", first.name)
    task_testbed.post(first)

    assert group.status == "running"
    assert group.cancel() is True
    task_testbed.drain()

    assert len([r for r in tasklib.ran if r[0] == "square"]) == 1
    assert group.status == "cancelled"
    assert group.progress == 1.0
    assert group.counts()["cancelled"] == 9
    with pytest.raises(TaskCancelledError):
        group.results()
    assert summary.status == "cancelled"
    assert group.cancel() is True  # already cancelled


def test_progress_counts_the_children_that_finished(task_testbed):
    group = square.submit_map(range(8))

    for added in children_tasks(task_testbed)[:2]:
        task_testbed.taskqueue.DeleteTask("default", added.name)
        task_testbed.post(added)

    assert group.progress == 0.25
    assert group.counts()["succeeded"] == 2
    assert group.status == "running"
    with pytest.raises(TimeoutError):
        group.results(timeout=0.2)


def test_an_empty_group_has_succeeded_with_no_results(task_testbed):
    group = square.submit_map([])

    assert group.status == "succeeded"
    assert group.results() == []
    summary = group.then(summarize)
    task_testbed.drain()
    assert summary.result() == 0


def test_a_transactional_submit_map_rolls_back_with_its_transaction(task_testbed):
    in_txn = square.options(transactional=True)

    def rolled_back() -> None:
        in_txn.submit_map([1, 2, 3])
        raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        ndb.transaction(rolled_back, xg=True)

    assert task_testbed.tasks() == []
    assert datastore.Query("_TaskutilsGroup").Count() == 0
    group = ndb.transaction(lambda: in_txn.submit_map([1, 2, 3]), xg=True)
    task_testbed.drain()
    assert group.results() == [1, 4, 9]


def test_a_transactional_submit_map_of_more_than_5_items_is_refused_before_anything_is_written(task_testbed):
    in_txn = square.options(transactional=True)

    with pytest.raises(taskqueue.TooManyTasksError, match="at most 5 tasks in one transaction: 6 items"):
        ndb.transaction(lambda: in_txn.submit_map(range(6)), xg=True)

    assert task_testbed.tasks() == []
    assert datastore.Query("_TaskutilsGroup").Count() == 0


@task
def fails_loudly_or_returns_a_lot(n: int) -> str:
    if n % 2:
        raise ValueError(f"{n}: " + "e" * 60_000)
    return "r" * 7_000


def test_children_with_big_errors_and_results_all_fit_their_leaves(task_testbed):
    group = fails_loudly_or_returns_a_lot.submit_map(range(256))

    for added in children_tasks_of(task_testbed, "/fails_loudly_or_returns_a_lot"):
        assert task_testbed.post(added)[0] in (200, 408, 500)

    statuses = [h.status for h in group.handles]
    assert statuses.count("succeeded") == 128 and statuses.count("retrying") == 128
    assert group.handles[1].error_line.startswith("ValueError: 1: eee")
    assert group.handles[0].result() == "r" * 7_000


def children_tasks_of(bed: Any, name: str) -> list[Any]:
    return [t for t in bed.tasks("default") if name in t.url]


def run_children_only(bed: Any) -> list[Any]:
    """Post every child task once; return the fan-in tasks they added (taken off the queue)."""
    for added in children_tasks(bed):
        bed.taskqueue.DeleteTask("default", added.name)
        bed.post(added)
    fan_in = bed.tasks("default")
    for added in fan_in:
        bed.taskqueue.DeleteTask("default", added.name)
    return fan_in


def test_a_fan_in_step_delivered_many_times_counts_once_at_the_group(task_testbed):
    group = square.submit_map(range(20))  # 8 leaves, which the group entity collects itself
    summary = group.then(summarize)
    fan_in = run_children_only(task_testbed)
    assert len(fan_in) == 8

    for _ in range(8):
        task_testbed.post(fan_in[0])

    assert group.status == "running"
    assert task_testbed.tasks() == []  # no summary yet
    for step in fan_in[1:]:
        task_testbed.post(step)
    task_testbed.drain()
    assert summary.result() == sum(n * n for n in range(20))
    assert [r for r in tasklib.ran if r[0] == "summarize"] == [("summarize", [n * n for n in range(20)])]


def test_a_fan_in_step_delivered_many_times_counts_once_in_a_tree_node(task_testbed):
    group = square.submit_map(range(600))  # 19 leaves under 2 nodes of 16, under the group
    fan_in = run_children_only(task_testbed)
    assert len(fan_in) == 19

    for _ in range(16):
        task_testbed.post(fan_in[0])

    assert task_testbed.tasks() == []  # the node is not complete: nothing goes up a level
    for step in fan_in[1:]:
        task_testbed.post(step)
    task_testbed.drain()
    assert group.status == "succeeded"


def test_a_childs_own_then_fires_after_that_child_and_a_builtin_can_be_the_groups_callback(task_testbed):
    group = square.submit_map(range(5))
    child_callback = group.handles[2].then(square)
    total = group.then(sum)

    task_testbed.drain()

    assert child_callback.result() == 16  # square(square(2))
    assert total.result() == sum(n * n for n in range(5))
    assert GroupHandle.recent(1)[0].id == group.id
    assert group.counts() == {
        "pending": 0,
        "running": 0,
        "retrying": 0,
        "succeeded": 5,
        "failed": 0,
        "cancelled": 0,
        "finished": 5,
        "total": 5,
    }


def test_a_leaf_too_big_for_one_entity_drops_tracebacks_then_exceptions_but_keeps_lines_and_results(task_testbed):
    from taskutils import results_store as store

    def failed(n: int) -> dict[str, Any]:
        callbacks = [(f"cb{n}.{i}", os.urandom(4_000)) for i in range(4)]  # as many as a child may have
        return {
            "s": "retrying",
            "a": 1,
            "p": None,
            "cb": callbacks,
            "e": os.urandom(8_000),
            "l": f"E: {n}",
            "t": "t" * 8_000,
        }

    records = {n: failed(n) for n in range(31)}
    records[31] = {"s": "succeeded", "a": 1, "p": None, "cb": [], "r": os.urandom(8_000)}

    leaf = store.write_leaf(None, "g", 0, records)

    assert len(leaf["state"]) <= store.LEAF_BUDGET
    kept = store.read_leaf(leaf, "g", 0)
    assert all("t" not in r for r in kept.values())
    assert [kept[n]["l"] for n in range(31)] == [f"E: {n}" for n in range(31)]
    assert all(len(kept[n]["cb"]) == 4 for n in range(31))
    assert kept[31]["r"] == records[31]["r"]


@pytest.mark.parametrize("shape", ["64 0", "x y", "41 9", "", "40 8 2"])
def test_a_child_replayed_with_a_forged_group_header_runs_as_itself_and_the_group_completes(task_testbed, shape):
    group = square.submit_map(range(40))
    summary = group.then(summarize)
    child_9 = next(t for t in children_tasks(task_testbed) if t.headers[HANDLE_HEADER] == f"{group.id}.9")

    status, _ = task_testbed.post(child_9, HTTP_X_TASKUTILS_GROUP=shape)  # a replay with its header changed
    task_testbed.drain()

    assert status == 200
    assert group.status == "succeeded"
    assert group.results() == [n * n for n in range(40)]
    assert summary.result() == sum(n * n for n in range(40))


def _cannot_come_back() -> None:
    raise RuntimeError("this result cannot be unpickled")


class Unloadable:
    """A value that pickles, and raises when unpickled."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_cannot_come_back, ())


@task
def unloadable_at_3(n: int) -> Any:
    return Unloadable() if n == 3 else n


def test_a_child_result_that_raises_when_unpickled_fails_the_callback_for_good_naming_the_child(task_testbed):
    group = unloadable_at_3.submit_map(range(5))
    summary = group.then(summarize)

    task_testbed.drain()  # no retry loop: the callback's run ends

    assert group.status == "succeeded"
    assert summary.status == "failed"
    assert f"{group.id}.3" in summary.error_line
    assert "this result cannot be unpickled" in summary.error_line
    with pytest.raises(ResultError, match=rf"{group.id}\.3"):
        group.results()
    assert group.handles[2].result() == 2
    assert not [r for r in tasklib.ran if r[0] == "summarize"]


@task(queue="reports")
def summarize_in_reports(results: list[int]) -> int:
    tasklib.ran.append(("summarize_in_reports", results))
    return sum(results)


@task(queue="reports")
def negate_in_reports(result: int) -> int:
    return -result


def test_a_group_is_kept_by_sweep_until_its_callback_and_its_childrens_callbacks_have_run(task_testbed):
    group = square.submit_map([1, 2, 3])
    summary = group.then(summarize_in_reports)  # another queue: it runs after the sweep
    child_callback = group.handles[1].then(negate_in_reports)
    task_testbed.drain("default")
    time.sleep(0.01)

    assert taskutils.sweep(0) == 0
    task_testbed.drain("reports")

    assert summary.result() == 14
    assert child_callback.result() == -4  # its source's result, read after the sweep
    time.sleep(0.01)
    assert taskutils.sweep(0) == 3
    assert GroupHandle.get(group.id) is None
    assert TaskHandle.get(group.handles[1].id) is None


def test_group_get_answers_none_for_a_malformed_or_foreign_id(task_testbed):
    group = square.submit_map([1, 2])

    assert GroupHandle.get(group.id).total == 2
    for wrong in ("x" * 2000, "x y", group.id + ".1", group.handles[0].id, group.id.replace("-2-2-", "-3-2-")):
        assert GroupHandle.get(wrong) is None
    with pytest.raises(TypeError):
        GroupHandle.get(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("keys", [[], ["test-key-one"]])
def test_children_added_by_taskutils_0_2_still_run_and_fan_in_with_their_shape_read_from_the_group(task_testbed, keys):
    from google.appengine.api import datastore as low_level

    from taskutils import results_store

    taskutils.configure(secret_keys=keys)
    group_id = "0123456789abcdef0123456789abcdef"  # a 0.2 id: 32 hex digits, its shape only in its entity
    low_level.Put(results_store.new_group_entity(group_id, 12, results_store.leaves_for(12), "default"))
    for i in range(12):  # as 0.2 added them: signed for the URL alone, the shape in an unsigned header
        square.options(headers={HANDLE_HEADER: f"{group_id}.{i}", "X-Taskutils-Group": "64 0"})(i)

    task_testbed.drain()

    group = GroupHandle.get(group_id)
    assert group.status == "succeeded"
    assert group.results() == [n * n for n in range(12)]
    assert TaskHandle.get(f"{group_id}.3").result() == 9
