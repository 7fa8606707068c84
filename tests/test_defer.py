"""Migrating from deferred: taskutils.defer, and deferred's tasks run beside taskutils' own."""

import datetime

import pytest
import webtest
from google.appengine.api import taskqueue, wrap_wsgi_app
from google.appengine.ext import deferred, ndb

import taskutils
from taskutils import task

ran: list = []


class DeferNote(ndb.Model):
    pass


@pytest.fixture(autouse=True)
def _nothing_ran():
    ran.clear()


def remember(*args, **kwargs):
    ran.append((args, kwargs))


def crash_in_deferred():
    raise ValueError("deferred boom")


def fail_deferred_for_good():
    raise deferred.PermanentTaskFailure("never again")


def ask_deferred_for_retry():
    raise deferred.SingularTaskFailure("later")


def not_found(environ, start_response):
    """The app beside the handler: it knows no URL at all."""
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not here\n"]


def post_queued(bed, client, expect_errors=False, **extra_headers):
    """Post the one queued task to a webtest client with the queue's headers; return the response."""
    (queued,) = bed.tasks()
    headers = {
        "X-AppEngine-TaskName": queued.name,
        "X-AppEngine-QueueName": "default",
        "Content-Type": "application/octet-stream",
        **extra_headers,
    }
    return client.post(queued.url, queued.payload, headers=headers, expect_errors=expect_errors)


# Side by side


def test_a_deferred_task_and_a_taskutils_task_queued_side_by_side_both_run_under_the_fixture(task_testbed):
    deferred.defer(remember, "deferred", n=1)
    task(remember)("taskutils", n=2)

    assert task_testbed.drain() == 2
    assert sorted(ran) == [(("deferred",), {"n": 1}), (("taskutils",), {"n": 2})]


@pytest.mark.parametrize("wrap", [False, True], ids=["mount", "wrap_wsgi_app(mount)"])
def test_mount_runs_both_kinds_of_task_and_leaves_the_rest_to_the_app(task_testbed, wrap):
    mounted = taskutils.mount(not_found, deferred=True)
    app = wrap_wsgi_app(mounted) if wrap else mounted
    deferred.defer(remember, "deferred")
    task(remember)("taskutils")

    assert task_testbed.drain(app=app) == 2
    assert sorted(ran) == [(("deferred",), {}), (("taskutils",), {})]
    assert webtest.TestApp(app).get("/elsewhere", expect_errors=True).status_int == 404


def test_taskutils_app_runs_tasks_deferred_enqueued_once_told_to(task_testbed, monkeypatch):
    monkeypatch.setattr(taskutils.app, "run_deferred", True)
    deferred.defer(remember, "through taskutils.app")

    assert task_testbed.drain(app=taskutils.app) == 1
    assert ran == [(("through taskutils.app",), {})]


def test_taskutils_app_leaves_deferreds_url_alone_unless_told_to(task_testbed):
    deferred.defer(remember, "deferred")

    response = post_queued(task_testbed, webtest.TestApp(taskutils.app), True)

    assert response.status_int == 404
    assert ran == []


@pytest.mark.parametrize("mounted", [{}, {"deferred": False}], ids=["by-default", "deferred=False"])
def test_mount_leaves_deferreds_url_to_the_app_unless_the_app_opts_in(task_testbed, mounted):
    deferred.defer(remember, "deferred")

    response = post_queued(task_testbed, webtest.TestApp(taskutils.mount(not_found, **mounted)), True)

    assert response.status_int == 404
    assert ran == []


def test_drain_raises_what_a_deferred_task_raised(task_testbed):
    deferred.defer(crash_in_deferred)

    with pytest.raises(ValueError, match="deferred boom"):
        task_testbed.drain()


def test_drain_retries_a_deferred_task_and_then_raises(task_testbed):
    deferred.defer(crash_in_deferred)

    with pytest.raises(ValueError, match="deferred boom"):
        task_testbed.drain(retries=2)


# Deferred's own answers through mount()


def test_a_deferred_permanent_failure_answers_200_through_mount(task_testbed):
    deferred.defer(fail_deferred_for_good)

    response = post_queued(task_testbed, webtest.TestApp(taskutils.mount(not_found, deferred=True)))

    assert response.status_int == 200


def test_a_deferred_singular_failure_answers_408_through_mount(task_testbed):
    deferred.defer(ask_deferred_for_retry)

    response = post_queued(task_testbed, webtest.TestApp(taskutils.mount(not_found, deferred=True)), True)

    assert response.status_int == 408


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_the_deferred_url_answers_anything_but_post_with_405(task_testbed, method):
    client = webtest.TestApp(taskutils.mount(not_found, deferred=True))

    response = client.request("/_ah/queue/deferred", method=method, expect_errors=True)

    assert response.status_int == 405
    assert response.headers["Allow"] == "POST"


def test_a_deferred_task_without_the_queue_headers_is_refused_and_never_run(task_testbed):
    deferred.defer(remember, "forged")
    (queued,) = task_testbed.tasks()
    client = webtest.TestApp(taskutils.mount(not_found, deferred=True))

    response = client.post(queued.url, queued.payload, expect_errors=True)

    assert response.status_int == 403
    assert ran == []


def test_in_production_a_deferred_task_from_another_address_is_refused(task_testbed, monkeypatch):
    monkeypatch.setenv("GAE_ENV", "standard")
    deferred.defer(remember, "forged")

    response = post_queued(
        task_testbed,
        webtest.TestApp(taskutils.mount(not_found, deferred=True), extra_environ={"REMOTE_ADDR": "203.0.113.9"}),
        True,
    )

    assert response.status_int == 403
    assert ran == []


# taskutils.defer


def test_defer_enqueues_a_task_that_calls_the_function_with_its_arguments(task_testbed):
    added = taskutils.defer(remember, 1, "two", three=3)

    assert isinstance(added, taskqueue.Task)
    assert added.url.startswith("/_ah/task/")
    assert task_testbed.drain() == 1
    assert ran == [((1, "two"), {"three": 3})]


def test_defer_runs_closures_which_deferred_cannot_pickle(task_testbed):
    prefix = "closure-"

    def closure(x):
        DeferNote(id=prefix + x).put()

    with pytest.raises(Exception, match="local object"):
        deferred.defer(closure, "deferred")
    taskutils.defer(closure, "taskutils")
    task_testbed.drain()

    assert [k.id() for k in DeferNote.query().iter(keys_only=True)] == ["closure-taskutils"]


def test_defer_maps_queue(task_testbed):
    taskutils.defer(remember, _queue="reports")

    assert [t.queue_name for t in task_testbed.tasks()] == ["reports"]


def test_defer_maps_countdown(task_testbed):
    before = datetime.datetime.now(datetime.timezone.utc)
    taskutils.defer(remember, _countdown=600)

    (queued,) = task_testbed.tasks()
    assert queued.eta >= before + datetime.timedelta(seconds=599)


def test_defer_maps_eta(task_testbed):
    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
    taskutils.defer(remember, _eta=eta)

    (queued,) = task_testbed.tasks()
    assert abs((queued.eta - eta).total_seconds()) < 1


def test_defer_maps_name(task_testbed):
    taskutils.defer(remember, _name="nightly-2026-12-02")

    assert [t.name for t in task_testbed.tasks()] == ["nightly-2026-12-02"]
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        taskutils.defer(remember, _name="nightly-2026-12-02")


def test_defer_maps_target_and_retry_options(task_testbed):
    retry = taskqueue.TaskRetryOptions(task_retry_limit=3)

    added = taskutils.defer(remember, _target="worker", _retry_options=retry)

    assert added.target == "worker"
    assert added.retry_options.task_retry_limit == 3


def test_defer_merges_headers_and_the_task_receives_them(task_testbed):
    taskutils.defer(remember, _headers={"X-Team": "reports"})

    (queued,) = task_testbed.tasks()
    assert queued.headers["X-Team"] == "reports"
    assert queued.headers["Content-Type"] == "application/octet-stream"


def test_defer_transactional_rolls_back_with_the_transaction(task_testbed):
    class Rollback(Exception):
        pass

    @ndb.transactional()
    def enqueue_then_fail():
        taskutils.defer(remember, "rolled back", _transactional=True)
        raise Rollback

    with pytest.raises(Rollback):
        enqueue_then_fail()
    assert task_testbed.tasks() == []

    ndb.transaction(lambda: taskutils.defer(remember, "committed", _transactional=True))
    assert task_testbed.drain() == 1
    assert ran == [(("committed",), {})]


@pytest.mark.parametrize("option", ["_countdwn", "_retries", "_url"])
def test_defer_refuses_an_unknown_underscore_option_and_enqueues_nothing(task_testbed, option):
    with pytest.raises(TypeError, match=option):
        taskutils.defer(remember, 1, **{option: "/x"})

    assert task_testbed.tasks() == []


def test_defer_passes_none_options_as_deferred_does(task_testbed):
    taskutils.defer(remember, "x", _queue=None, _countdown=None, _headers=None)

    assert task_testbed.drain() == 1
    assert ran == [(("x",), {})]


def test_under_a_route_that_holds_deferreds_url_its_tasks_run_when_opted_in_and_never_answer_2xx_otherwise(
    task_testbed, monkeypatch
):
    taskutils.set_taskroute("/_ah/queue")
    deferred.defer(remember, "deferred")

    for app in (taskutils.app, taskutils.mount(not_found)):
        response = post_queued(task_testbed, webtest.TestApp(app), True)
        assert response.status_int == 404
    assert ran == []
    assert task_testbed.drain(app=taskutils.mount(not_found, deferred=True)) == 1
    assert ran == [(("deferred",), {})]
