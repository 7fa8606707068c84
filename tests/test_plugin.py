"""The pytest plugin as a user meets it: a project of their own, on a fresh pytest run."""

import pathlib
import textwrap

import pytest

# What the plugin sets; the run under test must start without them, as a user's does.
APP_ENGINE_VARIABLES = (
    "APPLICATION_ID",
    "GAE_APPLICATION",
    "GOOGLE_CLOUD_PROJECT",
    "AUTH_DOMAIN",
    "CURRENT_MODULE_ID",
    "CURRENT_VERSION_ID",
    "DEFAULT_VERSION_HOSTNAME",
    "SERVER_SOFTWARE",
)

MAIN = '''
    """A user's app, as the README says to write it: wrap_wsgi_app at import time."""
    import webapp2
    from google.appengine.api import wrap_wsgi_app
    from google.appengine.ext import ndb

    import taskutils


    class Note(ndb.Model):
        text = ndb.StringProperty()
        written = ndb.DateTimeProperty(auto_now_add=True)


    @taskutils.task
    def save(text):
        @ndb.transactional()
        def put():
            if Note.get_by_id(text) is None:
                Note(id=text, text=text).put()

        put()


    class Notes(webapp2.RequestHandler):
        def post(self):
            save(self.request.get("text"))
            self.response.write("queued")

        def get(self):
            note = Note.get_by_id(self.request.get("text"))
            self.response.write(note.text if note else "none")


    app = wrap_wsgi_app(taskutils.mount(webapp2.WSGIApplication([("/notes", Notes)])))
'''

TESTS = """
    import webtest

    import main


    def test_a_route_enqueues_a_task_that_writes_in_a_transaction(task_testbed):
        client = webtest.TestApp(main.app)
        assert client.post("/notes", {"text": "hello"}).text == "queued"

        assert task_testbed.drain() == 1

        assert main.Note.get_by_id("hello").text == "hello"
        assert client.get("/notes", {"text": "hello"}).text == "hello"


    def test_tasks_drained_through_the_wrapped_app_write_too(task_testbed):
        webtest.TestApp(main.app).post("/notes", {"text": "through the app"})

        assert task_testbed.drain(app=main.app) == 1

        assert main.Note.get_by_id("through the app") is not None
"""


@pytest.fixture
def project(pytester, monkeypatch):
    """A user's project with main.py and its tests; the environment as a shell would give it."""
    for name in APP_ENGINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(main=textwrap.dedent(MAIN), test_main=textwrap.dedent(TESTS))
    return pytester


def run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


MINE = """
    import os
    import warnings


    def test_my_own_deprecation_still_shows():
        warnings.warn("my own old API", DeprecationWarning)


    def test_the_environment_is_app_engines_and_never_claims_production():
        assert os.environ["APPLICATION_ID"] == os.environ["GAE_APPLICATION"] == "testbed-test"
        assert os.environ["GOOGLE_CLOUD_PROJECT"] == "testbed-test"
        assert os.environ["CURRENT_MODULE_ID"] == "default"
        assert "GAE_ENV" not in os.environ
"""


def test_a_wrap_wsgi_app_project_passes_on_a_fresh_run_with_only_the_users_own_warnings(project):
    project.makepyfile(test_mine=textwrap.dedent(MINE))

    result = run(project)

    # Route tests and tasks work, and of all warnings only the user's own is left (the SDK's
    # are hundreds on Python 3.13: datetime.utcnow, cgi, ruamel.yaml, generator.throw).
    result.assert_outcomes(passed=4, warnings=1)
    result.stdout.fnmatch_lines(["*DeprecationWarning: my own old API*"])


def test_a_conftest_may_import_the_app_first_and_values_the_user_set_are_kept(project, monkeypatch):
    project.makeconftest("import main  # noqa: F401  (imports the app before any test module)\n")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-project")
    monkeypatch.setenv("AUTH_DOMAIN", "example.com")
    project.makepyfile(
        test_env=textwrap.dedent(
            """
            import os


            def test_the_users_values():
                assert os.environ["APPLICATION_ID"] == os.environ["GAE_APPLICATION"] == "my-project"
                assert os.environ["GOOGLE_CLOUD_PROJECT"] == "my-project"
                assert os.environ["AUTH_DOMAIN"] == "example.com"
            """
        )
    )

    result = run(project)

    result.assert_outcomes(passed=3, warnings=0)


README = (pathlib.Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")

SIGNUP_MAIN = '''
    """The app the README's testing example tests: a Flask app, mounted as the README says."""
    from flask import Flask, request
    from google.appengine.api import wrap_wsgi_app
    from google.appengine.ext import ndb

    import taskutils


    class Welcome(ndb.Model):
        email = ndb.StringProperty()


    @taskutils.task
    def send_welcome(email):
        Welcome(id=email, email=email).put()


    app = Flask(__name__)
    app.wsgi_app = wrap_wsgi_app(taskutils.mount(app.wsgi_app))


    @app.post("/signup")
    def signup():
        send_welcome(request.form["email"])
        return "welcome on its way"
'''


def readme_block(first_line: str) -> str:
    """The README's fenced code block that starts with first_line."""
    start = README.index(first_line)
    return README[start : README.index("```", start)]


def test_the_readmes_testing_example_passes_with_python_m_pytest_from_the_apps_folder(pytester, monkeypatch):
    for name in APP_ENGINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(main=textwrap.dedent(SIGNUP_MAIN))
    pytester.mkdir("tests")
    (pytester.path / "tests" / "test_main.py").write_text(readme_block("# tests/test_main.py"))

    result = run(pytester)  # python -m pytest, in the folder of main.py, as the README says

    result.assert_outcomes(passed=1)


def test_the_cloud_fixture_example_of_the_docs_passes_in_a_users_project(pytester, monkeypatch):
    for name in APP_ENGINE_VARIABLES + ("DATASTORE_EMULATOR_HOST", "CLOUD_TASKS_EMULATOR_HOST"):
        monkeypatch.delenv(name, raising=False)
    repo = pathlib.Path(__file__).resolve().parents[1]
    docs = (repo / "docs" / "cloud.md").read_text(encoding="utf-8")
    test_code = docs.split("```python\n# tests/test_main.py\n", 1)[1].split("```", 1)[0]
    pytester.makepyfile(main=(repo / "examples" / "appengine-py3" / "main.py").read_text(encoding="utf-8"))
    pytester.makepyfile(test_main=test_code)

    result = run(pytester)

    result.assert_outcomes(passed=1)
