"""Leases and periodic jobs (``taskutils.controls``) as the console shows them: who holds which key, until
when, and each periodic job's last and next slot. Read-only."""

from __future__ import annotations

import datetime
import logging

from .html import esc, table, when

log = logging.getLogger("taskutils.webconsole")


def _moment(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)


def _iso(text: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc) if text else None


def listing() -> str:
    """Two tables: the leases held now (exclusive, concurrency) and the periodic jobs."""
    from ..controls.cron import listing as jobs
    from ..controls.run import holders

    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        leases = [
            [
                esc(h["key"]),
                esc(h["task"]),
                esc(f"{h['limit']}"),
                when(_moment(h["since"]), now),
                when(_moment(h["until"]), now),
            ]
            for h in holders()
        ]
        periodic = [
            [esc(j["name"]), esc(j["schedule"]), when(_iso(j["last"]), now), when(_iso(j["next"]), now)] for j in jobs()
        ]
    except Exception:
        log.exception("cannot read leases and periodic jobs")
        return "<p>Leases and periodic jobs cannot be read now.</p>"
    return (
        "<h2>Leases held</h2>"
        + table(["Key", "Held by task", "Of at most", "Since", "Lease ends"], leases, "No lease is held.", "leases")
        + "<h2>Periodic jobs</h2>"
        + table(["Job", "Schedule", "Last slot", "Next slot"], periodic, "No periodic job is declared.", "periodic")
    )
