import logging
import os
import pathlib

import pytest

import taskutils
from taskutils.config import DEFAULT_ROUTE

import tasklib

# One Cloud Tasks emulator venv for the tests and the cloud_task_testbed fixture (built on first use).
os.environ.setdefault(
    "TASKUTILS_EMULATOR_VENV", str(pathlib.Path(__file__).resolve().parents[1] / ".cache" / "cloudtasks-emulator-venv")
)

pytest_plugins = ["pytester"]  # test_plugin.py runs user projects on a fresh pytest


@pytest.fixture(autouse=True)
def _fresh_settings():
    """Each test starts with the default route, keys from the environment, and nothing recorded."""
    tasklib.ran.clear()
    yield
    taskutils.set_taskroute(DEFAULT_ROUTE)
    taskutils.configure(secret_keys=None)


@pytest.fixture
def signed():
    """A key ring with one key, so payloads are signed."""
    taskutils.configure(secret_keys=["test-key-one"])


@pytest.fixture
def task_log(caplog):
    caplog.set_level(logging.INFO, logger="taskutils")
    return caplog
