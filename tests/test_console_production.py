"""``taskutils.console``, the production console: read-only handles and groups, for App Engine admins only.

It is served as App Engine serves it, behind ``wrap_wsgi_app``, which turns the
``X-Appengine-User-Is-Admin`` header App Engine sets into what
``users.is_current_user_admin()`` answers; Google's testbed stubs hold the handles.
"""

from __future__ import annotations

from typing import Any

import pytest
import webtest
from google.appengine.api import wrap_wsgi_app

import taskutils
from taskutils import set_progress, task

ADMIN = {"X-Appengine-User-Is-Admin": "1", "X-Appengine-User-Email": "admin@example.com"}


@task
def double(n: int) -> int:
    return n * 2


@pytest.fixture
def site(task_testbed: Any) -> webtest.TestApp:
    return webtest.TestApp(wrap_wsgi_app(taskutils.console))


def test_the_console_is_the_wsgi_app_exported_as_taskutils_console():
    from taskutils.webconsole import console

    assert taskutils.console is console


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Appengine-User-Is-Admin": "0", "X-Appengine-User-Email": "someone@example.com"},
        {"X-Appengine-User-Email": "someone@example.com"},
    ],
    ids=["no-user", "a-signed-in-user-who-is-not-an-admin", "no-admin-header"],
)
def test_the_console_refuses_anyone_but_an_app_engine_admin(site, headers):
    response = site.get("/", headers=headers, status=403)

    assert b"<table" not in response.body
    assert site.get("/?group=x", headers=headers, status=403)


def test_the_console_refuses_a_non_admin_even_without_wrap_wsgi_app(task_testbed):
    raw = webtest.TestApp(taskutils.console)

    raw.get("/", headers={"X-Appengine-User-Is-Admin": "0"}, status=403)
    raw.get("/", status=403)


def test_an_admin_is_let_in(site):
    page = site.get("/", headers=ADMIN, status=200)

    assert page.content_type == "text/html"
    assert "Handles and groups" in page.text


def test_the_console_is_read_only(site):
    response = site.post("/", {"anything": "1"}, headers=ADMIN, status=405)

    assert response.headers["Allow"] == "GET"


def test_an_admin_sees_handles_and_groups_with_their_progress(site, task_testbed):
    handle = double.submit(21)
    group = double.submit_map([1, 2, 3])
    task_testbed.drain()

    page = site.get("/", headers=ADMIN, status=200)

    assert handle.id in page.text and group.id in page.text
    assert "3/3" in page.text
    assert "succeeded" in page.text
    detail = site.get(f"/?group={group.id}", headers=ADMIN, status=200)
    assert "3/3" in detail.text
    assert all(child.id in detail.text for child in group.handles)


@pytest.mark.parametrize(
    "group_id", ["g" * 1501, "é" * 751, "no-such-group"], ids=["1501-bytes", "1502-bytes-utf8", "unknown"]
)
def test_a_group_id_no_group_can_have_answers_404(site, group_id):
    response = site.get("/", params={"group": group_id}, headers=ADMIN, status=404)

    assert "There is no such group." in response.text


@task
def reports_progress() -> None:
    set_progress(3, 10)
    raise ValueError("not yet")


def test_a_handle_shows_the_progress_its_task_reported(site, task_testbed):
    handle = reports_progress.submit()
    [added] = task_testbed.tasks()
    task_testbed.post(added)

    page = site.get("/", headers=ADMIN, status=200)

    assert handle.status == "retrying"
    assert "3/10" in page.text


unpickled: list[str] = []


def _side_effect(text: str) -> str:
    unpickled.append(text)
    return text


class Rigged:
    """A result whose unpickling would call _side_effect: the console must never do it."""

    def __reduce__(self) -> Any:
        return (_side_effect, ("rigged result was unpickled",))


@task
def returns_rigged() -> Rigged:
    return Rigged()


def test_a_handle_page_shows_a_plain_result_and_never_runs_code_a_result_names(site, task_testbed):
    plain = double.submit(21)
    rigged = returns_rigged.submit()
    task_testbed.drain()
    unpickled.clear()

    page = site.get(f"/?handle={plain.id}", headers=ADMIN).text
    assert "test_console_production.double" in page and "42</pre>" in page and "Attempts" in page

    page = site.get(f"/?handle={rigged.id}", headers=ADMIN).text
    assert "test_console_production._side_effect" in page  # what it names, as text
    assert unpickled == []
    assert site.get("/", headers=ADMIN).text.count(f"?handle={plain.id}") == 1  # the listing links to it
    assert "<time datetime=" in page and " UTC</time>" in page
    assert "function localTimes" in page  # the browser's zone beside UTC, with JavaScript
    site.get("/?handle=nosuchhandle", headers=ADMIN, status=404)
    site.get(f"/?handle={'x' * 2000}", headers=ADMIN, status=404)


def test_off_app_engine_on_the_cloud_backend_the_admin_header_lets_nobody_in(task_testbed, monkeypatch):
    site = webtest.TestApp(wrap_wsgi_app(taskutils.console))
    monkeypatch.delenv("GAE_ENV", raising=False)
    monkeypatch.setattr(taskutils.config.settings, "backend", "cloud")

    response = site.get("/", headers=ADMIN, status=403)

    assert b"<table" not in response.body
