"""A plain WSGI app deployed as the README says: ``app = wrap_wsgi_app(taskutils.mount(my_wsgi_app))``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from deployed_common import start, stats
from google.appengine.api import wrap_wsgi_app

import taskutils

from wsgi_json import query, respond


def my_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path, q = environ.get("PATH_INFO", ""), query(environ)
    if path == "/start" and environ["REQUEST_METHOD"] == "POST":
        return respond(start_response, "200 OK", start(q["key"], int(q["n"])))
    if path == "/stats":
        return respond(start_response, "200 OK", stats(q.get("key", "")))
    return respond(start_response, "404 Not Found", {"error": path})


app = wrap_wsgi_app(taskutils.mount(my_wsgi_app))
