"""Soak: 10,000 tasks through ``python -m taskutils serve`` over HTTP, a fifth failing first.

The app (tests/apps/soak_app.py) enqueues in batches from inside the server; the
taskqueue stub's scheduler posts every task back over HTTP; every fifth task fails
its first attempt (408 or 500) and is retried after queue.yaml's 10 ms backoff.
Every task must succeed exactly once, and none may be lost.
"""

from __future__ import annotations

import time

from apps.serving import APPS, ServeProcess

TASKS = 10_000
BATCH = 1_000
TIMEOUT = 180.0


def test_ten_thousand_tasks_with_a_fifth_failing_first_all_succeed_exactly_once(tmp_path):
    proc = ServeProcess("soak_app:app", tmp_path / "serve.log", "--queue-yaml", str(APPS / "soak_queue.yaml"))
    try:
        proc.wait_ready("/stats")
        began = time.monotonic()
        for start in range(0, TASKS, BATCH):
            assert proc.post(f"/enqueue?start={start}&count={BATCH}") == {"added": BATCH}
        enqueued = time.monotonic() - began

        def finished():
            stats = proc.get(f"/stats?expected={TASKS}")
            return stats if stats["succeeded"] == TASKS and stats["queued"] == 0 else None

        stats = proc.wait_for(finished, f"{TASKS} tasks", timeout=TIMEOUT, every=0.5)
        took = time.monotonic() - began
        time.sleep(1.0)  # nothing may run again once the queue is empty
        final = proc.get(f"/stats?expected={TASKS}")
    finally:
        proc.stop()

    assert final["not_exactly_once"] == {}
    assert final["missing_sample"] == []
    assert final["succeeded"] == TASKS
    assert final["retries"] == TASKS // 5
    assert final["attempts"] == TASKS + TASKS // 5 == stats["attempts"]
    print(
        f"\nsoak: {TASKS} tasks (+{final['retries']} retries) in {took:.1f}s, enqueued in {enqueued:.1f}s, "
        f"{final['attempts'] / took:.0f} task runs/s over HTTP"
    )
