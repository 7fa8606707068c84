"""The cloud backend's enqueue: a ``@task`` call against a bare ``CloudTasksClient.create_task`` of the same payload.

Run from the repository root with the installed package (and the ``[cloud]`` extra):

    python bench/bench_cloud_queue.py            # 21 rounds
    python bench/bench_cloud_queue.py --quick    # 5 rounds, a smoke run

Both sides add to one paused queue of one Cloud Tasks emulator (``gcloud-tasks-emulator``,
from ``$TASKUTILS_EMULATOR_VENV``) through the same client, in alternating rounds:

- call: ``work_task(42, "monday", limit=2.5)`` on ``configure(backend="cloud")``: pickles
  and frames the call, builds the task, turns it into a Cloud Tasks request and creates it;
- bare: ``client.create_task`` of an App Engine task with the payload, URL and headers a
  call makes, pickled once beforehand.

The target is a ratio of at most 1.1: taskutils adds little to the RPC itself.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMULATOR_VENV = Path(os.environ.get("TASKUTILS_EMULATOR_VENV") or REPO / ".cache" / "cloudtasks-emulator-venv")
PROJECT, LOCATION = "taskutils-bench", "us-central1"
NUMBER = 200
TARGET = 1.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rows(rounds: int) -> list[tuple[str, float, str, bool, float, float, str, str]]:
    """The comparison as a ``bench/run.py`` Result row: name, ratio, target, met, µs of each side, their names."""
    from google.cloud import tasks_v2

    import taskutils
    from taskutils import cloudtasks
    from taskutils.backends import cloud_requests
    from taskutils.task import LIBRARY_HEADERS

    from benchwork import work_task

    emulator = cloudtasks.EmulatorProcess(
        EMULATOR_VENV, port=_free_port(), queues=["default"], project=PROJECT, location=LOCATION
    )
    emulator.target_port = _free_port()  # nothing listens there: the queue is paused anyway
    emulator.start()
    saved = os.environ.get("CLOUD_TASKS_EMULATOR_HOST")
    os.environ["CLOUD_TASKS_EMULATOR_HOST"] = emulator.address
    try:
        taskutils.configure(backend="cloud", project=PROJECT, location=LOCATION, secret_keys=[])
        client = cloud_requests.client()
        parent = emulator.queue_path("default")
        client.pause_queue(name=parent)
        sample = work_task._build((42, "monday"), {"limit": 2.5})
        payload, url, headers = sample.payload, sample.url, dict(LIBRARY_HEADERS)

        def call(n: int) -> float:
            t = time.perf_counter()
            for _ in range(n):
                work_task(42, "monday", limit=2.5)
            return time.perf_counter() - t

        def bare(n: int) -> float:
            t = time.perf_counter()
            for _ in range(n):
                request = tasks_v2.AppEngineHttpRequest(relative_uri=url, body=payload, headers=headers)
                client.create_task(parent=parent, task=tasks_v2.Task(app_engine_http_request=request))
            return time.perf_counter() - t

        sides = {"call": call, "bare": bare}
        times: dict[str, list[float]] = {name: [] for name in sides}
        for name in sides:  # warm up, untimed
            sides[name](NUMBER // 10)
        for r in range(rounds):
            for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                client.purge_queue(name=parent)
                gc.collect()
                gc.disable()  # as bench/run.py times its batches
                try:
                    times[name].append(sides[name](NUMBER))
                finally:
                    gc.enable()
        client.purge_queue(name=parent)
    finally:
        taskutils.configure(backend="appengine", project=None, location=None, secret_keys=None)
        if saved is None:
            os.environ.pop("CLOUD_TASKS_EMULATOR_HOST", None)
        else:
            os.environ["CLOUD_TASKS_EMULATOR_HOST"] = saved
        emulator.stop()
    ratio = statistics.median(a / b for a, b in zip(times["call"], times["bare"], strict=True))
    call_us = statistics.median(times["call"]) / NUMBER * 1e6
    bare_us = statistics.median(times["bare"]) / NUMBER * 1e6
    return [
        (
            "one `@task` call on the cloud backend / bare `CloudTasksClient.create_task` (emulator)",
            ratio,
            f"≤ {TARGET}",
            ratio <= TARGET,
            call_us,
            bare_us,
            "@task call",
            "bare create_task",
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--quick", action="store_true", help="5 rounds: a smoke run, not figures to quote")
    args = parser.parse_args()
    import logging

    logging.disable(logging.CRITICAL)
    [(name, ratio, target, ok, a_us, b_us, a_name, b_name)] = rows(5 if args.quick else args.rounds)
    met = "met" if ok else "MISSED"
    print(f"{name}: {ratio:.2f} (target {target}, {met}); {a_name} {a_us:.0f} µs, {b_name} {b_us:.0f} µs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
