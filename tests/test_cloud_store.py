"""The cloud store: taskutils' records in Cloud Datastore, against the Google Cloud CLI's Datastore emulator.

Tasks are queued on the testbed's taskqueue stub and run through ``taskutils.testing``'s
drain, with the store set to the cloud backend's: every record lives in the emulator.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from google.cloud import ndb

import taskutils
from taskutils import backends, task
from taskutils.backends import cloud_store
from taskutils.backends.appengine import AppEngineQueue
from taskutils.results_store import GROUP_KIND, HANDLE_KIND, LEAF_KIND
from taskutils.spill import CHUNK_KIND

import tasklib

PROJECT = "taskutils-test"
START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, data: bytes | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as answer:
        return answer.read()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def datastore_emulator() -> Iterator[str]:
    """The Google Cloud CLI's Datastore emulator on a free loopback port, for the session: its host:port."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the Google Cloud CLI (gcloud) is needed for the Datastore emulator")
        pytest.skip("no Google Cloud CLI (gcloud) here for the Datastore emulator")
    host = f"127.0.0.1:{_free_port()}"
    command = [gcloud, "beta", "emulators", "datastore", "start", f"--host-port={host}"]
    command += ["--no-store-on-disk", "--consistency=1.0", f"--project={PROJECT}", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if _get(f"http://{host}/").strip() == b"Ok":
                    break
            except (urllib.error.URLError, OSError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Datastore emulator did not answer on {host} within {START_TIMEOUT:.0f} s")
            time.sleep(0.2)
        yield host
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # it is Java under a shell script: stop the whole group
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture
def cloud(datastore_emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ndb.Client]:
    """The cloud backend's store on a cleared emulator; a Cloud NDB client to look at it."""
    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", datastore_emulator)
    monkeypatch.delenv("DATASTORE_PROJECT_ID", raising=False)  # it turns the testbed's bundled Datastore to Cloud's
    _get(f"http://{datastore_emulator}/reset", data=b"")
    cloud_store.reset_client()
    taskutils.configure(backend="cloud", project=PROJECT)
    try:
        yield ndb.Client(project=PROJECT)
    finally:
        taskutils.configure(backend="appengine", project=None)
        cloud_store.reset_client()


@pytest.fixture
def sent_after_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transactional add inside a Cloud NDB transaction reaches the testbed's queue once the transaction commits.

    The taskqueue SDK joins bundled Datastore's transactions only; this stands in for the
    cloud queue's transactional outbox, so that callbacks and fan-in steps (added in the
    store's transactions) run here.
    """
    add = AppEngineQueue.add

    def add_after_commit(self: AppEngineQueue, added: Any, transactional: bool = False) -> Any:
        context = ndb.get_context(raise_context_error=False)
        if not transactional or context is None or not context.in_transaction():
            return add(self, added, transactional)
        context.call_on_commit(lambda: add(self, added, False))
        return added

    monkeypatch.setattr(AppEngineQueue, "add", add_after_commit)


def count(client: ndb.Client, kind: str) -> int:
    """How many entities of kind the emulator holds."""
    with client.context():
        return len(ndb.Query(kind=kind).fetch(keys_only=True))


# -- tasks these tests run ------------------------------------------------------------------


@task
def square(n: int) -> int:
    tasklib.ran.append(("square", n))
    return n * n


@task
def summarize(results: list[int]) -> int:
    tasklib.ran.append(("summarize", results))
    return sum(results)


class CloudNote(ndb.Model):
    text = ndb.StringProperty()


@task
def write_note(text: str) -> None:
    CloudNote(text=text).put()  # needs a Cloud NDB context: the handler's


@task(unique=True)
def unique_job(x: int) -> None:
    tasklib.ran.append(("unique", x))


# -- payloads, handles, groups, controls, task code -----------------------------------------


@pytest.mark.parametrize("size", [300_000, 4_500_000])
def test_a_big_argument_spills_to_cloud_datastore_arrives_byte_exact_and_is_deleted_after(
    task_testbed, cloud, signed, size
):
    blob = os.urandom(size)
    tasklib.record(blob)
    assert count(cloud, CHUNK_KIND) == -(-size // 1_000_000)  # in the emulator, not in bundled Datastore

    task_testbed.drain()

    assert tasklib.ran == [((blob,), {})]
    assert count(cloud, CHUNK_KIND) == 0


def test_a_handle_keeps_its_result_in_cloud_datastore(task_testbed, cloud, signed):
    handle = square.submit(12)
    task_testbed.drain()

    assert handle.result() == 144
    assert taskutils.TaskHandle.get(handle.id).status == "succeeded"
    assert count(cloud, HANDLE_KIND) == 1


def test_submit_map_then_gets_every_result_in_item_order_once(task_testbed, cloud, signed, sent_after_commit):
    group = square.submit_map(range(30))
    summary = group.then(summarize)
    task_testbed.drain()

    assert [r for r in tasklib.ran if r[0] == "summarize"] == [("summarize", [n * n for n in range(30)])]
    assert summary.result() == sum(n * n for n in range(30))
    assert count(cloud, GROUP_KIND) == 1 and count(cloud, LEAF_KIND) > 1


def test_task_code_puts_a_cloud_ndb_model_and_it_is_there_once(task_testbed, cloud):
    write_note("hello")
    task_testbed.drain()

    with cloud.context():
        notes = CloudNote.query().fetch()
    assert [n.text for n in notes] == ["hello"]


def test_unique_admits_one_of_two_calls_with_its_state_in_cloud_datastore(task_testbed, cloud, sent_after_commit):
    unique_job(1)
    unique_job(1)
    assert count(cloud, "_TaskutilsUnique") == 1
    task_testbed.drain()

    assert tasklib.ran == [("unique", 1)]


def test_map_query_on_the_cloud_backend_fails_at_the_call_and_adds_nothing(task_testbed, cloud):
    with cloud.context(), pytest.raises(taskutils.BackendError, match="appengine backend only"):
        taskutils.map_query(print, CloudNote.query())
    assert task_testbed.tasks() == []


# -- the port itself ------------------------------------------------------------------------


def test_a_transactional_write_commits_and_rolls_back_with_the_callers_cloud_ndb_transaction(cloud):
    store = backends.store()

    def write(name: str, fail: bool) -> None:
        entity = store.entity(store.key("_TaskutilsTest", name), ("blob",))
        entity["blob"] = store.blob(b"\x00" * 2000)
        store.put([entity], transactional=True)
        if fail:
            raise RuntimeError("roll back")

    with cloud.context():
        ndb.transaction(lambda: write("kept", False))
        with pytest.raises(RuntimeError):
            ndb.transaction(lambda: write("gone", True))

    found = store.get([store.key("_TaskutilsTest", "kept"), store.key("_TaskutilsTest", "gone")])
    assert [e is not None for e in found] == [True, False]
    assert found[0]["blob"] == b"\x00" * 2000


def test_an_entity_read_and_written_back_keeps_its_big_values_unindexed(cloud):
    store = backends.store()
    entity = store.entity(store.key("_TaskutilsTest", "big"), ("state",))
    entity["state"], entity["status"] = store.blob(b"\x01" * 5000), "pending"
    store.put([entity])

    found = store.get([entity.key()])[0]
    found["status"] = "succeeded"
    store.put([found])

    assert store.get([entity.key()])[0] == {"state": b"\x01" * 5000, "status": "succeeded"}
    assert [k.name() for k in store.query("_TaskutilsTest", where=("status", "=", "succeeded"), keys_only=True)] == [
        "big"
    ]


def test_the_stores_own_transaction_commits_even_when_the_callers_rolls_back(cloud):
    store = backends.store()

    def own() -> None:
        entity = store.entity(store.key("_TaskutilsTest", "own"))
        entity["n"] = 1
        store.put([entity])

    def callers() -> None:
        store.transaction(own)
        raise RuntimeError("roll back")

    with cloud.context(), pytest.raises(RuntimeError):
        ndb.transaction(callers)

    assert store.get([store.key("_TaskutilsTest", "own")])[0] == {"n": 1}


def test_sweep_deletes_a_finished_handle_and_an_orphaned_payload_from_cloud_datastore(task_testbed, cloud, signed):
    handle = square.submit(3)
    task_testbed.drain()
    tasklib.record(os.urandom(200_000))  # never run: its payload is orphaned once due long enough
    assert (count(cloud, HANDLE_KIND), count(cloud, CHUNK_KIND)) == (1, 1)

    assert taskutils.sweep(0) == 2

    assert (count(cloud, HANDLE_KIND), count(cloud, CHUNK_KIND)) == (0, 0)
    assert taskutils.TaskHandle.get(handle.id) is None
