"""A Flask app deployed as the README says: ``app.wsgi_app = wrap_wsgi_app(taskutils.mount(app.wsgi_app))``."""

from __future__ import annotations

from typing import Any

from deployed_common import start, stats
from flask import Flask, request
from google.appengine.api import wrap_wsgi_app

import taskutils

app = Flask(__name__)
app.wsgi_app = wrap_wsgi_app(taskutils.mount(app.wsgi_app))  # type: ignore[method-assign]


@app.post("/start")
def start_view() -> dict[str, Any]:
    return start(request.args["key"], int(request.args["n"]))


@app.get("/stats")
def stats_view() -> dict[str, Any]:
    return stats(request.args.get("key", ""))
