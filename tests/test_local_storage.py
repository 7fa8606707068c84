"""``python -m taskutils serve --storage DIR``: queued tasks and Datastore entities survive ``kill -9``.

Each test starts a real server (a subprocess on a loopback port) serving
tests/apps/durable_app.py, kills it with SIGKILL, starts another on the same
folder and checks what the app sees. Task runs are counted in a file the tasks
append to, outside the server.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.serving import ServeProcess


class Servers:
    """Start ``serve durable_app:app --storage DIR`` as often as a test needs, all sharing one run log."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.storage = tmp_path / "storage"
        self.runs_file = tmp_path / "runs.jsonl"
        self.started: list[ServeProcess] = []

    def start(self, *args: str) -> ServeProcess:
        proc = ServeProcess(
            "durable_app:app",
            self.tmp_path / f"serve-{len(self.started)}.log",
            "--storage",
            str(self.storage),
            *args,
            env={"DURABLE_LOG": str(self.runs_file)},
        )
        self.started.append(proc)
        return proc.wait_ready("/stats")

    def crash(self, proc: ServeProcess) -> None:
        """SIGKILL: no stop, no summary, nothing saved on the way out."""
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(30)

    def runs(self) -> list[dict[str, Any]]:
        """Every complete line: a task may be writing the last one, or have been killed halfway through it."""
        if not self.runs_file.exists():
            return []
        complete = self.runs_file.read_text().split("\n")[:-1]
        return [json.loads(line) for line in complete if line.strip()]

    def keys_ok(self) -> set[str]:
        return {r["key"] for r in self.runs() if r["outcome"] == "ok"}


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    yield s
    for proc in s.started:
        proc.stop()


def test_every_task_added_runs_at_least_once_across_a_kill_9(servers):
    server = servers.start()
    assert server.post("/map?prefix=now&n=1000") == 1000
    assert server.post("/map?prefix=later&n=1000&countdown=3") == 1000
    server.wait_for(lambda: len(servers.runs()) >= 150, "some tasks ran before the crash", timeout=60)

    servers.crash(server)
    ran_before = servers.keys_ok()
    assert len(ran_before) < 2000, "every task ran before the kill: nothing was left to keep"

    again = servers.start()
    expected = {f"now{i}" for i in range(1000)} | {f"later{i}" for i in range(1000)}
    again.wait_for(lambda: servers.keys_ok() >= expected, "every task ran after the restart", timeout=120, every=0.5)
    assert again.get("/stats")["queued"] == 0


def test_datastore_entities_written_and_deleted_survive_a_kill_9(servers):
    server = servers.start()
    server.post("/put?key=kept&value=1")
    server.post("/put?key=changed&value=old")
    server.post("/put?key=changed&value=new")
    server.post("/put?key=deleted&value=x")
    server.post("/delete?key=deleted")

    servers.crash(server)
    again = servers.start()

    assert again.get("/get?key=kept") == {"value": "1"}
    assert again.get("/get?key=changed") == {"value": "new"}
    assert again.get("/get?key=deleted") == {"value": None}


def test_a_named_task_cannot_be_added_again_after_a_kill_9(servers):
    server = servers.start()
    assert server.request("POST", "/enqueue/record?key=once&name=once")[0] == 200
    assert server.request("POST", "/enqueue/record?key=waiting&name=waiting&countdown=600")[0] == 200
    server.wait_for(lambda: "once" in servers.keys_ok(), "the named task ran")
    # Its answer reached the queue, which deleted it: only "waiting" is left (killed before that, it would
    # rightly run again after the restart, and its name would still belong to a queued task).
    server.wait_for(lambda: server.get("/stats")["queued"] == 1, "the named task left the queue")

    servers.crash(server)
    again = servers.start()

    assert again.request("POST", "/enqueue/record?key=once&name=once") == (409, {"error": "TombstonedTaskError"})
    assert again.request("POST", "/enqueue/record?key=w&name=waiting") == (409, {"error": "TaskAlreadyExistsError"})
    assert again.get("/stats")["queued"] == 1
    status, added = again.request("POST", "/enqueue/record?key=unnamed")
    assert status == 200, added  # the names the queue chooses itself do not collide with the kept ones
    again.wait_for(lambda: "unnamed" in servers.keys_ok(), "an unnamed task added after the restart ran")


def test_a_retrying_task_keeps_its_retry_count_across_a_kill_9(servers):
    server = servers.start()
    status, added = server.request("POST", "/enqueue/stubborn?key=stubborn&succeed_at=5")
    assert status == 200, added
    server.wait_for(
        lambda: any(r["retry_count"] >= 2 for r in servers.runs()), "the task failed three times", timeout=60
    )

    servers.crash(server)
    before = [r["retry_count"] for r in servers.runs()]
    servers.start()

    servers.started[-1].wait_for(lambda: "stubborn" in servers.keys_ok(), "the task succeeded", timeout=60)
    after = [r for r in servers.runs()[len(before) :]]
    assert after[0]["task_name"] == added["name"]
    assert after[0]["retry_count"] >= max(before), (before, after)
    assert [r["retry_count"] for r in after if r["outcome"] == "ok"] == [5]


def test_a_second_server_on_the_same_storage_refuses_to_start(servers):
    first = servers.start()
    second = ServeProcess("durable_app:app", servers.tmp_path / "second.log", "--storage", str(servers.storage))
    servers.started.append(second)

    assert second.proc.wait(60) == 2
    assert "StorageInUseError" in second.log()
    first.post("/put?key=still&value=served")
    assert first.get("/get?key=still") == {"value": "served"}
