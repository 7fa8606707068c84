"""Task handles: ``submit``, ``TaskHandle``, ``then``, ``cancel``, ``set_progress``, on Google's testbed stubs."""

from __future__ import annotations

import collections
import datetime
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.appengine.api import apiproxy_stub_map, datastore, taskqueue
from google.appengine.ext import ndb

import taskutils
from taskutils import GroupHandle, PermanentTaskFailure, TaskHandle, set_progress, task
from taskutils.exc import ResultError, SignatureError, TaskCancelledError, TaskRunError

import tasklib

HANDLE_HEADER = "X-Taskutils-Handle"


@task
def double(x: int) -> int:
    tasklib.ran.append(("double", x))
    return 2 * x


@task(queue="reports", countdown=30, headers={"X-Team": "reports"})
def report(day: str) -> str:
    return f"report for {day}"


@task
def broken() -> None:
    raise ValueError("broken for now")


@task(retry_options=taskqueue.TaskRetryOptions(task_retry_limit=2))
def broken_with_a_limit() -> None:
    raise ValueError("still broken")


@task
def gives_up() -> None:
    raise PermanentTaskFailure("no point trying again")


@task
def returns_a_lock() -> Any:
    return threading.Lock()


@task
def returns_a_lot() -> bytes:
    return b"x" * 1_500_000


@task
def note(value: Any) -> None:
    tasklib.ran.append(("note", value))


@task(queue="reports")
def note_in_reports(value: Any) -> None:
    tasklib.ran.append(("note_in_reports", value))


_watched: dict[str, str] = {}


@task
def counts_progress() -> str:
    watched = TaskHandle(_watched["id"])
    set_progress(1, 4)
    tasklib.ran.append(("progress", watched.progress, watched.status))
    set_progress(3, 4)  # within the second: kept, and written with the outcome
    tasklib.ran.append(("progress", watched.progress, watched.status))
    return "done"


# A task that is delivered again while its first delivery is still running.
_redelivery: dict[str, Any] = {}


@task
def delivered_twice() -> int:
    runs = [r for r in tasklib.ran if r[0] == "delivered_twice"]
    tasklib.ran.append(("delivered_twice", len(runs)))
    if not runs:
        _redelivery["bed"].post(_redelivery["task"])  # the duplicate runs, and finishes, in the middle
    return len(runs)


@pytest.fixture
def datastore_calls(task_testbed) -> Iterator[collections.Counter[str]]:
    """Datastore RPCs made through the stub, counted by call name."""
    stub = apiproxy_stub_map.apiproxy.GetStub("datastore_v3")
    calls: collections.Counter[str] = collections.Counter()
    original = stub.MakeSyncCall

    def counting(service: str, call: str, request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        calls[call] += 1
        return original(service, call, request, response, *args, **kwargs)

    stub.MakeSyncCall = counting
    yield calls
    stub.MakeSyncCall = original


def the_task(bed: Any, queue: str = "default") -> Any:
    [added] = bed.tasks(queue)
    return added


def test_submit_enqueues_the_task_a_call_would_with_a_handle_header(task_testbed):
    handle = report.submit("monday")

    added = the_task(task_testbed, "reports")
    call = report("tuesday")
    assert added.url == call.url == "/_ah/task/test_results/report"
    assert added.headers["X-Team"] == "reports"
    assert added.headers[HANDLE_HEADER] == handle.id
    assert added.eta_posix - time.time() > 25  # countdown=30
    assert HANDLE_HEADER not in call.headers


def test_submit_writes_nothing_to_datastore(task_testbed, datastore_calls):
    double.submit(1)

    assert sum(datastore_calls.values()) == 0
    assert len(task_testbed.tasks()) == 1


def test_a_submitted_run_is_pending_until_it_runs_then_succeeds_with_its_value(task_testbed):
    handle = double.submit(21)
    assert handle.status == "pending"
    assert not handle.done()

    task_testbed.drain()

    assert handle.status == "succeeded"
    assert handle.done()
    assert handle.result() == 42
    assert handle.exception() is None
    assert handle.attempts == 1
    assert handle.progress == 1.0


def test_get_answers_a_pending_handle_from_the_moment_submit_returns_without_a_datastore_write(
    task_testbed, datastore_calls
):
    handle = report.submit("monday")  # countdown=30: a whole countdown before it runs

    found = TaskHandle.get(handle.id)

    assert found == handle
    assert found.status == "pending"
    assert datastore_calls["Put"] == 0 and datastore_calls["Commit"] == 0
    task_testbed.drain()
    assert TaskHandle.get(handle.id).result() == "report for monday"


@pytest.mark.parametrize("keys", [[], ["test-key-one"]])
def test_get_answers_none_for_ids_the_app_never_issued(task_testbed, keys):
    taskutils.configure(secret_keys=keys)
    handle = double.submit(2)
    group = double.submit_map([1, 2])
    forged = handle.id[:-1] + ("0" if handle.id[-1] != "0" else "1")  # one digit of its tag changed
    other_group = group.id.replace("-2-2-", "-3-2-")  # its shape changed, its tag kept

    assert TaskHandle.get(forged) is None
    assert TaskHandle.get(other_group + ".2") is None
    assert TaskHandle.get("0" * 32) is None  # the form of a 0.2 id, with nothing recorded
    assert TaskHandle.get("0" * 32 + ".3") is None
    assert TaskHandle.get(group.id + ".1").status == "pending"


def test_ids_issued_without_keys_answer_none_once_keys_are_set(task_testbed):
    handle = double.submit(2)
    taskutils.configure(secret_keys=["test-key-one"])
    assert TaskHandle.get(handle.id) is None
    rotated = double.submit(3)
    taskutils.configure(secret_keys=["test-key-two", "test-key-one"])  # a new key signs, the old one verifies
    assert TaskHandle.get(rotated.id).status == "pending"


@pytest.mark.parametrize(
    "malformed",
    ["", "no-such-handle", "x y", "gid.3", "gid.\u00b2", "gid.\u0663", "gid.00001", "gid.-1", "gid.1.2", "a" * 2000],
)
def test_get_raises_value_error_for_a_malformed_id(task_testbed, malformed):
    with pytest.raises(ValueError):
        TaskHandle.get(malformed)


def test_child_indexes_are_canonical_ascii_decimals_below_the_group_size(task_testbed):
    group = double.submit_map([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])

    assert TaskHandle.get(group.id + ".1").status == "pending"
    for alias in (".\u00b9", ".\u0661", ".01", ".00001", ".+1", ". 1", ".1 ", ".12", ".99999999999"):
        with pytest.raises(ValueError):
            TaskHandle.get(group.id + alias)
    with pytest.raises(TypeError):
        TaskHandle.get(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TaskHandle.get(b"x")  # type: ignore[arg-type]


def test_a_handle_id_read_in_another_process_is_pending_before_its_task_runs(task_testbed, tmp_path):
    import subprocess
    import sys

    taskutils.configure(secret_keys=["test-key-one"])
    handle = double.submit(2)
    script = (
        "import sys, taskutils\n"
        "from taskutils.testing import TaskTestbed\n"
        "taskutils.configure(secret_keys=[sys.argv[2]])\n"
        "with TaskTestbed():\n"
        "    found = taskutils.TaskHandle.get(sys.argv[1])\n"
        "    print(found.status if found else None)\n"
    )
    seen = [
        subprocess.run(
            [sys.executable, "-c", script, handle.id, key], capture_output=True, text=True, timeout=120, check=True
        ).stdout.strip()
        for key in ("test-key-one", "another-key")
    ]

    assert seen == ["pending", "None"]  # an empty Datastore: the id alone says it was issued, by this key ring


def test_result_waits_and_raises_timeout_error_when_the_run_has_not_finished(task_testbed):
    handle = double.submit(1)

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="pending"):
        handle.result(timeout=0.3)
    assert time.monotonic() - started >= 0.25
    with pytest.raises(TimeoutError):
        handle.result()


def test_a_failure_without_a_retry_limit_leaves_the_run_retrying(task_testbed):
    handle = broken.submit()

    with pytest.raises(ValueError, match="broken for now"):
        task_testbed.drain(retries=3)

    assert handle.status == "retrying"
    assert handle.attempts == 4
    assert handle.error_line == "ValueError: broken for now"
    assert handle.exception() is None
    with pytest.raises(TimeoutError):
        handle.result()


def test_a_failure_on_the_last_attempt_the_retry_limit_allows_fails_the_run(task_testbed):
    handle = broken_with_a_limit.submit()
    added = the_task(task_testbed)
    assert added.headers["X-Taskutils-Retry-Limit"] == "2"

    task_testbed.post(added, retry_count=0)
    task_testbed.post(added, retry_count=1)
    assert handle.status == "retrying"
    task_testbed.post(added, retry_count=2)

    assert handle.status == "failed"
    assert handle.attempts == 3
    with pytest.raises(ValueError, match="still broken"):
        handle.result()
    assert isinstance(handle.exception(), ValueError)


def test_permanent_task_failure_fails_the_run_at_once(task_testbed):
    handle = gives_up.submit()

    task_testbed.drain()  # PermanentTaskFailure answers 2xx: the queue drops the task

    assert handle.status == "failed"
    with pytest.raises(PermanentTaskFailure, match="no point trying again"):
        handle.result()


def test_a_result_that_cannot_be_pickled_fails_the_run_with_a_message_that_says_so(task_testbed):
    handle = returns_a_lock.submit()

    task_testbed.drain()

    assert handle.status == "failed"
    with pytest.raises(ResultError, match="returned a lock that cannot be pickled"):
        handle.result()


def test_a_result_over_the_inline_size_is_kept_apart_and_read_back_whole(task_testbed):
    handle = returns_a_lot.submit()

    task_testbed.drain()

    assert handle.result() == b"x" * 1_500_000


def test_a_duplicate_delivery_after_success_is_skipped_and_records_nothing(task_testbed):
    handle = double.submit(5)
    added = the_task(task_testbed)
    callback = handle.then(note)

    task_testbed.post(added)
    task_testbed.post(added)

    assert tasklib.ran == [("double", 5)]
    assert handle.attempts == 1
    assert [t.url for t in task_testbed.tasks()].count("/_ah/task/test_results/note") == 1  # added once
    task_testbed.taskqueue.DeleteTask("default", added.name)
    task_testbed.drain()
    assert tasklib.ran == [("double", 5), ("note", 10)]
    assert callback.result() is None


def test_a_duplicate_delivered_while_the_first_still_runs_records_one_result_and_one_callback(task_testbed):
    handle = delivered_twice.submit()
    handle.then(note)
    _redelivery.update(bed=task_testbed, task=the_task(task_testbed))

    task_testbed.post(_redelivery["task"])

    assert [r for r in tasklib.ran if r[0] == "delivered_twice"] == [("delivered_twice", 0), ("delivered_twice", 1)]
    assert handle.result() == 1  # the delivery that finished first
    assert handle.attempts == 2
    task_testbed.drain()
    assert [r for r in tasklib.ran if r[0] == "note"] == [("note", 1)]


def test_a_cancelled_run_is_skipped_when_its_task_arrives(task_testbed):
    handle = double.submit(3)

    assert handle.cancel() is True
    assert TaskHandle.get(handle.id) is not None  # cancel() records the handle
    task_testbed.drain()

    assert tasklib.ran == []
    assert handle.status == "cancelled"
    assert handle.done()
    with pytest.raises(TaskCancelledError):
        handle.result()
    assert isinstance(handle.exception(), TaskCancelledError)


def test_cancel_is_refused_once_the_run_has_started(task_testbed):
    handle = double.submit(3)
    task_testbed.drain()

    assert handle.cancel() is False
    assert handle.result() == 6


def test_then_runs_the_callback_once_with_the_result_after_success(task_testbed):
    handle = double.submit(21)
    callback = handle.then(note)
    assert callback.status == "pending"

    task_testbed.drain()

    assert tasklib.ran == [("double", 21), ("note", 42)]
    assert callback.status == "succeeded"


def test_then_on_a_handle_that_already_succeeded_still_fires_once(task_testbed):
    handle = double.submit(4)
    task_testbed.drain()

    handle.then(note)
    task_testbed.drain()

    assert tasklib.ran == [("double", 4), ("note", 8)]


def test_a_callback_task_queued_by_the_previous_release_still_runs_after_an_upgrade(task_testbed):
    handle = double.submit(21)
    task_testbed.drain()
    # What a callback task in flight carries, pickled by taskutils 0.2: taskutils.results_run.Then.
    old = (
        b"\x80\x02ctaskutils.results_run\nThen\n)\x81}(Vsource\nV" + handle.id.encode() + b"\n"
        b"Vfunc\nctest_results\nnote\nub."
    )

    pickle.loads(old)()

    assert tasklib.ran == [("double", 21), ("note", 42)]


def test_fan_in_steps_queued_by_the_previous_release_still_find_their_code_by_url():
    from taskutils.naming import resolve

    for qualname in ("complete_node", "cancel_callbacks"):  # 0.2 named these tasks by URL
        assert callable(resolve("taskutils.results_run", qualname))


def test_then_takes_a_plain_callable_or_a_task_function_with_its_own_options(task_testbed):
    handle = double.submit(1)
    handle.then(note_in_reports)
    handle.then(tasklib.plain)

    task_testbed.drain("default")

    assert [t.url for t in task_testbed.tasks("reports")] == ["/_ah/task/test_results/note_in_reports"]
    task_testbed.drain()
    assert sorted(map(str, tasklib.ran)) == sorted(map(str, [("double", 1), ("note_in_reports", 2), ("plain", 2, 0)]))


def test_the_callback_of_a_failed_run_never_runs_and_reads_as_cancelled(task_testbed):
    handle = gives_up.submit()
    callback = handle.then(note)

    task_testbed.drain()
    late = handle.then(note)
    task_testbed.drain()

    assert tasklib.ran == []
    assert callback.status == "cancelled"
    assert late.status == "cancelled"


@task
def gives_up_loudly() -> None:
    raise PermanentTaskFailure("x" * 2_000_000)


_attempts: list[int] = []


@task
def fails_big_then_succeeds() -> str:
    _attempts.append(1)
    if len(_attempts) == 1:
        raise ValueError("y" * 40_000)
    return "fine"


@task(includeheaders=True)
def note_with_headers(value: Any, headers: Any = None) -> None:
    tasklib.ran.append(("note_with_headers", value, headers["X-AppEngine-QueueName"]))


def test_a_failure_too_big_to_keep_fails_the_run_with_its_error_line(task_testbed):
    handle = gives_up_loudly.submit()

    task_testbed.drain()  # a PermanentTaskFailure is answered 2xx: not retried

    assert handle.status == "failed"
    with pytest.raises(TaskRunError, match="^PermanentTaskFailure: xxxx"):
        handle.result()
    assert len(handle.error_line) <= 500


def test_a_success_after_a_failed_attempt_keeps_the_error_line_and_drops_the_rest(task_testbed):
    _attempts.clear()
    handle = fails_big_then_succeeds.submit()

    task_testbed.drain(retries=1)

    assert handle.result() == "fine"
    record = handle._record()
    assert "e" not in record and "t" not in record
    assert handle.error_line.startswith("ValueError: yyy")


def test_then_with_a_callback_made_with_includeheaders_passes_it_the_request_headers(task_testbed):
    handle = double.submit(4)
    callback = handle.then(note_with_headers)

    task_testbed.drain()

    assert callback.status == "succeeded"
    assert ("note_with_headers", 8, "default") in tasklib.ran


def test_callbacks_of_callbacks_of_a_failed_run_end_cancelled_and_are_swept(task_testbed):
    handle = gives_up.submit()
    first = handle.then(note)
    second = first.then(note)
    assert (first.status, second.status) == ("pending", "pending")

    task_testbed.drain()

    assert (handle.status, first.status, second.status) == ("failed", "cancelled", "cancelled")
    assert {e["status"] for e in datastore.Query("_TaskutilsHandle").Get(10)} == {"failed", "cancelled"}
    time.sleep(0.01)
    assert taskutils.sweep(0) == 3
    assert datastore.Query("_TaskutilsHandle").Count() == 0
    assert tasklib.ran == []


def test_a_callback_of_a_cancelled_run_reads_as_cancelled_before_and_after_the_cascade(task_testbed):
    handle = double.submit(1)
    first = handle.then(note)
    second = first.then(note)

    assert handle.cancel()
    assert second.status == "cancelled"  # read through its source's source, before any task ran
    task_testbed.drain()
    assert {e["status"] for e in datastore.Query("_TaskutilsHandle").Get(10)} == {"cancelled"}


def test_then_refuses_a_callback_too_big_to_keep(task_testbed):
    handle = double.submit(1)
    data = b"z" * 10_000

    with pytest.raises(ValueError, match="pickles to"):
        handle.then(lambda value: (value, data))


def test_a_transactional_submit_commits_or_rolls_back_with_its_transaction(task_testbed):
    in_txn = double.options(transactional=True)

    def rolled_back() -> TaskHandle:
        handle = in_txn.submit(1)
        raise RuntimeError(handle.id)

    with pytest.raises(RuntimeError) as raised:
        ndb.transaction(rolled_back)
    assert task_testbed.tasks() == []
    task_testbed.drain()
    assert tasklib.ran == []
    # Nothing was written to submit, so its id reads pending (as its task may yet arrive)
    # until a sweep has passed the time it was due.
    assert TaskHandle.get(str(raised.value)).status == "pending"
    time.sleep(1.1)
    taskutils.sweep(0)
    assert TaskHandle.get(str(raised.value)) is None

    handle = ndb.transaction(lambda: in_txn.submit(2))
    task_testbed.drain()
    assert handle.result() == 4


def test_set_progress_is_seen_on_the_handle_while_the_task_runs(task_testbed):
    handle = counts_progress.submit()
    _watched["id"] = handle.id
    assert set_progress(1, 2) is False  # outside a submitted task it does nothing

    task_testbed.drain()

    assert tasklib.ran == [("progress", 0.25, "running"), ("progress", 0.25, "running")]
    assert handle.result() == "done"
    assert handle.progress == 1.0


def test_records_are_signed_and_a_forged_one_is_refused(task_testbed, signed):
    handle = double.submit(1)
    task_testbed.drain()
    entity = datastore.Get(datastore.Key.from_path("_TaskutilsHandle", handle.id))
    state = bytearray(entity["state"])
    state[-1] ^= 1
    entity["state"] = datastore.datastore_types.Blob(bytes(state))
    datastore.Put(entity)

    with pytest.raises(SignatureError):
        handle.result()


def test_sweep_deletes_handles_and_groups_that_finished_before_the_cutoff(task_testbed):
    done = double.submit(1)
    group = double.submit_map([1, 2, 3])
    task_testbed.drain()
    unfinished = broken.submit()
    with pytest.raises(ValueError):
        task_testbed.drain()

    assert taskutils.sweep(datetime.timedelta(hours=1)) == 0
    time.sleep(0.01)
    assert taskutils.sweep(0) == 2

    assert TaskHandle.get(done.id) is None
    assert GroupHandle.get(group.id) is None
    assert datastore.Query("_TaskutilsLeaf").Count() == 0
    assert TaskHandle.get(unfinished.id) is not None  # still retrying: kept


@task
async def double_later(x: int) -> int:
    return 2 * x


def test_an_async_tasks_value_is_recorded_on_its_handle(task_testbed):
    handle = double_later.submit(8)

    task_testbed.drain()

    assert handle.result() == 16


def test_recent_lists_the_handles_recorded_last_first(task_testbed):
    first = double.submit(1)
    task_testbed.drain()
    time.sleep(0.01)
    second = double.submit(2)
    task_testbed.drain()

    assert TaskHandle.recent(10)[:2] == [second, first]


def test_sweep_reaches_handles_in_every_namespace(task_testbed):
    from google.appengine.api import namespace_manager

    namespace_manager.set_namespace("tenant")
    try:
        handle = double.submit(1)
        task_testbed.drain()
        assert handle.result() == 2
    finally:
        namespace_manager.set_namespace("")

    time.sleep(0.01)
    assert taskutils.sweep(0) == 1


class UnprintableError(Exception):
    """An exception whose message cannot be made: str() raises."""

    def __str__(self) -> str:
        raise RuntimeError("no message for you")


@task
def raises_unprintable() -> None:
    raise UnprintableError()


@task
def gives_up_unprintably() -> None:
    raise PermanentTaskFailure(UnprintableError())


def test_a_run_raising_an_exception_whose_str_raises_is_recorded_retrying_then_failed(task_testbed):
    retrying = raises_unprintable.submit()
    failed = gives_up_unprintably.submit()

    with pytest.raises(UnprintableError):
        task_testbed.drain()
    task_testbed.drain()

    assert retrying.status == "retrying"  # not stuck "running": the failure was recorded
    assert retrying.error_line.startswith("UnprintableError: <str() of the exception raised RuntimeError>")
    assert failed.status == "failed"
    assert failed.attempts == 1


def test_a_source_swept_before_its_callback_ran_is_kept_until_the_callback_read_its_result(task_testbed):
    handle = double.submit(21)
    callback = handle.then(note_in_reports)  # another queue: it runs after the sweep
    task_testbed.drain("default")
    done_before = double.submit(1)
    task_testbed.drain("default")
    late = done_before.then(note_in_reports)  # added once its source had succeeded
    time.sleep(0.01)

    taskutils.sweep(0)
    task_testbed.drain("reports")

    assert sorted(r for r in tasklib.ran if r[0] == "note_in_reports") == [
        ("note_in_reports", 2),
        ("note_in_reports", 42),
    ]
    assert callback.status == late.status == "succeeded"
    time.sleep(0.01)
    assert taskutils.sweep(0) == 4  # the sources, then their callbacks, once nothing needs them
    assert TaskHandle.get(handle.id) is None
    assert TaskHandle.get(done_before.id) is None


def test_a_forged_or_malformed_handle_header_is_refused_and_records_nothing(task_testbed):
    handle = double.submit(3)
    added = the_task(task_testbed)
    task_testbed.taskqueue.DeleteTask("default", added.name)
    other = double.submit(4)
    forged_tag = other.id[:-1] + ("0" if other.id[-1] != "0" else "1")

    answers = [
        task_testbed.post(added, HTTP_X_TASKUTILS_HANDLE=header)[0] for header in ("x y", "gid.\u0663", forged_tag)
    ]

    assert answers == [400, 400, 403]
    assert tasklib.ran == []
    assert handle.status == other.status == "pending"
    task_testbed.post(added)
    assert handle.result() == 6


def test_with_keys_a_payload_replayed_under_another_handle_id_or_retry_limit_is_refused(task_testbed, signed):
    first, second = double.submit(1), double.submit(2)
    limited = broken_with_a_limit.submit()
    by_id = {t.headers[HANDLE_HEADER]: t for t in task_testbed.tasks()}
    plain = double(5)
    for t in task_testbed.tasks():
        task_testbed.taskqueue.DeleteTask("default", t.name)

    answers = [
        task_testbed.post(by_id[first.id], HTTP_X_TASKUTILS_HANDLE=second.id)[0],  # first's run recorded on second
        task_testbed.post(plain, HTTP_X_TASKUTILS_HANDLE=second.id)[0],  # a plain task's run recorded on second
        task_testbed.post(by_id[limited.id], HTTP_X_TASKUTILS_RETRY_LIMIT="0")[
            0
        ],  # its first failure taken as its last
    ]
    answers.append(task_testbed.post(by_id[first.id], without_handle_header)[0])  # run as a plain task

    assert answers == [403, 403, 403, 403]
    assert tasklib.ran == []
    assert first.status == second.status == limited.status == "pending"
    task_testbed.post(by_id[first.id])
    task_testbed.post(by_id[second.id])
    assert (first.result(), second.result()) == (2, 4)


def without_handle_header(environ: dict[str, Any], start_response: Any) -> Any:
    """taskutils.app, posted a request whose X-Taskutils-Handle header was taken off."""
    environ.pop("HTTP_X_TASKUTILS_HANDLE")
    return taskutils.app(environ, start_response)


def test_a_callback_whose_source_was_deleted_fails_for_good_instead_of_retrying(task_testbed):
    handle = double.submit(21)
    callback = handle.then(note_in_reports)
    task_testbed.drain("default")
    datastore.Delete(datastore.Key.from_path("_TaskutilsHandle", handle.id))  # e.g. by hand, or an older sweep

    task_testbed.drain("reports")  # answered and dropped: no retry loop

    assert callback.status == "failed"
    assert handle.id in callback.error_line
    assert tasklib.ran == [("double", 21)]
