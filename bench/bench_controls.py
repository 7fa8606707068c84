"""Controls: what ``unique``, ``debounce``, ``exclusive``, ``concurrency`` and ``rate`` cost beside a plain task.

Run from the repository root: ``python bench/bench_controls.py [--quick]``. For each option,
on Google's stubs in this one process: the time per call (adding the task) and per run
(``taskutils.app`` handling it), as medians of alternating rounds against a plain task
function of the same body, and the Datastore RPCs each makes, counted at the stub by
call name. Each call uses new arguments, so ``unique`` and ``debounce`` add a task every time.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import Bench, Result, compare, measure, table  # noqa: E402

import taskutils  # noqa: E402

from bench_results import datastore_calls, per  # noqa: E402


def body(n: int) -> int:
    return n + 1


plain = taskutils.task(body)
VARIANTS: dict[str, Any] = {
    "unique=True": taskutils.task(body, unique=True),
    "debounce=0.001": taskutils.task(body, debounce=0.001),
    "exclusive=True": taskutils.task(body, exclusive=True),
    "concurrency=100": taskutils.task(body, concurrency=100),
    'rate="1000000/s"': taskutils.task(body, rate="1000000/s"),
}


class ControlsBench(Bench):
    def __init__(self, rounds: int) -> None:
        super().__init__(rounds)
        self.numbers = itertools.count()

    def calls(self, function: Any, n: int) -> float:
        args = [next(self.numbers) for _ in range(n)]
        t = time.perf_counter()
        for a in args:
            function(a)
        return time.perf_counter() - t

    def runs(self, function: Any, n: int) -> float:
        self.flush()
        self.calls(function, n)
        records = self.bed.tasks("default")
        for record in records:
            self.bed.taskqueue.DeleteTask("default", record.name)
        t = time.perf_counter()
        for record in records:
            self.bed.post(record)
        return time.perf_counter() - t

    def costs(self, label: str, function: Any) -> tuple[str, str]:
        """Datastore RPCs per call and per run, over 20 of each."""
        self.flush()
        with datastore_calls() as at_call:
            self.calls(function, 20)
        records = self.bed.tasks("default")
        for record in records:
            self.bed.taskqueue.DeleteTask("default", record.name)
        with datastore_calls() as at_run:
            for record in records:
                self.bed.post(record)
        return per(at_call, 20), per(at_run, 20)

    def compare_all(self) -> tuple[list[Result], list[str]]:
        taskutils.configure(secret_keys=[])
        results, notes = [], []
        number = 100
        for label, function in VARIANTS.items():
            times = measure(
                {"controlled": lambda n, f=function: self.calls(f, n), "plain": lambda n: self.calls(plain, n)},
                self.rounds,
                number,
                self.flush,
            )
            results.append(
                compare(f"call, {label} / plain", times, "controlled", "plain", number, None, label, "plain")
            )
            times = measure(
                {"controlled": lambda n, f=function: self.runs(f, n), "plain": lambda n: self.runs(plain, n)},
                self.rounds,
                number // 2,
                self.flush,
            )
            results.append(
                compare(f"run, {label} / plain", times, "controlled", "plain", number // 2, None, label, "plain")
            )
            at_call, at_run = self.costs(label, function)
            notes.append(f"| {label} | {at_call} | {at_run} |")
        at_call, at_run = self.costs("plain", plain)
        notes.insert(0, f"| plain | {at_call} | {at_run} |")
        return results, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--quick", action="store_true", help="5 rounds: a smoke run, not figures to quote")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    bench = ControlsBench(5 if args.quick else args.rounds)
    results, notes = bench.compare_all()
    print(table(results))
    print()
    print("| option | Datastore RPCs per call | Datastore RPCs per run |")
    print("| --- | --- | --- |")
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
