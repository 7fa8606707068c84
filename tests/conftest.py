import logging
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import pytest

import taskutils
from taskutils.config import DEFAULT_ROUTE

import tasklib

# One Cloud Tasks emulator venv for the tests and the cloud_task_testbed fixture (built on first use).
os.environ.setdefault(
    "TASKUTILS_EMULATOR_VENV", str(pathlib.Path(__file__).resolve().parents[1] / ".cache" / "cloudtasks-emulator-venv")
)

if sys.version_info >= (3, 13):
    # The README's bundled-services apps call wrap_wsgi_app when collected, which makes os.environ
    # per thread and hooks _thread.start_new_thread to copy it into each new thread (reloading
    # threading). From Python 3.13 threading starts threads through
    # _thread.start_joinable_thread, which the SDK does not hook: without this, a thread started
    # later in this process (the FastAPI example's a2wsgi event loop, its thread pool) would see an
    # empty os.environ, without the emulators' hosts.
    import _thread

    from google.appengine.runtime import request_environment

    _start_joinable_thread = _thread.start_joinable_thread

    def _start_with_environ(function, *args, **kwargs):
        install = request_environment.current_request.CloneRequestEnvironment()

        def run():
            install()
            try:
                function()
            finally:
                request_environment.current_request.Clear()

        return _start_joinable_thread(run, *args, **kwargs)

    _thread.start_joinable_thread = _start_with_environ  # what threading takes when the SDK reloads it
    threading._start_joinable_thread = _start_with_environ

pytest_plugins = ["pytester"]  # test_plugin.py runs user projects on a fresh pytest


@pytest.fixture(autouse=True)
def _fresh_settings():
    """Each test starts with the default route, keys from the environment, and nothing recorded."""
    tasklib.ran.clear()
    yield
    taskutils.set_taskroute(DEFAULT_ROUTE)
    taskutils.configure(secret_keys=None)


@pytest.fixture(scope="session")
def taskutils_wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """taskutils' wheel built from this checkout, as ``pip wheel`` builds it for the examples' deploys."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    source, folder = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheels")
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):  # built in a copy: no build/ left here
        shutil.copy(repo / name, source)
    shutil.copytree(repo / "taskutils", source / "taskutils", ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(folder), str(source)]
    subprocess.run(build, check=True, timeout=300)
    (built,) = folder.glob("taskutils_gae-*.whl")
    return built


@pytest.fixture
def signed():
    """A key ring with one key, so payloads are signed."""
    taskutils.configure(secret_keys=["test-key-one"])


@pytest.fixture
def task_log(caplog):
    caplog.set_level(logging.INFO, logger="taskutils")
    return caplog
