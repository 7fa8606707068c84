"""taskutils.periodic: cron.yaml schedules, the cron route mount() serves, and `python -m taskutils cron`."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
import webtest

import taskutils
from taskutils.controls import cron
from taskutils.controls import jobs as declared
from taskutils.controls.schedule import parse

runs: list[str] = []
APPS = Path(__file__).resolve().parent / "apps"
CRON = {"X-Appengine-Cron": "true"}


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("schedule", "now", "latest", "after"),
    [
        ("every 5 minutes", "2026-03-02 10:07:30", "2026-03-02 10:05", "2026-03-02 10:10"),
        ("every 1 minutes", "2026-03-02 00:00:00", "2026-03-02 00:00", "2026-03-02 00:01"),
        ("every 2 hours synchronized", "2026-03-02 03:59", "2026-03-02 02:00", "2026-03-02 04:00"),
        ("every 24 hours", "2026-03-02 03:59", "2026-03-02 00:00", "2026-03-03 00:00"),
        ("every 2 hours from 10:00 to 14:00", "2026-03-02 09:00", "2026-03-01 14:00", "2026-03-02 10:00"),
        ("every 2 hours from 10:00 to 14:00", "2026-03-02 15:00", "2026-03-02 14:00", "2026-03-03 10:00"),
        ("every day 09:00", "2026-03-02 08:59", "2026-03-01 09:00", "2026-03-02 09:00"),
        ("every monday 09:00", "2026-03-04 12:00", "2026-03-02 09:00", "2026-03-09 09:00"),  # 2 March: a Monday
        ("every mon,wed 09:00", "2026-03-04 12:00", "2026-03-04 09:00", "2026-03-09 09:00"),
    ],
)
def test_a_schedule_names_its_last_slot_and_its_next_one(schedule, now, latest, after):
    parsed = parse(schedule)
    assert parsed.latest(at(now)) == at(latest)
    assert parsed.next(at(now)) == at(after)


@pytest.mark.parametrize(
    "schedule", ["every 0 minutes", "every 25 hours", "every day 25:00", "at noon", "every fooday 09:00"]
)
def test_an_unsupported_schedule_is_refused_when_decorating(schedule):
    with pytest.raises(ValueError):
        taskutils.periodic(schedule)


@taskutils.periodic("every 1 minutes")
def tick() -> None:
    runs.append(taskutils.current_task().task_name)


@pytest.fixture
def job(task_testbed):
    """This module's job alone is declared."""
    saved = dict(declared._jobs)
    declared._jobs.clear()
    declared._jobs[tick.url_path] = saved[tick.url_path]
    runs.clear()
    yield tick
    declared._jobs.clear()
    declared._jobs.update(saved)


def test_the_cron_route_answers_only_app_engines_cron_service(task_testbed, job):
    app = webtest.TestApp(taskutils.mount(lambda env, start: []))
    app.get("/cron/taskutils-periodic", status=403)
    assert task_testbed.tasks() == []


def test_a_due_job_is_added_once_per_slot_however_often_cron_fires(task_testbed, job):
    app = webtest.TestApp(taskutils.mount(lambda env, start: []))
    first = app.get("/cron/taskutils-periodic", headers=CRON)
    app.get("/cron/taskutils-periodic", headers=CRON)
    assert first.text == "added 1\n"
    (record,) = task_testbed.tasks()
    slot = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    assert record.name.startswith("periodic-")
    task_testbed.drain()
    assert runs == [record.name]
    if datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M") == slot:
        app.get("/cron/taskutils-periodic", headers=CRON)  # the same slot, after its run
        assert task_testbed.tasks() == []


def test_a_periodic_job_never_overlaps_itself(task_testbed, job):
    assert job.controls is not None and job.controls.exclusive


def test_the_console_listing_gives_each_job_its_last_and_next_slot(task_testbed, job):
    cron.fire()
    (listed,) = cron.listing()
    assert listed["schedule"] == "every 1 minutes"
    assert listed["last"] is not None and listed["next"] > listed["last"]


def test_the_cron_command_prints_the_cron_yaml_entry():
    out = subprocess.run(
        [sys.executable, "-m", "taskutils", "cron", "periodic_app:app"],
        cwd=APPS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "url: /cron/taskutils-periodic" in out.stdout
    assert "schedule: every 1 minutes" in out.stdout
    assert "periodic_app/tick (every 1 minutes)" in out.stdout


def test_serve_tries_a_failed_firing_again_within_seconds_not_at_the_next_minute(job):
    """serve may start before its queue does (Cloud Tasks' emulator): a slot that could not be added waits seconds."""
    import threading
    import time
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from taskutils.local.periodic import RETRY, PeriodicFiring

    calls: list[float] = []

    def cron_route(environ, start_response):  # refuses the first firing, as a queue not up yet would make it
        calls.append(time.monotonic())
        start_response("500 Internal Server Error" if len(calls) == 1 else "200 OK", [("Content-Length", "0")])
        return [b""]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    if time.time() % 60 > 40:  # start early in a minute: the next minute's firing is then 20 s or more away
        time.sleep(61 - time.time() % 60)
    server = make_server("127.0.0.1", 0, cron_route, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    firing = PeriodicFiring(f"http://127.0.0.1:{server.server_port}").start()
    try:
        deadline = time.monotonic() + RETRY + 8
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        firing.stop()
        server.shutdown()
        server.server_close()
    assert len(calls) >= 2, "a failed firing was not tried again before the next minute"
    assert calls[1] - calls[0] < RETRY + 3
