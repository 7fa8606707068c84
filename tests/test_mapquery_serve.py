"""``map_query`` under ``python -m taskutils serve``: real task requests, and a ``kill -9`` in the middle.

Each test starts a real server (a subprocess on a loopback port) serving
tests/apps/mapquery_app.py and stops it; the ``then`` callback writes its counts
to a file outside the server.
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
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.reports = tmp_path / "reports.jsonl"
        self.started: list[ServeProcess] = []

    def start(self, *args: str) -> ServeProcess:
        proc = ServeProcess(
            "mapquery_app:app",
            self.tmp_path / f"serve-{len(self.started)}.log",
            *args,
            env={"MAPQUERY_LOG": str(self.reports)},
        )
        self.started.append(proc)
        return proc.wait_ready("/touched")

    def counts(self) -> list[list[int]]:
        if not self.reports.exists():
            return []
        return [json.loads(line) for line in self.reports.read_text().split("\n")[:-1] if line.strip()]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    yield s
    for proc in s.started:
        proc.stop()


def _status(server: ServeProcess, group_id: str) -> dict[str, Any]:
    return dict(server.get(f"/status?id={group_id}"))


def test_shards_walk_a_kind_under_serve_and_the_callback_gets_counts_that_add_up(servers):
    server = servers.start()
    assert server.post("/seed?n=1500") == 1500
    group_id = server.post("/start?shards=4&page_size=25&budget=0.2")["id"]
    server.wait_for(lambda: _status(server, group_id)["status"] == "succeeded", "the map finished", 120, 0.5)
    assert server.get("/touched") == {"1": 1500}
    server.wait_for(servers.counts, "the callback ran", 30, 0.2)
    (counts,) = servers.counts()
    assert len(counts) == 4 and sum(counts) == 1500
    assert len([c for c in counts if c]) >= 3, f"several shards did work: {counts}"


def test_every_entity_is_touched_exactly_once_across_a_kill_9_of_serve_storage(servers):
    storage = str(servers.tmp_path / "storage")
    server = servers.start("--storage", storage)
    assert server.post("/seed?n=2000") == 2000
    group_id = server.post("/start?shards=4&page_size=10&budget=0.3")["id"]
    server.wait_for(lambda: _status(server, group_id)["processed"] >= 300, "some pages committed", 120, 0.1)

    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    again = servers.start("--storage", storage)
    before = _status(again, group_id)
    assert before["status"] != "succeeded", "the map finished before the kill: nothing was left to resume"

    again.wait_for(lambda: _status(again, group_id)["status"] == "succeeded", "the map finished", 240, 0.5)
    assert again.get("/touched") == {"1": 2000}
    again.wait_for(servers.counts, "the callback ran", 30, 0.2)
    (counts,) = servers.counts()
    assert sum(counts) == 2000
    assert _status(again, group_id)["processed"] == 2000
