"""``python -m taskutils serve``, started as a user would and driven over HTTP.

Every test runs the real thing: a subprocess on a free loopback port serving
tests/apps/local_app.py with waitress, Google's taskqueue stub running the tasks
it enqueues and posting each back over HTTP, the datastore and memcache stubs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskutils import codec
from taskutils.config import KeyRing

from apps.serving import APPS, ServeProcess, nothing_listens_on

QUEUE_YAML = str(APPS / "queue.yaml")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One server for the module, with tests/apps/queue.yaml."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = ServeProcess("local_app:app", log, "--queue-yaml", QUEUE_YAML)
    try:
        yield proc.wait_ready("/ran")
    finally:
        proc.stop()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """Start servers of one's own for a test; each is stopped afterwards whatever happened."""
    started: list[ServeProcess] = []

    def _start(*args: str, env: dict[str, str] | None = None, spec: str = "local_app:app") -> ServeProcess:
        proc = ServeProcess(spec, tmp_path / f"serve-{len(started)}.log", *args, env=env)
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        proc.stop()


def runs(server: ServeProcess, key: str) -> list[dict[str, Any]]:
    return [r for r in server.get("/ran") if r["key"] == key]


def wait_until_ok(server: ServeProcess, key: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every attempt of the task with this key, once one of them succeeded."""
    return server.wait_for(
        lambda: (found := runs(server, key)) and found[-1]["outcome"] == "ok" and found, f"task {key}", timeout
    )


def task_log_lines(server: ServeProcess, task_name: str) -> list[str]:
    return [line for line in server.log().splitlines() if "taskutils.local:" in line and f"task={task_name} " in line]


def test_a_task_enqueued_by_the_app_runs_over_http_with_app_engine_headers(server):
    enqueued = server.post("/enqueue/record?key=plain")

    [run] = wait_until_ok(server, "plain")

    assert run["task_name"] == enqueued["name"]
    assert run["queue"] == "default"
    assert run["retry_count"] == 0
    [line] = server.wait_for(lambda: task_log_lines(server, enqueued["name"]), "the task's log line")
    assert re.search(
        rf"POST /_ah/task/local_app/record queue=default task={enqueued['name']} retry=0 -> 200 OK \(\d+\.\d ms\)",
        line,
    ), line


APP_ENGINE_USER_AGENT = "AppEngine-Google; (+http://code.google.com/appengine)"


def test_a_task_request_carries_what_app_engine_sends_beside_the_task(server):
    server.post("/enqueue/headers_seen?key=beside&failures=1")

    first, retry = [run["headers"] for run in wait_until_ok(server, "beside")]

    assert first == {
        "User-Agent": APP_ENGINE_USER_AGENT,
        "X-AppEngine-TaskRetryReason": None,
        "X-AppEngine-TaskPreviousResponse": None,
        "X-AppEngine-FailFast": None,
    }
    assert retry == {
        "User-Agent": APP_ENGINE_USER_AGENT,
        "X-AppEngine-TaskRetryReason": "HTTP 500",
        "X-AppEngine-TaskPreviousResponse": "500",
        "X-AppEngine-FailFast": None,
    }


def test_a_task_keeps_its_own_user_agent_and_fail_fast_header(server):
    server.post("/enqueue/headers_seen?key=own-headers&agent=reports/1.0&failfast=true")

    [run] = wait_until_ok(server, "own-headers")

    assert run["headers"]["User-Agent"] == f"reports/1.0 {APP_ENGINE_USER_AGENT}"
    assert run["headers"]["X-AppEngine-FailFast"] == "true"


def test_a_failing_task_is_retried_with_growing_backoff_until_it_succeeds(server):
    enqueued = server.post("/enqueue/flaky?key=backoff&failures=3&how=raised")

    attempts = wait_until_ok(server, "backoff")

    assert [(a["retry_count"], a["outcome"]) for a in attempts] == [
        (0, "raised"),
        (1, "raised"),
        (2, "raised"),
        (3, "ok"),
    ]
    gaps = [later["at"] - earlier["at"] for earlier, later in zip(attempts, attempts[1:], strict=False)]
    # queue.yaml: min_backoff_seconds 0.2, doubling: 0.2 s, 0.4 s, 0.8 s between attempts.
    for gap, backoff in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert gap >= backoff * 0.95, f"retried after {gap:.3f}s, before the {backoff}s backoff: {gaps}"
    assert gaps[2] < 5, gaps
    lines = server.wait_for(lambda: len(found := task_log_lines(server, enqueued["name"])) == 4 and found, "log lines")
    assert [re.search(r"retry=(\d) -> (\d{3})", line).groups() for line in lines] == [
        ("0", "500"),
        ("1", "500"),
        ("2", "500"),
        ("3", "200"),
    ]


def test_a_task_raising_retry_task_exception_is_retried_without_a_traceback(server):
    enqueued = server.post("/enqueue/flaky?key=polite&failures=1&how=retry")

    attempts = wait_until_ok(server, "polite")

    assert [(a["retry_count"], a["outcome"]) for a in attempts] == [(0, "retry"), (1, "ok")]
    lines = server.wait_for(lambda: len(found := task_log_lines(server, enqueued["name"])) == 2 and found, "log lines")
    status = int(re.search(r"-> (\d{3}) ", lines[0]).group(1))
    assert not 200 <= status < 300 and status not in (429, 503), lines[0]
    assert "Traceback" not in server.log().split(lines[0], 1)[1].split(lines[1], 1)[0]


def test_a_countdown_task_does_not_run_before_its_countdown(server):
    enqueued = server.post("/enqueue/record?key=later&countdown=1.5")

    [run] = wait_until_ok(server, "later")

    waited = run["at"] - enqueued["at"]
    assert 1.45 <= waited < 10, f"a countdown=1.5 task ran after {waited:.2f}s"


def test_a_named_task_is_added_once_and_its_name_stays_taken(server):
    first = server.post("/enqueue/record?key=named&name=only-once&countdown=1")
    status, second = server.request("POST", "/enqueue/record?key=named&name=only-once")

    [run] = wait_until_ok(server, "named")

    assert first["name"] == "only-once"
    assert (status, second) == (409, {"error": "TaskAlreadyExistsError"})
    assert run["task_name"] == "only-once"

    def add_again():  # the name stays the queued task's until the queue has its answer, then is a tombstone
        answer = server.request("POST", "/enqueue/record?key=named&name=only-once")
        return None if answer == (409, {"error": "TaskAlreadyExistsError"}) else answer

    assert server.wait_for(add_again, "the name to be a tombstone") == (409, {"error": "TombstonedTaskError"})
    time.sleep(0.3)
    assert len(runs(server, "named")) == 1


def test_a_payload_over_100_kib_travels_through_datastore_and_is_cleaned_up(server):
    enqueued = server.post("/enqueue/blob?key=big&size=300000")

    [run] = wait_until_ok(server, "big")

    assert run["size"] == 300000
    assert run["sha256"] == enqueued["sha256"]
    assert server.wait_for(lambda: server.get("/info")["spilled"] == 0 or None, "spill clean-up") is not None


def test_a_closure_runs_with_the_value_it_closed_over(server):
    server.post("/enqueue/closure?key=closure&greeting=bonjour")

    [run] = wait_until_ok(server, "closure")

    assert run["greeting"] == "bonjour"


def _forged(path: str, keyring: KeyRing) -> bytes:
    data = codec.dumps_call("local_app/record", None, ("forged",), {})
    return codec.frame(path, data, codec.BY_URL, keyring)


@pytest.mark.parametrize(
    "keyring", [KeyRing([]), KeyRing([b"an attacker's key"])], ids=["unsigned", "signed-with-another-key"]
)
def test_a_forged_task_request_is_refused_and_nothing_runs(server, keyring):
    path = "/_ah/task/local_app/record"
    headers = {
        "X-AppEngine-TaskName": "forged",
        "X-AppEngine-QueueName": "default",
        "X-AppEngine-TaskRetryCount": "0",
        "Content-Type": "application/octet-stream",
    }

    status, _ = server.request("POST", path, body=_forged(path, keyring), headers=headers)

    assert status == 403
    server.post("/enqueue/record?key=after-forgery")
    wait_until_ok(server, "after-forgery")
    assert runs(server, "forged") == []


def test_queues_come_from_queue_yaml(server):
    enqueued = server.post("/enqueue/record?key=fast&queue=fast")
    status, refused = server.request("POST", "/enqueue/record?key=nowhere&queue=not-in-queue-yaml")

    [run] = wait_until_ok(server, "fast")

    assert run["queue"] == "fast"
    assert run["task_name"] == enqueued["name"]
    assert (status, refused) == (400, {"error": "UnknownQueueError"})


def test_a_queue_retry_limit_drops_the_task_after_its_last_retry(server):
    enqueued = server.post("/enqueue/flaky?key=doomed&failures=100&how=raised&queue=limited")

    # queue.yaml: task_retry_limit 2 on "limited": the first attempt and two retries.
    attempts = server.wait_for(lambda: len(found := runs(server, "doomed")) >= 3 and found, "three attempts")
    server.wait_for(lambda: "failing permanently" in server.log().lower() or None, "the stub's last word")
    time.sleep(0.5)

    assert [a["retry_count"] for a in runs(server, "doomed")] == [0, 1, 2]
    assert {a["queue"] for a in attempts} == {"limited"}
    assert len(task_log_lines(server, enqueued["name"])) == 3


def test_without_queue_yaml_any_queue_name_works_and_the_project_comes_from_google_cloud_project(start):
    proc = start(env={"GOOGLE_CLOUD_PROJECT": "my-local-project"}).wait_ready("/ran")

    proc.post("/enqueue/record?key=anywhere&queue=made-up-queue")

    [run] = wait_until_ok(proc, "anywhere")
    assert run["queue"] == "made-up-queue"
    info = proc.get("/info")
    assert info["project"] == "my-local-project"
    assert info["key_app"] == "my-local-project"


def test_tasks_keep_running_while_new_queues_appear(start):
    proc = start().wait_ready("/ran")
    count, clients = 3000, 6

    def enqueue(first: int) -> None:
        for i in range(first, count, clients):
            proc.post(f"/enqueue/record?key=mq-{i}&queue=q{i}")

    threads = [threading.Thread(target=enqueue, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    proc.wait_for(lambda: proc.get("/count?prefix=mq-") == count, f"{count} tasks in {count} new queues", every=0.2)
    assert "Traceback" not in proc.log()


def test_the_datastore_survives_a_restart_with_datastore_path(start, tmp_path):
    path = str(tmp_path / "datastore.bin")
    first = start("--datastore-path", path).wait_ready("/ran")
    first.post("/put?key=greeting&value=kept")
    assert first.interrupt() == 0

    second = start("--datastore-path", path).wait_ready("/ran")

    assert second.get("/get?key=greeting") == {"value": "kept"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_the_server_cleanly(start, sig):
    proc = start("--queue-yaml", QUEUE_YAML).wait_ready("/ran")
    proc.post("/enqueue/record?key=before-stop")
    wait_until_ok(proc, "before-stop")

    assert proc.interrupt(sig) == 0

    log = proc.log()
    assert "taskutils serve: stopped" in log
    assert "Traceback" not in log
    assert nothing_listens_on(proc.port)


def test_ctrl_c_with_tasks_still_queued_stops_promptly(start):
    proc = start("--queue-yaml", QUEUE_YAML).wait_ready("/ran")
    proc.post("/enqueue/flaky?key=pending&failures=100&how=retry")
    proc.post("/enqueue/record?key=much-later&countdown=600")
    proc.wait_for(lambda: runs(proc, "pending"), "the failing task's first attempt")

    began = time.monotonic()
    assert proc.interrupt() == 0

    assert time.monotonic() - began < 10
    assert "taskutils serve: stopped" in proc.log()


LAUNCHER = """
import subprocess, sys, time, urllib.request
port = sys.argv[1]
serve = subprocess.Popen(
    [sys.executable, "-m", "taskutils", "serve", "local_app:app", "--port", port, "--exit-with-parent"],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(serve.pid, flush=True)
for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ran", timeout=1)
        print("ready", flush=True)
        break
    except OSError:
        time.sleep(0.05)
"""


def test_serve_started_with_exit_with_parent_stops_when_its_parent_dies():
    from apps.serving import free_port

    port = free_port()
    launcher = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(port)],
        cwd=APPS,
        env={**os.environ, "PYTHONPATH": str(APPS)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    orphan = int(launcher.stdout.split()[0])
    try:
        assert launcher.stdout.split()[1:] == ["ready"]
        deadline = time.monotonic() + 20
        while not nothing_listens_on(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert nothing_listens_on(port)
    finally:
        try:
            os.kill(orphan, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_an_app_that_cannot_be_imported_is_reported_and_serve_exits_non_zero(start):
    proc = start(spec="no_such_module:app")

    assert proc.proc.wait(30) == 2
    assert "cannot start: ModuleNotFoundError" in proc.log()


def test_the_demo_runs_every_kind_of_task_and_exits_0(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("TASKUTILS_SECRET_KEYS", "APPENGINE_USE_CLOUDTASK_PUSH_QUEUE")
    }

    done = subprocess.run(
        [sys.executable, "-m", "taskutils", "demo", "--timeout", "60"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    for kind in ("plain", "nested", "recursive", "closure", "lambda", "flaky", "big", "fan-in"):
        assert re.search(rf"^  ok +{kind} ", done.stdout, re.M), done.stdout
    assert re.search(r"retry=2 -> 200 OK", done.stdout), done.stdout
    assert "all 8 kinds of task ran" in done.stdout
    assert re.search(r"^  \.\.\. +fan-in +\d+/12 children done", done.stdout, re.M), done.stdout


class _Canary:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_a_task_deferred_enqueued_runs_under_serve(server):
    server.post("/enqueue/deferred?key=deferred-under-serve")

    [run] = wait_until_ok(server, "deferred-under-serve")

    assert run["what"] == "deferred"


@pytest.mark.parametrize("path", ["/_ah/queue/deferred", "/_ah/task/local_app/record"])
def test_a_pickle_posted_with_task_headers_from_outside_the_queue_never_runs(server, tmp_path, path):
    import pickle

    canary = tmp_path / "canary"
    headers = {
        "X-AppEngine-TaskName": "forged",
        "X-AppEngine-QueueName": "default",
        "Content-Type": "application/octet-stream",
    }
    body = pickle.dumps(_Canary(canary))
    if path.startswith("/_ah/task/"):
        body = bytes((codec.VERSION << 4,)) + body

    status, _ = server.request("POST", path, body=body, headers=headers)

    assert status == 403
    assert not canary.exists()
    assert "removed X-AppEngine-* headers" in server.log()


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:80", "rebind.attacker.example."])
def test_a_request_for_a_host_the_server_does_not_serve_is_refused(server, host):
    status, _ = server.request("GET", "/ran", headers={"Host": f"{host}"})
    console, _ = server.request("GET", "/_ah/taskutils/", headers={"Host": f"{host}"})

    assert (status, console) == (403, 403)
    assert server.request("GET", "/ran", headers={"Host": f"localhost:{server.port}"})[0] == 200
    for served in (f"127.0.0.1:{server.port}", f"[::1]:{server.port}", "localhost", "app.localhost:8080"):
        assert server.request("GET", "/ran", headers={"Host": served})[0] == 200, served
