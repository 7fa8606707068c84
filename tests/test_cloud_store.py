"""The cloud store: taskutils' records in Cloud Datastore, against the Google Cloud CLI's Datastore emulator.

Tasks go to the real Cloud Tasks emulator (``gcloud-tasks-emulator``, in its own virtualenv
at ``$TASKUTILS_EMULATOR_VENV``), whose queue is paused: ``drain`` reads each task back and
posts it to ``taskutils.app`` in process, as Cloud Tasks would, until none is left. Every
record lives in the Datastore emulator. Outside CI a machine without an emulator skips;
under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest
from google.cloud import ndb

import taskutils
from taskutils import backends, cloudtasks, task
from taskutils.backends import cloud_store
from taskutils.results_store import GROUP_KIND, HANDLE_KIND, LEAF_KIND
from taskutils.spill import CHUNK_KIND

import tasklib
from apps.serving import free_port

REPO = Path(__file__).resolve().parents[1]
EMULATOR_VENV = Path(os.environ.get("TASKUTILS_EMULATOR_VENV") or REPO / ".cache" / "cloudtasks-emulator-venv")
PROJECT, LOCATION, QUEUE = "taskutils-cloud-store", "us-central1", "default"
START_TIMEOUT = 60.0
FULL_VIEW = 2  # tasks_v2.Task.View.FULL: bodies included
MAX_ROUNDS = 50


def _unavailable(what: str, error: BaseException | str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is needed in CI: {error}")
    pytest.skip(f"{what} is not available here: {error}")


def _get(url: str, data: bytes | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as answer:
        return answer.read()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def datastore_emulator() -> Iterator[str]:
    """The Google Cloud CLI's Datastore emulator on a free loopback port, for the session: its host:port."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        _unavailable("the Google Cloud CLI (gcloud)", "not on PATH")
    host = f"127.0.0.1:{free_port()}"
    command = [gcloud, "beta", "emulators", "datastore", "start", f"--host-port={host}"]
    command += ["--no-store-on-disk", "--consistency=1.0", f"--project={PROJECT}", "--quiet"]
    process = subprocess.Popen(  # type: ignore[misc]
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if _get(f"http://{host}/").strip() == b"Ok":
                    break
            except (urllib.error.URLError, OSError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                _unavailable("the Datastore emulator", f"no answer on {host} within {START_TIMEOUT:.0f} s")
            time.sleep(0.2)
        yield host
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # it is Java under a shell script: stop the whole group
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture(scope="module")
def tasks_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cloudtasks.EmulatorProcess]:
    """The Cloud Tasks emulator with a paused default queue: what is added stays listed for ``drain``."""
    emulator = cloudtasks.EmulatorProcess(
        EMULATOR_VENV,
        port=free_port(),
        queues=(QUEUE,),
        project=PROJECT,
        location=LOCATION,
        target_port=free_port(),  # nothing listens: the queue is paused anyway
        max_retries=0,
        log_path=str(tmp_path_factory.mktemp("cloud-store") / "emulator.log"),
    )
    try:
        emulator.start()
    except (OSError, subprocess.CalledProcessError) as e:
        _unavailable("the Cloud Tasks emulator", e)
    try:
        cloudtasks.emulator_client(emulator.address).pause_queue(name=emulator.queue_path(QUEUE))
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def cloud(
    datastore_emulator: str, tasks_emulator: cloudtasks.EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ndb.Client]:
    """This process on the cloud backend, both emulators emptied; a Cloud NDB client to look at the records."""
    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", datastore_emulator)
    monkeypatch.setenv("DATASTORE_PROJECT_ID", PROJECT)  # bundled Datastore, were it touched, would fail loudly
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", tasks_emulator.address)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", os.path.join(tempfile.gettempdir(), "no-such-file.json"))
    _get(f"http://{datastore_emulator}/reset", data=b"")
    cloudtasks.emulator_client(tasks_emulator.address).purge_queue(name=tasks_emulator.queue_path(QUEUE))
    cloud_store.reset_client()
    taskutils.configure(backend="cloud", project=PROJECT, location=LOCATION)
    try:
        yield ndb.Client(project=PROJECT)
    finally:
        taskutils.configure(backend="appengine", project=None, location=None)
        cloud_store.reset_client()


def drain(tasks_emulator: cloudtasks.EmulatorProcess) -> int:
    """Run the queued tasks, and the tasks they add, until none is left, as Cloud Tasks posts them; how many ran."""
    client = cloudtasks.emulator_client(tasks_emulator.address)
    ran = 0
    for _ in range(MAX_ROUNDS):
        waiting = list(
            client.list_tasks(request={"parent": tasks_emulator.queue_path(QUEUE), "response_view": FULL_VIEW})
        )
        if not waiting:
            return ran
        client.purge_queue(name=tasks_emulator.queue_path(QUEUE))  # the emulator has no DeleteTask
        for added in waiting:
            request = added.app_engine_http_request
            headers = {
                **dict(request.headers),
                "X-AppEngine-QueueName": QUEUE,
                "X-AppEngine-TaskName": added.name.rsplit("/", 1)[1],
                "X-AppEngine-TaskRetryCount": "0",
            }
            answer = webtest.TestApp(taskutils.app).post(request.relative_uri, request.body, headers=headers)
            assert answer.status_int == 200, answer
            ran += 1
    raise AssertionError(f"tasks still queued after {MAX_ROUNDS} rounds")


def queued(tasks_emulator: cloudtasks.EmulatorProcess) -> list[Any]:
    client = cloudtasks.emulator_client(tasks_emulator.address)
    return list(client.list_tasks(request={"parent": tasks_emulator.queue_path(QUEUE)}))


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
    tasks_emulator, cloud, signed, size
):
    blob = os.urandom(size)
    tasklib.record(blob)
    assert count(cloud, CHUNK_KIND) == -(-size // 1_000_000)  # in the emulator, not in bundled Datastore

    drain(tasks_emulator)

    assert tasklib.ran == [((blob,), {})]
    assert count(cloud, CHUNK_KIND) == 0


def test_a_handle_keeps_its_result_in_cloud_datastore(tasks_emulator, cloud, signed):
    handle = square.submit(12)
    drain(tasks_emulator)

    assert handle.result() == 144
    assert taskutils.TaskHandle.get(handle.id).status == "succeeded"
    assert count(cloud, HANDLE_KIND) == 1


def test_submit_map_then_gets_every_result_in_item_order_once(tasks_emulator, cloud, signed):
    group = square.submit_map(range(30))
    summary = group.then(summarize)
    drain(tasks_emulator)

    assert [r for r in tasklib.ran if r[0] == "summarize"] == [("summarize", [n * n for n in range(30)])]
    assert summary.result() == sum(n * n for n in range(30))
    assert count(cloud, GROUP_KIND) == 1 and count(cloud, LEAF_KIND) > 1


def test_task_code_puts_a_cloud_ndb_model_and_it_is_there_once(tasks_emulator, cloud):
    write_note("hello")
    drain(tasks_emulator)

    with cloud.context():
        notes = CloudNote.query().fetch()
    assert [n.text for n in notes] == ["hello"]


def test_unique_admits_one_of_two_calls_with_its_state_in_cloud_datastore(tasks_emulator, cloud):
    unique_job(1)
    unique_job(1)
    assert count(cloud, "_TaskutilsUnique") == 1
    drain(tasks_emulator)

    assert tasklib.ran == [("unique", 1)]


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


def test_a_query_reads_its_results_a_page_at_a_time_as_they_are_iterated(cloud):
    store = backends.store()

    def put(n: int) -> None:
        entity = store.entity(store.key("_TaskutilsTest", f"paged-{n}"))
        entity["n"] = n
        store.put([entity])

    for n in range(5):
        put(n)
    found = store.query("_TaskutilsTest", where=("n", ">=", 0), batch_size=2)
    assert next(found)["n"] == 0
    put(9)  # after the first page was read: a query that read every result at its call would miss it

    assert [e["n"] for e in found] == [1, 2, 3, 4, 9]
    limited = store.query("_TaskutilsTest", where=("n", ">=", 0), keys_only=True, limit=5, batch_size=2)
    assert [k.name() for k in limited] == [f"paged-{n}" for n in (0, 1, 2, 3, 4)]


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


def test_sweep_deletes_a_finished_handle_and_an_orphaned_payload_from_cloud_datastore(tasks_emulator, cloud, signed):
    handle = square.submit(3)
    drain(tasks_emulator)
    tasklib.record(os.urandom(200_000))  # never run: its payload is orphaned once due long enough
    assert (count(cloud, HANDLE_KIND), count(cloud, CHUNK_KIND)) == (1, 1)

    assert taskutils.sweep(0) == 2

    assert (count(cloud, HANDLE_KIND), count(cloud, CHUNK_KIND)) == (0, 0)
    assert taskutils.TaskHandle.get(handle.id) is None


# -- namespaces -----------------------------------------------------------------------------


@task
def note_size(blob: bytes) -> int:
    CloudNote(text=f"{len(blob)} bytes").put()  # in the handler's context: the namespace the task was added in
    return len(blob)


def notes(client: ndb.Client, namespace: str) -> list[str]:
    with client.context(namespace=namespace):
        return [n.text for n in CloudNote.query().fetch()]


def test_a_task_added_in_a_namespace_runs_in_it_and_finds_its_big_argument_and_handle_there(
    tasks_emulator, cloud, signed
):
    blob = os.urandom(300_000)  # spilled: its chunk is written in the caller's namespace
    with cloud.context(namespace="tenant1"):
        handle = note_size.submit(blob)

    drain(tasks_emulator)

    assert notes(cloud, "tenant1") == ["300000 bytes"]
    assert notes(cloud, "") == []
    with cloud.context(namespace="tenant1"):
        assert handle.result() == 300_000
        assert CHUNK_KIND not in ndb.metadata.get_kinds()  # the chunk was read there, and deleted


def test_a_tasks_namespace_header_changed_removed_or_malformed_is_refused_and_nothing_runs(
    tasks_emulator, cloud, signed
):
    with cloud.context(namespace="tenant1"):
        tasklib.record("mine")
    [added] = cloudtasks.emulator_client(tasks_emulator.address).list_tasks(
        request={"parent": tasks_emulator.queue_path(QUEUE), "response_view": FULL_VIEW}
    )
    request = added.app_engine_http_request
    headers = {**dict(request.headers), "X-AppEngine-QueueName": QUEUE, "X-AppEngine-TaskName": "t1"}
    assert headers["X-Taskutils-Namespace"] == "tenant1"
    app = webtest.TestApp(taskutils.app)

    def post(changed: dict[str, str | None]) -> int:
        sent = {k: v for k, v in {**headers, **changed}.items() if v is not None}
        return app.post(request.relative_uri, request.body, headers=sent, expect_errors=True).status_int  # type: ignore[no-any-return]

    assert post({"X-Taskutils-Namespace": "tenant2"}) == 403  # the payload is signed for tenant1
    assert post({"X-Taskutils-Namespace": None}) == 403
    assert post({"X-Taskutils-Namespace": "no spaces/here"}) == 400
    assert tasklib.ran == []
    assert post({}) == 200
    assert tasklib.ran == [(("mine",), {})]


def test_a_task_added_in_a_namespace_runs_in_it_under_an_apps_own_cloud_ndb_middleware(tasks_emulator, cloud, signed):
    def with_context(environ: dict[str, Any], start_response: Any) -> Any:
        with cloud.context():  # the middleware Cloud NDB's docs show: one context per request
            return list(taskutils.app(environ, start_response))

    with cloud.context(namespace="tenant1"):
        note_size(b"abc")
    [added] = cloudtasks.emulator_client(tasks_emulator.address).list_tasks(
        request={"parent": tasks_emulator.queue_path(QUEUE), "response_view": FULL_VIEW}
    )
    request = added.app_engine_http_request
    headers = {**dict(request.headers), "X-AppEngine-QueueName": QUEUE, "X-AppEngine-TaskName": "t1"}

    assert webtest.TestApp(with_context).post(request.relative_uri, request.body, headers=headers).status_int == 200

    assert notes(cloud, "tenant1") == ["3 bytes"]
    assert notes(cloud, "") == []
