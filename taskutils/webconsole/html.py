"""Small HTML helpers for the console's pages: every value escaped, no template engine."""

from __future__ import annotations

import datetime
import html
import importlib.resources
from collections.abc import Iterable, Sequence
from urllib.parse import quote

STYLES = "console.css"
SCRIPT = "console.js"


def esc(value: object) -> str:
    """value as text, escaped for HTML content and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def path_part(value: str) -> str:
    """value quoted for one segment of a URL path."""
    return quote(value, safe="")


def asset(name: str) -> bytes:
    """A file shipped in the package's ``static`` folder."""
    return (importlib.resources.files(__package__) / "static" / name).read_bytes()


def when(moment: datetime.datetime | None, now: datetime.datetime | None = None) -> str:
    """A UTC time with how far it is from now, e.g. ``12:00:05 UTC (in 59m 58s)``; '—' for None."""
    if moment is None:
        return "—"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    seconds = (moment - now).total_seconds()
    span = _span(abs(seconds))
    relative = "now" if abs(seconds) < 1 else (f"in {span}" if seconds > 0 else f"{span} ago")
    shown = moment.strftime("%Y-%m-%d %H:%M:%S UTC") if abs(seconds) > 86400 else moment.strftime("%H:%M:%S UTC")
    return f'<time datetime="{esc(moment.isoformat())}">{esc(shown)}</time> <small>({esc(relative)})</small>'


def _span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def duration(seconds: float | None) -> str:
    """A run's duration, e.g. ``12.3 ms`` or ``1.25 s``."""
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def table(headings: Sequence[str], rows: Iterable[Sequence[str]], empty: str, css: str = "") -> str:
    """A table of already-escaped cells; the empty message when there are no rows."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headings)
    return f'<table class="{esc(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def status_badge(status: int | str, ok: bool | None = None) -> str:
    """A status (an HTTP code or a handle's state) in a coloured badge."""
    if ok is None:
        ok = isinstance(status, int) and 200 <= status < 300 or status == "succeeded"
    bad = (isinstance(status, int) and not ok) or status in ("failed", "cancelled")
    css = "ok" if ok else ("bad" if bad else "wait")
    return f'<span class="badge {css}">{esc(status)}</span>'


def progress(done: float, total: float) -> str:
    """``done/total`` beside a native progress bar (3.0 shows as 3)."""
    return (
        f'<span class="progress"><progress value="{done:g}" max="{max(total, 1):g}"></progress> '
        f'<span class="count">{done:g}/{total:g}</span></span>'
    )


def page(
    title: str,
    body: str,
    *,
    nav: Sequence[tuple[str, str, bool]] = (),
    heading: str = "taskutils",
    styles_href: str | None = None,
    script_href: str | None = None,
    inline_script: bool = False,
    message: str = "",
) -> bytes:
    """A whole page: escaped title, navigation links, an optional notice, then body (already HTML)."""
    links = "".join(
        f'<a href="{esc(href)}"{" aria-current=page" if current else ""}>{esc(label)}</a>'
        for label, href, current in nav
    )
    styles = (
        f'<link rel="stylesheet" href="{esc(styles_href)}">'
        if styles_href
        else f"<style>{asset(STYLES).decode()}</style>"
    )
    script = f'<script src="{esc(script_href)}" defer></script>' if script_href else ""
    # Without a URL for the script (the production console), it runs inline, after the page's content.
    tail = f"<script>{asset(SCRIPT).decode()}</script>" if inline_script and not script_href else ""
    notice = f'<p class="notice" role="status">{esc(message)}</p>' if message else ""
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
        f"<title>{esc(title)} · {esc(heading)}</title>{styles}{script}</head>"
        f'<body><header><span class="brand">{esc(heading)}</span><nav>{links}</nav></header>'
        f"<main><h1>{esc(title)}</h1>{notice}{body}</main>{tail}</body></html>"
    ).encode()
