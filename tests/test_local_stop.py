"""Stopping ``serve``: running tasks finish within the grace period, a summary, exit 0, never a traceback.

Each test starts its own ``python -m taskutils serve`` subprocess and stops it
with a signal, as a user's Ctrl-C or a process manager's SIGTERM would.
"""

from __future__ import annotations

import http.client
import logging
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.serving import APPS, ServeProcess, nothing_listens_on

QUEUE_YAML = str(APPS / "queue.yaml")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """Start servers of one's own for a test; each is stopped afterwards whatever happened."""
    started: list[ServeProcess] = []

    def _start(spec: str, *args: str) -> ServeProcess:
        proc = ServeProcess(spec, tmp_path / f"serve-{len(started)}.log", *args)
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        proc.stop()


def ok_count(server: ServeProcess, prefix: str) -> int:
    return int(server.get(f"/count?prefix={prefix}"))


@pytest.mark.parametrize("spec", ["local_app:app", "deployed_webapp2:app", "deployed_flask:app"])
def test_repeated_stops_exit_0_without_a_traceback_with_or_without_wrap_wsgi_app(start, spec):
    wrapped = spec != "local_app:app"
    for round_ in range(2):
        proc = start(spec)
        proc.wait_ready("/stats?key=none" if wrapped else "/ran")
        if wrapped:
            proc.post(f"/start?key=r{round_}&n=10")
            proc.wait_for(lambda p=proc, r=round_: p.get(f"/stats?key=r{r}")["entities"] == 10 or None, "10 tasks")
        else:
            proc.post("/enqueue/nap?key=nap&n=10&seconds=0.05")
            proc.wait_for(lambda p=proc: ok_count(p, "nap-") == 10, "10 tasks")

        code = proc.interrupt(signal.SIGINT if round_ == 0 else signal.SIGTERM)

        log = proc.log()
        assert code == 0, log
        assert "Traceback" not in log, log
        assert "10 task runs succeeded, 0 failed" in log
        assert "taskutils serve: stopped" in log
        assert nothing_listens_on(proc.port)


def test_the_summary_tells_runs_failures_retries_and_the_tasks_left_queued(start):
    proc = start("local_app:app", "--queue-yaml", QUEUE_YAML).wait_ready("/ran")
    for i in range(3):
        proc.post(f"/enqueue/record?key=fine-{i}")
    proc.post("/enqueue/flaky?key=twice&failures=2&how=raised")
    proc.post("/enqueue/flaky?key=doomed&failures=100&how=raised&queue=limited")
    proc.post("/enqueue/record?key=later&countdown=600")
    proc.wait_for(lambda: ok_count(proc, "fine-") == 3 and ok_count(proc, "twice") == 1, "the tasks that can run")
    proc.wait_for(lambda: "failing permanently" in proc.log().lower() or None, "the doomed task dropped")

    assert proc.interrupt() == 0

    # 3 + 1 succeeded; twice failed 2 times (retried), doomed 3 times (2 retried, the last dropped).
    summary = "taskutils serve: 4 task runs succeeded, 5 failed (4 retried, 1 dropped after their last retry)"
    assert summary in proc.log()
    assert "taskutils serve: 1 task still queued, not kept" in proc.log()


def test_a_running_task_finishes_within_the_grace_period_before_serve_exits_0(start):
    proc = start("local_app:app").wait_ready("/ran")
    enqueued = proc.post("/enqueue/nap?key=finishing&seconds=2")
    time.sleep(0.7)

    began = time.monotonic()
    code = proc.interrupt()

    log = proc.log()
    assert code == 0, log
    assert 1.0 < time.monotonic() - began < 10
    stopping = log.index("taskutils serve: stopping")
    assert f"task={enqueued['name']} retry=0 -> 200 OK" in log[stopping:]
    assert "taskutils serve: 1 task run succeeded, 0 failed" in log


def test_a_task_still_running_after_the_grace_period_is_abandoned_and_serve_exits_1(start):
    proc = start("local_app:app", "--grace", "1").wait_ready("/ran")
    proc.post("/enqueue/nap?key=forever&seconds=60")
    time.sleep(0.7)

    began = time.monotonic()
    code = proc.interrupt()
    took = time.monotonic() - began

    log = proc.log()
    assert code == 1, log
    assert took < 8, f"a stop with --grace 1 took {took:.1f}s"
    assert "taskutils serve: 1 running task abandoned after the grace period" in log
    assert "Traceback" not in log


def test_an_in_process_server_stops_cleanly_every_time_while_requests_are_in_flight(caplog):
    from taskutils.local import LocalServer

    def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"hi\n"]

    caplog.set_level(logging.WARNING)
    for _ in range(25):
        server = LocalServer(hello, port=0).start()
        stop = threading.Event()

        def hammer(url: str = server.url, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                try:
                    urllib.request.urlopen(url, timeout=2).read()
                except (OSError, http.client.HTTPException):
                    pass

        clients = [threading.Thread(target=hammer) for _ in range(3)]
        for client in clients:
            client.start()
        time.sleep(0.05)
        summary = server.stop(grace=2)
        stop.set()
        for client in clients:
            client.join(5)
        assert summary is not None and summary.abandoned == 0

    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "Bad file descriptor" not in caplog.text
