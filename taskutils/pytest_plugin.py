"""The pytest plugin: the ``task_testbed`` fixture (installed as the ``taskutils`` pytest11 entry point)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import TaskTestbed


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("taskutils_queue_yaml", "queue.yaml for the task_testbed fixture (default: every queue is valid)")


@pytest.fixture
def task_testbed(request: pytest.FixtureRequest) -> Iterator[TaskTestbed]:
    """Google's testbed (taskqueue, datastore, memcache) with ``drain()`` to run queued tasks."""
    queue_yaml = request.config.getini("taskutils_queue_yaml") or None
    if queue_yaml:
        queue_yaml = str(request.config.rootpath / queue_yaml)
    with TaskTestbed(queue_yaml) as bed:
        yield bed
