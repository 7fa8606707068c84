"""Results and fan-in: what ``submit``, ``submit_map`` and a handled run cost beside plain tasks.

Run alone (``python bench/bench_results.py [--quick]``) or as part of ``bench/run.py``
(``--only results``). Datastore operations are counted at the datastore stub, by call
name (each is billed on App Engine, and each is milliseconds there); times are
medians of alternating rounds, as in ``run.py``. Per-child time at 100 and at 10,000
children covers the whole fan-in: every child, every fan-in task and the callback.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from google.appengine.api import apiproxy_stub_map  # noqa: E402
from run import Bench, NonSeekable, Result, compare, measure, table  # noqa: E402

import taskutils  # noqa: E402

import benchwork  # noqa: E402

BIG, SMALL = 10_000, 100


def summary(results: list[int]) -> int:
    """A group's callback: its results in item order."""
    return len(results)


@contextmanager
def datastore_calls() -> Iterator[collections.Counter[str]]:
    """Datastore RPCs made while inside, by call name."""
    stub = apiproxy_stub_map.apiproxy.GetStub("datastore_v3")
    calls: collections.Counter[str] = collections.Counter()
    original = stub.MakeSyncCall

    def counting(service: str, call: str, request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        calls[call] += 1
        return original(service, call, request, response, *args, **kwargs)

    stub.MakeSyncCall = counting
    try:
        yield calls
    finally:
        stub.MakeSyncCall = original


def per(calls: collections.Counter[str], n: int) -> str:
    shown = {k: v / n for k, v in sorted(calls.items()) if v}
    return ", ".join(f"{k} {v:g}" for k, v in shown.items()) or "none"


def rows(bench: Bench, big: int = BIG) -> tuple[list[Result], list[str]]:
    """The results rows and notes, on bench's activated testbed."""
    taskutils.configure(secret_keys=[])
    work_task, item_task = benchwork.work_task, benchwork.item_task
    rounds, results, notes = bench.rounds, [], []

    # -- enqueue: submit against a plain call; submit_map against .map -------------------------
    def call(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            work_task(42, "monday", limit=2.5)
        return time.perf_counter() - t

    def submit(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            work_task.submit(42, "monday", limit=2.5)
        return time.perf_counter() - t

    number = 200
    times = measure({"submit": submit, "call": call}, rounds, number, bench.flush)
    results.append(compare("`submit` / a plain call", times, "submit", "call", number, None, "submit", "call"))
    items = list(range(500))

    def mapped(n: int) -> float:
        t = time.perf_counter()
        item_task.map(items[:n])
        return time.perf_counter() - t

    def submit_mapped(n: int) -> float:
        t = time.perf_counter()
        item_task.submit_map(items[:n])
        return time.perf_counter() - t

    times = measure({"submit_map": submit_mapped, "map": mapped}, rounds, 500, bench.flush)
    results.append(
        compare("`submit_map` per item / `.map` per item", times, "submit_map", "map", 500, None, "submit_map", ".map")
    )
    with datastore_calls() as calls:
        work_task.submit(1, "x")
    notes.append(f"Datastore RPCs to submit one task: {per(calls, 1)} (a plain call: none)")
    with datastore_calls() as calls:
        item_task.submit_map(range(1000))
    notes.append(f"Datastore RPCs to submit_map 1,000 items: {per(calls, 1)} (.map: none)")
    bench.flush()

    # -- a child's run against a plain run, through taskutils.app -------------------------------
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    def runs(
        enqueue: Callable[[list[int]], Any], counted: collections.Counter[str] | None = None
    ) -> Callable[[int], float]:
        def run(n: int) -> float:
            bench.flush()
            enqueue(list(range(n)))
            queued = bench.bed.tasks("default")
            environs = [{**bench.environ_for(t), "wsgi.input": NonSeekable(t.payload)} for t in queued]
            for env, t in zip(environs, queued, strict=True):
                env.update(
                    ("HTTP_" + k.upper().replace("-", "_"), v) for k, v in t.headers.items() if k.startswith("X-Task")
                )
            statuses.clear()
            with datastore_calls() as calls:
                t0 = time.perf_counter()
                for env in environs:
                    b"".join(taskutils.app(env, start_response))
                elapsed = time.perf_counter() - t0
            if counted is not None:
                counted.update(calls)
            if any(s != "200 OK" for s in statuses):
                raise RuntimeError(f"a task answered {statuses}")
            return elapsed

        return run

    number = 200
    times = measure({"child": runs(item_task.submit_map), "plain": runs(item_task.map)}, rounds, number, bench.flush)
    results.append(
        compare("a group child's run / a plain task's run", times, "child", "plain", number, None, "child", "plain")
    )
    plain_calls: collections.Counter[str] = collections.Counter()
    child_calls: collections.Counter[str] = collections.Counter()
    runs(item_task.map, plain_calls)(200)
    runs(item_task.submit_map, child_calls)(200)
    notes.append(
        f"Datastore RPCs per group child's run, fan-in tasks aside: {per(child_calls, 200)} "
        f"(a plain run: {per(plain_calls, 200)})"
    )

    # -- time per child, the whole fan-in, at 100 and at many children ---------------------------
    def whole(n: int) -> tuple[float, collections.Counter[str]]:
        bench.flush()
        group = item_task.submit_map(range(n))
        group.then(summary)
        with datastore_calls() as calls:
            t0 = time.process_time()  # CPU time: on a shared machine, wall time is mostly other processes'
            bench.bed.drain()
            elapsed = time.process_time() - t0
        if group.status != "succeeded":
            raise RuntimeError(f"a group of {n} is {group.status}")
        return elapsed / n, calls

    small = statistics.median(whole(SMALL)[0] for _ in range(5))
    per_big, big_calls = whole(big)
    ratio = per_big / small
    results.append(
        Result(
            f"CPU time per child at {big:,} / at {SMALL} children, the whole fan-in",
            ratio,
            "≤ 1.2",
            ratio <= 1.2,
            per_big * 1e6,
            small * 1e6,
            f"{big:,}",
            f"{SMALL}",
        )
    )
    notes.append(f"Datastore RPCs per child at {big:,} children, fan-in tasks included: {per(big_calls, big)}")
    bench.flush()
    return results, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--quick", action="store_true", help="5 rounds and 1,000 children: a smoke run")
    args = parser.parse_args(argv)
    bench = Bench(5 if args.quick else args.rounds)
    logging.disable(logging.CRITICAL)
    try:
        found, notes = rows(bench, 1_000 if args.quick else BIG)
    finally:
        bench.bed.deactivate()
        logging.disable(logging.NOTSET)
    print(table(found))
    print()
    for note in notes:
        print(note)
    return 1 if any(r.ok is False for r in found) else 0


if __name__ == "__main__":
    sys.exit(main())
