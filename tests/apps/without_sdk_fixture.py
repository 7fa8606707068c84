"""A user's test on the cloud backend without the App Engine SDK: ``cloud_task_testbed`` runs its tasks.

Run by pytest in a virtualenv holding ``taskutils-gae[cloud]`` and pytest only (see
``tests/test_without_sdk.py``); taskutils' pytest plugin loads there as in any project.
"""

from __future__ import annotations

from google.cloud import ndb

import taskutils


class Visit(ndb.Model):
    page = ndb.StringProperty()


def visit_counter(site: str):
    @taskutils.task
    def record(page: str) -> None:  # a closure over site
        Visit(page=f"{site}{page}").put()

    return record


def test_a_closure_task_writes_its_entity_once(cloud_task_testbed):
    visit_counter("https://example.com")("/home")
    assert len(cloud_task_testbed.tasks()) == 1

    cloud_task_testbed.drain()

    with cloud_task_testbed.ndb_client().context():
        assert [v.page for v in Visit.query()] == ["https://example.com/home"]
    assert cloud_task_testbed.tasks() == []


def test_the_app_engine_fixture_says_what_to_install(request):
    try:
        request.getfixturevalue("task_testbed")
    except ModuleNotFoundError as e:
        assert 'pip install "taskutils-gae[appengine]"' in str(e)
    else:
        raise AssertionError("task_testbed ran without appengine-python-standard")
