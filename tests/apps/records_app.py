"""Tasks for tests/test_local_records.py, run by an in-process LocalServer."""

from __future__ import annotations

import threading

import taskutils
from taskutils import task

succeeded = threading.Event()


@task
def fails_once() -> None:
    """Raises on its first attempt, succeeds on the second."""
    info = taskutils.current_task()
    if info is not None and info.retry_count == 0:
        raise RuntimeError("boom on the first attempt")
    succeeded.set()
