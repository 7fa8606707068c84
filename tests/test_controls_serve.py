"""unique, exclusive, concurrency, rate, debounce and periodic jobs under ``python -m taskutils serve``,
with its full concurrency (8 tasks at once), tasks posted over HTTP, and a ``kill -9`` of ``serve --storage``;
then unique and concurrency in Cloud Tasks mode, with the emulator posting the tasks.

The app (tests/apps/controls_app.py) records every run's start and end in a file.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_cloudtasks import EMULATOR_VENV, LOCATION, MAX_RETRIES, PROJECT, QUEUES, _cloud_tasks_env, emulator_venv

from taskutils import cloudtasks
from taskutils.local.storage import TaskJournal

from apps.serving import APPS, ServeProcess, free_port

__all__ = ["emulator_venv"]  # a fixture this module uses

CONCURRENCY = 8
LEASE = 20.0  # controls_app.stuck: its 15 s deadline and a 5 s margin


class Controlled:
    """A serve process of controls_app and the runs it recorded."""

    def __init__(self, server: ServeProcess, log: Path) -> None:
        self.server, self.log = server, log

    def call(self, fn: str, *args: Any, submit: bool = False) -> dict[str, Any]:
        query = urllib.parse.urlencode({"fn": fn, "args": json.dumps(args), **({"submit": "1"} if submit else {})})
        return self.server.post(f"/call?{query}")  # type: ignore[no-any-return]

    def runs(self, fn: str, finished: bool = True) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in lines if r["fn"] == fn and ("end" in r) == finished]

    def wait_runs(self, fn: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        return self.server.wait_for(  # type: ignore[no-any-return]
            lambda: len(self.runs(fn)) >= count and self.runs(fn), f"{count} runs of {fn}", timeout, every=0.1
        )


def most_at_once(runs: list[dict[str, Any]]) -> int:
    """How many of these runs were running at the same moment, at most."""
    events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controlled]:
    folder = tmp_path_factory.mktemp("controls")
    log = folder / "runs.jsonl"
    server = ServeProcess(
        "controls_app:app",
        folder / "serve.log",
        "--concurrency",
        str(CONCURRENCY),
        "--queue-yaml",
        str(APPS / "queue.yaml"),  # the default queue at 100/s: the controls pace runs, not the queue
        env={"CONTROLS_LOG": str(log)},
    )
    try:
        yield Controlled(server.wait_ready(), log)
    finally:
        server.stop()


def test_forty_concurrent_submits_of_one_unique_key_give_one_run_and_one_handle(served):
    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(pool.map(lambda _: served.call("once", "k1", submit=True), range(40)))
    assert len({a["handle"] for a in answers}) == 1
    served.wait_runs("once", 1)
    time.sleep(1.0)  # a second run would have started by now
    assert [r["arg"] for r in served.runs("once")] == ["k1"]


def test_exclusive_runs_of_one_key_never_overlap_while_runs_of_different_keys_do(served):
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: served.call("guarded", "a", i), range(24)))
        list(pool.map(lambda i: served.call("guarded", f"other-{i}", i), range(8)))
    runs = served.wait_runs("guarded", 32, timeout=120)
    same_key = [r for r in runs if r["arg"][0] == "a"]
    assert sorted(r["arg"][1] for r in same_key) == list(range(24))
    assert most_at_once(same_key) == 1
    assert most_at_once([r for r in runs if r["arg"][0] != "a"]) > 1


def test_concurrency_two_holds_exactly_two_at_once(served):
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: served.call("pair", i), range(8)))
    runs = served.wait_runs("pair", 8, timeout=90)
    assert most_at_once(runs) == 2


def test_rate_four_a_second_spreads_sixteen_starts_over_about_four_seconds(served):
    for i in range(16):
        served.call("paced", i)
    starts = sorted(r["start"] for r in served.wait_runs("paced", 16, timeout=60))
    span = starts[-1] - starts[0]
    assert 0.7 * 3.75 < span < 3 * 3.75  # one start every 0.25 s
    for i, start in enumerate(starts):  # 4 a second; one more when the queue brings a reserved run a little late
        assert sum(1 for s in starts[i:] if s - start < 1.0) <= 5


def test_a_burst_of_ten_debounced_calls_gives_one_run_and_a_call_during_it_one_more(served):
    first_call = time.time()
    for v in range(10):
        served.call("coalesced", v)
    served.server.wait_for(lambda: served.runs("coalesced", finished=False), "the debounced run starts", 30)
    (started,) = served.runs("coalesced", finished=False)
    assert started["arg"] == 9
    assert started["start"] - first_call > 0.8  # a second after the burst's first call
    served.call("coalesced", 10)  # while that run runs
    runs = served.wait_runs("coalesced", 2, timeout=60)
    time.sleep(2.0)  # a third run would have started by now
    assert [r["arg"] for r in served.runs("coalesced")] == [9, 10]
    assert runs[1]["start"] >= runs[0]["end"] - 0.05


def test_only_serve_itself_fires_the_cron_route_a_forged_cron_header_is_refused(served):
    status, _ = served.server.request("GET", "/cron/taskutils-periodic", headers={"X-Appengine-Cron": "true"})
    assert status == 403
    served.wait_runs("tick", 1)  # serve's own firing, when it started


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[dict[str, Any]]:
    started: list[ServeProcess] = []

    def start(spec: str, log: Path | None = None, **more: str) -> ServeProcess:
        env = {"CONTROLS_LOG": str(log), **more} if log is not None else {}
        server = ServeProcess(spec, tmp_path / f"serve-{len(started)}.log", "--storage", str(tmp_path / "s"), env=env)
        started.append(server)
        return server.wait_ready()

    def kill(server: ServeProcess) -> None:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(20)

    try:
        yield {"start": start, "kill": kill, "tmp": tmp_path}
    finally:
        for server in started:
            server.stop()


def test_a_killed_holders_key_frees_when_its_lease_ends(storage):
    log = storage["tmp"] / "runs.jsonl"
    first = Controlled(storage["start"]("controls_app:app", log, CONTROLS_HOLD="1"), log)
    first.call("stuck", 0)  # holds the key until killed: deadline 15 s (the least App Engine takes), lease 15 + 5 s
    first.server.wait_for(lambda: first.runs("stuck", finished=False), "the holder starts", 30)
    held_from = first.runs("stuck", finished=False)[0]["start"]
    first.call("stuck", 1)
    storage["kill"](first.server)
    second = Controlled(storage["start"]("controls_app:app", log), log)
    runs = second.wait_runs("stuck", 2, timeout=90)  # the holder's retry, and the run that waited
    assert sorted(r["arg"] for r in runs) == [0, 1]
    for run in runs:
        assert run["start"] >= held_from + LEASE - 0.5  # not before the dead holder's lease ended
        assert run["start"] < held_from + LEASE + 60  # and not much later
    assert most_at_once(runs) == 1


def test_a_periodic_job_fires_once_per_slot_across_a_kill_9(storage):
    if time.time() % 60 > 40:  # start early in a minute, so the restart lands in the same slot
        time.sleep(61 - time.time() % 60)
    first = storage["start"]("periodic_app:app")
    before = first.wait_for(lambda: first.request("GET", "/")[1], "the first slot's run", 30).decode().split("\n")
    # Delivery is at least once: a kill between the run's write and its 2xx runs the task again.
    # Kill once the queue has let the task go, so that a second run could only be a second task.
    journal = TaskJournal(storage["tmp"] / "s" / "tasks.sqlite3")
    try:
        first.wait_for(lambda: journal.queued() == 0, "the first slot's task leaves the queue", 30)
    finally:
        journal.close()
    storage["kill"](first)
    second = storage["start"]("periodic_app:app")
    time.sleep(3.0)  # serve fires the cron route as it starts
    status, body = second.request("GET", "/")
    assert status == 200
    runs = [line.split(" ") for line in body.decode().split("\n")]
    assert runs[0] == before[0].split(" ")
    # One run per slot: a task's name names its slot (periodic-<job>-<YYYYmmdd-HHMM>). When a run
    # started is no test of that on a loaded machine: a slot's run may start in the next minute.
    slots = [name.rsplit("-", 2)[-2:] for _, name in runs]
    assert len({tuple(slot) for slot in slots}) == len(slots), runs


@pytest.fixture(scope="module")
def cloud_tasks(emulator_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controlled]:
    """``serve`` in Cloud Tasks mode with the emulator posting its tasks back to it."""
    folder = tmp_path_factory.mktemp("controls-cloudtasks")
    log = folder / "runs.jsonl"
    emulator = cloudtasks.EmulatorProcess(
        EMULATOR_VENV,
        port=free_port(),
        queues=QUEUES,
        project=PROJECT,
        location=LOCATION,
        max_retries=MAX_RETRIES,
        log_path=str(folder / "emulator.log"),
    )
    env = {**_cloud_tasks_env(emulator.address), "CONTROLS_LOG": str(log)}
    server = ServeProcess("controls_app:app", folder / "serve.log", env=env)
    emulator.target_port = server.port
    try:
        emulator.start()
        yield Controlled(server.wait_ready(), log)
    finally:
        try:
            server.stop()
        finally:
            emulator.stop()


def test_on_cloud_tasks_unique_concurrency_and_periodic_jobs_work_as_on_the_task_queue(cloud_tasks):
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: cloud_tasks.call("once", "ct", submit=True), range(10)))
        list(pool.map(lambda i: cloud_tasks.call("pair", i), range(6)))
    assert len({a["handle"] for a in answers}) == 1
    runs = cloud_tasks.wait_runs("pair", 6, timeout=120)
    assert most_at_once(runs) <= 2
    assert [r["arg"] for r in cloud_tasks.wait_runs("once", 1)] == ["ct"]
    assert cloud_tasks.wait_runs("tick", 1)  # the periodic job's slot, added as a named Cloud Task
