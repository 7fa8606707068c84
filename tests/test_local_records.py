"""The run records ``serve`` keeps for the console: recent runs, a queued task's last answer, runs in flight."""

from __future__ import annotations

import time

from taskutils.local import LocalServer

from apps import records_app


def test_a_failed_run_is_recorded_with_its_error_line_until_the_task_succeeds():
    server = LocalServer(port=0).start()
    try:
        added = records_app.fails_once()
        deadline = time.monotonic() + 30
        last = None
        while last is None and time.monotonic() < deadline:
            last = server.runs.last(added.name)
            time.sleep(0.01)
        assert records_app.succeeded.wait(30)
        time.sleep(0.2)
        recent = [r for r in server.runs.recent() if r.task_name == added.name]
        running = server.runs.running()
    finally:
        server.stop()

    assert last is not None
    assert (last.queue, last.status, last.retry_count) == ("default", 500, 0)
    assert last.error.startswith("RuntimeError: boom on the first attempt")
    assert last.url == added.url
    assert [(r.retry_count, r.status) for r in recent] == [(0, 500), (1, 200)]
    assert recent[1].error == "" and recent[1].duration > 0
    assert server.runs.last(added.name) is None  # it succeeded: nothing left to show for it
    assert running == []
