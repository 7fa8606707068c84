"""``serve``'s memory stays flat over a long run: nothing grows with the number of tasks run.

Google's taskqueue stub keeps a copy of every add request (about 14.5 MiB per
10,000 tasks) unless ``serve`` bounds it. The test runs rounds of thousands of
tasks through a real ``python -m taskutils serve`` and reads the process's
resident memory after each round.
"""

from __future__ import annotations

import time
from pathlib import Path

from apps.serving import ServeProcess

ROUNDS = 5
PER_ROUND = 2_000


def rss_mib(pid: int) -> float:
    """The process's resident set size, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc")


def test_memory_stays_flat_over_rounds_of_thousands_of_tasks(tmp_path):
    proc = ServeProcess("memory_app:app", tmp_path / "serve.log")
    sizes = []
    try:
        proc.wait_ready("/stats")
        deadline = time.monotonic() + 120
        for n in range(1, ROUNDS + 1):
            assert proc.post(f"/enqueue?count={PER_ROUND}") == {"added": PER_ROUND}
            proc.wait_for(
                lambda n=n: (s := proc.get("/stats"))["ran"] == n * PER_ROUND and s["queued"] == 0 or None,
                f"round {n}",
                timeout=max(5.0, deadline - time.monotonic()),
                every=0.2,
            )
            sizes.append(rss_mib(proc.proc.pid))
    finally:
        proc.stop()

    # The first round warms up the allocator; after it, four rounds of 2,000 tasks would add
    # about 11 MiB if every task left a copy behind.
    growth = sizes[-1] - sizes[0]
    assert growth < 3.0, f"RSS after each round of {PER_ROUND} tasks: {[f'{s:.1f}' for s in sizes]} MiB"
