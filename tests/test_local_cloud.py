"""``serve --backend cloud``: the emulators it starts or is pointed at, and ``--storage`` on the cloud backend.

Real ``serve`` subprocesses on loopback, the Cloud Tasks emulator and the Google Cloud CLI's
Datastore emulator; the app is the App Engine example (``examples/appengine-py3``).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from google.cloud import ndb

from taskutils.local.datastore_emulator import DatastoreEmulatorProcess

from apps.serving import ServeProcess

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "appengine-py3"
EMULATOR_VENV = Path(os.environ.get("TASKUTILS_EMULATOR_VENV") or REPO / ".cache" / "cloudtasks-emulator-venv")
PROJECT = "serve-cloud-test"


class Note(ndb.Model):  # the example's model, read here from the emulator
    text = ndb.StringProperty()
    writes = ndb.IntegerProperty(default=0)


def _serve(log_path: Path, *args: str, datastore: str = "") -> ServeProcess:
    env = {
        "TASKUTILS_EMULATOR_VENV": str(EMULATOR_VENV),
        "PYTHONPATH": "",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "DATASTORE_EMULATOR_HOST": datastore,
        "CLOUD_TASKS_EMULATOR_HOST": "",
        "TASKUTILS_BACKEND": "cloud",  # the variable instead of --backend
    }
    server = ServeProcess("main:app", log_path, *args, env=env, cwd=EXAMPLE)
    try:
        return server.wait_ready("/notes/none", timeout=120)
    except BaseException:
        server.stop()
        raise


def _write_note(server: ServeProcess, note_id: str, text: str) -> None:
    assert server.request("POST", f"/notes/{note_id}", text.encode())[0] == 202
    server.wait_for(lambda: server.get(f"/notes/{note_id}"), f"note {note_id} written", timeout=60)


def test_with_storage_the_datastore_emulator_keeps_entities_across_a_restart(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    first = _serve(tmp_path / "first.log", "--storage", str(storage))
    try:
        _write_note(first, "kept", "across restarts")
        assert first.interrupt(signal.SIGINT, timeout=60) == 0
    finally:
        first.stop()

    second = _serve(tmp_path / "second.log", "--storage", str(storage))
    try:
        assert second.get("/notes/kept") == {"text": "across restarts", "writes": 1}
    finally:
        second.stop()


def test_with_storage_entities_survive_serve_being_killed(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    first = _serve(tmp_path / "first.log", "--storage", str(storage))
    try:
        _write_note(first, "kept", "through a kill -9")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        # The emulator's watcher stops it, and it writes its data as it stops.
        marker = storage / "cloud-datastore" / "WEB-INF" / "appengine-generated" / "local_db.bin"
        first.wait_for(marker.exists, "the Datastore emulator wrote its data", timeout=30)
    finally:
        first.stop()

    second = _serve(tmp_path / "second.log", "--storage", str(storage))
    try:
        assert second.get("/notes/kept") == {"text": "through a kill -9", "writes": 1}
    finally:
        second.stop()


def test_without_storage_a_restart_starts_from_an_empty_datastore(tmp_path: Path) -> None:
    first = _serve(tmp_path / "first.log")
    try:
        _write_note(first, "gone", "with the server")
    finally:
        first.stop()

    second = _serve(tmp_path / "second.log")
    try:
        assert second.get("/notes/gone") is None
    finally:
        second.stop()


def test_serve_uses_the_datastore_emulator_the_environment_names_and_leaves_it_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DatastoreEmulatorProcess(PROJECT) as emulator:
        server = _serve(tmp_path / "serve.log", datastore=emulator.address)
        try:
            _write_note(server, "shared", "in the user's emulator")
        finally:
            server.stop()

        assert emulator.running
        monkeypatch.setenv("DATASTORE_EMULATOR_HOST", emulator.address)
        with ndb.Client(project=PROJECT).context():
            note = Note.get_by_id("shared")
        assert note is not None and note.text == "in the user's emulator"


def test_with_reload_the_emulators_outlive_each_restart_of_the_app(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    shutil.copytree(EXAMPLE, folder)
    env = {
        "TASKUTILS_EMULATOR_VENV": str(EMULATOR_VENV),
        "PYTHONPATH": "",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "DATASTORE_EMULATOR_HOST": "",
        "CLOUD_TASKS_EMULATOR_HOST": "",
    }
    server = ServeProcess("main:app", tmp_path / "serve.log", "--backend", "cloud", "--reload", env=env, cwd=folder)
    try:
        server.wait_ready("/notes/none", timeout=120)
        _write_note(server, "before", "the restart")

        with open(folder / "main.py", "a") as f:
            f.write("\n# edited\n")
        server.wait_for(lambda: "changed: restarting the app" in server.log(), "the app restarted", timeout=60)
        server.wait_ready("/notes/none", timeout=120)
        _write_note(server, "after", "the restart")

        assert server.get("/notes/before") == {"text": "the restart", "writes": 1}
        assert server.log().count("Datastore emulator pid") == 1  # started once, by the supervisor
        assert server.interrupt(signal.SIGINT, timeout=60) == 0
    finally:
        server.stop()
