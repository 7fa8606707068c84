"""The README's three mountings, each inside wrap_wsgi_app, under the task_testbed fixture."""

import inspect
import pathlib

import pytest
import webtest
from google.appengine.ext import deferred

from readme_apps import flask_app, notes, webapp2_app, wsgi_app

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")

# Each app, the URL of its route, and the line that mounts taskutils as the README writes it.
APPS = {
    "wsgi": (wsgi_app, "/notes", "app = wrap_wsgi_app(taskutils.mount(my_wsgi_app))"),
    "webapp2": (
        webapp2_app,
        "/",
        'app = wrap_wsgi_app(taskutils.mount(webapp2.WSGIApplication([("/", HomeHandler)])))',
    ),
    "flask": (flask_app, "/notes", "app.wsgi_app = wrap_wsgi_app(taskutils.mount(app.wsgi_app))"),
}


@pytest.fixture(params=list(APPS))
def example(request):
    module, route, mounting = APPS[request.param]
    return request.param, module, route, mounting


def test_each_example_app_mounts_taskutils_as_the_readme_says(example):
    name, module, _, mounting = example

    assert mounting in README
    assert mounting in inspect.getsource(module)


@pytest.mark.parametrize("through_the_app", [False, True], ids=["drain", "drain(app=app)"])
def test_a_route_enqueues_a_task_that_writes_to_datastore_in_a_transaction(task_testbed, example, through_the_app):
    name, module, route, _ = example
    client = webtest.TestApp(module.app)

    response = client.post(f"{route}?text=hello-{name}")

    assert response.status_int == 202
    assert task_testbed.drain(app=module.app if through_the_app else None) == 1
    note = notes.ReadmeNote.get_by_id(f"hello-{name}")
    assert (note.app, note.writes) == (name, 1)


def test_a_route_serves_many_tasks_each_run_exactly_once(task_testbed, example):
    name, module, route, _ = example
    client = webtest.TestApp(module.app)

    for i in range(10):
        client.post(f"{route}?text={name}-{i}")

    assert task_testbed.drain(app=module.app) == 10
    assert sorted(n.writes for n in notes.ReadmeNote.query()) == [1] * 10


def test_tasks_deferred_enqueued_run_under_the_drain_but_not_through_an_app_that_did_not_opt_in(task_testbed, example):
    name, module, _, _ = example

    deferred.defer(notes.write, f"deferred-{name}", name)
    (queued,) = task_testbed.tasks()
    status, _ = task_testbed.post(queued, module.app)

    assert status == 404
    assert task_testbed.drain() == 1
    assert notes.ReadmeNote.get_by_id(f"deferred-{name}").writes == 1
