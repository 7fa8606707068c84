"""The work both sides of the benchmark enqueue and run: one module-level function."""

from __future__ import annotations

from taskutils import task


def work(account_id: int, day: str, *, limit: float = 1.0) -> int:
    """A small, importable task body: what deferred can pickle by reference."""
    return account_id + len(day) + int(limit)


def item(n: int) -> int:
    """The body .map fans out: one item, one task."""
    return n + 1


work_task = task(work)
item_task = task(item)
