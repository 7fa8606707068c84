"""Datastore operations per group child on the cloud store (Cloud Datastore), at 100 and 10,000 children.

Run alone from the repository root: ``python bench/bench_cloud_store.py [--quick]``. It
starts the Google Cloud CLI's Datastore emulator and the Cloud Tasks emulator
(``$TASKUTILS_EMULATOR_VENV``, as the tests use it) on free loopback ports, puts the
cloud backend on them, and runs ``submit_map(...).then(...)``: the queue is paused, and
each task is read back and posted to ``taskutils.app`` in process until none is left.
Operations are counted at the store port, one per call (a get, put or delete of many
entities is one RPC; a transaction is a BeginTransaction and a Commit), as
``bench_results.py`` counts bundled Datastore's RPCs.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import webtest

import taskutils
from taskutils import cloudtasks
from taskutils.backends import current
from taskutils.backends.base import Store

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchwork  # noqa: E402

PROJECT, LOCATION, QUEUE = "taskutils-bench", "us-central1", "default"
REPO = Path(__file__).resolve().parents[1]
EMULATOR_VENV = Path(os.environ.get("TASKUTILS_EMULATOR_VENV") or REPO / ".cache" / "cloudtasks-emulator-venv")
FULL_VIEW = 2  # tasks_v2.Task.View.FULL: bodies included
BIG, SMALL = 10_000, 100


def summary(results: list[int]) -> int:
    """A group's callback: its results in item order."""
    return len(results)


class CountingStore:
    """A store that counts its calls by name and hands them to the store it wraps."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.inner, name)
        if name not in ("get", "put", "delete", "transaction", "query"):
            return found

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return found(*args, **kwargs)

        return counted


@contextmanager
def emulator() -> Iterator[str]:
    """The Datastore emulator on a free loopback port: its host:port."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise SystemExit("bench_cloud_store: the Google Cloud CLI (gcloud) is needed for the Datastore emulator")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
    command = [gcloud, "beta", "emulators", "datastore", "start", f"--host-port={host}", "--no-store-on-disk"]
    command += ["--consistency=1.0", f"--project={PROJECT}", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}/", timeout=2) as answer:
                    if answer.read().strip() == b"Ok":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench_cloud_store: the Datastore emulator did not start on {host}")
            time.sleep(0.2)
        yield host
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def tasks_emulator() -> Iterator[cloudtasks.EmulatorProcess]:
    """The Cloud Tasks emulator with a paused default queue."""
    emulator = cloudtasks.EmulatorProcess(
        EMULATOR_VENV,
        port=free_port(),
        queues=(QUEUE,),
        project=PROJECT,
        location=LOCATION,
        target_port=free_port(),
        max_retries=0,
    )
    emulator.start()
    try:
        cloudtasks.emulator_client(emulator.address).pause_queue(name=emulator.queue_path(QUEUE))
        yield emulator
    finally:
        emulator.stop()


def drain(emulator: cloudtasks.EmulatorProcess) -> None:
    """Post every queued task to taskutils.app, and the tasks they add, until none is left."""
    client, app = cloudtasks.emulator_client(emulator.address), webtest.TestApp(taskutils.app)
    parent = emulator.queue_path(QUEUE)
    while True:
        waiting = list(client.list_tasks(request={"parent": parent, "response_view": FULL_VIEW}))
        if not waiting:
            return
        client.purge_queue(name=parent)  # the emulator has no DeleteTask
        for added in waiting:
            request = added.app_engine_http_request
            headers = {
                **dict(request.headers),
                "X-AppEngine-QueueName": QUEUE,
                "X-AppEngine-TaskName": added.name.rsplit("/", 1)[1],
                "X-AppEngine-TaskRetryCount": "0",
            }
            app.post(request.relative_uri, request.body, headers=headers)


def per_child(
    emulator: cloudtasks.EmulatorProcess, counting: CountingStore, n: int
) -> tuple[float, collections.Counter[str]]:
    """Store operations per child (and by name) for a whole fan-in of n children."""
    group = benchwork.item_task.submit_map(range(n))
    group.then(summary)
    counting.calls.clear()
    drain(emulator)
    if group.status != "succeeded":
        raise RuntimeError(f"a group of {n} is {group.status}")
    calls = collections.Counter(counting.calls)
    # A transaction is two RPCs (BeginTransaction, Commit); a get, put, delete or query one each.
    total = sum(calls.values()) + calls["transaction"]
    return total / n, calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 children instead of 10,000")
    args = parser.parse_args(argv)
    big = 1_000 if args.quick else BIG
    logging.disable(logging.CRITICAL)
    with emulator() as host, tasks_emulator() as tasks:
        os.environ["DATASTORE_EMULATOR_HOST"] = host
        os.environ["CLOUD_TASKS_EMULATOR_HOST"] = tasks.address
        taskutils.configure(backend="cloud", project=PROJECT, location=LOCATION, secret_keys=[])
        counting = CountingStore(taskutils.backends.store())
        current.install("cloud", counting)  # type: ignore[arg-type]
        rows: list[tuple[int, float, collections.Counter[str]]] = []
        for n in (SMALL, big):
            ops, calls = per_child(tasks, counting, n)
            rows.append((n, ops, calls))
    show: Callable[[collections.Counter[str], int], str] = lambda calls, n: ", ".join(  # noqa: E731
        f"{k} {v / n:.4g}" for k, v in sorted(calls.items())
    )
    print("| children | Datastore RPCs per child | calls per child at the store |")
    print("| ---: | ---: | --- |")
    for n, ops, calls in rows:
        print(f"| {n:,} | {ops:.3f} | {show(calls, n)} |")
    ratio = rows[1][1] / rows[0][1]
    print(f"\nRPCs per child at {big:,} / at {SMALL}: {ratio:.3f} (flat: ≤ 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
