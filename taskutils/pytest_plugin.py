"""The pytest plugin (the ``taskutils`` pytest11 entry point): the App Engine environment, ``task_testbed``
and, for the cloud backend, ``cloud_task_testbed``.

When pytest starts, before any test module or conftest imports the app, the
plugin sets the environment variables App Engine sets (the app id, project,
service, version), so that an app module calling ``wrap_wsgi_app`` at import,
which keeps a copy of the environment for every request, works in route tests
and in its tasks. Values already set are kept. The SDK's own deprecation
warnings are filtered out of the run.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .local.cloud import CloudEmulators
    from .testing import CloudTaskTestbed, TaskTestbed

DEFAULT_APP_ID = "testbed-test"

# The environment App Engine gives an app, as Google's testbed sets it (ext/testbed DEFAULT_ENVIRONMENT).
APP_ENGINE_ENVIRONMENT = {
    "AUTH_DOMAIN": "gmail.com",
    "CURRENT_MODULE_ID": "default",
    "CURRENT_VERSION_ID": "testbed-version",
    "DEFAULT_VERSION_HOSTNAME": "testbed.example.com",
    "SERVER_SOFTWARE": "Development/1.0 (testbed)",
}

# action:message:category:module. The modules are regular expressions matched from the start.
SDK_WARNING_FILTERS = (
    "ignore::DeprecationWarning:google.appengine",
    "ignore::PendingDeprecationWarning:google.appengine",
    # webapp2 imports cgi, and wrap_wsgi_app reloads it: deprecated from Python 3.11, gone in 3.13.
    "ignore:'cgi' is deprecated:DeprecationWarning:webapp2",
    "ignore:'cgi' is deprecated:DeprecationWarning:importlib",
    # google.api_core, which the SDK's Cloud Tasks backend imports, warns at import on Python 3.10
    # that its own future releases will drop it: App Engine still runs python310.
    "ignore:You are using a non-supported Python version:FutureWarning:google.api_core",
)

_CATEGORIES: dict[str, type[Warning]] = {
    "DeprecationWarning": DeprecationWarning,
    "PendingDeprecationWarning": PendingDeprecationWarning,
    "FutureWarning": FutureWarning,
}


def set_app_engine_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Set what App Engine's runtime sets in os.environ, keeping any value already there.

    The app id is APPLICATION_ID or GAE_APPLICATION if either is set, else
    GOOGLE_CLOUD_PROJECT, else the testbed's own ``testbed-test``.
    """
    env = os.environ if environ is None else environ
    app_id = env.get("APPLICATION_ID") or env.get("GAE_APPLICATION") or env.get("GOOGLE_CLOUD_PROJECT")
    app_id = app_id or DEFAULT_APP_ID
    env.setdefault("APPLICATION_ID", app_id)
    env.setdefault("GAE_APPLICATION", app_id)
    env.setdefault("GOOGLE_CLOUD_PROJECT", _project_id(app_id))
    for key, value in APP_ENGINE_ENVIRONMENT.items():
        env.setdefault(key, value)


def _project_id(app_id: str) -> str:
    """The project of an app id ("s~my-app" -> "my-app"), as the SDK's ``full_app_id.project_id`` reads it."""
    from ._sdk import HAS_SDK

    if HAS_SDK:
        from google.appengine.api import full_app_id

        return str(full_app_id.project_id(app_id))
    return app_id.rpartition("~")[2]  # without the SDK: the partition prefix dropped, as it does


def _filter_sdk_warnings() -> None:
    for line in SDK_WARNING_FILTERS:
        action, message, category, module = line.split(":", 3)
        warnings.filterwarnings(
            action,  # type: ignore[arg-type]
            message=message,
            category=_CATEGORIES[category],
            module=module,
        )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Before conftest files load: they may import the app."""
    set_app_engine_environment()
    _filter_sdk_warnings()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "taskutils_queue_yaml",
        "queue.yaml for task_testbed and cloud_task_testbed: only its queues and 'default' exist "
        "(cloud_task_testbed creates its push queues in the Cloud Tasks emulator). Without it, both accept "
        "every queue name (cloud_task_testbed makes a queue in the emulator when a task first names it)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Again when the plugin was loaded late (``-p`` or ``pytest_plugins``), and filters for every test."""
    set_app_engine_environment()
    for line in SDK_WARNING_FILTERS:
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture
def task_testbed(request: pytest.FixtureRequest) -> Iterator[TaskTestbed]:
    """Google's testbed (taskqueue, datastore, memcache) with ``drain()`` to run queued tasks."""
    from .testing import TaskTestbed

    queue_yaml = request.config.getini("taskutils_queue_yaml") or None
    if queue_yaml:
        queue_yaml = str(request.config.rootpath / queue_yaml)
    with TaskTestbed(queue_yaml) as bed:
        yield bed


@pytest.fixture(scope="session")
def cloud_emulators(request: pytest.FixtureRequest) -> Iterator[CloudEmulators]:
    """The Datastore and Cloud Tasks emulators, started once for the session on loopback, paused queues.

    ``DATASTORE_EMULATOR_HOST`` / ``CLOUD_TASKS_EMULATOR_HOST`` name running ones to use instead.
    A missing emulator fails the test with what to install; it never skips.
    """
    from .local.cloud import DEFAULT_LOCATION, CloudEmulators, queue_names_in

    queue_yaml = request.config.getini("taskutils_queue_yaml") or None
    if queue_yaml:
        queue_yaml = str(request.config.rootpath / queue_yaml)
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_APP_ID
    location = os.environ.get("LOCATION_ID") or DEFAULT_LOCATION
    # The queues are paused: the fixture posts their tasks in process, so this port never receives any.
    # Without a queue.yaml every queue name is accepted, as in task_testbed: a task's queue is made when needed.
    queues = queue_names_in(queue_yaml)
    with CloudEmulators(
        project, location, target_port=9, queues=queues, paused=True, any_queue=queue_yaml is None
    ) as emulators:
        yield emulators


@pytest.fixture
def cloud_task_testbed(cloud_emulators: CloudEmulators) -> Iterator[CloudTaskTestbed]:
    """The cloud backend on the session's emulators, emptied for each test, with ``drain()`` to run queued tasks."""
    from .testing import CloudTaskTestbed

    with CloudTaskTestbed(cloud_emulators) as bed:
        yield bed
