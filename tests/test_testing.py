import os
import textwrap
import types

import pytest
from google.appengine.api import namespace_manager, taskqueue
from google.appengine.api.taskqueue import taskqueue_stub
from google.appengine.ext import ndb

import taskutils
from taskutils import task
from taskutils.exc import TaskFailedError
from taskutils.testing import TaskTestbed

import tasklib


@pytest.fixture(params=["task_testbed", "cloud_task_testbed"])
def testbed(request):
    """Each fixture in turn: the App Engine testbed, and the cloud backend on the emulators; they drain alike."""
    return request.getfixturevalue(request.param)


def test_drain_runs_tasks_and_the_tasks_they_enqueue_until_the_queue_is_empty(testbed):
    tasklib.enqueue_record(1)
    tasklib.enqueue_record(2)

    assert testbed.drain() == 4
    assert testbed.tasks() == []
    assert sorted(map(str, tasklib.ran)) == sorted(
        map(str, [("enqueue_record", 1), ("enqueue_record", 2), ((1,), {}), ((2,), {})])
    )


def test_drain_reraises_the_first_task_failure(testbed):
    tasklib.crash()

    with pytest.raises(ValueError, match="boom"):
        testbed.drain()


def test_drain_reports_a_requested_retry_as_a_failure(testbed):
    tasklib.ask_for_retry()

    with pytest.raises(Exception, match="later"):
        testbed.drain()


def test_drain_lets_permanent_failures_go_like_the_queue_does(testbed):
    tasklib.fail_permanently()

    assert testbed.drain() == 1
    assert testbed.tasks() == []


def test_drain_stops_a_task_that_enqueues_itself_forever(testbed, monkeypatch):
    monkeypatch.setattr("taskutils.testing.MAX_ROUNDS", 5)
    from taskutils import task

    @task
    def forever():
        forever()

    forever()
    with pytest.raises(TaskFailedError, match="5 rounds"):
        testbed.drain()


def test_a_testbed_with_a_queue_yaml_only_knows_its_queues(tmp_path):
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text(
        textwrap.dedent(
            """\
            queue:
            - name: reports
              rate: 5/s
            """
        )
    )

    with TaskTestbed(queue_yaml) as bed:
        tasklib.report("friday")
        assert bed.drain("reports") == 1
        with pytest.raises(taskqueue.UnknownQueueError):
            tasklib.record.options(queue="nope")()
    assert tasklib.ran == [("report", "friday")]


# What drain() posts: what the queue sends


class _Dispatcher:
    """Stands in for the dev server behind the taskqueue stub's own executor: keeps what it was sent."""

    def __init__(self):
        self.requests = []

    def get_dispatcher(self):
        return self

    def add_request(self, **request):
        self.requests.append(request)
        return types.SimpleNamespace(status="200 OK")


headers_seen: list = []


@task(includeheaders=True, headers={"X-Team": "reports"})
def keep_headers(headers):
    headers_seen.append(dict(headers))


def test_drain_posts_the_headers_the_stubs_own_dispatcher_sends_and_app_engines_user_agent(task_testbed):
    namespace_manager.set_namespace("tenant1")
    keep_headers()
    namespace_manager.set_namespace("")
    queue = task_testbed.taskqueue._GetGroup().GetQueue("default")
    dispatcher = _Dispatcher()
    taskqueue_stub._TaskExecutor("localhost:8080", dispatcher).ExecuteTask(queue.OldestTask(), queue)
    (sent,) = dispatcher.requests

    task_testbed.drain()

    expected = {name.lower(): value for name, value in sent["headers"]}
    expected["user-agent"] = "AppEngine-Google; (+http://code.google.com/appengine)"  # as App Engine and serve add
    assert expected["x-appengine-current-namespace"] == "tenant1"
    assert headers_seen == [expected]


class DrainNote(ndb.Model):
    text = ndb.StringProperty()


@task
def write_note(text):
    DrainNote(id=text, text=text).put()


def test_a_task_runs_in_the_namespace_it_was_enqueued_from(task_testbed):
    namespace_manager.set_namespace("tenant1")
    write_note("hello")
    namespace_manager.set_namespace("")

    task_testbed.drain()

    assert DrainNote.get_by_id("hello") is None
    assert DrainNote.get_by_id("hello", namespace="tenant1").text == "hello"
    assert namespace_manager.get_namespace() == ""


def test_a_task_enqueued_in_the_default_namespace_runs_there_whatever_the_test_set_since(task_testbed):
    write_note("plain")
    namespace_manager.set_namespace("tenant2")

    task_testbed.drain()

    assert namespace_manager.get_namespace() == "tenant2"
    assert DrainNote.get_by_id("plain", namespace="").text == "plain"


# drain(retries=N)

attempts: list = []


@task(includeheaders=True)
def succeed_on_third_try(headers):
    info = taskutils.current_task()
    attempts.append((info.retry_count, info.execution_count, headers.get("X-AppEngine-TaskPreviousResponse")))
    headers_seen.append(headers.get("X-AppEngine-TaskRetryReason"))
    if info.retry_count < 2:
        raise ValueError(f"attempt {info.retry_count} fails")


@task
def always_fail():
    attempts.append(taskutils.current_task().retry_count)
    raise ValueError("still broken")


@task
def wait_for_note(text):
    attempts.append(("wait", taskutils.current_task().retry_count))
    if DrainNote.get_by_id(text) is None:
        raise taskutils.RetryTaskException("not yet")


@pytest.fixture
def _no_attempts():
    attempts.clear()
    headers_seen.clear()


def test_drain_with_retries_posts_a_failing_task_again_with_its_retry_count_raised(testbed, _no_attempts):
    succeed_on_third_try()

    assert testbed.drain(retries=2) == 3
    assert attempts == [(0, 0, None), (1, 1, "500"), (2, 2, "500")]
    assert headers_seen == [None, "HTTP 500", "HTTP 500"]  # X-AppEngine-TaskRetryReason, as serve sends it
    assert testbed.tasks() == []


def test_drain_raises_the_failure_once_the_retries_run_out(testbed, _no_attempts):
    always_fail()

    with pytest.raises(ValueError, match="still broken"):
        testbed.drain(retries=3)
    assert attempts == [0, 1, 2, 3]


def test_drain_does_not_retry_by_default(testbed, _no_attempts):
    succeed_on_third_try()

    with pytest.raises(ValueError, match="attempt 0 fails"):
        testbed.drain()
    assert len(attempts) == 1


def test_a_retried_task_runs_again_after_the_tasks_waiting_behind_it(task_testbed, _no_attempts):
    wait_for_note("ready")
    write_note("ready")

    assert task_testbed.drain(retries=1) == 3
    assert attempts == [("wait", 0), ("wait", 1)]


def test_drain_refuses_a_negative_retry_count(testbed):
    with pytest.raises(ValueError):
        testbed.drain(retries=-1)


def test_a_task_for_a_url_of_the_apps_own_is_run_by_the_app_given_to_drain(task_testbed, _no_attempts):
    def own_worker(environ, start_response):
        attempts.append((environ["PATH_INFO"], environ["HTTP_X_APPENGINE_QUEUENAME"]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    taskqueue.add(url="/work/rebuild", params={"day": "monday"})

    with pytest.raises(TaskFailedError, match="404.*drain\\(app="):
        task_testbed.drain()
    taskqueue.add(url="/work/rebuild", params={"day": "monday"})
    assert task_testbed.drain(app=own_worker) == 1
    assert attempts == [("/work/rebuild", "default")]


# The cloud backend's fixture: cloud_task_testbed.


def test_the_cloud_fixture_starts_each_test_with_an_empty_datastore_and_empty_queues(
    cloud_task_testbed, cloud_emulators
):
    from google.cloud import ndb

    from taskutils.testing import CloudTaskTestbed

    class Leftover(ndb.Model):
        pass

    with cloud_task_testbed.ndb_client().context():
        Leftover(id="from-this-test").put()
    tasklib.record("not drained")
    assert len(cloud_task_testbed.tasks()) == 1

    cloud_task_testbed.deactivate()
    with CloudTaskTestbed(cloud_emulators) as next_test:
        assert next_test.tasks() == []
        with next_test.ndb_client().context():
            assert Leftover.get_by_id("from-this-test") is None
    cloud_task_testbed.activate()


def test_the_cloud_fixture_sets_the_cloud_backend_for_the_test_only(cloud_emulators):
    from taskutils.config import get_backend
    from taskutils.testing import CloudTaskTestbed

    before = get_backend()
    with CloudTaskTestbed(cloud_emulators):
        assert get_backend() == "cloud"
        assert os.environ["CLOUD_TASKS_EMULATOR_HOST"] == cloud_emulators.tasks_host
        assert os.environ["DATASTORE_EMULATOR_HOST"] == cloud_emulators.datastore_host

    assert get_backend() == before == "appengine"
    assert os.environ.get("CLOUD_TASKS_EMULATOR_HOST") != cloud_emulators.tasks_host


def test_the_cloud_drain_posts_the_headers_cloud_tasks_sends_an_app_engine_task(cloud_task_testbed, _no_attempts):
    def app(environ, start_response):
        attempts.append(
            (
                environ["PATH_INFO"],
                environ["HTTP_X_APPENGINE_QUEUENAME"],
                bool(environ["HTTP_X_APPENGINE_TASKNAME"]),
                environ["HTTP_X_APPENGINE_TASKRETRYCOUNT"],
                environ["HTTP_USER_AGENT"],
            )
        )
        start_response("200 OK", [])
        return [b""]

    tasklib.report.options(countdown=0)("monday")

    assert cloud_task_testbed.drain("reports", app=app) == 1
    assert attempts == [
        ("/_ah/task/tasklib/report", "reports", True, "0", "AppEngine-Google; (+http://code.google.com/appengine)")
    ]


def test_a_task_name_is_refused_a_second_time_within_a_test(testbed):
    from google.appengine.api.taskqueue import TaskAlreadyExistsError

    tasklib.record.options(name="only-once")(1)

    with pytest.raises(TaskAlreadyExistsError):
        tasklib.record.options(name="only-once")(2)


def test_the_next_cloud_test_may_use_a_task_name_again_as_with_fresh_queues(cloud_task_testbed, cloud_emulators):
    from taskutils.testing import CloudTaskTestbed

    tasklib.record.options(name="every-test-adds-me")(1)
    cloud_task_testbed.drain()

    cloud_task_testbed.deactivate()
    with CloudTaskTestbed(cloud_emulators) as next_test:
        tasklib.record.options(name="every-test-adds-me")(2)
        assert next_test.drain() == 1
    cloud_task_testbed.activate()
    assert [args for args, _ in tasklib.ran[-2:]] == [(1,), (2,)]
