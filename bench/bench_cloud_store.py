"""Datastore operations per group child on the cloud store (Cloud Datastore), at 100 and 10,000 children.

Run alone from the repository root: ``python bench/bench_cloud_store.py [--quick]``. It
starts the Google Cloud CLI's Datastore emulator on a free loopback port, puts the
cloud backend's store on it, and runs ``submit_map(...).then(...)`` through the
testbed's taskqueue stub (a transactional add inside a Cloud NDB transaction is sent
once the transaction commits). Operations are counted at the store port, one per
call (a get, put or delete of many entities is one RPC; a transaction is a
BeginTransaction and a Commit), as ``bench_results.py`` counts bundled Datastore's RPCs.
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
from typing import Any

from google.cloud import ndb

import taskutils
from taskutils.backends import current
from taskutils.backends.appengine import AppEngineQueue
from taskutils.backends.base import Store
from taskutils.testing import TaskTestbed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchwork  # noqa: E402

PROJECT = "taskutils-bench"
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


def send_after_commit() -> None:
    """Transactional adds in a Cloud NDB transaction reach the stub once it commits (the outbox's part)."""
    add = AppEngineQueue.add

    def add_after_commit(self: AppEngineQueue, added: Any, transactional: bool = False) -> Any:
        context = ndb.get_context(raise_context_error=False)
        if not transactional or context is None or not context.in_transaction():
            return add(self, added, transactional)
        context.call_on_commit(lambda: add(self, added, False))
        return added

    AppEngineQueue.add = add_after_commit  # type: ignore[method-assign]


def per_child(bed: TaskTestbed, counting: CountingStore, n: int) -> tuple[float, collections.Counter[str]]:
    """Store operations per child (and by name) for a whole fan-in of n children."""
    group = benchwork.item_task.submit_map(range(n))
    group.then(summary)
    counting.calls.clear()
    bed.drain()
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
    with emulator() as host:
        os.environ["DATASTORE_EMULATOR_HOST"] = host
        os.environ.pop("DATASTORE_PROJECT_ID", None)  # it would turn the testbed's bundled Datastore to Cloud's
        taskutils.configure(backend="cloud", project=PROJECT, secret_keys=[])
        counting = CountingStore(taskutils.backends.store())
        current.install("cloud", counting)  # type: ignore[arg-type]
        send_after_commit()
        bed = TaskTestbed().activate()
        try:
            rows: list[tuple[int, float, collections.Counter[str]]] = []
            for n in (SMALL, big):
                ops, calls = per_child(bed, counting, n)
                rows.append((n, ops, calls))
        finally:
            bed.deactivate()
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
