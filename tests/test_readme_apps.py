"""The README's three mountings: inside wrap_wsgi_app under ``task_testbed``, and on the cloud backend.

With bundled services (tests/readme_apps/{wsgi,webapp2,flask}_app.py) each app is wrapped in
``wrap_wsgi_app`` and its task writes a bundled-ndb model; on the cloud backend
(tests/readme_apps/cloud_*.py) the same app is mounted without it and its task writes a
Cloud NDB model, under ``cloud_task_testbed`` here and under ``serve --backend cloud``, a
real subprocess with its own Datastore and Cloud Tasks emulators. Last, each ``# main.py``
snippet of the README's "Install and mount" runs as written.
"""

import importlib
import inspect
import pathlib
import re
import sys
import time

import pytest
import webtest
from google.appengine.ext import deferred

from apps.serving import ServeProcess
from readme_apps import cloud_notes, flask_app, notes, webapp2_app, wsgi_app

TESTS = pathlib.Path(__file__).resolve().parent
README = (TESTS.parent / "README.md").read_text(encoding="utf-8")

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


# The same three apps on the cloud backend.

# Each app's module (imported once the fixture has pointed the process at the emulators, as its
# configure(backend="cloud") runs at import), its route, and its mounting as the README writes it.
CLOUD_APPS = {
    "wsgi": ("readme_apps.cloud_wsgi_app", "/notes", "app = taskutils.mount(my_wsgi_app)"),
    "webapp2": (
        "readme_apps.cloud_webapp2_app",
        "/",
        'app = taskutils.mount(webapp2.WSGIApplication([("/", HomeHandler)]))',
    ),
    "flask": ("readme_apps.cloud_flask_app", "/notes", "app.wsgi_app = taskutils.mount(app.wsgi_app)"),
}
CLOUD_LINES = ('taskutils.configure(backend="cloud")', "from google.cloud import ndb")


def _source(module_name):
    return (TESTS / (module_name.replace(".", "/") + ".py")).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", list(CLOUD_APPS))
def test_each_cloud_example_app_mounts_taskutils_without_wrap_wsgi_app_as_the_readme_says(name):
    module_name, _, mounting = CLOUD_APPS[name]
    source = _source(module_name)

    assert mounting in README
    assert mounting in source
    assert "wrap_wsgi_app(" not in source and "google.appengine" not in source
    assert all(line in README for line in CLOUD_LINES)
    assert CLOUD_LINES[0] in source
    assert CLOUD_LINES[1] in _source("readme_apps.cloud_notes")


@pytest.fixture(params=list(CLOUD_APPS))
def cloud_example(request, cloud_task_testbed):
    module_name, route, _ = CLOUD_APPS[request.param]
    return request.param, importlib.import_module(module_name), route


def test_on_the_cloud_backend_a_route_enqueues_a_task_that_writes_a_cloud_ndb_entity_in_a_transaction_once(
    cloud_task_testbed, cloud_example
):
    name, module, route = cloud_example
    client = webtest.TestApp(module.app)

    response = client.post(f"{route}?text=hello-{name}")

    assert response.status_int == 202
    assert [t.app_engine_http_request.relative_uri for t in cloud_task_testbed.tasks()] == [
        f"/_ah/task/readme_apps.cloud_{name}_app/save"
    ]
    assert cloud_task_testbed.drain(app=module.app) == 1
    with cloud_task_testbed.ndb_client().context():
        note = cloud_notes.ReadmeNote.get_by_id(f"hello-{name}")
    assert (note.app, note.writes) == (name, 1)


def test_on_the_cloud_backend_a_route_serves_many_tasks_each_run_exactly_once(cloud_task_testbed, cloud_example):
    name, module, route = cloud_example
    client = webtest.TestApp(module.app)

    for i in range(10):
        client.post(f"{route}?text={name}-{i}")

    assert cloud_task_testbed.drain(app=module.app) == 10
    with cloud_task_testbed.ndb_client().context():
        written = {n.text: n.writes for n in cloud_notes.ReadmeNote.query()}
    assert written == {f"{name}-{i}": 1 for i in range(10)}


@pytest.mark.parametrize("name", list(CLOUD_APPS))
def test_under_serve_on_the_cloud_backend_each_app_runs_its_tasks_once_through_the_real_emulators(
    tmp_path, monkeypatch, name
):
    module_name, route, _ = CLOUD_APPS[name]
    project = f"readme-{name}"
    env = {"PYTHONPATH": str(TESTS), "GOOGLE_CLOUD_PROJECT": project}
    env.update({key: "" for key in ("DATASTORE_EMULATOR_HOST", "CLOUD_TASKS_EMULATOR_HOST", "TASKUTILS_BACKEND")})
    server = ServeProcess(f"{module_name}:app", tmp_path / "serve.log", "--backend", "cloud", env=env, cwd=TESTS)
    try:
        server.wait_ready("/none", timeout=120)
        found = re.search(r"Datastore emulator at (\S+) ", server.log())
        assert found, server.log()
        monkeypatch.setenv("DATASTORE_EMULATOR_HOST", found.group(1))
        from google.cloud import ndb

        datastore = ndb.Client(project=project)

        def written():
            with datastore.context():
                return {n.text: n.writes for n in cloud_notes.ReadmeNote.query()}

        for i in range(10):
            assert server.request("POST", f"{route}?text={name}-{i}")[0] == 202
        server.wait_for(lambda: len(written()) == 10, "ten notes written", timeout=60, every=0.2)
        time.sleep(1.0)  # nothing may run again
        notes_written = written()
        code = server.interrupt()
    finally:
        server.stop()

    log = server.log()
    assert notes_written == {f"{name}-{i}": 1 for i in range(10)}, log[-3000:]
    assert "Traceback" not in log
    assert code == 0
    runs = [line for line in log.splitlines() if f"task /_ah/task/{module_name}/save " in line]
    assert len(runs) == 10 and all(line.endswith(")") and " -> 200 ok " in line for line in runs), runs
    assert f"Datastore emulator at {found.group(1)} stopped" in log


# Each "# main.py: ..." snippet of the README's "Install and mount", run as written: written to a
# module of its own, imported (under task_testbed, or under cloud_task_testbed, which puts back
# what its configure(backend="cloud") set), and asked for a page.

SNIPPETS = dict(re.findall(r"```python\n# main\.py: ([^\n]*)\n(.*?)```", README, re.DOTALL))
BUNDLED_SNIPPETS = {"a plain WSGI app": 200, "webapp2": 200, "Flask": 404}  # the Flask snippet has no route of its own
CLOUD_SNIPPETS = ["a plain WSGI app, on the cloud backend", "webapp2, on the cloud backend"]
CLOUD_NDB_SNIPPET = "Flask, on the cloud backend, with a Cloud NDB model"


@pytest.fixture
def import_snippet(tmp_path, monkeypatch):
    """Import a README snippet as a module (importable by name, so its tasks' URLs resolve)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    imported = []

    def load(name):
        module_name = "readme_main_" + re.sub(r"\W+", "_", name).strip("_").lower()
        (tmp_path / f"{module_name}.py").write_text(SNIPPETS[name], encoding="utf-8")
        imported.append(module_name)
        return importlib.import_module(module_name)

    yield load
    for module_name in imported:
        sys.modules.pop(module_name, None)


def test_the_readme_has_the_mounting_snippets_these_tests_run():
    assert sorted(SNIPPETS) == sorted([*BUNDLED_SNIPPETS, *CLOUD_SNIPPETS, CLOUD_NDB_SNIPPET])


@pytest.mark.parametrize("name", list(BUNDLED_SNIPPETS))
def test_each_bundled_services_mounting_snippet_runs_as_written(task_testbed, import_snippet, name):
    module = import_snippet(name)

    webtest.TestApp(module.app).get("/", status=BUNDLED_SNIPPETS[name])


@pytest.mark.parametrize("name", CLOUD_SNIPPETS)
def test_each_cloud_backend_mounting_snippet_runs_as_written(cloud_task_testbed, import_snippet, name):
    client = webtest.TestApp(import_snippet(name).app)

    assert client.get("/").text == "hello\n"
    assert client.get("/cron/taskutils-periodic", status=403).text == "cron requests only\n"


def test_the_cloud_backend_flask_snippet_runs_its_task_and_reads_its_cloud_ndb_model_as_written(
    cloud_task_testbed, import_snippet
):
    module = import_snippet(CLOUD_NDB_SNIPPET)
    client = webtest.TestApp(module.app)

    client.post("/notes/hello", status=202)
    assert cloud_task_testbed.drain(app=module.app) == 1

    assert client.get("/notes/hello").text == "1\n"
