"""The examples under ``examples/`` on the cloud backend: under ``serve --backend cloud`` and under the fixture.

Each example (a Flask app for Cloud Run, a Python 3 App Engine app without bundled services,
a FastAPI app) has the same three routes: a closure task that writes a Cloud NDB entity, a
300 KB argument, and ``submit_map(...).then(...)``. Under ``serve`` the real Cloud Tasks
emulator posts the tasks to a real server; under ``cloud_task_testbed`` the test drains the
emulator's queue through the example's own WSGI app. Both use the Google Cloud CLI's
Datastore emulator; a missing emulator fails these tests, it never skips them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import werkzeug.test

from taskutils.controls import jobs as declared

from apps.serving import ServeProcess

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
EMULATOR_VENV = Path(os.environ.get("TASKUTILS_EMULATOR_VENV") or REPO / ".cache" / "cloudtasks-emulator-venv")
# Each example's WSGI app, as serve loads it.
SPECS = {"cloudrun-flask": "main:app", "appengine-py3": "main:app", "cloudrun-fastapi": "main:wsgi"}
BIG = 300 * 1024


def _pids_in(log: str, what: str) -> list[int]:
    """The process ids serve logged for its emulators ("Datastore emulator ... (pid 123, ...")."""
    found = []
    for line in log.splitlines():
        if "cloud backend:" in line:
            for part in line.split("(pid ")[1:]:
                found.append(int(part.split(",")[0].split(")")[0]))
    assert len(found) == 2, f"{what}: serve did not log both emulators' pids:\n{log}"
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _big_body() -> bytes:
    return bytes(range(256)) * (BIG // 256) + b"end"


class ExampleServer(ServeProcess):
    """``python -m taskutils serve SPEC --backend cloud`` in the example's folder, starting its own emulators."""

    def __init__(self, name: str, log_path: Path) -> None:
        env = {
            "TASKUTILS_EMULATOR_VENV": str(EMULATOR_VENV),
            "PYTHONPATH": "",
            "GOOGLE_CLOUD_PROJECT": "examples-test",
            # Nothing points at other emulators, or at Cloud Run.
            "DATASTORE_EMULATOR_HOST": "",
            "CLOUD_TASKS_EMULATOR_HOST": "",
            "K_SERVICE": "",
            "TASKS_TARGET": "",
        }
        super().__init__(SPECS[name], log_path, "--backend", "cloud", env=env, cwd=EXAMPLES / name)


@pytest.fixture(scope="module", params=sorted(SPECS))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleServer]:
    name = request.param
    server = ExampleServer(name, tmp_path_factory.mktemp(name) / "serve.log")
    try:
        server.wait_ready("/notes/none", timeout=120)
        yield server
    finally:
        server.stop()


def _settled(server: ServeProcess, marker: str) -> None:
    """Wait until a note added now has been written: tasks of one queue run in order in the emulator."""
    assert server.request("POST", f"/notes/{marker}", b"marker")[0] == 202
    server.wait_for(lambda: server.get(f"/notes/{marker}"), f"note {marker} written", timeout=60)


def test_a_closure_task_writes_a_cloud_ndb_entity_exactly_once_under_serve(served: ExampleServer) -> None:
    assert served.request("POST", "/notes/first", b"hello")[0] == 202

    note = served.wait_for(lambda: served.get("/notes/first"), "the closure task wrote its note", timeout=60)
    _settled(served, "after-first")

    assert served.get("/notes/first") == {"text": "hello", "writes": 1} == note


def test_a_300_kb_argument_arrives_byte_exact_under_serve(served: ExampleServer) -> None:
    body = _big_body()
    assert served.request("POST", "/uploads/big", body)[0] == 202

    found = served.wait_for(lambda: served.get("/uploads/big"), "the 300 KB task ran", timeout=60)

    assert found == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_submit_map_then_gets_every_result_in_order_once_under_serve(served: ExampleServer) -> None:
    assert served.request("POST", "/squares/run?n=12")[0] == 202

    found = served.wait_for(lambda: served.get("/squares/run"), "the fan-in callback ran", timeout=90)
    _settled(served, "after-squares")

    assert found["values"] == [i * i for i in range(12)]
    assert served.get("/squares/run")["calls"] == 1


def test_serve_stops_both_emulators_when_it_stops(tmp_path: Path) -> None:
    server = ExampleServer("appengine-py3", tmp_path / "serve.log")
    try:
        server.wait_ready("/notes/none", timeout=120)
        pids = _pids_in(server.log(), "serve --backend cloud")
        assert all(_group_alive(pid) for pid in pids)

        assert server.interrupt(signal.SIGTERM, timeout=60) == 0
    finally:
        server.stop()

    assert [pid for pid in pids if _group_alive(pid)] == [], server.log()


# The same examples in process, under the cloud_task_testbed fixture.


def _load(name: str) -> ModuleType:
    """Import an example's main.py under a name of its own (all three are ``main``)."""
    module_name = "example_" + name.replace("-", "_")
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / name / "main.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture(params=sorted(SPECS))
def example(request: pytest.FixtureRequest, cloud_task_testbed: Any) -> Iterator[tuple[Any, werkzeug.test.Client]]:
    """The example's WSGI app, as serve would run it, and a client on it."""
    module = _load(request.param)
    wsgi_app = getattr(module, SPECS[request.param].partition(":")[2])
    yield wsgi_app, _BufferedClient(wsgi_app)


class _BufferedClient(werkzeug.test.Client):
    """Reads every response whole and closes the app's iterable, as a WSGI server does (an
    ASGI app seen through a2wsgi otherwise keeps its request's coroutine pending)."""

    def open(self, *args: Any, buffered: bool = True, **kwargs: Any) -> Any:
        return super().open(*args, buffered=buffered, **kwargs)


def _json(client: werkzeug.test.Client, path: str) -> Any:
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    return json.loads(response.get_data())


def test_a_closure_task_writes_a_cloud_ndb_entity_exactly_once_under_the_fixture(
    example: tuple[Any, werkzeug.test.Client], cloud_task_testbed: Any
) -> None:
    wsgi_app, client = example
    assert client.post("/notes/first", data=b"hello").status_code == 202

    assert cloud_task_testbed.drain(app=wsgi_app) == 1

    assert _json(client, "/notes/first") == {"text": "hello", "writes": 1}


def test_a_300_kb_argument_arrives_byte_exact_under_the_fixture(
    example: tuple[Any, werkzeug.test.Client], cloud_task_testbed: Any
) -> None:
    wsgi_app, client = example
    body = _big_body()
    assert client.post("/uploads/big", data=body).status_code == 202

    cloud_task_testbed.drain(app=wsgi_app)

    assert _json(client, "/uploads/big") == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_submit_map_then_gets_every_result_in_order_once_under_the_fixture(
    example: tuple[Any, werkzeug.test.Client], cloud_task_testbed: Any
) -> None:
    wsgi_app, client = example
    assert client.post("/squares/run?n=12").status_code == 202

    cloud_task_testbed.drain(app=wsgi_app)

    assert _json(client, "/squares/run") == {"values": [i * i for i in range(12)], "calls": 1}


def test_each_example_serves_the_periodic_jobs_cron_route_and_refuses_a_request_without_the_schedulers_proof(
    example: tuple[Any, werkzeug.test.Client], cloud_task_testbed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = example
    monkeypatch.setattr(declared, "_jobs", {})  # no periodic job is due: a firing adds nothing

    refused = client.get("/cron/taskutils-periodic")
    fired = client.get("/cron/taskutils-periodic", headers={"X-Appengine-Cron": "true"})

    # taskutils' cron route answers, not a 404 (taskutils.app alone serves only the task URLs).
    assert (refused.status_code, refused.get_data()) == (403, b"cron requests only\n")
    assert (fired.status_code, fired.get_data()) == (200, b"added 0\n")
    assert client.get("/no/such/page").status_code == 404


# Deploy: until taskutils-gae is on PyPI, each example's requirements.txt installs the wheel
# its README has pip build into wheels/; requirements-dev.txt adds the SDK serve runs on.


@pytest.mark.parametrize("example", sorted(SPECS))
@pytest.mark.parametrize(
    ("requirements", "sdk"), [("requirements.txt", False), ("requirements-dev.txt", True)], ids=["deploy", "dev"]
)
def test_an_examples_requirements_install_taskutils_from_the_wheel_its_readme_builds(
    example: str, requirements: str, sdk: bool, taskutils_wheel: Path, tmp_path: Path
) -> None:
    folder = tmp_path / example
    shutil.copytree(EXAMPLES / example, folder)
    (folder / "wheels").mkdir()
    shutil.copy(taskutils_wheel, folder / "wheels")
    report = tmp_path / "report.json"
    resolve = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    resolve += ["--report", str(report), "--requirement", requirements]
    subprocess.run(resolve, cwd=folder, check=True, timeout=300)  # as the deploy build runs it, in the folder

    installs = {i["metadata"]["name"].lower(): i for i in json.loads(report.read_text())["install"]}
    assert installs["taskutils-gae"]["download_info"]["url"] == (folder / "wheels" / taskutils_wheel.name).as_uri()
    assert {"google-cloud-tasks", "google-cloud-ndb", "cryptography"} <= set(installs)  # the [cloud] extra
    assert ("appengine-python-standard" in installs) is sdk  # the deployed service gets no App Engine SDK
