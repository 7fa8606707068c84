"""taskutils on Cloud Tasks: the SDK's client pointed at gcloud-tasks-emulator, and ``serve`` end to end.

The emulator runs from its own virtualenv (it pins protobuf<5), built on first use at
``.cache/cloudtasks-emulator-venv`` in the checkout (or ``$TASKUTILS_EMULATOR_VENV``), once
for every tox env. Outside CI a machine that cannot build it skips these tests; in CI
(``CI=true``) that is a failure.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.appengine.api import taskqueue
from google.appengine.api.taskqueue import cloudtask
from google.appengine.ext import ndb

from taskutils import cloudtasks, task

import tasklib
from apps.serving import ServeProcess, free_port

REPO = Path(__file__).resolve().parents[1]
EMULATOR_VENV = Path(os.environ.get("TASKUTILS_EMULATOR_VENV") or REPO / ".cache" / "cloudtasks-emulator-venv")
PROJECT, LOCATION = "taskutils-test", "us-central1"
QUEUES = ("default", "flaky")
# The emulator retries forever by default, 10 times a second; a broken handler must not spin.
MAX_RETRIES = 5


def _tail(path: str | os.PathLike[str] | None, lines: int = 40) -> str:
    try:
        with open(path or "", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _cloud_tasks_env(emulator_address: str) -> dict[str, str]:
    return {
        "APPENGINE_USE_CLOUDTASK_PUSH_QUEUE": "true",
        "CLOUD_TASKS_EMULATOR_HOST": emulator_address,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "LOCATION_ID": LOCATION,
    }


class CloudTasksStack:
    """``python -m taskutils serve`` in Cloud Tasks mode and the emulator that posts its tasks back to it."""

    def __init__(self, log_dir: Path) -> None:
        # Each needs the other's address: pick the emulator's port first, start serve
        # (it connects to the emulator only when a task is added), then the emulator.
        self.emulator = cloudtasks.EmulatorProcess(
            EMULATOR_VENV,
            port=free_port(),
            queues=QUEUES,
            project=PROJECT,
            location=LOCATION,
            max_retries=MAX_RETRIES,
            log_path=str(log_dir / "emulator.log"),
        )
        self.server = ServeProcess(
            "cloudtasks_app:app",
            log_dir / "serve.log",
            "--host",
            "127.0.0.1",
            env=_cloud_tasks_env(self.emulator.address),
        )
        self.emulator.target_port = self.server.port

    def start(self) -> CloudTasksStack:
        self.emulator.start()
        self.server.wait_ready("/ran")
        return self

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            self.emulator.stop()

    def logs(self) -> str:
        return f"--- serve log:\n{_tail(self.server.log_path)}--- emulator log:\n{_tail(self.emulator.log_path)}"

    def enqueue(self, kind: str, item_id: str, **query: Any) -> dict[str, Any]:
        params = "".join(f"&{k}={v}" for k, v in query.items())
        status, body = self.server.request("POST", f"/enqueue/{kind}?id={item_id}{params}")
        if status != 200:
            pytest.fail(f"enqueueing {kind} answered {status}: {body!r}\n{self.logs()}")
        return body  # type: ignore[no-any-return]

    def ran(self, item_id: str) -> list[dict[str, Any]]:
        """What ran for item_id (or, for .map, for its items item_id-0, item_id-1, ...)."""
        entries = self.server.get("/ran")
        return [e for e in entries if e["id"] == item_id or e["id"].startswith(item_id + "-")]

    def wait_for(
        self, done: Callable[[list[dict[str, Any]]], bool], item_id: str, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """Poll until done(what ran for item_id); fail with both logs if it never is."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.ran(item_id)
            if done(entries):
                return entries
            if time.monotonic() > deadline:
                pytest.fail(f"tasks for {item_id!r} not done after {timeout}s: {entries}\n{self.logs()}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def emulator_venv() -> Path:
    """The emulator's virtualenv, built once for all tox envs; a skip outside CI if it cannot be built."""
    try:
        cloudtasks.EmulatorProcess(EMULATOR_VENV).ensure_venv()
    except (OSError, subprocess.CalledProcessError) as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot build the emulator's virtualenv at {EMULATOR_VENV}: {e}")
    return EMULATOR_VENV


@pytest.fixture(scope="module")
def stack(emulator_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudTasksStack]:
    ct = CloudTasksStack(tmp_path_factory.mktemp("cloudtasks"))
    try:
        yield ct.start()
    finally:
        ct.stop()


@pytest.fixture
def sdk_on_emulator(stack: CloudTasksStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process in Cloud Tasks mode, its SDK client on the emulator, and no credentials to be found."""
    for name, value in _cloud_tasks_env(stack.emulator.address).items():
        monkeypatch.setenv(name, value)
    missing = os.path.join(tempfile.gettempdir(), "no-such-credentials.json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", missing)
    assert cloudtasks.use_emulator_from_env()
    yield
    cloudtasks.restore_default_client()
    cloudtask._reset_clients()


def _short_names(client: Any) -> list[str]:
    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    return sorted(q.name.rsplit("/", 1)[-1] for q in client.list_queues(parent=parent))


def test_without_the_emulator_variable_the_sdk_client_is_left_alone(monkeypatch):
    monkeypatch.delenv("CLOUD_TASKS_EMULATOR_HOST", raising=False)
    original = cloudtask._get_client

    assert cloudtasks.use_emulator_from_env() is False
    assert cloudtask._get_client is original


def test_the_sdk_client_reaches_the_emulator_with_no_credentials(sdk_on_emulator):
    assert _short_names(cloudtask._get_client()) == sorted(QUEUES)

    cloudtask._reset_clients()  # the SDK's own cache reset must not bring back a real client
    assert _short_names(cloudtask._get_client()) == sorted(QUEUES)


def test_restoring_the_default_client_undoes_the_emulator_routing(sdk_on_emulator):
    patched = cloudtask._get_client

    cloudtasks.restore_default_client()

    assert cloudtask._get_client is not patched
    assert cloudtask._get_client.__module__ == cloudtask.__name__


def test_a_sixth_transactional_task_in_one_transaction_is_refused_on_cloud_tasks(task_testbed, sdk_on_emulator):
    @task(transactional=True)
    def staged(n):
        tasklib.ran.append(n)

    def six_tasks():
        for n in range(6):
            staged(n)

    with pytest.raises(taskqueue.Error, match="maximum allowed 5"):
        ndb.transaction(six_tasks, xg=True)
    assert tasklib.ran == []


def test_a_task_enqueued_in_cloud_tasks_mode_runs_through_the_emulator(stack):
    enqueued = stack.enqueue("plain", "p1")

    [entry] = stack.wait_for(lambda e: len(e) >= 1, "p1")

    assert entry["what"] == "plain"
    assert entry["outcome"] == "ok"
    assert entry["task_name"] == enqueued["enqueued"][0]


def test_a_task_sees_a_short_queue_name_though_cloud_tasks_sends_the_full_path(stack):
    stack.enqueue("plain", "q1")
    stack.enqueue("fails_once", "q2")

    [plain] = stack.wait_for(lambda e: len(e) >= 1, "q1")
    flaky = stack.wait_for(lambda e: any(x["outcome"] == "ok" for x in e), "q2")

    assert plain["queue"] == "default"
    assert {x["queue"] for x in flaky} == {"flaky"}


def test_a_countdown_task_does_not_run_before_its_countdown(stack):
    enqueued = stack.enqueue("later", "c1")

    [entry] = stack.wait_for(lambda e: len(e) >= 1, "c1")

    waited = entry["at"] - enqueued["at"]
    assert 1.9 <= waited < 10, f"countdown=2 task ran after {waited:.2f}s"


def test_a_task_that_fails_once_is_retried_and_then_succeeds(stack):
    stack.enqueue("fails_once", "f1")

    entries = stack.wait_for(lambda e: any(x["outcome"] == "ok" for x in e), "f1")
    time.sleep(0.5)  # a succeeded task must not run again
    entries = stack.ran("f1")

    assert [(x["outcome"], x["retry_count"]) for x in entries] == [("raised", 0), ("ok", 1)]


def test_a_transactional_task_runs_after_its_transaction_commits(stack):
    stack.enqueue("transactional", "t1")

    [entry] = stack.wait_for(lambda e: len(e) >= 1, "t1")

    assert entry["what"] == "after_commit"
    assert entry["outcome"] == "ok"


def test_map_runs_one_task_per_item_though_the_emulator_has_no_batch_add(stack):
    enqueued = stack.enqueue("map", "m1", n=3)

    entries = stack.wait_for(lambda e: len(e) >= 3, "m1")
    time.sleep(0.3)

    assert len(enqueued["enqueued"]) == 3
    assert sorted(x["id"] for x in stack.ran("m1")) == ["m1-0", "m1-1", "m1-2"]
    assert all(x["outcome"] == "ok" for x in entries)


def test_serve_stopping_in_cloud_tasks_mode_says_the_queue_is_the_emulators(stack, tmp_path):
    # The emulator queues and sends the tasks: serve has no count of its own to give.
    server = ServeProcess(
        "cloudtasks_app:app",
        tmp_path / "serve.log",
        "--host",
        "127.0.0.1",
        env=_cloud_tasks_env(stack.emulator.address),
    )
    try:
        server.wait_ready("/ran")
    finally:
        server.stop()

    log = server.log()
    assert server.proc.returncode == 0
    assert f"tasks were queued and sent by the Cloud Tasks emulator at {stack.emulator.address}" in log
    assert "0 task runs succeeded" not in log


def test_the_console_in_cloud_tasks_mode_says_where_the_queue_lives_and_lists_the_runs_it_answered(stack):
    enqueued = stack.enqueue("plain", "console-1")
    stack.wait_for(lambda e: len(e) >= 1, "console-1")
    name = enqueued["enqueued"][0]

    status, queues = stack.server.request("GET", "/_ah/taskutils/")
    assert status == 200
    assert f"Tasks are queued in the Cloud Tasks emulator at {stack.emulator.address}".encode() in queues

    def listed() -> bool:
        status, runs = stack.server.request("GET", "/_ah/taskutils/runs")
        return status == 200 and name.encode() in runs and b"cloudtasks_app.plain" in runs

    stack.server.wait_for(listed, "the run to be listed on the console's Runs page")
