"""``serve`` runs tasks side by side, within their deadlines, and no task stops the others.

Each test drives a real ``python -m taskutils serve local_app:app`` subprocess
over HTTP (tests/apps/local_app.py, queues from tests/apps/queue.yaml).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from apps.serving import APPS, ServeProcess

QUEUE_YAML = str(APPS / "queue.yaml")


def runs(server: ServeProcess, key: str) -> list[dict[str, Any]]:
    return [r for r in server.get("/ran") if r["key"] == key]


def runs_like(server: ServeProcess, prefix: str) -> list[dict[str, Any]]:
    return [r for r in server.get("/ran") if r["key"].startswith(prefix)]


def ok_count(server: ServeProcess, prefix: str) -> int:
    return int(server.get(f"/count?prefix={prefix}"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One server with the default concurrency and deadline; a short grace, for the hung task."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = ServeProcess("local_app:app", log, "--queue-yaml", QUEUE_YAML, "--grace", "1")
    try:
        yield proc.wait_ready("/ran")
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def short_deadline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A server whose default deadline is one second."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = ServeProcess("local_app:app", log, "--queue-yaml", QUEUE_YAML, "--deadline", "1", "--grace", "1")
    try:
        yield proc.wait_ready("/ran")
    finally:
        proc.stop()


def test_sixty_tasks_sleeping_a_fifth_of_a_second_finish_well_inside_the_serial_time(server):
    began = time.monotonic()
    server.post("/enqueue/nap?key=side&n=60&seconds=0.2")

    server.wait_for(lambda: ok_count(server, "side-") == 60, "60 naps", timeout=30)

    took = time.monotonic() - began
    assert took < 0.5 * 60 * 0.2, f"60 tasks of 0.2 s took {took:.1f}s: they did not run side by side"


@pytest.fixture(scope="module")
def no_queue_yaml(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A server without queue.yaml: every queue name is accepted."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = ServeProcess("local_app:app", log, "--grace", "1")
    try:
        yield proc.wait_ready("/ran")
    finally:
        proc.stop()


@pytest.mark.parametrize("queues", ["queue.yaml", "none"])
def test_a_task_added_by_each_request_starts_while_the_tasks_of_earlier_requests_run(request, queues):
    server = request.getfixturevalue("server" if queues == "queue.yaml" else "no_queue_yaml")
    seconds = 2.0
    added = []
    for i in range(3):  # three web requests 0.3 s apart, each adding one task
        added.append(server.post(f"/enqueue/nap?key=each-request-{queues}-{i}&seconds={seconds}")["at"])
        time.sleep(0.3)

    server.wait_for(lambda: ok_count(server, f"each-request-{queues}-") == 3, "3 naps", timeout=30)

    ended = {r["key"]: r["at"] for r in runs_like(server, f"each-request-{queues}-")}
    waited = [ended[f"each-request-{queues}-{i}"] - seconds - added[i] for i in range(3)]
    # Run one after another, the third would wait for two naps (about 2 x 2 s minus the 0.6 s between adds).
    assert max(waited) < 0.5 * seconds, f"tasks added by separate requests waited {waited} s to start"


def test_a_task_with_a_countdown_added_while_another_task_runs_starts_when_due(no_queue_yaml):
    server = no_queue_yaml
    server.post("/enqueue/nap?key=long-nap&seconds=3")
    time.sleep(0.3)
    added = server.post("/enqueue/record?key=counted-down&countdown=0.5")["at"]

    started = server.wait_for(lambda: runs(server, "counted-down"), "the task with a countdown", timeout=30)[0]["at"]

    # due 0.5 s after it was added; waiting for the running nap would take 2.7 s
    assert started - added < 4 * 0.5, f"a task due in 0.5 s started after {started - added:.1f} s"
    server.wait_for(lambda: ok_count(server, "long-nap") == 1, "the long nap", timeout=30)


def test_a_queue_yaml_rate_and_bucket_size_spread_the_starts_of_a_batch(server):
    # queue.yaml: "throttled" is 5/s with a bucket of 1, "fast" 500/s with App Engine's default bucket of 5.
    server.post("/enqueue/nap?key=throttled&n=10&seconds=0&queue=throttled")
    server.post("/enqueue/nap?key=unthrottled&n=10&seconds=0&queue=fast")

    server.wait_for(lambda: ok_count(server, "throttled-") == 10, "10 throttled tasks", timeout=30)
    server.wait_for(lambda: ok_count(server, "unthrottled-") == 10, "10 tasks", timeout=30)

    def spread(prefix: str) -> float:
        times = sorted(r["at"] for r in runs_like(server, prefix))
        return times[-1] - times[0]

    # one token at once, then one every 0.2 s: the tenth starts 1.8 s after the first
    assert spread("throttled-") > 0.8 * 9 / 5, f"10 tasks at 5/s ran within {spread('throttled-'):.2f} s"
    assert spread("unthrottled-") < 0.25 * spread("throttled-"), "a queue at 500/s was held back"


def test_a_queue_with_rate_zero_is_paused(server):
    server.post("/enqueue/record?key=on-paused-queue&queue=paused")
    server.post("/enqueue/record?key=beside-paused-queue")

    server.wait_for(lambda: ok_count(server, "beside-paused-queue") == 1, "a task on the default queue", timeout=30)
    time.sleep(0.5)
    assert runs(server, "on-paused-queue") == []


def test_the_app_answers_its_own_requests_while_tasks_fill_every_slot(server):
    server.post("/enqueue/nap?key=busy&n=8&seconds=3")
    time.sleep(0.5)  # every slot is now taken by a sleeping task

    began = time.monotonic()
    in_flight = ok_count(server, "busy-")
    answered = time.monotonic() - began

    assert in_flight == 0, "the tasks should still be sleeping"
    assert answered < 2.0, f"a web request waited {answered:.1f}s behind running tasks"
    server.wait_for(lambda: ok_count(server, "busy-") == 8, "8 naps", timeout=30)


def test_a_queue_runs_at_most_its_max_concurrent_requests_at_once(server):
    server.post("/enqueue/nap?key=single&n=5&seconds=0.3&queue=one-at-a-time")

    server.wait_for(lambda: ok_count(server, "single-") == 5, "5 naps", timeout=30)

    ends = sorted(r["at"] for r in server.get("/ran") if r["key"].startswith("single-"))
    gaps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    # queue.yaml: max_concurrent_requests 1, so each nap starts after the one before it ended.
    assert min(gaps) >= 0.25, f"naps of 0.3 s on a one-at-a-time queue ended {gaps} apart"


def test_a_hung_task_on_one_queue_leaves_another_queue_running(server):
    server.post("/enqueue/nap?key=hung&seconds=60&queue=stuck")
    time.sleep(0.3)

    for i in range(5):
        server.post(f"/enqueue/record?key=meanwhile-{i}")

    server.wait_for(lambda: ok_count(server, "meanwhile-") == 5, "tasks on the default queue", timeout=15)
    assert runs(server, "hung") == []


@pytest.mark.parametrize("how", ["exit", "interrupt"])
def test_a_task_raising_system_exit_or_keyboard_interrupt_is_retried_and_others_keep_running(server, how):
    server.post(f"/enqueue/exits?key=quits-{how}&how={how}")
    for i in range(3):
        server.post(f"/enqueue/record?key=after-{how}-{i}")

    attempts = server.wait_for(
        lambda: (found := runs(server, f"quits-{how}")) and found[-1]["outcome"] == "ok" and found, "the retry", 30
    )
    server.wait_for(lambda: ok_count(server, f"after-{how}-") == 3, "the other tasks", timeout=15)

    assert [(a["retry_count"], a["outcome"]) for a in attempts] == [(0, how), (1, "ok")]
    assert server.proc.poll() is None


def test_a_task_past_its_deadline_counts_as_failed_and_is_retried(short_deadline):
    server = short_deadline
    enqueued = server.post("/enqueue/slow_first?key=late&seconds=4")

    attempts = server.wait_for(
        lambda: (found := runs(server, "late")) and found[-1]["outcome"] == "ok" and found, "the retry", 30
    )

    assert [(a["retry_count"], a["outcome"]) for a in attempts] == [(0, "slow"), (1, "ok")]
    assert attempts[1]["at"] - attempts[0]["at"] < 3.5, "the retry waited for the slow attempt to end"
    assert attempts[1]["retry_reason"] == "deadline exceeded: no answer within 1 s"
    line = next(line for line in server.log().splitlines() if f"task={enqueued['name']} retry=0 ->" in line)
    assert re.search(r"-> 504 .*DeadlineExceeded", line), line


def test_a_task_with_its_own_dispatch_deadline_gets_that_long(short_deadline):
    server = short_deadline
    enqueued = server.post("/enqueue/slow_first?key=patient&seconds=2&deadline=15")

    server.wait_for(
        lambda: any(f"task={enqueued['name']} retry=0 -> 200" in line for line in server.log().splitlines()),
        "the first attempt's success",
        30,
    )

    assert [(a["retry_count"], a["outcome"]) for a in runs(server, "patient")] == [(0, "slow")]
