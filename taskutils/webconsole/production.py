"""``taskutils.console``: handles and groups in production, read-only, for App Engine admins only.

Serve it behind ``login: admin`` and ``wrap_wsgi_app`` (see ``app.yaml.example``).
Whether a request comes from an admin is App Engine's word:
``users.is_current_user_admin()``, which reads the ``X-Appengine-User-Is-Admin``
header App Engine sets through ``wrap_wsgi_app``; without it, the answer is 403.
Pages link by query string (``?group=ID``, ``?handle=ID``), so it works under any path.
Tasks themselves live in App Engine's queues (or Cloud Tasks): the Cloud Console shows those.
On the cloud backend it reads handles and groups from Cloud Datastore; off App Engine (Cloud
Run, GKE) nothing strips that header from outside requests, so it answers 403 to everyone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlencode

from .._sdk import HAS_SDK
from ..config import settings
from . import handles
from .html import esc, page

log = logging.getLogger("taskutils.webconsole")

StartResponse = Callable[..., Any]

_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
]


def _is_admin(environ: dict[str, Any]) -> bool:
    on_app_engine = os.environ.get("GAE_ENV", "").startswith("standard")
    if settings.backend == "cloud" and not on_app_engine:
        # Off App Engine nothing strips X-Appengine-User-Is-Admin from a request: anyone could send it.
        log.warning("console refused: off App Engine no request is an App Engine admin's")
        return False
    if not HAS_SDK:  # on App Engine, which strips the header from outside requests, as the SDK reads it
        return on_app_engine and environ.get("HTTP_X_APPENGINE_USER_IS_ADMIN") == "1"

    from google.appengine.api import users

    try:
        return bool(users.is_current_user_admin())
    except Exception:  # noqa: BLE001 - no App Engine environment: nobody is an admin
        return False


def _answer(start_response: StartResponse, status: str, body: bytes, content_type: str) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *_HEADERS])
    return [body]


def _link(kind: str, ident: str) -> str:
    return f"?{urlencode({kind: ident})}"


def console(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The production console's WSGI app: 403 unless an App Engine admin asks; GET only."""
    if not _is_admin(environ):
        log.warning("console refused %s: not an App Engine admin", environ.get("PATH_INFO"))
        return _answer(start_response, "403 Forbidden", b"App Engine admins only\n", "text/plain; charset=utf-8")
    if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
        start_response("405 Method Not Allowed", [("Allow", "GET"), ("Content-Length", "0"), *_HEADERS])
        return [b""]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    nav = [("Handles and groups", "?", "group" not in query and "handle" not in query)]
    if "handle" in query or "group" in query:
        if "handle" in query:
            title = f"Handle {query['handle']}"
            found, body = handles.handle_detail(query["handle"], _link)
        else:
            title = f"Group {query['group']}"
            found, body = handles.group_detail(query["group"], "?handle=")
        html = page(
            title,
            '<p><a href="?">← handles and groups</a></p>' + body,
            nav=nav,
            heading="taskutils console",
            inline_script=True,
        )
        return _answer(start_response, "200 OK" if found else "404 Not Found", html, "text/html; charset=utf-8")
    body = handles.listing("?group=", "?handle=")
    html = page(
        "Handles and groups",
        body + f'<p class="empty">Read-only. {esc("Newest first.")} Tasks are queued in App Engine\'s queues '
        "(or Cloud Tasks): see them in the Cloud Console.</p>",
        nav=nav,
        heading="taskutils console",
        inline_script=True,
    )
    return _answer(start_response, "200 OK", html, "text/html; charset=utf-8")
