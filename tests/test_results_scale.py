"""10,000 children in one group, on Google's testbed stubs: the fan-in finishes and time per child stays flat."""

from __future__ import annotations

import time

from taskutils import task

import tasklib


@task
def square(n: int) -> int:
    return n * n


@task
def summarize(results: list[int]) -> int:
    tasklib.ran.append(("summarize", len(results)))
    return sum(results)


def test_ten_thousand_children_fan_in_with_flat_time_per_child(task_testbed):
    """CPU time per child, the whole fan-in included (wall time here is mostly other processes')."""
    durations = {}
    for size in (500, 10_000):
        group = square.submit_map(range(size))
        summary = group.then(summarize)
        started = time.process_time()
        task_testbed.drain()
        durations[size] = (time.process_time() - started) / size
        assert summary.result() == sum(n * n for n in range(size))
        assert tasklib.ran == [("summarize", size)]
        tasklib.ran.clear()

    assert durations[10_000] <= 1.5 * durations[500], durations
