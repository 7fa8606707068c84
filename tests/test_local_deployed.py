"""``serve`` runs the app as it is deployed: the README's three mountings, each inside ``wrap_wsgi_app``.

Each app (tests/apps/deployed_*.py) enqueues tasks with ``.map()`` whose bodies
write Datastore entities in a transaction. Under ``python -m taskutils serve`` at
its default thread count, every task must run exactly once and leave its entity,
with no assertion from the datastore stub about the app id: task requests go
through the whole app, ``wrap_wsgi_app``'s middleware included, and every
waitress thread has the App Engine environment.
"""

from __future__ import annotations

import time

import pytest

from apps.serving import ServeProcess

TASKS = 40


@pytest.mark.parametrize(
    "spec",
    ["deployed_wsgi:app", "deployed_webapp2:app", "deployed_flask:app", "deployed_unmounted:app"],
    ids=["plain-wsgi", "webapp2", "flask", "wrapped-but-not-mounted"],
)
def test_every_task_of_a_wrapped_app_runs_exactly_once_and_writes_its_entity(tmp_path, spec):
    proc = ServeProcess(spec, tmp_path / "serve.log")
    try:
        proc.wait_ready("/stats?key=none")
        assert proc.post(f"/start?key=k&n={TASKS}") == {"added": TASKS}

        proc.wait_for(lambda: proc.get("/stats?key=k")["entities"] == TASKS or None, f"{TASKS} entities", 60)
        time.sleep(1.0)  # nothing may run again
        stats = proc.get("/stats?key=k")
        code = proc.interrupt()
    finally:
        proc.stop()

    log = proc.log()
    assert stats["runs"] == {f"k-{i}": 1 for i in range(TASKS)}, log[-3000:]
    assert stats["writes"] == TASKS
    assert "AssertionError" not in log
    assert "Traceback" not in log
    assert code == 0
    assert f"{TASKS} task runs succeeded, 0 failed" in log
    first = next(line for line in log.splitlines() if "taskutils.local:" in line)
    mounting = "taskutils.app is mounted beside it" if spec == "deployed_unmounted:app" else "routes /_ah/task itself"
    assert f"serving {spec} on {proc.base}, which " in first and mounting in first, first
