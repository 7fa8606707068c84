"""A fan-out and fan-in over HTTP: ``python -m taskutils serve`` on Google's stubs, and on the Cloud Tasks emulator.

The same app (tests/apps/results_app.py) runs both ways: a request submits a group of
children with a ``then`` callback, the queue posts each child back to the server over
HTTP, the fan-in tasks follow, and the callback runs once with the results in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cloudtasks import EMULATOR_VENV, LOCATION, MAX_RETRIES, PROJECT, QUEUES, _cloud_tasks_env, emulator_venv

from taskutils import cloudtasks

from apps.serving import APPS, ServeProcess, free_port

__all__ = ["emulator_venv"]  # a fixture this module uses

N = 40


def fan_in(server: ServeProcess, n: int = N, timeout: float = 60.0) -> dict[str, Any]:
    """Submit a group of n over HTTP and wait for its summary; return what the server reports."""
    started = server.post(f"/fanout?n={n}")
    summary = server.wait_for(
        lambda: (
            (found := server.request("GET", f"/handle?id={started['summary']}")[1])
            and found.get("status") == "succeeded"
            and found
        ),
        "the group's summary",
        timeout,
    )
    group = server.get(f"/group?id={started['group']}")
    return {"summary": summary, "group": group, "ran": server.get("/ran")}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(
        "results_app:app", tmp_path_factory.mktemp("serve") / "serve.log", "--queue-yaml", str(APPS / "queue.yaml")
    )
    try:
        yield proc.wait_ready("/ran")
    finally:
        proc.stop()


def test_a_group_fans_in_over_http_through_serve(served):
    seen = fan_in(served)

    assert seen["summary"]["result"] == sum(n * n for n in range(N))
    assert seen["group"]["status"] == "succeeded"
    assert seen["group"]["progress"] == 1.0
    assert seen["group"]["counts"]["succeeded"] == N
    assert [r["count"] for r in seen["ran"]] == [N]


@pytest.fixture(scope="module")
def cloud_tasks(emulator_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """``serve`` in Cloud Tasks mode with the emulator posting its tasks back to it."""
    logs = tmp_path_factory.mktemp("cloudtasks")
    emulator = cloudtasks.EmulatorProcess(
        EMULATOR_VENV,
        port=free_port(),
        queues=QUEUES,
        project=PROJECT,
        location=LOCATION,
        max_retries=MAX_RETRIES,
        log_path=str(logs / "emulator.log"),
    )
    server = ServeProcess("results_app:app", logs / "serve.log", env=_cloud_tasks_env(emulator.address))
    emulator.target_port = server.port
    try:
        emulator.start()
        yield server.wait_ready("/ran")
    finally:
        try:
            server.stop()
        finally:
            emulator.stop()


def test_the_same_group_fans_in_on_the_cloud_tasks_emulator(cloud_tasks):
    seen = fan_in(cloud_tasks, n=20, timeout=90.0)

    assert seen["summary"]["result"] == sum(n * n for n in range(20))
    assert seen["group"]["status"] == "succeeded"
    assert seen["group"]["counts"]["succeeded"] == 20
    assert [r["count"] for r in seen["ran"]] == [20]
