"""Handles and groups (``submit``, ``submit_map``) as the console shows them: status and ``done/total``.

Read-only, shared by the local console and the production ``taskutils.console``.
Records come from :mod:`taskutils.results` through its handles' public API.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

from .html import esc, path_part, progress, status_badge, table, when

log = logging.getLogger("taskutils.webconsole")

MAX_ROWS = 100


@dataclass(frozen=True)
class Item:
    """One handle or group, flattened for a table row."""

    id: str
    kind: str  # "handle" or "group"
    function: str
    status: str
    done: int
    total: int
    attempts: int | None
    updated: datetime.datetime | None
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


def _attr(obj: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value() if callable(value) and name in ("done", "exception") else value
    return default


def _item(handle: Any, kind: str) -> Item:
    total = int(_attr(handle, "total", default=0) or 0)
    done = _attr(handle, "done_count", "completed", default=None)
    if kind == "group":
        children = None
        if total == 0 or done is None:
            children = list(_attr(handle, "handles", default=[]) or [])
            total = total or len(children)
        if done is None:
            share = float(_attr(handle, "progress", default=0.0) or 0.0)
            done = round(share * total)
    else:
        share = float(_attr(handle, "progress", default=0.0) or 0.0)
        total = total or 1
        done = done if done is not None else (1 if _attr(handle, "status") == "succeeded" else round(share * total))
    error = ""
    if _attr(handle, "status") == "failed" and kind == "handle":
        try:
            exc = handle.exception()
        except Exception:  # noqa: BLE001 - an unreadable exception is shown as such
            exc = None
        if exc is not None:
            error = f"{type(exc).__name__}: {exc}"[:200]
    return Item(
        id=str(_attr(handle, "id", default="")),
        kind=kind,
        function=str(_attr(handle, "function", "name", "task_name", default="") or ""),
        status=str(_attr(handle, "status", default="?")),
        done=int(done or 0),
        total=int(total),
        attempts=_attr(handle, "attempts"),
        updated=_attr(handle, "updated", "created"),
        error=error,
    )


def recent(limit: int = MAX_ROWS) -> tuple[list[Item], list[Item]]:
    """The latest handles and groups, newest first: (handles, groups)."""
    results = _results()
    if results is None:
        return [], []
    lister = getattr(results, "recent", None)
    if lister is None:
        return [], []
    found = lister(limit)
    handles_, groups = found if isinstance(found, tuple) else (found, [])
    return [_item(h, "handle") for h in handles_], [_item(g, "group") for g in groups]


def _rows(items: list[Item], link: str | None) -> list[list[str]]:
    rows = []
    for item in items:
        ident = (
            f'<a href="{esc(link)}{esc(path_part(item.id))}">{esc(item.id)}</a>'
            if link
            else f"<code>{esc(item.id)}</code>"
        )
        row = [ident]
        if item.kind == "handle":
            row.append(f"<code>{esc(item.function)}</code>")
        row += [
            status_badge(item.status),
            progress(item.done, item.total),
        ]
        if item.kind == "handle":
            row.append(esc(item.attempts if item.attempts is not None else "—"))
            row.append(f'<span class="error">{esc(item.error)}</span>' if item.error else "")
        row.append(when(item.updated))
        rows.append(row)
    return rows


def listing(group_link: str | None) -> str:
    """The handles and groups tables; group ids link to group_link + id when given."""
    if not available():
        return '<p class="empty">This taskutils keeps no handles: <code>taskutils.results</code> is not installed.</p>'
    handles_, groups = recent()
    return (
        "<h2>Groups</h2>"
        + table(
            ["Group", "Status", "Progress", "Updated"],
            _rows(groups, group_link),
            "No group yet: submit_map() makes one.",
            "groups",
        )
        + "<h2>Handles</h2>"
        + table(
            ["Handle", "Function", "Status", "Progress", "Attempts", "Error", "Updated"],
            _rows(handles_, None),
            "No handle yet: submit() makes one.",
            "handles",
        )
    )


def group_detail(group_id: str) -> tuple[bool, str]:
    """(found, HTML) for one group: its progress and its children."""
    results = _results()
    getter = getattr(getattr(results, "GroupHandle", None), "get", None)
    group = getter(group_id) if getter is not None else None
    if group is None:
        return False, "<p>There is no such group.</p>"
    item = _item(group, "group")
    children = [_item(h, "handle") for h in list(_attr(group, "handles", default=[]) or [])[:MAX_ROWS]]
    return True, (
        f'<p class="summary">{status_badge(item.status)} {progress(item.done, item.total)}</p>'
        + table(
            ["Handle", "Function", "Status", "Progress", "Attempts", "Error", "Updated"],
            _rows(children, None),
            "No child.",
            "handles",
        )
    )
