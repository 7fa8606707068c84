"""The Datastore emulator as a process of its own: on loopback, reset, kept on disk, not left behind.

A missing emulator fails these tests (with what to install), it never skips them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import ndb

from taskutils.exc import EmulatorMissingError
from taskutils.local import datastore_emulator
from taskutils.local.datastore_emulator import DatastoreEmulatorProcess

PROJECT = "emulator-test"


class Thing(ndb.Model):
    name = ndb.StringProperty()


def _client(emulator: DatastoreEmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> ndb.Client:
    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", emulator.address)
    return ndb.Client(project=PROJECT)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def emulator() -> Iterator[DatastoreEmulatorProcess]:
    with DatastoreEmulatorProcess(PROJECT) as started:
        yield started


def test_the_emulator_listens_on_loopback_and_keeps_what_is_written(
    emulator: DatastoreEmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert emulator.address.startswith("127.0.0.1:")
    with _client(emulator, monkeypatch).context():
        Thing(id="a", name="first").put()
        assert Thing.get_by_id("a").name == "first"


def test_reset_empties_the_emulator(emulator: DatastoreEmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(emulator, monkeypatch)
    with client.context():
        Thing(id="a").put()

    emulator.reset()

    with client.context():
        assert Thing.get_by_id("a") is None


def test_stop_ends_the_whole_process_group(emulator: DatastoreEmulatorProcess) -> None:
    pgid = emulator.pid
    assert pgid is not None and _alive(pgid)

    emulator.stop()

    assert not _alive(pgid)


def test_with_a_data_dir_entities_survive_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with DatastoreEmulatorProcess(PROJECT, data_dir=tmp_path / "data") as first:
        with _client(first, monkeypatch).context():
            Thing(id="kept", name="across restarts").put()

    with DatastoreEmulatorProcess(PROJECT, data_dir=tmp_path / "data") as second:
        with _client(second, monkeypatch).context():
            assert Thing.get_by_id("kept").name == "across restarts"


def test_the_emulator_stops_when_the_process_that_started_it_dies(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from taskutils.local.datastore_emulator import DatastoreEmulatorProcess
        emulator = DatastoreEmulatorProcess("p").start()
        print(emulator.pid, flush=True)
        time.sleep(300)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pgid = int(parent.stdout.readline())
        assert _alive(pgid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)

    deadline = time.monotonic() + 30
    while _alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
        pytest.fail("the emulator outlived the process that started it")


def test_without_the_cloud_cli_the_error_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CLOUDSDK_ROOT_DIR", raising=False)
    monkeypatch.setattr(datastore_emulator, "CLI_ROOTS", ())

    with pytest.raises(EmulatorMissingError, match="Google Cloud CLI.*cloud-datastore-emulator.*Java"):
        DatastoreEmulatorProcess(PROJECT).start()
