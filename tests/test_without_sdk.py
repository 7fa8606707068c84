"""``pip install "taskutils-gae[cloud]"`` brings what the cloud backend needs and no App Engine SDK,
and the cloud backend runs there: a virtualenv built from this checkout's wheel, against the
Google Cloud CLI's Datastore emulator and the Cloud Tasks emulator (a missing one fails under
``CI=true``, never skips).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cloud_store import LOCATION, PROJECT, QUEUE, _get, datastore_emulator, tasks_emulator  # noqa: F401

from taskutils import cloudtasks

APPS = Path(__file__).resolve().parent / "apps"
INSTALL_TIMEOUT = 600
# What the cloud backend needs beyond the standard library, and what it must not bring.
CLOUD_NEEDS = {"taskutils-gae", "cloudpickle", "webapp2", "google-cloud-tasks", "google-cloud-ndb", "cryptography"}
NOT_BROUGHT = {"appengine-python-standard", "waitress", "pytest", "webtest", "fastapi", "flask", "selenium", "mock"}


def _outside(env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without what would put this checkout's taskutils on the virtualenv's path."""
    kept = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**kept, **(env or {})}


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", *args],
        env=_outside(),
        check=True,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )


@pytest.fixture(scope="module")
def cloud_venv(taskutils_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A virtualenv with ``taskutils-gae[cloud]`` from this checkout's wheel: its path and what pip installed."""
    venv = tmp_path_factory.mktemp("cloud-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    _pip(venv, "install", "--quiet", f"{taskutils_wheel}[cloud]")
    installed = {p["name"].lower() for p in json.loads(_pip(venv, "list", "--format=json").stdout)}
    _pip(venv, "install", "--quiet", "pytest")  # the user's own test runner, for the fixture's test
    yield {"venv": venv, "installed": installed}


def _run(venv: Path, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), *args],
        cwd=cwd,
        env=_outside(env),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def emulators(datastore_emulator: str, tasks_emulator: cloudtasks.EmulatorProcess) -> dict[str, str]:  # noqa: F811
    """Both emulators emptied: the environment that points a process at them."""
    _get(f"http://{datastore_emulator}/reset", data=b"")
    cloudtasks.emulator_client(tasks_emulator.address).purge_queue(name=tasks_emulator.queue_path(QUEUE))
    return {
        "DATASTORE_EMULATOR_HOST": datastore_emulator,
        "CLOUD_TASKS_EMULATOR_HOST": tasks_emulator.address,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "LOCATION_ID": LOCATION,
        "GOOGLE_APPLICATION_CREDENTIALS": os.path.join(tempfile.gettempdir(), "no-such-file.json"),
    }


def test_the_cloud_extra_brings_what_the_cloud_backend_needs_and_no_app_engine_sdk(cloud_venv):
    installed = cloud_venv["installed"]

    assert CLOUD_NEEDS <= installed
    assert not NOT_BROUGHT & installed
    assert _run(cloud_venv["venv"], ["-c", "import google.appengine"], APPS, {}).returncode != 0


def test_without_the_sdk_a_closure_a_big_argument_and_a_map_with_then_run_on_the_cloud_backend(cloud_venv, emulators):
    ran = _run(
        cloud_venv["venv"], ["-c", "import without_sdk; without_sdk.main()", PROJECT, LOCATION, QUEUE], APPS, emulators
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout.strip().splitlines()[-1])

    assert seen["sdk"] is False
    assert seen["task_class"] == "taskutils._tasklite.Task"
    assert seen["notes"] == [["n1", f"len={300 * 1024}:abc"]]  # the 300 KB argument, byte-exact, once
    assert seen["squares"] == [n * n for n in range(12)]
    assert seen["total"] == sum(n * n for n in range(12))
    assert seen["duplicate"] == "TaskAlreadyExistsError"  # a named task's second add, caught by the SDK's name
    assert seen["console"] == {"admin": "200 OK", "anyone": "403 Forbidden"}  # on App Engine, as with the SDK
    assert (
        seen["ran"] >= 1 + 12 + 1 + 1
    )  # the note, the children, the callback, the cube, and fan-in steps; none failed


def test_without_the_sdk_the_default_backend_and_serve_say_what_to_install(cloud_venv, emulators):
    call = "\n".join(
        [
            "import taskutils",
            "@taskutils.task",
            "def f(): pass",
            "try:",
            "    f()",
            "except ModuleNotFoundError as e:",
            "    print(e)",
        ]
    )
    ran = _run(cloud_venv["venv"], ["-c", call], APPS, {})
    served = _run(cloud_venv["venv"], ["-m", "taskutils", "serve", "main:app", "--backend", "cloud"], APPS, emulators)

    assert 'pip install "taskutils-gae[appengine]"' in ran.stdout, ran.stderr
    assert 'configure(backend="cloud")' in ran.stdout
    assert served.returncode == 2 and 'pip install "taskutils-gae[appengine]"' in served.stderr


def test_without_the_sdk_the_cloud_fixture_runs_a_users_tasks_under_their_pytest(cloud_venv, emulators, tmp_path):
    shutil.copy(APPS / "without_sdk_fixture.py", tmp_path / "test_users_app.py")
    ran = _run(
        cloud_venv["venv"], ["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_users_app.py"], tmp_path, emulators
    )

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2 passed" in ran.stdout
