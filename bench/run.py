"""taskutils benchmarks: ratios against google.appengine.ext.deferred, measured side by side.

Run from the repository root with the installed package:

    python bench/run.py            # every comparison (about 7 minutes on 2 cores)
    python bench/run.py --quick    # fewer rounds, for a smoke run

Every comparison runs its two sides in alternating rounds (A then B, B then
A, ...) in this one process, on the same Google taskqueue stub, and reports
the median of the per-round ratios with each side's median time per
operation. Logging is off for both sides while timing, and the garbage
collector is paused inside each timed batch, as timeit does. The serve rows
start ``taskutils.local.LocalServer`` (what ``python -m taskutils serve``
runs) on a free loopback port. The devappserver rows run ``serve`` and Google's
``dev_appserver.py`` side by side as subprocesses (bench/bench_devappserver.py);
they are skipped, with the reason printed, where the Google Cloud CLI is not
installed. The cloud-queue row (bench/bench_cloud_queue.py) adds to a Cloud Tasks
emulator from ``$TASKUTILS_EMULATOR_VENV``; it is skipped, with the reason, where
the emulator or the ``[cloud]`` extra is missing.
"""

from __future__ import annotations

import argparse
import gc
import io
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from google.appengine.api import taskqueue  # noqa: E402
from google.appengine.ext import deferred  # noqa: E402
from google.appengine.ext.deferred import deferred as deferred_module  # noqa: E402

import taskutils  # noqa: E402
from taskutils.task import LIBRARY_HEADERS  # noqa: E402
from taskutils.testing import TaskTestbed  # noqa: E402

import benchwork  # noqa: E402

ARGS = (42, "monday")
KWARGS = {"limit": 2.5}
SERVER_SOFTWARE = "Development/2.0"

# A batch of n operations: returns the seconds the n operations took (setup excluded).
Batch = Callable[[int], float]


class NonSeekable:
    """A request body stream that can only be read, as a WSGI server such as waitress hands it over."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


@dataclass
class Result:
    """One comparison: the median ratio a/b, and the median time per operation of each side."""

    name: str
    ratio: float
    target: str
    ok: bool | None
    a_us: float
    b_us: float
    a_name: str
    b_name: str


def measure(sides: dict[str, Batch], rounds: int, number: int, reset: Callable[[], None]) -> dict[str, list[float]]:
    """Time each side `number` operations per round, in an order rotated every round."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm up every side once, untimed
        reset()
        sides[name](max(1, number // 10))
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # A, B / B, A / ...
        for name in order:
            reset()
            gc.collect()
            gc.disable()
            try:
                times[name].append(sides[name](number))
            finally:
                gc.enable()
    return times


def ratio_of(times: dict[str, list[float]], a: str, b: str, number: int) -> tuple[float, float, float]:
    """Median of per-round ratios a/b, and the median µs per operation of a and of b."""
    ratio = statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
    return ratio, statistics.median(times[a]) / number * 1e6, statistics.median(times[b]) / number * 1e6


def compare(
    name: str,
    times: dict[str, list[float]],
    a: str,
    b: str,
    number: int,
    at_most: float | None,
    a_name: str,
    b_name: str,
) -> Result:
    """The Result of comparing side a with side b, against an upper target when given."""
    ratio, a_us, b_us = ratio_of(times, a, b, number)
    target = "(information)" if at_most is None else f"≤ {at_most}"
    ok = None if at_most is None else ratio <= at_most
    return Result(name, ratio, target, ok, a_us, b_us, a_name, b_name)


class Bench:
    """The comparisons, on one activated testbed."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.bed = TaskTestbed().activate()
        self.queue = taskqueue.Queue("default")
        os.environ.setdefault("SERVER_SOFTWARE", SERVER_SOFTWARE)

    def flush(self) -> None:
        self.bed.taskqueue.FlushQueue("default")

    # -- enqueue ----------------------------------------------------------

    def enqueue(self) -> list[Result]:
        taskutils.configure(secret_keys=[])
        work_task, work = benchwork.work_task, benchwork.work
        sample = work_task(*ARGS, **KWARGS)
        pre_pickled, url, headers = sample.payload, sample.url, dict(LIBRARY_HEADERS)
        queue = self.queue

        def call(n: int) -> float:
            t = time.perf_counter()
            for _ in range(n):
                work_task(42, "monday", limit=2.5)
            return time.perf_counter() - t

        def defer(n: int) -> float:
            t = time.perf_counter()
            for _ in range(n):
                deferred.defer(work, 42, "monday", limit=2.5)
            return time.perf_counter() - t

        def bare(n: int) -> float:
            t = time.perf_counter()
            for _ in range(n):
                queue.add(taskqueue.Task(payload=pre_pickled, url=url, headers=headers))
            return time.perf_counter() - t

        number = 200
        times = measure({"call": call, "defer": defer, "bare": bare}, self.rounds, number, self.flush)
        results = [
            compare("one `@task` call / `deferred.defer`", times, "call", "defer", number, 1.0, "@task call", "defer"),
            compare(
                "one `@task` call / bare `taskqueue.add` of a pre-pickled payload",
                times,
                "call",
                "bare",
                number,
                None,
                "@task call",
                "bare add",
            ),
        ]

        taskutils.configure(secret_keys=["bench-secret"])
        try:
            signed = measure({"signed": call, "defer": defer}, self.rounds, number, self.flush)
        finally:
            taskutils.configure(secret_keys=[])
        results.append(
            compare(
                "one `@task` call, signed / `deferred.defer`",
                signed,
                "signed",
                "defer",
                number,
                None,
                "signed call",
                "defer",
            )
        )
        return results

    def fan_out(self) -> list[Result]:
        taskutils.configure(secret_keys=[])
        item_task = benchwork.item_task
        number = 500
        items = list(range(number))

        def mapped(n: int) -> float:
            t = time.perf_counter()
            item_task.map(items[:n] if n != number else items)
            return time.perf_counter() - t

        def loop(n: int) -> float:
            t = time.perf_counter()
            for i in range(n):
                item_task(i)
            return time.perf_counter() - t

        times = measure({"map": mapped, "loop": loop}, self.rounds, number, self.flush)
        return [
            compare(
                "`.map` per task / a loop of single calls",
                times,
                "map",
                "loop",
                number,
                0.6,
                ".map, per task",
                "single call",
            )
        ]

    # -- big payloads ----------------------------------------------------

    def sizes(self) -> list[Result]:
        """Arguments of 1, 10 and 90 KB (the most a task carries) and 200 KB (spilled to Datastore) against deferred."""
        work_task, work = benchwork.work_task, benchwork.work
        results = []
        for size, number, at_most, label in (
            (1_000, 200, 1.0, "1 KB argument"),
            (10_000, 200, 1.0, "10 KB argument"),
            (90_000, 200, 1.0, "90 KB argument"),
            (200_000, 50, 1.3, "200 KB, spilled"),
        ):
            blob = os.urandom(size)

            def call(n: int, blob: bytes = blob) -> float:
                t = time.perf_counter()
                for _ in range(n):
                    work_task(42, blob)
                return time.perf_counter() - t

            def defer(n: int, blob: bytes = blob) -> float:
                t = time.perf_counter()
                for _ in range(n):
                    deferred.defer(work, 42, blob)
                return time.perf_counter() - t

            for keys, name, side in (([], "", "@task call"), (["bench-secret"], ", signed", "signed call")):
                taskutils.configure(secret_keys=keys)
                try:
                    times = measure({"call": call, "defer": defer}, self.rounds, number, self.reset_all)
                finally:
                    taskutils.configure(secret_keys=[])
                row = f"one `@task` call / `deferred.defer`, {label}{name}"
                results.append(compare(row, times, "call", "defer", number, None if keys else at_most, side, "defer"))
        return results

    def reset_all(self) -> None:
        """Empty the queue and Datastore (both sides' spilled entities), untimed."""
        self.flush()
        self.bed.testbed.get_stub("datastore_v3").Clear()

    # -- handle -----------------------------------------------------------

    def environ_for(self, task: taskqueue.Task) -> dict[str, Any]:
        """The environ waitress would hand a WSGI app for this task's request."""
        body = task.payload
        env: dict[str, Any] = {
            "REQUEST_METHOD": "POST",
            "SCRIPT_NAME": "",
            "PATH_INFO": task.url,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8080",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": SERVER_SOFTWARE,
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_HOST": "127.0.0.1",
            "REMOTE_PORT": "50000",
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": "application/octet-stream",
            "HTTP_HOST": "127.0.0.1:8080",
            "HTTP_USER_AGENT": "AppEngine-Google; (+http://code.google.com/appengine)",
            "HTTP_ACCEPT_ENCODING": "identity",
            "HTTP_X_APPENGINE_TASKNAME": task.name,
            "HTTP_X_APPENGINE_QUEUENAME": "default",
            "HTTP_X_APPENGINE_TASKRETRYCOUNT": "0",
            "HTTP_X_APPENGINE_TASKEXECUTIONCOUNT": "0",
            "HTTP_X_APPENGINE_TASKETA": "1700000000.0",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }
        return env

    def handle(self) -> list[Result]:
        taskutils.configure(secret_keys=[])
        ours = benchwork.work_task(*ARGS, **KWARGS)
        theirs = deferred.defer(benchwork.work, *ARGS, **KWARGS)
        statuses: list[str] = []

        def start_response(status: str, headers: Sequence[tuple[str, str]], exc_info: Any = None) -> None:
            statuses.append(status)

        def batch(app: Any, task: taskqueue.Task) -> Batch:
            template, body = self.environ_for(task), task.payload

            def run(n: int) -> float:
                environs = [{**template, "wsgi.input": NonSeekable(body)} for _ in range(n)]
                statuses.clear()
                t = time.perf_counter()
                for env in environs:
                    b"".join(app(env, start_response))
                elapsed = time.perf_counter() - t
                if statuses[-1] != "200 OK" or len(statuses) != n:
                    raise RuntimeError(f"{app!r} answered {statuses[-1]}")
                return elapsed

            return run

        number = 300
        deferred_handler = batch(deferred_module.application, theirs)
        times = measure(
            {"ours": batch(taskutils.app, ours), "deferred": deferred_handler}, self.rounds, number, lambda: None
        )
        results = [
            compare(
                "`taskutils.app` per task / deferred's handler",
                times,
                "ours",
                "deferred",
                number,
                1.0,
                "taskutils.app",
                "deferred handler",
            )
        ]
        taskutils.configure(secret_keys=["bench-secret"])
        try:
            signed = batch(taskutils.app, benchwork.work_task(*ARGS, **KWARGS))
            times = measure({"signed": signed, "deferred": deferred_handler}, self.rounds, number, lambda: None)
        finally:
            taskutils.configure(secret_keys=[])
        results.append(
            compare(
                "`taskutils.app` per task, signed / deferred's handler",
                times,
                "signed",
                "deferred",
                number,
                None,
                "taskutils.app, signed",
                "deferred handler",
            )
        )
        return results

    # -- payload ----------------------------------------------------------

    def payload(self) -> tuple[list[Result], str]:
        taskutils.configure(secret_keys=[])
        ours = len(benchwork.work_task(*ARGS, **KWARGS).payload)
        theirs = len(deferred.defer(benchwork.work, *ARGS, **KWARGS).payload)
        taskutils.configure(secret_keys=["bench-secret"])
        try:
            signed = len(benchwork.work_task(*ARGS, **KWARGS).payload)
        finally:
            taskutils.configure(secret_keys=[])
        self.flush()
        ratio = ours / theirs
        note = f"payload bytes: taskutils {ours} (signed: {signed}), deferred {theirs}"
        return [
            Result(
                "payload bytes / deferred's (module-level function)",
                ratio,
                "≤ 1.0",
                ratio <= 1.0,
                float(ours),
                float(theirs),
                "taskutils bytes",
                "deferred bytes",
            )
        ], note


def table(results: list[Result]) -> str:
    lines = [
        "| comparison | median ratio | target | met | A | B |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for r in results:
        met = "" if r.ok is None else ("yes" if r.ok else "**no**")
        if "bytes" in r.a_name:
            a, b = f"{r.a_us:.0f} B", f"{r.b_us:.0f} B"
        elif r.a_name.endswith("/s") or r.a_name == "MB":
            a, b = f"{r.a_us:.0f} {r.a_name}", f"{r.b_us:.0f} {r.b_name}"
        else:
            a, b = f"{r.a_name}: {r.a_us:.1f} µs", f"{r.b_name}: {r.b_us:.1f} µs"
        lines.append(f"| {r.name} | {r.ratio:.2f} | {r.target} | {met} | {a} | {b} |")
    return "\n".join(lines)


COMPARISONS = (
    "enqueue",
    "sizes",
    "map",
    "handle",
    "oidc",
    "payload",
    "results",
    "serve",
    "devappserver",
    "cloud-queue",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=41, help="rounds per comparison (default 41)")
    parser.add_argument("--quick", action="store_true", help="9 rounds: a smoke run, not figures to quote")
    parser.add_argument(
        "--only",
        choices=COMPARISONS,
        action="append",
        help="run only these comparisons (repeatable)",
    )
    args = parser.parse_args(argv)
    rounds = 9 if args.quick else args.rounds
    only = set(args.only or COMPARISONS)

    bench = Bench(rounds)
    results: list[Result] = []
    notes: list[str] = []
    logging.disable(logging.CRITICAL)
    try:
        if "enqueue" in only:
            results += bench.enqueue()
        if "sizes" in only:
            results += bench.sizes()
        if "map" in only:
            results += bench.fan_out()
        if "handle" in only:
            results += bench.handle()
        if "oidc" in only:  # the handler checking Cloud Tasks' OIDC token: bench/bench_oidc.py
            import bench_oidc

            results += bench_oidc.rows(bench)
        if "payload" in only:
            found, note = bench.payload()
            results += found
            notes.append(note)
        if "results" in only:  # submit, submit_map and fan-in: bench/bench_results.py
            import bench_results

            found, more = bench_results.rows(bench, 1_000 if args.quick else bench_results.BIG)
            results += found
            notes += more
    finally:
        bench.bed.deactivate()
    try:
        if "serve" in only:
            import bench_serve  # serve on I/O-bound tasks against a bare WSGI app

            results += [Result(*row) for row in bench_serve.rows(rounds)]
        if "devappserver" in only:  # serve beside Google's dev_appserver.py, as subprocesses
            import bench_devappserver

            try:
                found_rows, more = bench_devappserver.rows(2 if args.quick else bench_devappserver.ROUNDS)
            except (OSError, RuntimeError, TimeoutError) as e:  # Google's server, not taskutils: keep the rest
                found_rows, more = [], [f"dev_appserver.py rows not measured: {e}"]
            results += [Result(*row) for row in found_rows]
            notes += more
        if "cloud-queue" in only:  # a call on the cloud backend against a bare create_task, on the emulator
            import bench_cloud_queue

            try:
                results += [Result(*row) for row in bench_cloud_queue.rows(rounds)]
            except (OSError, RuntimeError, TimeoutError, ImportError) as e:  # no emulator or [cloud] extra here
                notes.append(f"cloud queue row not measured: {e}")
    finally:
        logging.disable(logging.NOTSET)

    print(
        f"taskutils {taskutils.__version__} bench: Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {rounds} rounds per comparison, medians of per-round ratios"
    )
    print()
    print(table(results))
    print()
    for note in notes:
        print(note)
    failed = [r.name for r in results if r.ok is False]
    print("all targets met" if not failed else f"targets missed: {len(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
