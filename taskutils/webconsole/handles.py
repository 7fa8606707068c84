"""Handles and groups (``submit``, ``submit_map``) as the console shows them: status and ``done/total``.

Read-only, shared by the local console and the production ``taskutils.console``.
Records come from :mod:`taskutils.results` through its handles' public API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from google.appengine.api import datastore_errors

from .html import esc, path_part, progress, status_badge, table

log = logging.getLogger("taskutils.webconsole")

MAX_ROWS = 100
MAX_ID_BYTES = 1500  # Datastore refuses longer key names: no group can have such an id


@dataclass(frozen=True)
class Item:
    """One handle or group, flattened for a table row."""

    id: str
    kind: str  # "handle" or "group"
    status: str
    done: float
    total: float
    attempts: int | None = None
    error: str = ""


def _results() -> Any:
    try:
        from .. import results
    except ImportError:
        return None
    return results


def available() -> bool:
    """True when this taskutils keeps handles (``taskutils.results`` is present)."""
    return _results() is not None


def handle_item(handle: Any) -> Item:
    """A handle's row: the progress its task reported through ``set_progress``, else 1/1 once finished, 0/1 before."""
    record = handle._record()  # one read for status, attempts and progress
    status = str(record["s"])
    reported = record.get("p")
    error = ""
    if status == "failed":
        try:
            exc = handle.exception()
        except Exception as e:  # noqa: BLE001 - an unreadable exception is shown as such
            exc = e
        if exc is not None:
            error = f"{type(exc).__name__}: {exc}"[:200]
    finished = status in ("succeeded", "failed", "cancelled")
    done, total = (float(reported[0]), float(reported[1])) if reported and reported[1] else (float(finished), 1.0)
    if status == "succeeded":
        done = total
    return Item(str(handle.id), "handle", status, done, total, int(record["a"]), error)


def group_item(group: Any) -> Item:
    """A group's row: finished children over all children."""
    counts = group.counts()
    return Item(str(group.id), "group", str(group.status), int(counts["finished"]), int(counts["total"]))


def recent(limit: int = MAX_ROWS) -> tuple[list[Item], list[Item]]:
    """The latest handles and groups, newest first: (handles, groups)."""
    results = _results()
    if results is None:
        return [], []
    handles_ = [handle_item(h) for h in results.TaskHandle.recent(limit)]
    groups = [group_item(g) for g in results.GroupHandle.recent(limit)]
    return handles_, groups


def _rows(items: list[Item], link: str | None) -> list[list[str]]:
    rows = []
    for item in items:
        href = f"{link}{path_part(item.id)}" if link else ""
        ident = f'<a href="{esc(href)}">{esc(item.id)}</a>' if link else f"<code>{esc(item.id)}</code>"
        row = [ident, status_badge(item.status), progress(item.done, item.total)]
        if item.kind == "handle":
            row.append(esc(item.attempts if item.attempts is not None else "—"))
            row.append(f'<span class="error">{esc(item.error)}</span>' if item.error else "")
        rows.append(row)
    return rows


HANDLE_HEADINGS = ["Handle", "Status", "Progress", "Attempts", "Error"]


def listing(group_link: str | None) -> str:
    """The handles and groups tables; group ids link to group_link + id when given."""
    if not available():
        return '<p class="empty">This taskutils keeps no handles: <code>taskutils.results</code> is not installed.</p>'
    handles_, groups = recent()
    return (
        "<h2>Groups</h2>"
        + table(
            ["Group", "Status", "Progress"],
            _rows(groups, group_link),
            "No group yet: submit_map() makes one.",
            "groups",
        )
        + "<h2>Handles</h2>"
        + table(
            HANDLE_HEADINGS,
            _rows(handles_, None),
            "No handle yet: submit() makes one (a handle is listed once its task has started).",
            "handles",
        )
    )


def group_detail(group_id: str) -> tuple[bool, str]:
    """(found, HTML) for one group: its progress and its children."""
    results = _results()
    getter = getattr(getattr(results, "GroupHandle", None), "get", None)
    group = None
    if getter is not None and len(group_id.encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES:
        try:
            group = getter(group_id)
        except (ValueError, TypeError, datastore_errors.BadValueError, datastore_errors.BadArgumentError):
            group = None  # not an id any group could have
    if group is None:
        return False, "<p>There is no such group.</p>"
    item = group_item(group)
    children = [handle_item(h) for h in group.handles[:MAX_ROWS]]
    return True, (
        f'<p class="summary">{status_badge(item.status)} {progress(item.done, item.total)}</p>'
        + table(
            HANDLE_HEADINGS,
            _rows(children, None),
            "No child.",
            "handles",
        )
    )
