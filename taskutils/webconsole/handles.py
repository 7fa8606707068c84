"""Handles and groups (``submit``, ``submit_map``) as the console shows them: status and ``done/total``.

Read-only, shared by the local console and the production ``taskutils.console``.
Records come from :mod:`taskutils.results` through its handles' public API.
"""

from __future__ import annotations

import datetime
import logging
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._sdk import HAS_SDK
from . import inert
from .decode import function_of
from .html import esc, path_part, progress, status_badge, table, when

if HAS_SDK:
    from google.appengine.api import datastore_errors

    _BAD_KEY_ERRORS: tuple[type[BaseException], ...] = (
        ValueError,
        TypeError,
        datastore_errors.BadValueError,
        datastore_errors.BadArgumentError,
    )
else:
    _BAD_KEY_ERRORS = (ValueError, TypeError)

log = logging.getLogger("taskutils.webconsole")

MAX_ROWS = 100
MAX_ID_BYTES = 1500  # Datastore refuses longer key names: no group can have such an id
TRACE_LINES = 30  # the end of a failed run's traceback shown on its handle's page
INTERNAL = "taskutils."  # the module of taskutils' own steps (a group's fan-in, cancelling callbacks)

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 300
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 30
_repr.maxlevel = 5


def value_text(data: bytes) -> str:
    """A pickled value as text, read inertly (:mod:`.inert`): nothing it names is imported, called or built."""
    try:
        return _repr.repr(inert.read(data))
    except Exception as e:  # noqa: BLE001 - anything unreadable is described, never raised
        names = ", ".join(inert.globals_named(data))
        return f"(cannot be read: {type(e).__name__})" + (f"; the pickle names {names}" if names else "")


def is_internal(url: str) -> bool:
    """True for a URL of taskutils' own steps (a group's fan-in), which the runs page hides unless asked."""
    return function_of(url).startswith(INTERNAL)


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


def listing(group_link: str | None, handle_link: str | None = None) -> str:
    """The handles and groups tables; ids link to group_link + id and handle_link + id when given."""
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
            _rows(handles_, handle_link),
            "No handle yet: submit() makes one (a handle is listed once its task has started).",
            "handles",
        )
    )


def group_detail(group_id: str, handle_link: str | None = None) -> tuple[bool, str]:
    """(found, HTML) for one group: its progress and its children (linked to handle_link + id when given)."""
    results = _results()
    getter = getattr(getattr(results, "GroupHandle", None), "get", None)
    group = None
    if getter is not None and len(group_id.encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES:
        try:
            group = getter(group_id)
        except _BAD_KEY_ERRORS:
            group = None  # not an id any group could have
    if group is None:
        return False, "<p>There is no such group.</p>"
    item = group_item(group)
    children = [handle_item(h) for h in group.handles[:MAX_ROWS]]
    return True, (
        f'<p class="summary">{status_badge(item.status)} {progress(item.done, item.total)}</p>'
        + table(
            HANDLE_HEADINGS,
            _rows(children, handle_link),
            "No child.",
            "handles",
        )
    )


def _moment(seconds: float | None) -> datetime.datetime | None:
    return None if seconds is None else datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def _stored(value: Any) -> datetime.datetime | None:
    """A Datastore time (naive UTC) as an aware one."""
    return value.replace(tzinfo=datetime.timezone.utc) if isinstance(value, datetime.datetime) else None


def handle_detail(
    handle_id: str, link: Callable[[str, str], str], task_link: Callable[[str], str | None] | None = None
) -> tuple[bool, str]:
    """(found, HTML) for one handle: what it runs, when, how often, its result or the end of its traceback.

    ``link(kind, id)`` is the URL of a handle's ("handle") or a group's ("group") page;
    ``task_link(handle_id)`` the HTML of a link to its queued task, when the console can find it.
    The result is read without running any code its pickle names.
    """
    results = _results()
    handle = None
    if results is not None and len(handle_id.encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES:
        try:
            handle = results.TaskHandle.get(handle_id)
        except _BAD_KEY_ERRORS:
            handle = None  # not an id any handle could have
    if handle is None:
        return False, "<p>There is no such handle (yet: a handle is recorded once its task has started).</p>"
    from .. import results_store as store

    record = handle._record()
    status = str(record["s"])
    group_id, dot, index = handle_id.partition(".")
    owner = store.get(store.group_key(group_id) if dot else store.handle_key(handle_id))
    created = _stored(owner.get("created")) if owner is not None else None

    def anchor(kind: str, ident: str) -> str:
        return f'<a href="{esc(link(kind, ident))}">{esc(ident)}</a>'

    url = record.get("u")
    facts = [
        ("Status", status_badge(status)),
        ("Function", f"<code>{esc(function_of(url))}</code>" if url else "— (not started yet)"),
        ("Created", when(created)),
        ("Started", when(_moment(record.get("st")))),
        (
            "Finished" if status in ("succeeded", "failed", "cancelled") else "Last attempt ended",
            when(_moment(record.get("ft"))),
        ),
        ("Attempts", esc(record["a"])),
    ]
    if dot:
        facts.append(("Group", f"{anchor('group', group_id)} <small>child {esc(index)}</small>"))
    source = record.get("src")
    if source:
        kind = "group" if store.is_group(source) else "handle"
        facts.append(("Follows", f"{anchor(kind, source)} <small>runs once that {esc(kind)} succeeded</small>"))
    found_task = task_link(handle_id) if task_link is not None else None
    if found_task:
        facts.append(("Task", found_task))
    callbacks = [cb_id for cb_id, _ in record.get("cb") or []]
    if callbacks:
        facts.append(("Then", ", ".join(anchor("handle", cb_id) for cb_id in callbacks)))
    body = '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    if status == "succeeded":
        if record.get("r") is not None:
            body += f'<h2>Result</h2><pre class="call result">{esc(value_text(bytes(record["r"])))}</pre>'
        elif "R" in record:
            body += f'<h2>Result</h2><p class="empty">Kept apart in {esc(record["R"][0])} chunks; not shown.</p>'
        else:
            body += '<h2>Result</h2><pre class="call result">None</pre>'
    if record.get("l"):
        body += f'<h2>Error</h2><p class="error">{esc(record["l"])}</p>'
    if record.get("t"):
        lines = str(record["t"]).rstrip().splitlines()[-TRACE_LINES:]
        body += '<h2>End of the traceback</h2><pre class="call traceback">' + esc("\n".join(lines)) + "</pre>"
    return True, body
