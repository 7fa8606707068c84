"""The cloud backend's queue: task functions adding Cloud Tasks tasks, and transactional tasks through the outbox.

Against the real Cloud Tasks emulator (``gcloud-tasks-emulator``, in its own virtualenv at
``$TASKUTILS_EMULATOR_VENV``) and, for the outbox, the Datastore emulator of the Google Cloud
CLI. The emulator's queues are paused, so the tasks added stay there to be read back; the
tests hand a task's body to ``taskutils.app`` in process, as Cloud Tasks would post it.
Outside CI a machine without an emulator skips; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest
from google.appengine.api import taskqueue

import taskutils
from taskutils import QueueUnavailableError, cloudtasks, hooks
from taskutils.backends import cloud_outbox, cloud_requests
from taskutils.backends.cloud import CloudQueue

import tasklib
from apps.serving import free_port

REPO = Path(__file__).resolve().parents[1]
EMULATOR_VENV = Path(os.environ.get("TASKUTILS_EMULATOR_VENV") or REPO / ".cache" / "cloudtasks-emulator-venv")
PROJECT, LOCATION = "taskutils-cloud-queue", "us-central1"
QUEUES = ("default", "other")
FULL_VIEW = 2  # tasks_v2.Task.View.FULL: bodies included
STARTUP_SECONDS = 60.0


def _unavailable(what: str, error: BaseException | str) -> None:
    if os.environ.get("CI"):
        raise RuntimeError(f"{what} is needed in CI: {error}")
    pytest.skip(f"{what} is not available here: {error}")


@pytest.fixture(scope="module")
def tasks_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cloudtasks.EmulatorProcess]:
    """The Cloud Tasks emulator with this module's queues, paused: what is added stays listed."""
    emulator = cloudtasks.EmulatorProcess(
        EMULATOR_VENV,
        port=free_port(),
        queues=QUEUES,
        project=PROJECT,
        location=LOCATION,
        target_port=free_port(),  # nothing listens: the queues are paused anyway
        max_retries=0,
        log_path=str(tmp_path_factory.mktemp("cloud-queue") / "emulator.log"),
    )
    try:
        emulator.start()
    except (OSError, subprocess.CalledProcessError) as e:
        _unavailable("the Cloud Tasks emulator", e)
    try:
        client = cloudtasks.emulator_client(emulator.address)
        for name in QUEUES:
            client.pause_queue(name=emulator.queue_path(name))
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def datastore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Google Cloud CLI's Datastore emulator on a free loopback port; its host:port."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        _unavailable("the Google Cloud CLI (gcloud)", "not on PATH")
    host_port = f"127.0.0.1:{free_port()}"
    log_path = tmp_path_factory.mktemp("datastore") / "emulator.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [gcloud, "beta", "emulators", "datastore", "start", f"--host-port={host_port}", "--no-store-on-disk"]
            + ["--consistency=1.0", f"--project={PROJECT}"],  # type: ignore[list-item]
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                _unavailable("the Datastore emulator", f"it exited with {process.returncode}: {log_path.read_text()}")
            try:
                urllib.request.urlopen(f"http://{host_port}/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    message = f"the Datastore emulator is not up after {STARTUP_SECONDS} s: {log_path}"
                    raise TimeoutError(message) from None
                time.sleep(0.2)
        yield host_port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@pytest.fixture
def cloud(tasks_emulator: cloudtasks.EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """This process on the cloud backend, adding to the emulator with no credentials to be found; its client."""
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", tasks_emulator.address)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", os.path.join(tempfile.gettempdir(), "no-such-file.json"))
    client = cloudtasks.emulator_client(tasks_emulator.address)
    for name in QUEUES:
        client.purge_queue(name=tasks_emulator.queue_path(name))
    taskutils.configure(backend="cloud", project=PROJECT, location=LOCATION)
    try:
        yield client
    finally:
        taskutils.configure(
            backend="appengine", project=None, location=None, target=None, service_account=None, audience=None
        )


@pytest.fixture
def datastore(cloud: Any, datastore_emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The cloud backend with the Datastore emulator, emptied; a Cloud NDB client on it."""
    from google.cloud import ndb

    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", datastore_emulator)
    monkeypatch.setenv("DATASTORE_PROJECT_ID", PROJECT)
    urllib.request.urlopen(urllib.request.Request(f"http://{datastore_emulator}/reset", method="POST")).read()
    yield ndb.Client(project=PROJECT)


def listed(client: Any, queue: str = "default") -> list[Any]:
    """The tasks in the emulator's queue, bodies included."""
    parent = f"projects/{PROJECT}/locations/{LOCATION}/queues/{queue}"
    return list(client.list_tasks(request={"parent": parent, "response_view": FULL_VIEW}))


def run_in_handler(added: Any) -> webtest.TestResponse:
    """Post an App Engine task read back from the emulator to taskutils.app, as Cloud Tasks would."""
    request = added.app_engine_http_request
    queue = added.name.split("/queues/")[1].split("/")[0]
    headers = {
        **dict(request.headers),
        "X-AppEngine-QueueName": queue,
        "X-AppEngine-TaskName": added.name.rsplit("/", 1)[1],
        "X-AppEngine-TaskRetryCount": "0",
    }
    return webtest.TestApp(taskutils.app).post(request.relative_uri, request.body, headers=headers)


def test_a_closure_task_called_on_the_cloud_backend_is_added_to_cloud_tasks_and_its_body_runs_in_the_handler(cloud):
    day = "monday"

    def closure(n):
        tasklib.ran.append((day, n))

    added = taskutils.task(closure)(3)

    assert added.was_enqueued
    [in_queue] = listed(cloud)
    assert in_queue.name.rsplit("/", 1)[1] == added.name
    assert in_queue.app_engine_http_request.relative_uri.startswith("/_ah/task/")
    assert tasklib.ran == []
    assert run_in_handler(in_queue).status_int == 200
    assert tasklib.ran == [("monday", 3)]


def test_a_task_function_made_before_configure_chose_the_cloud_backend_adds_to_cloud_tasks(cloud):
    taskutils.configure(backend="appengine")
    made_early = taskutils.task(tasklib.plain)
    taskutils.configure(backend="cloud")

    made_early(1, b=2)

    [in_queue] = listed(cloud)
    run_in_handler(in_queue)
    assert tasklib.ran == [("plain", 1, 2)]


def test_with_a_target_tasks_are_http_tasks_to_the_target_with_an_oidc_token_for_the_service_account(cloud):
    account = "tasks@taskutils-cloud-queue.iam.gserviceaccount.com"
    taskutils.configure(target="https://worker-abc.a.run.app/", service_account=account)

    tasklib.record(1)

    [in_queue] = listed(cloud)
    assert in_queue.http_request.url == "https://worker-abc.a.run.app/_ah/task/tasklib/record"
    assert in_queue.http_request.oidc_token.service_account_email == account
    assert in_queue.http_request.oidc_token.audience == "https://worker-abc.a.run.app"
    assert in_queue.http_request.headers["Content-Type"] == "application/octet-stream"
    assert not in_queue.app_engine_http_request.relative_uri


def test_an_audience_given_to_configure_is_the_oidc_tokens_audience(cloud):
    taskutils.configure(target="https://worker-abc.a.run.app", service_account="a@b.c", audience="my-audience")

    tasklib.record(1)

    [in_queue] = listed(cloud)
    assert in_queue.http_request.oidc_token.audience == "my-audience"


def test_without_a_target_the_task_option_target_routes_the_app_engine_task_to_that_version_and_service(cloud):
    taskutils.task(tasklib.plain, target="v2.worker")(1)

    [in_queue] = listed(cloud)
    routing = in_queue.app_engine_http_request.app_engine_routing
    assert (routing.service, routing.version) == ("worker", "v2")


def test_on_app_engine_without_a_target_option_a_task_runs_on_the_version_that_added_it(cloud, monkeypatch):
    monkeypatch.setenv("GAE_SERVICE", "api")
    monkeypatch.setenv("GAE_VERSION", "20261207t0500")

    tasklib.record(1)

    [in_queue] = listed(cloud)
    routing = in_queue.app_engine_http_request.app_engine_routing
    assert (routing.service, routing.version) == ("api", "20261207t0500")


def test_building_tasks_on_the_cloud_backend_logs_no_warning_about_http_host(cloud, monkeypatch, caplog):
    monkeypatch.delenv("HTTP_HOST", raising=False)
    caplog.set_level(logging.WARNING)

    tasklib.record(1)

    assert [r.getMessage() for r in caplog.records if "HTTP_HOST" in r.getMessage()] == []
    assert len(listed(cloud)) == 1


def test_a_named_task_is_added_once_and_a_second_add_raises_the_usual_task_already_exists_error(cloud):
    named = taskutils.task(tasklib.plain, name="nightly-2026-12-07")

    named(1)
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        named(2)

    [in_queue] = listed(cloud)
    assert in_queue.name.endswith("/tasks/nightly-2026-12-07")
    run_in_handler(in_queue)
    assert tasklib.ran == [("plain", 1, 0)]


def test_a_countdown_sets_the_tasks_schedule_time(cloud):
    before = time.time()
    taskutils.task(tasklib.plain, countdown=600)(1)

    [in_queue] = listed(cloud)
    assert before + 590 < in_queue.schedule_time.timestamp() < time.time() + 610


def test_headers_and_the_queue_option_reach_cloud_tasks(cloud):
    taskutils.task(tasklib.plain, queue="other", headers={"X-Team": "reports"}, tag="nightly")(1)

    assert listed(cloud, "default") == []
    [in_queue] = listed(cloud, "other")
    headers = in_queue.app_engine_http_request.headers
    assert headers["X-Team"] == "reports"
    assert headers["X-Taskutils-Tag"] == "nightly"


def test_map_adds_every_item_though_the_emulator_has_no_batch_create(cloud):
    added = tasklib.record.map(range(7))

    assert [t.was_enqueued for t in added] == [True] * 7
    in_queue = listed(cloud)
    assert len(in_queue) == 7
    for task in in_queue:
        run_in_handler(task)
    assert sorted(args[0] for args, _ in tasklib.ran) == list(range(7))


def test_an_enqueue_hook_hears_of_every_task_added_to_cloud_tasks(cloud):
    events: list[hooks.TaskEvent] = []
    hooks.on_enqueue.connect(events.append)
    try:
        added = taskutils.task(tasklib.plain, queue="other")(1)
        tasklib.record.map(range(3))
    finally:
        hooks.on_enqueue.disconnect(events.append)

    assert [(e.queue, e.function, e.count) for e in events] == [
        ("other", "tasklib/plain", 1),
        ("default", "tasklib/record", 3),
    ]
    assert events[0].task_name == added.name


def test_retry_options_become_the_tasks_own_retry_config():
    options = taskqueue.TaskRetryOptions(task_retry_limit=2, min_backoff_seconds=1.5, task_age_limit=3600)
    built = taskqueue.Task(payload=b"x", url="/_ah/task/a", retry_options=options)

    request = cloud_requests.build(built, "projects/p/locations/l/queues/default")

    assert request.retry_config.max_attempts == 3
    assert request.retry_config.min_backoff.ToTimedelta().total_seconds() == 1.5
    assert request.retry_config.max_retry_duration.ToTimedelta().total_seconds() == 3600


def test_an_unreachable_cloud_tasks_endpoint_fails_at_the_call_with_a_clear_error(cloud, monkeypatch):
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", f"127.0.0.1:{free_port()}")

    with pytest.raises(QueueUnavailableError, match="cannot reach the Cloud Tasks emulator at 127.0.0.1"):
        tasklib.record(1)


def test_a_missing_project_fails_at_the_call_with_a_clear_error(cloud, monkeypatch):
    taskutils.configure(project=None)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("DATASTORE_PROJECT_ID", raising=False)

    with pytest.raises(ValueError, match="needs a project"):
        tasklib.record(1)
    assert listed(cloud) == []


def test_without_the_cloud_extra_a_call_says_what_to_install(monkeypatch):
    taskutils.configure(backend="cloud", project=PROJECT, location=LOCATION)
    import google.cloud

    monkeypatch.setitem(sys.modules, "google.cloud.tasks_v2", None)  # as if google-cloud-tasks were missing
    monkeypatch.delattr(google.cloud, "tasks_v2", raising=False)
    cloud_requests._messages.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"taskutils-gae\[cloud\]"):
            tasklib.record(1)
    finally:
        cloud_requests._messages.cache_clear()
        taskutils.configure(backend="appengine", project=None, location=None)


def test_a_queue_unknown_to_cloud_tasks_raises_at_the_call(cloud):
    with pytest.raises(taskqueue.Error):
        taskutils.task(tasklib.plain, queue="no-such")(1)


def test_a_cloud_queue_refuses_a_name_cloud_tasks_would_refuse():
    with pytest.raises(taskqueue.InvalidQueueNameError):
        CloudQueue("under_score")


# Transactional tasks: the outbox in Cloud Datastore.


def staged(client: Any) -> int:
    with client.context():
        return cloud_outbox.Outbox.query().count()


def test_a_transactional_task_is_sent_once_its_cloud_ndb_transaction_commits(cloud, datastore):
    from google.cloud import ndb

    transactional = taskutils.task(tasklib.plain, transactional=True)
    with datastore.context():

        def work():
            transactional(1)
            assert listed(cloud) == []  # nothing is sent before the commit

        ndb.transaction(work)

    [in_queue] = listed(cloud)
    assert staged(datastore) == 0
    run_in_handler(in_queue)
    assert tasklib.ran == [("plain", 1, 0)]


def test_a_transactional_map_sends_every_item_once_the_transaction_commits(cloud, datastore):
    from google.cloud import ndb

    transactional = taskutils.task(tasklib.record, transactional=True)
    with datastore.context():
        ndb.transaction(lambda: transactional.map(range(7)))  # two batches: 5, then 2

    in_queue = listed(cloud)
    assert len({t.name for t in in_queue}) == 7
    assert staged(datastore) == 0
    for task in in_queue:
        run_in_handler(task)
    assert sorted(args[0] for args, _ in tasklib.ran) == list(range(7))


def test_a_rolled_back_transaction_stages_nothing_and_sends_nothing(cloud, datastore):
    from google.cloud import ndb

    transactional = taskutils.task(tasklib.plain, transactional=True)

    def work():
        transactional(1)
        raise KeyError("roll back")

    with datastore.context(), pytest.raises(KeyError):
        ndb.transaction(work)

    assert listed(cloud) == []
    assert staged(datastore) == 0


def test_transactional_outside_a_transaction_is_the_same_error_as_on_app_engine(cloud, datastore):
    transactional = taskutils.task(tasklib.plain, transactional=True)

    with datastore.context(), pytest.raises(taskqueue.BadTransactionStateError, match="no Cloud NDB transaction"):
        transactional(1)
    with pytest.raises(taskqueue.BadTransactionStateError):
        transactional(1)  # no Cloud NDB context at all
    assert listed(cloud) == []


def test_a_task_whose_send_after_commit_was_lost_is_sent_by_the_sweep_and_a_repeated_send_adds_nothing(
    cloud, datastore, tasks_emulator, monkeypatch
):
    from google.cloud import ndb

    transactional = taskutils.task(tasklib.plain, transactional=True)
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # the send after commit fails
    with datastore.context():
        ndb.transaction(lambda: transactional(1))
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", tasks_emulator.address)
    assert listed(cloud) == []
    assert staged(datastore) == 1

    assert cloud_outbox.send_lost() == 0  # staged a moment ago: its send may still be under way
    with datastore.context():
        [lost] = cloud_outbox.Outbox.query().fetch()
    assert cloud_outbox.send_lost(older_than=datetime.timedelta(0)) == 1

    [in_queue] = listed(cloud)
    assert staged(datastore) == 0
    with datastore.context():
        lost.put()  # the same staged task again: a sweep racing the send it thought lost
    assert cloud_outbox.send_lost(older_than=datetime.timedelta(0)) == 1
    assert listed(cloud) == [in_queue]
    assert staged(datastore) == 0
    run_in_handler(in_queue)
    assert tasklib.ran == [("plain", 1, 0)]


def stage_a_lost_send(datastore: Any, monkeypatch: pytest.MonkeyPatch, minutes_ago: float) -> None:
    """Commit a transactional task while Cloud Tasks is unreachable, its outbox entity dated minutes_ago."""
    from google.cloud import ndb

    transactional = taskutils.task(tasklib.plain, transactional=True)
    address = os.environ["CLOUD_TASKS_EMULATOR_HOST"]
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    with datastore.context():
        ndb.transaction(lambda: transactional(1))
        lost = cloud_outbox.Outbox.query().order(-cloud_outbox.Outbox.created).get()  # the one just staged
        lost.created -= datetime.timedelta(minutes=minutes_ago)
        lost.put()
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", address)


def test_the_outbox_sweep_sends_tasks_staged_over_a_minute_ago_and_leaves_younger_ones(cloud, datastore, monkeypatch):
    stage_a_lost_send(datastore, monkeypatch, minutes_ago=2)
    stage_a_lost_send(datastore, monkeypatch, minutes_ago=0.5)

    assert cloud_outbox.send_lost() == 1

    assert len(listed(cloud)) == 1
    assert staged(datastore) == 1


def test_a_lost_task_cloud_tasks_refuses_stays_staged_and_does_not_hold_up_the_others(cloud, datastore, monkeypatch):
    from google.cloud import ndb

    to_no_queue = taskutils.task(tasklib.plain, transactional=True, queue="no-such")
    with datastore.context():
        ndb.transaction(lambda: to_no_queue(1))  # its send after commit is refused: the queue does not exist
    stage_a_lost_send(datastore, monkeypatch, minutes_ago=0)
    assert staged(datastore) == 2

    assert cloud_outbox.send_lost(older_than=datetime.timedelta(0)) == 1

    assert len(listed(cloud)) == 1
    assert staged(datastore) == 1


def test_sweep_on_the_cloud_backend_sends_transactional_tasks_whose_send_was_lost(cloud, datastore, monkeypatch):
    stage_a_lost_send(datastore, monkeypatch, minutes_ago=2)

    taskutils.sweep(datetime.timedelta(days=7))

    assert len(listed(cloud)) == 1
    assert staged(datastore) == 0


def test_the_sweep_sends_a_lost_transactional_task_staged_in_another_namespace(
    cloud, datastore, tasks_emulator, monkeypatch
):
    from google.cloud import ndb

    transactional = taskutils.task(tasklib.plain, transactional=True)
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # the send after commit fails
    with datastore.context(namespace="tenant1"):
        ndb.transaction(lambda: transactional(1))
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", tasks_emulator.address)

    assert cloud_outbox.send_lost(older_than=datetime.timedelta(0)) == 1

    [in_queue] = listed(cloud)
    with datastore.context(namespace="tenant1"):
        assert cloud_outbox.Outbox.query().count() == 0
    assert run_in_handler(in_queue).status_int == 200
    assert tasklib.ran == [("plain", 1, 0)]


def test_a_target_without_a_service_account_fails_at_the_call_and_adds_nothing(cloud):
    taskutils.configure(target="https://worker-abc.a.run.app")  # the handler would refuse every task: no token

    with pytest.raises(ValueError, match=r"configure\(service_account=\.\.\.\)"):
        tasklib.record(1)

    assert listed(cloud) == []


def test_without_credentials_for_datastore_tasks_run_and_only_the_first_looks_for_them(cloud, monkeypatch):
    import google.auth
    from google.cloud.ndb import client as ndb_client

    from taskutils.backends import cloud_store

    looked: list[int] = []
    real_default = google.auth.default

    def counted(*args, **kwargs):
        looked.append(1)  # on a machine without credentials this asks the metadata server: ~2 ms
        return real_default(*args, **kwargs)

    monkeypatch.setattr(ndb_client.google.auth, "default", counted)
    monkeypatch.delenv("DATASTORE_EMULATOR_HOST", raising=False)
    cloud_store.reset_client()
    for n in range(3):
        tasklib.record(n)

    assert [run_in_handler(t).status_int for t in listed(cloud)] == [200, 200, 200]
    assert sorted(tasklib.ran) == [((0,), {}), ((1,), {}), ((2,), {})]
    assert len(looked) == 1
