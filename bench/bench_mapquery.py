"""``map_query`` beside a hand-written single-task cursor loop over the same kind.

Run alone: ``python bench/bench_mapquery.py [--quick]``. Both sides run in this one
process on the same datastore stub, in alternating rounds, through the test drain:

- **cursor loop**: one task that pages through the kind with ``fetch_page`` and a
  cursor, calling the function on each entity (what users write by hand; it has no
  checkpoint, no hand-over and no fan-in);
- **map_query**: the same function over the same kind, ``shards`` 1, 2, 4 and 8, and 8
  with ``transactional_pages=True``; the time covers every walker, every checkpoint,
  the shards' children and the fan-in.

The drain runs tasks one after another, so the shards rows here show what sharding
costs per entity, not how it speeds up: on App Engine (and under ``serve``) shards run
side by side. ``--serve`` adds rows measured under ``serve --concurrency 8`` with a
function that waits 2 ms per entity (I/O, as a real backfill does), where shards do run
side by side. ``--cloud`` adds the same in-process rows on the cloud backend: a Cloud NDB
kind in the Google Cloud CLI's Datastore emulator, the walkers queued in the Cloud Tasks
emulator and drained by ``taskutils.testing.CloudTaskTestbed``, beside a ``fetch_page``
loop over the same kind in one task.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from google.appengine.ext import ndb  # noqa: E402
from google.cloud import ndb as cloud_ndb  # noqa: E402

import taskutils  # noqa: E402
from taskutils.testing import TaskTestbed  # noqa: E402

import benchwork  # noqa: E402


def seed(n: int) -> None:
    for start in range(0, n, 500):
        ndb.put_multi([benchwork.Row(id=i + 1, value=i) for i in range(start, min(n, start + 500))])


@taskutils.task
def cursor_loop(page_size: int) -> None:
    """The hand-written way: one task, fetch_page with a cursor until the kind is done."""
    cursor, more = None, True
    while more:
        page, cursor, more = benchwork.Row.query().fetch_page(page_size, start_cursor=cursor)
        for row in page:
            benchwork.visit(row)


class CloudRow(cloud_ndb.Model):
    """benchwork.Row's twin on the cloud backend."""

    value = cloud_ndb.IntegerProperty()


@taskutils.task
def cloud_cursor_loop(page_size: int) -> None:
    """cursor_loop over the Cloud NDB kind."""
    cursor, more = None, True
    while more:
        page, cursor, more = CloudRow.query().fetch_page(page_size, start_cursor=cursor, use_cache=False)
        for row in page:
            benchwork.visit(row)


def rounds(sides: dict[str, Callable[[], Any]], bed: Any, n: int, count: int) -> dict[str, float]:
    """Entities per second of each side: the median over alternating rounds."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(count):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            start = time.perf_counter()
            sides[name]()
            bed.drain()
            seconds[name].append(time.perf_counter() - start)
    return {name: n / statistics.median(times) for name, times in seconds.items()}


def in_process(n: int, count: int, page_size: int) -> list[tuple[str, float]]:
    logging.disable(logging.CRITICAL)
    with TaskTestbed() as bed:
        seed(n)
        query = benchwork.Row.query()
        sides: dict[str, Callable[[], Any]] = {"cursor loop, 1 task": functools.partial(cursor_loop, page_size)}
        for shards in (1, 2, 4, 8):
            sides[f"map_query shards={shards}"] = functools.partial(
                taskutils.map_query, benchwork.visit, query, shards=shards, page_size=page_size
            )
        sides["map_query shards=8 transactional_pages"] = functools.partial(
            taskutils.map_query, benchwork.visit, query, shards=8, page_size=page_size, transactional_pages=True
        )
        rates = rounds(sides, bed, n, count)
    logging.disable(logging.NOTSET)
    return list(rates.items())


def under_serve(n: int, page_size: int) -> list[tuple[str, float]]:
    """Entities per second under a real ``serve --concurrency 8``, with 2 ms of waiting per entity."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "apps"))
    from serving import ServeProcess

    out: list[tuple[str, float]] = []
    log_dir = os.environ.get("TMPDIR", "/tmp")
    from pathlib import Path

    proc = ServeProcess(
        "benchwork:mapquery_app",
        Path(log_dir) / "bench-mapquery-serve.log",
        "--concurrency",
        "8",
        env={"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))},
    )
    try:
        proc.wait_ready("/seed?n=0")
        proc.post(f"/seed?n={n}")
        for label, path in [("cursor loop, 1 task", f"/loop?page_size={page_size}")] + [
            (f"map_query shards={s}", f"/map?shards={s}&page_size={page_size}") for s in (1, 2, 4, 8)
        ]:
            start = time.perf_counter()
            proc.post(path)
            proc.wait_for(lambda: proc.get("/done")["done"], label, timeout=600, every=0.05)
            out.append((f"serve: {label}", n / (time.perf_counter() - start)))
    finally:
        proc.stop()
    return out


def on_cloud(n: int, count: int, page_size: int) -> list[tuple[str, float]]:
    """The in-process rows on the cloud backend, against the Datastore and Cloud Tasks emulators."""
    import bench_mapquery as this  # not __main__: the task and the model pickle by reference

    from taskutils.local.cloud import CloudEmulators
    from taskutils.testing import CloudTaskTestbed

    logging.disable(logging.CRITICAL)
    project = "taskutils-bench-mapquery"
    with CloudEmulators(project, target_port=9, paused=True, any_queue=True) as emulators:
        with CloudTaskTestbed(emulators) as bed, bed.ndb_client().context():
            for start in range(0, n, 500):
                cloud_ndb.put_multi([this.CloudRow(id=i + 1, value=i) for i in range(start, min(n, start + 500))])
            query = this.CloudRow.query()
            sides: dict[str, Callable[[], Any]] = {
                "cloud: cursor loop, 1 task": functools.partial(this.cloud_cursor_loop, page_size)
            }
            for shards in (1, 4):
                sides[f"cloud: map_query shards={shards}"] = functools.partial(
                    taskutils.map_query, benchwork.visit, query, shards=shards, page_size=page_size
                )
            sides["cloud: map_query shards=4 transactional_pages"] = functools.partial(
                taskutils.map_query, benchwork.visit, query, shards=4, page_size=page_size, transactional_pages=True
            )
            rates = rounds(sides, bed, n, count)
    logging.disable(logging.NOTSET)
    return list(rates.items())


def table(rows: list[tuple[str, float]], base: float) -> str:
    lines = ["| side | entities/s | vs cursor loop |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {rate:,.0f} | {rate / base:.2f}x |" for name, rate in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer entities and rounds")
    parser.add_argument("--serve", action="store_true", help="also measure under serve --concurrency 8")
    parser.add_argument("--cloud", action="store_true", help="also measure on the cloud backend, against emulators")
    args = parser.parse_args(argv)
    n, count = (1000, 2) if args.quick else (4000, 5)
    page_size = 100
    rows = in_process(n, count, page_size)
    print(f"in process, on the datastore stub, {n} entities, page_size={page_size}, median of {count} rounds:")
    print(table(rows, rows[0][1]))
    if args.cloud:
        clouded = on_cloud(n // 2, count, page_size)
        print(f"\non the cloud backend, against the emulators, {n // 2} entities, median of {count} rounds:")
        print(table(clouded, clouded[0][1]))
    if args.serve:
        served = under_serve(n // 2, 50)
        print(f"\nunder serve --concurrency 8, {n // 2} entities, 2 ms of waiting per entity:")
        print(table(served, served[0][1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
