"""The user's WSGI app as the local server runs it: loaded from ``MODULE:ATTR``, mounted."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def load_app(spec: str) -> WSGIApp:
    """Import ``module:attr`` (``attr`` defaults to ``app``, and may be dotted) and return it."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValueError(f"expected MODULE:ATTR, got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in (attr or "app").split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not a WSGI application: {obj!r}")
    return obj  # type: ignore[no-any-return]


def _not_found(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"Not Found\n"]
